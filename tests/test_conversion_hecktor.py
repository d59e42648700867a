"""HECKTOR 2022 conversion (CT and PET onto one grid) and export back to the CT grid, on synthetic cases."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml.dataset_conversion.common import ConversionError
from nnunetv2_ciml.dataset_conversion.grid import Grid, common_fov_grid, resample_to_grid
from nnunetv2_ciml.dataset_conversion.hecktor import convert_hecktor, export_hecktor
from nnunetv2_ciml.decomposition import resolve_decomposition
from helpers import (CT_ORIGIN, CT_SIZE, CT_SPACING, GTVN_INDEX, GTVP_INDEX, IDENTITY, OUTSIDE_INDEX, PET_SIZE,
                     PET_SPACING, ct_point, hecktor_image as image, make_hecktor_case as make_case, tree_digest)



@pytest.fixture
def hecktor_source(tmp_path) -> Path:
    """HECKTOR 2022 layout: training images and labels in separate folders, plus an unlabelled test folder."""
    root = tmp_path / "hecktor2022"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    make_case(root / "imagesTr", root / "labelsTr", "CHUM-001", 0)
    make_case(root / "imagesTr", root / "labelsTr", "CHUS-002", 1, outside_voxel=True)
    make_case(root / "imagesTs", None, "MDA-100", 2)
    return root


def value_at(img: sitk.Image, point) -> float:
    return float(img[img.TransformPhysicalPointToIndex(tuple(float(v) for v in point))])


def inside(grid: Grid, reference: Grid) -> bool:
    """Every voxel centre of ``grid`` lies within the voxels of ``reference``."""
    corners = np.array([[i, j, k] for i in (0, grid.size[0] - 1) for j in (0, grid.size[1] - 1)
                        for k in (0, grid.size[2] - 1)])
    idx = reference.physical_to_index(grid.index_to_physical(corners))
    return bool(np.all(idx >= -0.5 - 1e-6) and np.all(idx <= np.asarray(reference.size) - 0.5 + 1e-6))


def test_default_grid_is_the_ct_cropped_to_the_pet_and_exports_back_exactly(hecktor_source, nnunet_env, tmp_path):
    before = tree_digest(hecktor_source)
    report = convert_hecktor([hecktor_source], 500, num_processes=1)
    ds = nnunet_env / "Dataset500_HECKTOR2022"
    assert report.training_cases == ["CHUM-001", "CHUS-002"] and report.test_cases == ["MDA-100"]
    assert len(report.warnings) == 1 and "CHUS-002" in report.warnings[0] and "1 GTVn" in report.warnings[0]

    dataset_json = json.loads((ds / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT", "1": "PET"}
    assert dataset_json["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2}
    decomposition, _ = resolve_decomposition(dataset_json)
    owners = {decomposition.output_names[k]: decomposition.modalities[s.primary]
              for s in decomposition.subtasks for k in s.outputs}
    assert owners == {"background": "CT", "GTVp": "CT", "GTVn": "PET"}

    ct_src = sitk.ReadImage(str(hecktor_source / "imagesTr" / "CHUM-001__CT.nii.gz"))
    ct = sitk.ReadImage(str(ds / "imagesTr" / "CHUM-001_0000.nii.gz"))
    pet = sitk.ReadImage(str(ds / "imagesTr" / "CHUM-001_0001.nii.gz"))
    label = sitk.ReadImage(str(ds / "labelsTr" / "CHUM-001.nii.gz"))
    grid = Grid.of(ct)
    assert Grid.of(pet).same_as(grid) and Grid.of(label).same_as(grid)
    # CT voxels, cropped: aligned with the CT, values copied exactly (no interpolation), CT dtype kept
    offset = grid.index_offset_in(Grid.of(ct_src))
    assert offset is not None and grid.spacing == CT_SPACING and ct.GetPixelID() == sitk.sitkInt16
    x, y, z = offset
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(ct),
        sitk.GetArrayFromImage(ct_src)[z:z + grid.size[2], y:y + grid.size[1], x:x + grid.size[0]])
    # the common field of view: inside both images, and it is the CT cropped to the PET's extent
    pet_grid = Grid.of(sitk.ReadImage(str(hecktor_source / "imagesTr" / "CHUM-001__PT.nii.gz")))
    assert inside(grid, Grid.of(ct_src)) and inside(grid, pet_grid)
    assert grid.size == (37, 33, 15) and offset == (0, 3, 7)
    # markers stay at their physical points
    assert value_at(ct, ct_point(GTVP_INDEX)) == 3000
    assert value_at(label, ct_point(GTVP_INDEX)) == 1 and value_at(label, ct_point(GTVN_INDEX)) == 2
    pet_array = sitk.GetArrayFromImage(pet)
    peak = pet.TransformIndexToPhysicalPoint(tuple(int(v) for v in np.unravel_index(pet_array.argmax(),
                                                                                     pet_array.shape)[::-1]))
    assert np.linalg.norm(np.asarray(peak) - ct_point(GTVN_INDEX)) < 2.0
    assert pet_array.min() >= 1.0 - 1e-4 and pet_array.max() <= 11.0  # B-spline clipped to the input range

    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == ["MDA-100_0000.nii.gz", "MDA-100_0001.nii.gz"]
    assert tree_digest(hecktor_source) == before

    # export: the converted labels as predictions go back to the original CT grid exactly
    out = tmp_path / "submission"
    report = export_hecktor(ds / "labelsTr", out, source=[hecktor_source], num_processes=1)
    assert sorted(p.name for p in out.iterdir()) == [".export.json", "CHUM-001.nii.gz", "CHUS-002.nii.gz"]
    assert any("1 cases of the source have no prediction" in w for w in report.warnings)  # MDA-100
    exported = sitk.ReadImage(str(out / "CHUM-001.nii.gz"))
    assert Grid.of(exported).same_as(Grid.of(ct_src)) and exported.GetPixelID() == sitk.sitkUInt8
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(hecktor_source / "labelsTr" / "CHUM-001.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), original)
    # the voxel outside the PET was dropped at conversion, everything else comes back
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(hecktor_source / "labelsTr" / "CHUS-002.nii.gz")))
    original[OUTSIDE_INDEX[::-1]] = 0
    np.testing.assert_array_equal(array_of(out / "CHUS-002.nii.gz"), original)
    assert tree_digest(hecktor_source) == before


def array_of(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_custom_spacing_keeps_markers_at_their_physical_points(hecktor_source, nnunet_env, tmp_path):
    convert_hecktor([hecktor_source / "imagesTr", hecktor_source / "labelsTr"], 501, spacing=(2.0, 2.0, 2.0),
                    num_processes=1)
    ds = nnunet_env / "Dataset501_HECKTOR2022"
    ct = sitk.ReadImage(str(ds / "imagesTr" / "CHUM-001_0000.nii.gz"))
    pet = sitk.ReadImage(str(ds / "imagesTr" / "CHUM-001_0001.nii.gz"))
    label = sitk.ReadImage(str(ds / "labelsTr" / "CHUM-001.nii.gz"))
    assert ct.GetSpacing() == (2.0, 2.0, 2.0) and Grid.of(pet).same_as(Grid.of(ct))
    assert Grid.of(label).same_as(Grid.of(ct)) and label.GetPixelID() == sitk.sitkUInt8
    src_ct = Grid.of(sitk.ReadImage(str(hecktor_source / "imagesTr" / "CHUM-001__CT.nii.gz")))
    src_pet = Grid.of(sitk.ReadImage(str(hecktor_source / "imagesTr" / "CHUM-001__PT.nii.gz")))
    assert inside(Grid.of(ct), src_ct) and inside(Grid.of(ct), src_pet)
    assert value_at(label, ct_point(GTVP_INDEX)) == 1 and value_at(label, ct_point(GTVN_INDEX)) == 2
    pet_array = sitk.GetArrayFromImage(pet)
    peak = pet.TransformIndexToPhysicalPoint(tuple(int(v) for v in np.unravel_index(pet_array.argmax(),
                                                                                     pet_array.shape)[::-1]))
    assert np.linalg.norm(np.asarray(peak) - ct_point(GTVN_INDEX)) < 2.5
    digest = tree_digest(ds)  # a re-run (B-spline resampling included) gives identical files
    convert_hecktor([hecktor_source / "imagesTr", hecktor_source / "labelsTr"], 501, spacing=(2.0, 2.0, 2.0),
                    num_processes=1, overwrite=True)
    assert tree_digest(ds) == digest

    out = tmp_path / "submission"
    export_hecktor(ds / "labelsTr", out, source=[hecktor_source / "imagesTr"], num_processes=1)
    exported = sitk.ReadImage(str(out / "CHUM-001.nii.gz"))
    assert Grid.of(exported).same_as(src_ct)
    assert value_at(exported, ct_point(GTVP_INDEX)) == 1 and value_at(exported, ct_point(GTVN_INDEX)) == 2
    original = array_of(hecktor_source / "labelsTr" / "CHUM-001.nii.gz")
    for value in (1, 2):  # nearest neighbour twice through a coarser grid: the blobs overlap well, not exactly
        a, b = array_of(out / "CHUM-001.nii.gz") == value, original == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.7


def test_missing_pet_and_unreadable_label_are_named(hecktor_source, nnunet_env):
    (hecktor_source / "imagesTr" / "CHUM-001__PT.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"CHUM-001: missing '.*imagesTr/CHUM-001__PT.nii.gz'"):
        convert_hecktor([hecktor_source], 502, num_processes=1)
    (hecktor_source / "labelsTr" / "CHUS-002.nii.gz").write_bytes(b"not a nifti file")
    report = convert_hecktor([hecktor_source], 502, num_processes=1, skip_incomplete=True)
    assert report.training_cases == [] and report.test_cases == ["MDA-100"]
    skipped = dict(report.skipped)
    assert "CHUM-001__PT.nii.gz" in skipped["CHUM-001"]
    assert "cannot be read" in skipped["CHUS-002"] and "labelsTr/CHUS-002.nii.gz" in skipped["CHUS-002"]
    assert not list((nnunet_env / "Dataset502_HECKTOR2022" / "imagesTr").iterdir())


def test_a_label_off_its_ct_grid_stops_the_conversion(hecktor_source, nnunet_env):
    """CHUM-001's label has its CT's size and origin but 1.5 mm voxels. Before, it was resampled onto the CT grid
    without a word (its tumours moved and changed size); the docs say a mis-gridded label stops the run. Now the
    conversion stops naming the case, the label, its CT and both grids, and writes nothing. Fails for a check of the
    label's size alone."""
    label_file = hecktor_source / "labelsTr" / "CHUM-001.nii.gz"
    label = sitk.ReadImage(str(label_file))
    label.SetSpacing((1.5, 1.5, 1.5))
    sitk.WriteImage(label, str(label_file))
    with pytest.raises(ConversionError) as e:
        convert_hecktor([hecktor_source], 504, num_processes=1)
    message = str(e.value)
    assert message.startswith(f"case 'CHUM-001': label '{label_file}' is not on the grid of its CT "
                              f"'{hecktor_source / 'imagesTr' / 'CHUM-001__CT.nii.gz'}' (spacing")
    size = tuple(CT_SIZE)
    assert (f"label grid size (x, y, z) {size}, spacing (1.5, 1.5, 1.5) mm, origin (-20, -22.5, -24) mm; CT grid "
            f"size (x, y, z) {size}, spacing (1, 1.25, 2) mm, origin (-20, -22.5, -24) mm") in message
    assert not (nnunet_env / "Dataset504_HECKTOR2022").exists()


def test_label_without_images_and_missing_label_are_incomplete(hecktor_source, nnunet_env):
    make_case(hecktor_source / "imagesTr", hecktor_source / "labelsTr", "CHUP-007", 3)
    (hecktor_source / "labelsTr" / "CHUM-001.nii.gz").unlink()
    for f in (hecktor_source / "imagesTr").glob("CHUP-007__*"):
        f.unlink()
    with pytest.raises(ConversionError) as e:
        convert_hecktor([hecktor_source], 503, num_processes=1)
    assert "2 incomplete HECKTOR cases" in str(e.value)
    assert "CHUM-001: missing label file 'CHUM-001.nii.gz'" in str(e.value)
    assert "CHUP-007: missing 'CHUP-007__CT.nii.gz' (label" in str(e.value)


def test_export_needs_source_and_known_cases(hecktor_source, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    sitk.WriteImage(image(np.zeros((4, 4, 4), np.uint8), CT_SPACING, CT_ORIGIN), str(preds / "CHUV-999.nii.gz"))
    with pytest.raises(ConversionError, match="needs --source"):
        export_hecktor(preds, tmp_path / "out", source=None)
    with pytest.raises(ConversionError, match=r"CHUV-999.nii.gz.*no 'CHUV-999__CT.nii.gz'"):
        export_hecktor(preds, tmp_path / "out", source=[hecktor_source], num_processes=1)
    with pytest.raises(ConversionError, match="overlaps the source folder"):
        export_hecktor(preds, preds / "sub", source=[hecktor_source], num_processes=1)


def test_common_fov_grid_and_resample_to_grid():
    ct = Grid(CT_SIZE, CT_SPACING, CT_ORIGIN, IDENTITY)
    far = Grid(PET_SIZE, PET_SPACING, (500.0, 0.0, 0.0), IDENTITY)
    with pytest.raises(ValueError, match="do not overlap"):
        common_fov_grid(ct, far)
    # aligned grids are cropped and zero-padded exactly, with the physical position kept
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = image(arr, (1.0, 2.0, 3.0), (10.0, 20.0, 30.0))
    target = Grid((8, 3, 2), (1.0, 2.0, 3.0), (8.0, 22.0, 33.0), IDENTITY)  # starts 2 voxels before in x
    out = sitk.GetArrayFromImage(resample_to_grid(img, target, sitk.sitkNearestNeighbor))
    expected = np.zeros((2, 3, 8), np.int16)
    expected[:, :, 2:8] = arr[1:3, 1:4, 0:6]
    np.testing.assert_array_equal(out, expected)


def test_cli_convert_skip_incomplete_name_overwrite_export_and_evaluate(hecktor_source, nnunet_env, tmp_path, capsys):
    """HECKTOR through ``nnunetv2_ciml`` (``cli.main``): a case without PET stops ``convert`` (exit 1, named);
    ``--skip-incomplete`` with ``--name`` and ``--spacing`` converts the others; a rerun needs ``--overwrite``;
    ``export hecktor`` puts the labels back on each case's CT grid (equal to the source label but for the voxel
    outside the PET's field of view); ``evaluate hecktor`` aggregates Dice as counted by hand. Fails if an
    option is not passed on to the API."""
    from nnunetv2_ciml import cli

    (hecktor_source / "imagesTr" / "CHUM-001__PT.nii.gz").unlink()
    before = tree_digest(hecktor_source)
    convert = ["convert", "hecktor", str(hecktor_source), "-d", "504", "--name", "HNC", "-np", "1"]
    assert cli.main(convert) == 1
    assert "convert hecktor: error:" in capsys.readouterr().err
    assert cli.main(convert + ["--skip-incomplete", "--spacing", "2", "2", "2"]) == 0
    assert "CHUM-001" in capsys.readouterr().out
    ds = nnunet_env / "Dataset504_HNC"
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["CHUS-002.nii.gz"]
    assert sitk.ReadImage(str(ds / "labelsTr" / "CHUS-002.nii.gz")).GetSpacing() == (2.0, 2.0, 2.0)
    assert cli.main(convert + ["--skip-incomplete"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(convert + ["--skip-incomplete", "--overwrite"]) == 0
    assert sitk.ReadImage(str(ds / "labelsTr" / "CHUS-002.nii.gz")).GetSpacing() == CT_SPACING  # the CT's grid
    capsys.readouterr()

    out = tmp_path / "submission"
    assert cli.main(["export", "hecktor", str(ds / "labelsTr"), str(out), "--source", str(hecktor_source),
                     "-np", "1"]) == 0
    source_label = sitk.ReadImage(str(hecktor_source / "labelsTr" / "CHUS-002.nii.gz"))
    exported = sitk.ReadImage(str(out / "CHUS-002.nii.gz"))
    assert exported.GetSize() == source_label.GetSize() and exported.GetOrigin() == source_label.GetOrigin()
    expected = sitk.GetArrayFromImage(source_label)
    expected[OUTSIDE_INDEX[::-1]] = 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), expected)
    assert tree_digest(hecktor_source) == before

    # evaluate: CHUM-001 predicted perfectly, CHUS-002's nodes missed. GTVn blobs are 7 x 7 x 5 = 245 CT voxels
    # (CHUS-002 has one more, outside the PET): DSCagg(GTVn) = 2 x 245 / (245 + 246 + 245).
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for case in ("CHUM-001", "CHUS-002"):
        label = sitk.ReadImage(str(hecktor_source / "labelsTr" / f"{case}.nii.gz"))
        sitk.WriteImage(label, str(ref / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.ChangeLabel(label, {2: 0}) if case == "CHUS-002" else label, str(pred / f"{case}.nii.gz"))
    assert cli.main(["evaluate", "hecktor", "-ref", str(ref), "-pred", str(pred), "-o", str(tmp_path / "scores")]) == 0
    aggregated = json.loads((tmp_path / "scores" / "summary.json").read_text())["aggregated"]
    assert aggregated["GTVp"]["DSCagg"] == 1.0
    assert aggregated["GTVn"]["DSCagg"] == pytest.approx(2 * 245 / (245 + 246 + 245))


def test_grid_conversions_equal_simpleitks_on_an_oblique_grid():
    """``Grid.index_to_physical``/``physical_to_index`` are SimpleITK's continuous-index transforms, vectorised.
    Fails on a transposed direction matrix or spacing applied after the rotation (both agree on identity grids)."""
    angle = np.deg2rad(20.0)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    image = sitk.Image(5, 6, 7, sitk.sitkUInt8)
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetOrigin((4.0, -3.0, 11.0))
    image.SetDirection(direction)
    grid = Grid.of(image)
    index = np.array([[0.0, 0.0, 0.0], [1.5, -2.25, 3.0], [4.0, 5.0, 6.0]])
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])
    np.testing.assert_allclose(grid.index_to_physical(index), expected, atol=1e-9)
    back = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in expected])
    np.testing.assert_allclose(grid.physical_to_index(expected), back, atol=1e-9)

"""autoPET conversion and export on a synthetic FDG-PET-CT-Lesions layout (tiny images, fixed seeds)."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml.dataset_conversion.autopet import convert_autopet, export_autopet
from nnunetv2_ciml.dataset_conversion.common import ConversionError
from nnunetv2_ciml.decomposition import resolve_decomposition
from helpers import read_array, tree_digest

# PET grid (CTres, SUV and SEG live on it): anisotropic spacing, far-off origin, flipped x/y axes
PET_SIZE, PET_SPACING = (12, 10, 8), (4.07, 3.5, 3.0)
PET_ORIGIN, PET_DIRECTION = (350.2, 240.7, -1200.5), (-1, 0, 0, 0, -1, 0, 0, 0, 1)
MARKER_INDEX = (7, 4, 5)  # (x, y, z) on the PET grid
PATIENTS = {"PETCT_0a1b2c": ["03-23-2003-NA-PET-CT Ganzkoerper  primaer mit KM-10445", "11-02-2004-NA-PET-CT-77"],
            "PETCT_1d2e3f": ["01-01-2001-NA-PET-CT-1"], "PETCT_2f3a4b": ["02-02-2002-NA-PET-CT-2"],
            "PETCT_3a4b5c": ["03-03-2003-NA-PET-CT-3"], "PETCT_4b5c6d": ["04-04-2004-NA-PET-CT-4"]}


def image(array_zyx: np.ndarray, spacing, origin, direction) -> sitk.Image:
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def pet_image(array_zyx):
    return image(array_zyx, PET_SPACING, PET_ORIGIN, PET_DIRECTION)


def make_study(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    shape = PET_SIZE[::-1]
    suv = rng.uniform(0, 2, shape).astype(np.float32)
    suv[MARKER_INDEX[::-1]] = 20.0
    seg = np.zeros(shape, np.uint8)
    seg[MARKER_INDEX[::-1]] = 1
    seg[MARKER_INDEX[2], MARKER_INDEX[1], MARKER_INDEX[0] + 1] = 1
    ctres = rng.integers(-1000, 1000, shape).astype(np.int16)
    sitk.WriteImage(pet_image(suv), str(folder / "SUV.nii.gz"))
    sitk.WriteImage(pet_image(seg), str(folder / "SEG.nii.gz"))
    sitk.WriteImage(pet_image(ctres), str(folder / "CTres.nii.gz"))
    sitk.WriteImage(pet_image(suv * 1000), str(folder / "PET.nii.gz"))
    # the original CT, on its own finer grid, is not used by the conversion
    ct = rng.integers(-1000, 1000, (12, 20, 24)).astype(np.int16)
    sitk.WriteImage(image(ct, (2.0, 1.75, 2.0), (330.0, 220.0, -1190.0), PET_DIRECTION), str(folder / "CT.nii.gz"))


@pytest.fixture
def autopet_source(tmp_path) -> Path:
    root = tmp_path / "FDG-PET-CT-Lesions"
    seed = 0
    for patient, studies in PATIENTS.items():
        for study in studies:
            make_study(root / patient / study, seed)
            seed += 1
    return root


def marker_point() -> tuple:
    return pet_image(np.zeros(PET_SIZE[::-1], np.uint8)).TransformIndexToPhysicalPoint(MARKER_INDEX)


def value_at(path: Path, point) -> float:
    img = sitk.ReadImage(str(path))
    return float(img[img.TransformPhysicalPointToIndex(point)])


def test_autopet_conversion_keeps_the_marker_and_exports_to_the_suv_grid(autopet_source, nnunet_env, tmp_path):
    before = tree_digest(autopet_source)
    report = convert_autopet([autopet_source], 221, num_processes=2)
    ds = nnunet_env / "Dataset221_autoPET"
    case = "PETCT_0a1b2c_03-23-2003-NA-PET-CT-Ganzkoerper-primaer-mit-KM-10445"
    assert case in report.training_cases and len(report.training_cases) == 6 and not report.skipped

    dataset_json = json.loads((ds / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT", "1": "PET"}
    assert dataset_json["labels"] == {"background": 0, "lesion": 1}
    decomposition, _ = resolve_decomposition(dataset_json)
    (subtask,) = decomposition.subtasks
    assert decomposition.modalities[subtask.primary] == "PET"
    assert {decomposition.output_names[k] for k in subtask.outputs} == {"background", "lesion"}

    # the marker stays at its physical point, on the SUV grid
    point = marker_point()
    suv = sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0001.nii.gz"))
    assert suv.GetSize() == PET_SIZE and np.allclose(suv.GetOrigin(), PET_ORIGIN)
    assert np.allclose(suv.GetDirection(), PET_DIRECTION) and np.allclose(suv.GetSpacing(), PET_SPACING)
    assert value_at(ds / "imagesTr" / f"{case}_0001.nii.gz", point) == 20.0
    assert value_at(ds / "labelsTr" / f"{case}.nii.gz", point) == 1
    assert (ds / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == \
        (autopet_source / "PETCT_0a1b2c" / PATIENTS["PETCT_0a1b2c"][0] / "CTres.nii.gz").read_bytes()

    # both studies of the first patient are in the same fold
    splits = json.loads((ds / "splits_final.json").read_text())
    assert len(splits) == 5
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(report.training_cases)
        in_val = [c.startswith("PETCT_0a1b2c") for c in fold["val"]]
        assert sum(in_val) in (0, 2)

    # export: a prediction cropped to part of the grid still lands on the full SUV grid at the same point
    preds = tmp_path / "preds"
    preds.mkdir()
    seg = sitk.ReadImage(str(ds / "labelsTr" / f"{case}.nii.gz"))
    sitk.WriteImage(seg[2:11, 1:9, 3:8], str(preds / f"{case}.nii.gz"))
    out = tmp_path / "out"
    report = export_autopet(preds, out, source=[autopet_source], num_processes=1)
    study = PATIENTS["PETCT_0a1b2c"][0]
    exported = out / "PETCT_0a1b2c" / study / "PRED.nii.gz"
    assert report.written == [exported]
    assert any("5 studies of the source have no prediction" in w for w in report.warnings)
    mask = sitk.ReadImage(str(exported))
    assert mask.GetSize() == PET_SIZE and np.allclose(mask.GetOrigin(), PET_ORIGIN)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert value_at(exported, point) == 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(autopet_source / "PETCT_0a1b2c" / study /
                                                                            "SEG.nii.gz"))))
    assert tree_digest(autopet_source) == before


def test_autopet_channels_on_different_grids_name_case_and_file(autopet_source, nnunet_env):
    study = autopet_source / "PETCT_1d2e3f" / PATIENTS["PETCT_1d2e3f"][0]
    ctres = sitk.ReadImage(str(study / "CTres.nii.gz"))
    ctres.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(ctres, str(study / "CTres.nii.gz"))
    case = "PETCT_1d2e3f_01-01-2001-NA-PET-CT-1"
    with pytest.raises(ConversionError, match=rf"case '{case}'.*CTres.nii.gz.*not on the voxel grid.*origin"):
        convert_autopet([autopet_source], 221, num_processes=2)  # fails fast in worker processes too
    assert not (nnunet_env / "Dataset221_autoPET").exists() and not list(nnunet_env.glob(".Dataset*"))
    # --skip-incomplete converts the rest (in worker processes) and reports the skipped case with the reason
    report = convert_autopet([autopet_source], 221, num_processes=2, skip_incomplete=True)
    assert [c for c, _ in report.skipped] == [case] and "CTres.nii.gz" in report.skipped[0][1]
    assert len(report.training_cases) == 5
    ds = nnunet_env / "Dataset221_autoPET"
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 5
    assert not list((ds / "imagesTr").glob(f"{case}*")) and not list((ds / "labelsTr").glob(f"{case}*"))


def test_autopet_export_errors(autopet_source, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    bad = pet_image(np.full(PET_SIZE[::-1], 2, np.uint8))
    sitk.WriteImage(bad, str(preds / "PETCT_1d2e3f_01-01-2001-NA-PET-CT-1.nii.gz"))
    with pytest.raises(ConversionError, match=r"PETCT_1d2e3f_01-01-2001-NA-PET-CT-1.*contains values \[2\]"):
        export_autopet(preds, tmp_path / "out", source=[autopet_source], num_processes=1)
    sitk.WriteImage(bad, str(preds / "PETCT_unknown_study.nii.gz"))
    with pytest.raises(ConversionError, match=r"PETCT_unknown_study.nii.gz.*no study"):
        export_autopet(preds, tmp_path / "out", source=[autopet_source], num_processes=1)
    with pytest.raises(ConversionError, match="needs --source"):
        export_autopet(preds, tmp_path / "out", source=[], num_processes=1)


def test_cli_convert_skip_incomplete_name_overwrite_export_and_evaluate(autopet_source, nnunet_env, tmp_path, capsys):
    """The whole autoPET round trip through ``nnunetv2_ciml`` (``cli.main``): an incomplete study stops the
    conversion (exit 1, named), ``--skip-incomplete`` converts the rest under ``--name``, a second run needs
    ``--overwrite`` and then replaces the dataset, ``export autopet`` puts the labels back on each study's grid
    (equal to the source SEG), and ``evaluate autopet`` scores a prediction with one study left empty:
    Dice 0 and FN volume = its 2 lesion voxels x voxel volume. Fails if an option is not passed on to the API."""
    from nnunetv2_ciml import cli

    incomplete = autopet_source / "PETCT_1d2e3f" / PATIENTS["PETCT_1d2e3f"][0]
    (incomplete / "SUV.nii.gz").rename(tmp_path / "SUV.nii.gz")
    skipped = "PETCT_1d2e3f_01-01-2001-NA-PET-CT-1"
    before = tree_digest(autopet_source)
    convert = ["convert", "autopet", str(autopet_source), "-d", "222", "--name", "myPET", "-np", "1"]
    assert cli.main(convert) == 1
    err = capsys.readouterr().err
    assert "nnunetv2_ciml convert autopet: error:" in err and skipped in err and "SUV" in err
    assert not list(nnunet_env.glob("Dataset222*"))

    assert cli.main(convert + ["--skip-incomplete"]) == 0
    out = capsys.readouterr().out
    ds = nnunet_env / "Dataset222_myPET"
    assert skipped in out and ds.is_dir()
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 5
    (ds / "user_note.txt").write_text("from an earlier conversion")
    assert cli.main(convert + ["--skip-incomplete"]) == 1
    assert "--overwrite" in capsys.readouterr().err and (ds / "user_note.txt").is_file()
    assert cli.main(convert + ["--skip-incomplete", "--overwrite"]) == 0
    assert not (ds / "user_note.txt").exists() and len(list((ds / "labelsTr").glob("*.nii.gz"))) == 5
    capsys.readouterr()

    exported = tmp_path / "exported"
    assert cli.main(["export", "autopet", str(ds / "labelsTr"), str(exported), "--source", str(autopet_source),
                     "-np", "1"]) == 0
    studies = sorted(p.relative_to(exported).parent for p in exported.rglob("PRED.nii.gz"))
    assert len(studies) == 5 and Path("PETCT_1d2e3f") / PATIENTS["PETCT_1d2e3f"][0] not in studies
    for study in studies:
        np.testing.assert_array_equal(read_array(exported / study / "PRED.nii.gz"),
                                      read_array(autopet_source / study / "SEG.nii.gz"))
    assert tree_digest(autopet_source) == before

    predictions = tmp_path / "predictions"
    predictions.mkdir()
    cases = sorted(p.name for p in (ds / "labelsTr").glob("*.nii.gz"))
    for name in cases[1:]:
        (predictions / name).write_bytes((ds / "labelsTr" / name).read_bytes())
    empty = sitk.ReadImage(str(ds / "labelsTr" / cases[0])) * 0
    sitk.WriteImage(empty, str(predictions / cases[0]))
    assert cli.main(["evaluate", "autopet", "-ref", str(ds / "labelsTr"), "-pred", str(predictions),
                     "-o", str(tmp_path / "scores")]) == 0
    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    missed = summary["per_case"][cases[0][:-len(".nii.gz")]]
    assert missed["Dice"] == 0.0 and missed["FPvol_ml"] == 0.0
    assert missed["FNvol_ml"] == pytest.approx(2 * np.prod(PET_SPACING) / 1000)
    assert all(summary["per_case"][c[:-len(".nii.gz")]]["Dice"] == 1.0 for c in cases[1:])
    assert summary["mean"]["Dice"] == pytest.approx(4 / 5)

"""ShapeComposition generator: determinism, information structure, nnU-Net validity, geometry."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml.decomposition import resolve_decomposition
from nnunetv2_ciml.demo.shape_composition import (
    LABELS, ShapeCompositionSpec, footprint, generate_shape_composition, information_structure,
    is_complementary_case, make_case)

SMALL = dict(num_train=6, num_test=2, size=40, radius=(4, 6))


def _arrays(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_shape_composition(tmp_path_factory.mktemp("raw") / "Dataset990_ShapeComposition", **SMALL)


def test_same_seed_gives_identical_files_and_other_seed_differs(dataset, tmp_path):
    again = generate_shape_composition(tmp_path / "again", **SMALL)
    first, second = _arrays(dataset), _arrays(again)
    assert first.keys() == second.keys() and len(first) == 8 * 4  # 8 cases x (A, B, label, mask)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        assert (dataset / name).read_bytes() == (again / name).read_bytes(), name
    assert (dataset / "dataset.json").read_text() == (again / "dataset.json").read_text()

    other = _arrays(generate_shape_composition(tmp_path / "other", **SMALL, seed=1))
    assert all(not np.array_equal(first[n], other[n]) for n in first if n.startswith("images"))


def test_case_does_not_depend_on_number_of_cases_and_noise_keeps_geometry():
    spec = ShapeCompositionSpec(size=(40, 40), radius=(4, 6))
    noisy, clean = make_case(spec, 3, "Tr", 5), make_case(ShapeCompositionSpec((40, 40), (4, 6), noise=0.0), 3, "Tr", 5)
    assert noisy.objects == clean.objects
    np.testing.assert_array_equal(noisy.label, clean.label)
    np.testing.assert_array_equal(noisy.complementary, clean.complementary)
    residual = noisy.images - clean.images
    assert abs(residual.mean()) < 0.02 and abs(residual.std() - spec.noise) < 0.02
    assert make_case(spec, 3, "Ts", 5).objects != noisy.objects  # splits draw independent cases


def test_complementary_cases_are_spread_exactly():
    for fraction in (0.0, 0.25, 0.5, 1.0):
        for n in (1, 7, 40):
            assert sum(is_complementary_case(i, fraction) for i in range(n)) == int(np.floor(n * fraction + 1e-9))


@pytest.mark.parametrize("num_modalities", [2, 3])
def test_decoys_are_identical_to_their_twins_in_the_primary_modality_only(num_modalities):
    spec = ShapeCompositionSpec(size=(48, 48), radius=(4, 8), noise=0.0, num_modalities=num_modalities)
    pairs = 0
    for index in range(1, 20, 2):  # complementary cases
        case = make_case(spec, 0, "Tr", index)
        for obj in case.objects:
            if obj.role != "decoy":
                continue
            twin = case.objects[obj.twin]
            assert (twin.role, twin.twin, twin.kind, twin.radius, twin.amplitude, twin.style, obj.style) == \
                   ("true", case.objects.index(obj), obj.kind, obj.radius, obj.amplitude, "hollow", "hollow")
            r = obj.radius + 1  # the footprint plus one voxel of background around it
            padded = np.pad(case.images, [(0, 0)] + [(r, r)] * len(spec.size))
            crop = lambda o, c: padded[c][tuple(slice(x, x + 2 * r + 1) for x in o.center)]
            primary = ["circle", "square"].index(obj.kind)
            np.testing.assert_array_equal(crop(obj, primary), crop(twin, primary))
            decoy_fp = footprint(obj.kind, obj.center, obj.radius, spec.size)
            twin_fp = footprint(twin.kind, twin.center, twin.radius, spec.size)
            # only the marker modality (the other one, or C) sees the difference: the twin's weak copy
            marker = 1 - primary if num_modalities == 2 else 2
            assert np.all(case.images[marker][decoy_fp] == 0)
            np.testing.assert_allclose(case.images[marker][twin_fp], spec.redundant_amplitude * twin.amplitude, rtol=1e-6)
            if num_modalities == 3:  # A and B show decoys and twins alike: purely redundant
                np.testing.assert_array_equal(crop(obj, 1 - primary), crop(twin, 1 - primary))
            pairs += 1
    assert pairs >= 20


def test_labels_only_at_true_shapes_and_mask_covers_pairs():
    spec = ShapeCompositionSpec(size=(48, 48), radius=(4, 8))
    for index in range(12):
        case = make_case(spec, 7, "Ts", index)
        label, mask = np.zeros_like(case.label), np.zeros_like(case.complementary)
        for obj in case.objects:
            fp = footprint(obj.kind, obj.center, obj.radius, spec.size)
            assert not (label[fp].any() or mask[fp].any()), "objects overlap"
            if obj.role == "true":
                label[fp] = LABELS[obj.kind]
            else:
                assert obj.style == "hollow" and obj.twin >= 0
            if obj.twin >= 0:
                mask[fp] = LABELS[obj.kind]
            else:
                assert obj.style == "solid"  # outside pairs, the primary modality alone decides
        np.testing.assert_array_equal(case.label, label)
        np.testing.assert_array_equal(case.complementary, mask)
        assert case.is_complementary == (index % 2 == 1)
        assert case.label.dtype == np.uint8 and case.images.dtype == np.float32


def test_dataset_json_is_valid_for_nnunet_and_ciml(dataset):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(dataset), num_processes=1)  # nnU-Net's own check; raises on any problem

    dj = json.loads((dataset / "dataset.json").read_text())
    assert dj["numTraining"] == 6 == len(list((dataset / "labelsTr").glob("*.nii.gz")))
    assert dj["file_ending"] == ".nii.gz" and dj["channel_names"] == {"0": "A", "1": "B"}
    assert dj["labels"] == {"background": 0, "circle": 1, "square": 2}
    decomposition, origin = resolve_decomposition(dj, num_input_channels=2)
    assert "ciml" in origin
    assert [(s.name, s.primary, s.outputs) for s in decomposition.subtasks] == [("circle", 0, (0, 1)), ("square", 1, (2,))]
    assert dj["shape_composition"]["seed"] == 0 and dj["shape_composition"]["size"] == [40, 40]
    objects = json.loads((dataset / "objects.json").read_text())
    assert set(objects) == {p.name[:-7] for p in dataset.glob("labelsT[rs]/*.nii.gz")}
    assert {objects[c]["split"] for c in objects if c.startswith("test_")} == {"Ts"}


@pytest.mark.parametrize("size", [(40, 40), (24, 24, 24)])
def test_geometry_is_consistent_across_channels_labels_and_masks(tmp_path, size):
    out = generate_shape_composition(tmp_path / "d", num_train=2, num_test=1, size=size, radius=(3, 5),
                                     num_modalities=3)
    expected = (1, *size) if len(size) == 2 else size
    for split, cases in (("Tr", ["train_000", "train_001"]), ("Ts", ["test_000"])):
        for case in cases:
            files = [out / f"images{split}/{case}_{c:04d}.nii.gz" for c in range(3)]
            files += [out / f"labels{split}/{case}.nii.gz", out / f"complementary{split}/{case}.nii.gz"]
            for f in files:
                image = sitk.ReadImage(str(f))
                assert sitk.GetArrayViewFromImage(image).shape == expected, f
                assert image.GetSpacing() == (1.0, 1.0, 1.0) and image.GetOrigin() == (0.0, 0.0, 0.0)
                assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    dj = json.loads((out / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "A", "1": "B", "2": "C"}
    resolve_decomposition(dj, num_input_channels=3)


def test_information_structure_matches_the_masks(dataset):
    info = information_structure(dataset)
    arrays = _arrays(dataset)
    for split, n in (("Tr", 6), ("Ts", 2)):
        masks = {k: v for k, v in arrays.items() if k.startswith(f"complementary{split}/")}
        assert info[split]["num_cases"] == n == len(masks)
        assert info[split]["complementary_area_share"] == pytest.approx(np.mean([(m > 0).mean() for m in masks.values()]))
        assert info[split]["complementary_cases"] == [k.split("/")[1][:-7] for k, m in masks.items() if m.any()]
        # a decoy and its twin have the same size, so half of the mask is background
        assert info[split]["decoy_share_of_mask"] == pytest.approx(0.5)
    assert info["Tr"]["complementary_case_share"] == 0.5
    assert 0 < info["Tr"]["complementary_area_share"] < 0.5
    assert all(0 < s < 1 for s in info["Tr"]["label_share_needing_complementary"].values())


def test_refuses_to_overwrite_foreign_data_and_replaces_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a ShapeComposition dataset"):
        generate_shape_composition(foreign, overwrite=True, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]

    ours = generate_shape_composition(tmp_path / "ours", **SMALL)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_shape_composition(ours, **SMALL)
    generate_shape_composition(ours, overwrite=True, **{**SMALL, "num_train": 3})
    assert len(list((ours / "labelsTr").iterdir())) == 3


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="too small"):
        ShapeCompositionSpec(size=(20, 20), radius=(5, 10))
    with pytest.raises(ValueError, match="dim=3"):
        generate_shape_composition("unused", size=(40, 40), dim=3)
    with pytest.raises(ValueError, match="num_modalities"):
        ShapeCompositionSpec(num_modalities=4)

"""BraTS conversion on the real case in tests/data (BraTS 2020 and 2023 layouts), and export back."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml.dataset_conversion.brats import convert_brats, export_brats
from nnunetv2_ciml.dataset_conversion.common import ConversionError
from nnunetv2_ciml.decomposition import resolve_decomposition
from helpers import tree_digest

CASE_DIR = Path(__file__).resolve().parent / "data" / "brats_TCGA-DU-7294"  # cropped around the tumour

MODALITY_FILES = {"t1": "TCGA-DU-7294_t1_bet.nii.gz", "t1ce": "TCGA-DU-7294_t1c_bet.nii.gz",
                  "t2": "TCGA-DU-7294_t2_bet.nii.gz", "flair": "TCGA-DU-7294_fla_bet.nii.gz"}
NAMES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
# isen-20 (the 2020 winner) has no enhancing tumour; hnfnetv1-20 has some, so label 4 is covered too
LABELS = {"BraTS20_Training_001": "isen-20.nii.gz", "BraTS20_Training_002": "hnfnetv1-20.nii.gz"}
CHANNEL_ORDER = ("t1", "t1ce", "t2", "flair")


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


@pytest.fixture(scope="module")
def brats2020_source(tmp_path_factory) -> Path:
    """BraTS 2020 layout of symlinks: two training cases and one validation case (no label)."""
    root = tmp_path_factory.mktemp("brats2020")
    for case_id, label in LABELS.items():
        folder = root / "MICCAI_BraTS2020_TrainingData" / case_id
        folder.mkdir(parents=True)
        for mod, name in MODALITY_FILES.items():
            (folder / f"{case_id}_{mod}.nii.gz").symlink_to(CASE_DIR / name)
        (folder / f"{case_id}_seg.nii.gz").symlink_to(CASE_DIR / label)
    folder = root / "MICCAI_BraTS2020_ValidationData" / "BraTS20_Validation_001"
    folder.mkdir(parents=True)
    for mod, name in MODALITY_FILES.items():
        (folder / f"BraTS20_Validation_001_{mod}.nii.gz").symlink_to(CASE_DIR / name)
    return root


def crop(image: sitk.Image) -> sitk.Image:
    """A smaller box inside the stored crop (3 voxels in from each side; slicing keeps the physical position)."""
    return image[3:50, 3:57, 3:53]


@pytest.fixture(scope="module")
def brats2023_source(tmp_path_factory) -> Path:
    """Cropped BraTS 2023 layout: two timepoints of one patient, labels in the 2023 set (ET = 3)."""
    root = tmp_path_factory.mktemp("brats2023")
    for case_id, label in zip(("BraTS-GLI-00000-000", "BraTS-GLI-00000-001"), LABELS.values()):
        folder = root / "training" / case_id
        folder.mkdir(parents=True)
        for mod, name in MODALITY_FILES.items():
            sitk.WriteImage(crop(sitk.ReadImage(str(CASE_DIR / name))), str(folder / f"{case_id}-{NAMES_2023[mod]}.nii.gz"))
        seg = crop(sitk.ReadImage(str(CASE_DIR / label)))
        seg = sitk.ChangeLabel(seg, {4: 3})
        sitk.WriteImage(seg, str(folder / f"{case_id}-seg.nii.gz"))
    return root


def check_nnunet_labels(converted: np.ndarray, brats: np.ndarray, et: int) -> None:
    """nnU-Net's BraTS convention: 1 edema (BraTS 2), 2 NCR (BraTS 1), 3 ET (BraTS 4 or 3), voxel by voxel."""
    assert set(np.unique(converted)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(converted == 0, brats == 0)
    np.testing.assert_array_equal(converted == 1, brats == 2)
    np.testing.assert_array_equal(converted == 2, brats == 1)
    np.testing.assert_array_equal(converted == 3, brats == et)


def test_brats2020_real_case_converts_and_exports_back(brats2020_source, nnunet_env, tmp_path):
    before = tree_digest(brats2020_source)
    report = convert_brats([brats2020_source], 501, num_processes=1)
    ds = nnunet_env / "Dataset501_BraTS2020"
    assert report.dataset_folder == ds
    assert report.training_cases == sorted(LABELS) and report.test_cases == ["BraTS20_Validation_001"]

    dataset_json = json.loads((ds / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert dataset_json["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                      "enhancing tumor": [3]}
    assert dataset_json["regions_class_order"] == [1, 2, 3] and dataset_json["numTraining"] == 2
    decomposition, origin = resolve_decomposition(dataset_json)
    assert origin.startswith("'ciml' block")
    owners = {decomposition.output_names[k]: decomposition.modalities[s.primary]
              for s in decomposition.subtasks for k in s.outputs}
    assert owners == {"whole tumor": "FLAIR", "tumor core": "T1ce", "enhancing tumor": "T1ce"}

    for case_id, label in LABELS.items():
        for channel, mod in enumerate(CHANNEL_ORDER):
            converted = sitk.ReadImage(str(ds / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz"))
            source = sitk.ReadImage(str(CASE_DIR / MODALITY_FILES[mod]))
            assert same_geometry(converted, source)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(source))
        seg = sitk.ReadImage(str(ds / "labelsTr" / f"{case_id}.nii.gz"))
        assert same_geometry(seg, sitk.ReadImage(str(CASE_DIR / label)))
        check_nnunet_labels(sitk.GetArrayFromImage(seg), array(CASE_DIR / label), et=4)
    assert sorted(p.name for p in (ds / "imagesTs").iterdir()) == [f"BraTS20_Validation_001_{c:04d}.nii.gz"
                                                                   for c in range(4)]
    assert not (ds / "splits_final.json").exists()  # one case per patient: nnU-Net's own split is fine
    assert tree_digest(brats2020_source) == before

    # the converted labels stand in for predictions: exporting them must give back the BraTS labels exactly
    out = tmp_path / "submission"
    report = export_brats(ds / "labelsTr", out, source=[brats2020_source], num_processes=1)
    assert sorted(p.name for p in out.iterdir()) == [".export.json", *(f"{c}.nii.gz" for c in sorted(LABELS))]
    for case_id, label in LABELS.items():
        exported = sitk.ReadImage(str(out / f"{case_id}.nii.gz"))
        assert same_geometry(exported, sitk.ReadImage(str(CASE_DIR / label)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(exported), array(CASE_DIR / label))
    assert 4 in array(out / "BraTS20_Training_002.nii.gz")
    assert tree_digest(brats2020_source) == before


def test_brats2023_naming_converts_verifies_and_exports_back(brats2023_source, nnunet_env, tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    before = tree_digest(brats2023_source)
    report = convert_brats([brats2023_source], 502, num_processes=1)
    ds = nnunet_env / "Dataset502_BraTS2023"
    assert report.training_cases == ["BraTS-GLI-00000-000", "BraTS-GLI-00000-001"] and not report.test_cases
    # two timepoints of one patient but fewer than 5 patients: no grouped split, and the user is told
    assert any("only 1 patients" in w for w in report.warnings)
    resolve_decomposition(json.loads((ds / "dataset.json").read_text()))
    for case_id in report.training_cases:
        for channel, mod in enumerate(CHANNEL_ORDER):
            src = brats2023_source / "training" / case_id / f"{case_id}-{NAMES_2023[mod]}.nii.gz"
            np.testing.assert_array_equal(array(ds / "imagesTr" / f"{case_id}_{channel:04d}.nii.gz"), array(src))
        check_nnunet_labels(array(ds / "labelsTr" / f"{case_id}.nii.gz"),
                            array(brats2023_source / "training" / case_id / f"{case_id}-seg.nii.gz"), et=3)

    # nnU-Net's own integrity check (what nnUNetv2_plan_and_preprocess --verify_dataset_integrity runs)
    verify_dataset_integrity(str(ds), num_processes=1)

    # a re-run gives identical files
    digest = tree_digest(ds)
    convert_brats([brats2023_source], 502, num_processes=1, overwrite=True)
    assert tree_digest(ds) == digest

    # export: the label set comes from the 'BraTS-' case names (2023: ET = 3)
    out = tmp_path / "submission"
    export_brats(ds / "labelsTr", out, num_processes=1)
    for case_id in report.training_cases:
        np.testing.assert_array_equal(array(out / f"{case_id}.nii.gz"),
                                      array(brats2023_source / "training" / case_id / f"{case_id}-seg.nii.gz"))
    assert 3 in array(out / "BraTS-GLI-00000-001.nii.gz")
    # and --labels brats2020 writes ET as 4 instead
    out2020 = tmp_path / "as2020"
    export_brats(ds / "labelsTr", out2020, labels="brats2020", num_processes=1)
    seg = array(brats2023_source / "training" / "BraTS-GLI-00000-001" / "BraTS-GLI-00000-001-seg.nii.gz")
    np.testing.assert_array_equal(array(out2020 / "BraTS-GLI-00000-001.nii.gz"), np.where(seg == 3, 4, seg))
    assert tree_digest(brats2023_source) == before


def test_export_refuses_prediction_off_the_source_grid(brats2020_source, tmp_path):
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    seg = crop(sitk.ReadImage(str(CASE_DIR / "isen-20.nii.gz")))
    sitk.WriteImage(seg, str(pred_dir / "BraTS20_Training_001.nii.gz"))
    with pytest.raises(ConversionError, match=r"BraTS20_Training_001.*not on the grid.*shape \(x, y, z\)"):
        export_brats(pred_dir, tmp_path / "out", source=[brats2020_source], num_processes=1)
    assert not (tmp_path / "out" / "BraTS20_Training_001.nii.gz").exists()
    assert os.listdir(pred_dir) == ["BraTS20_Training_001.nii.gz"]

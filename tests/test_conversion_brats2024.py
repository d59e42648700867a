"""BraTS 2024 post-treatment labels (4 = resection cavity) through convert and export, and the upload zip."""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml.cli import main as cli
from nnunetv2_ciml.dataset_conversion.brats import convert_brats, export_brats
from nnunetv2_ciml.dataset_conversion.common import ConversionError
from nnunetv2_ciml.decomposition import resolve_decomposition
from helpers import tree_digest

CASE_DIR = Path(__file__).resolve().parent / "data" / "brats_TCGA-DU-7294"  # cropped, see its crop.json

MODALITIES = {"t1n": "TCGA-DU-7294_t1_bet.nii.gz", "t1c": "TCGA-DU-7294_t1c_bet.nii.gz",
              "t2w": "TCGA-DU-7294_t2_bet.nii.gz", "t2f": "TCGA-DU-7294_fla_bet.nii.gz"}
CASES = ("BraTS-GLI-02000-100", "BraTS-GLI-02001-100")


def crop(image: sitk.Image) -> sitk.Image:
    """The tumour region plus margin; slicing keeps the physical position."""
    return image[3:50, 3:57, 3:53]


def array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def post_treatment_source(tmp_path_factory) -> Path:
    """Two BraTS 2024-style cases: the real tumour (4 -> 3) plus a resection cavity (label 4) next to it;
    the second case has no enhancing tumour."""
    root = tmp_path_factory.mktemp("brats2024")
    for case_id, team in zip(CASES, ("hnfnetv1-20", "isen-20")):
        folder = root / "training" / case_id
        folder.mkdir(parents=True)
        for mod, name in MODALITIES.items():
            sitk.WriteImage(crop(sitk.ReadImage(str(CASE_DIR / name))), str(folder / f"{case_id}-{mod}.nii.gz"))
        seg = crop(sitk.ReadImage(str(CASE_DIR / team)))
        values = sitk.GetArrayFromImage(seg)
        values[values == 4] = 3
        z, y, x = np.indices(values.shape)
        cavity = ((z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 <= 25) & (values == 0)
        values[cavity] = 4
        out = sitk.GetImageFromArray(values.astype(np.uint8))
        out.CopyInformation(seg)
        sitk.WriteImage(out, str(folder / f"{case_id}-seg.nii.gz"))
    return root


def test_post_treatment_converts_with_regions_nnunet_turns_back_into_brats_labels(post_treatment_source, nnunet_env,
                                                                                   tmp_path):
    """dataset.json regions WT/TC/ET/RC; nnU-Net's own region -> label conversion (LabelManager with our
    regions_class_order) of the regions of each label file gives the BraTS 2024 labels back voxel by voxel
    (fails with a wrong regions_class_order, e.g. ET before TC); export auto-detects the post-treatment
    dataset from the dataset.json nnUNetv2_predict writes next to predictions and writes labels 1-4."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    before = tree_digest(post_treatment_source)
    report = convert_brats([post_treatment_source], 503, num_processes=1, labels="brats2024")
    ds = nnunet_env / "Dataset503_BraTS2024"
    assert report.dataset_folder == ds and report.training_cases == list(CASES)
    dataset_json = json.loads((ds / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [1, 3],
                                      "enhancing tumor": [3], "resection cavity": [4]}
    decomposition, _ = resolve_decomposition(dataset_json)
    owners = {decomposition.output_names[k]: decomposition.modalities[s.primary]
              for s in decomposition.subtasks for k in s.outputs}
    assert owners == {"whole tumor": "FLAIR", "tumor core": "T1ce", "enhancing tumor": "T1ce",
                      "resection cavity": "T2"}
    verify_dataset_integrity(str(ds), num_processes=1)

    manager = LabelManager(dataset_json["labels"], dataset_json["regions_class_order"])
    for case_id in CASES:
        source = array(post_treatment_source / "training" / case_id / f"{case_id}-seg.nii.gz")
        converted = array(ds / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(converted, source)
        regions = np.stack([np.isin(converted, r).astype(np.float32) for r in ([1, 2, 3], [1, 3], [3], [4])])
        np.testing.assert_array_equal(manager.convert_probabilities_to_segmentation(regions), source)
    assert 4 in converted and 3 not in array(ds / "labelsTr" / f"{CASES[1]}.nii.gz")

    preds = tmp_path / "preds"  # what nnUNetv2_predict leaves: CASE.nii.gz plus dataset.json
    shutil.copytree(ds / "labelsTr", preds)
    shutil.copy(ds / "dataset.json", preds / "dataset.json")
    export_brats(preds, tmp_path / "out", num_processes=1)
    for case_id in CASES:
        np.testing.assert_array_equal(array(tmp_path / "out" / f"{case_id}.nii.gz"),
                                      array(post_treatment_source / "training" / case_id / f"{case_id}-seg.nii.gz"))
    with pytest.raises(ConversionError, match="resection cavity.*--labels brats2024"):
        export_brats(preds, tmp_path / "out2023", labels="brats2023", num_processes=1)
    assert tree_digest(post_treatment_source) == before


def test_resection_cavity_without_the_option_is_refused_with_a_pointer(post_treatment_source, nnunet_env):
    """The default (2023 label set) refuses label 4 and names the case, the file and --labels brats2024."""
    with pytest.raises(ConversionError, match=r"BraTS-GLI-0200\d-100.*-seg\.nii\.gz.*resection cavity.*"
                                              r"--labels brats2024"):
        convert_brats([post_treatment_source], 504, num_processes=1)


def test_export_zip_is_flat_and_refuses_missing_cases(post_treatment_source, tmp_path, capsys):
    """``export brats --zip``: one CASE.nii.gz per case at the top level, byte-identical to the exported
    files; refused (nothing written) when a source case has no prediction, unless --allow-missing, and
    without --source unless --allow-missing."""
    preds = tmp_path / "preds"
    preds.mkdir()
    for case_id in CASES:
        seg = sitk.ReadImage(str(post_treatment_source / "training" / case_id / f"{case_id}-seg.nii.gz"))
        pred = sitk.GetArrayFromImage(seg)
        # nnU-Net BraTS labels of a 2023-style dataset: 1 edema, 2 NCR, 3 ET (the cavity is left out)
        nnunet = np.select([pred == 2, pred == 1, pred == 3], [1, 2, 3], 0).astype(np.uint8)
        image = sitk.GetImageFromArray(nnunet)
        image.CopyInformation(seg)
        sitk.WriteImage(image, str(preds / f"{case_id}.nii.gz"))
    src = ["--source", str(post_treatment_source)]

    archive = tmp_path / "upload" / "submission.zip"
    assert cli(["export", "brats", str(preds), str(tmp_path / "out"), "--zip", str(archive), *src]) == 0
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == [f"{c}.nii.gz" for c in CASES]
        for c in CASES:
            assert z.read(f"{c}.nii.gz") == (tmp_path / "out" / f"{c}.nii.gz").read_bytes()
    exported = array(tmp_path / "out" / f"{CASES[0]}.nii.gz")
    assert set(np.unique(exported)) <= {0, 1, 2, 3} and 3 in exported

    (preds / f"{CASES[1]}.nii.gz").unlink()
    capsys.readouterr()
    assert cli(["export", "brats", str(preds), str(tmp_path / "out1"), "--zip", str(tmp_path / "one.zip"), *src]) == 1
    assert CASES[1] in capsys.readouterr().err
    assert not (tmp_path / "one.zip").exists() and not (tmp_path / "out1").exists()
    assert cli(["export", "brats", str(preds), str(tmp_path / "out2"), "--zip", str(tmp_path / "one.zip"),
                "--allow-missing", *src]) == 0
    with zipfile.ZipFile(tmp_path / "one.zip") as z:
        assert z.namelist() == [f"{CASES[0]}.nii.gz"]
    assert cli(["export", "brats", str(preds), str(tmp_path / "out3"), "--zip", str(tmp_path / "x.zip")]) == 1
    assert "--source" in capsys.readouterr().err


def test_post_treatment_labels_without_any_cavity_are_converted_with_a_warning(post_treatment_source, nnunet_env,
                                                                                 tmp_path):
    """--labels brats2024 on data whose labels hold no 4 anywhere: converted, with a warning that the RC region
    will be empty in every case (a model that can never predict it); with a cavity in a case, no such warning."""
    source = tmp_path / "source"
    shutil.copytree(post_treatment_source, source)
    for seg in source.rglob("*-seg.nii.gz"):
        image = sitk.ReadImage(str(seg))
        values = sitk.GetArrayFromImage(image)
        values[values == 4] = 0
        out = sitk.GetImageFromArray(values)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(seg))
    report = convert_brats([source], 506, num_processes=1, labels="brats2024")
    assert any("no training label holds 4 (resection cavity)" in w for w in report.warnings)
    assert "warning: --labels brats2024, but no training label holds 4" in report.summary()
    with_cavity = convert_brats([post_treatment_source], 507, num_processes=1, labels="brats2024")
    assert not any("resection cavity" in w for w in with_cavity.warnings)

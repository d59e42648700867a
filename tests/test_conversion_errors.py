"""Error paths and output safety of the converters, on tiny synthetic BraTS cases, and the CLI glue."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml import cli
from nnunetv2_ciml.dataset_conversion.brats import convert_brats, export_brats
from nnunetv2_ciml.dataset_conversion.common import ConversionError
from helpers import make_brats_case, tree_digest, write_image

def write(array_zyx, path: Path, origin=(0.0, 0.0, 0.0)) -> None:
    write_image(path, array_zyx, origin=origin)


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, 4):
        make_brats_case(root, f"BraTS20_Training_00{i}", i)
    return root


def test_missing_modality_is_named_and_skip_incomplete_converts_the_rest(source, nnunet_env):
    (source / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz").unlink()
    before = tree_digest(source)
    with pytest.raises(ConversionError, match=r"1 incomplete BraTS cases:\n  BraTS20_Training_002: missing "
                                              r"'.*BraTS20_Training_002_flair.nii.gz'[\s\S]*--skip-incomplete"):
        convert_brats([source], 10, num_processes=1)
    assert not (nnunet_env / "Dataset010_BraTS2020").exists() and not list(nnunet_env.glob(".Dataset*"))
    report = convert_brats([source], 10, num_processes=1, skip_incomplete=True)
    assert report.training_cases == ["BraTS20_Training_001", "BraTS20_Training_003"]
    assert report.skipped[0][0] == "BraTS20_Training_002" and "flair" in report.skipped[0][1]
    assert "Skipped 1 cases:\n  BraTS20_Training_002: missing" in report.summary()
    ds = nnunet_env / "Dataset010_BraTS2020"
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 2
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["BraTS20_Training_001.nii.gz",
                                                                   "BraTS20_Training_003.nii.gz"]
    assert tree_digest(source) == before


def test_missing_label_in_a_labelled_folder_is_an_error(source, nnunet_env):
    (source / "BraTS20_Training_003" / "BraTS20_Training_003_seg.nii.gz").unlink()
    with pytest.raises(ConversionError, match=r"BraTS20_Training_003: missing label file "
                                              r"'.*BraTS20_Training_003_seg.nii.gz'"):
        convert_brats([source], 10, num_processes=1)


def test_unreadable_file_names_case_and_file(source, nnunet_env):
    bad = source / "BraTS20_Training_001" / "BraTS20_Training_001_t2.nii.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(ConversionError, match=rf"case 'BraTS20_Training_001': image file '{bad}' cannot be read[\s\S]*nothing was "
                                              r"written; use --skip-incomplete"):
        convert_brats([source], 11, num_processes=1)
    assert not (nnunet_env / "Dataset011_BraTS2020").exists()
    report = convert_brats([source], 11, num_processes=1, skip_incomplete=True)
    assert [c for c, _ in report.skipped] == ["BraTS20_Training_001"]
    # the skipped case left no partial files behind
    assert not list((nnunet_env / "Dataset011_BraTS2020").rglob("BraTS20_Training_001*"))


def test_channels_on_different_grids_name_the_file(source, nnunet_env):
    f = source / "BraTS20_Training_002" / "BraTS20_Training_002_t1ce.nii.gz"
    write(np.zeros((6, 7, 8), np.int16), f, origin=(0.0, 5.0, 0.0))
    with pytest.raises(ConversionError, match=rf"case 'BraTS20_Training_002': '{f}' is not on the voxel grid of "
                                              r"'.*_t1.nii.gz' \(origin \(mm, x, y, z\) \(0.0, 5.0, 0.0\) vs reference "
                                              r"\(0.0, 0.0, 0.0\)\)"):
        convert_brats([source], 12, num_processes=1)
    write(np.zeros((6, 7, 9), np.int16), f)
    with pytest.raises(ConversionError, match=r"shape \(x, y, z\) \(9, 7, 6\) vs reference \(8, 7, 6\)"):
        convert_brats([source], 12, num_processes=1)


def test_unexpected_label_values_are_named(source, nnunet_env):
    f = source / "BraTS20_Training_003" / "BraTS20_Training_003_seg.nii.gz"
    write(np.full((6, 7, 8), 3, np.uint8), f)
    with pytest.raises(ConversionError, match=rf"case 'BraTS20_Training_003': label file '{f}' contains values \[3\]; "
                                              r"expected only \[0, 1, 2, 4\] \(BraTS 2020"):
        convert_brats([source], 13, num_processes=1)


def test_refuses_to_overwrite_and_keeps_the_old_dataset_if_overwriting_fails(source, nnunet_env):
    convert_brats([source], 14, num_processes=1)
    ds = nnunet_env / "Dataset014_BraTS2020"
    digest = tree_digest(ds)
    with pytest.raises(ConversionError, match="already exists; use --overwrite"):
        convert_brats([source], 14, num_processes=1)
    (source / "BraTS20_Training_001" / "BraTS20_Training_001_t1.nii.gz").write_bytes(b"garbage")
    with pytest.raises(ConversionError, match="cannot be read"):
        convert_brats([source], 14, num_processes=1, overwrite=True)
    assert tree_digest(ds) == digest
    assert sorted(p.name for p in nnunet_env.iterdir()) == ["Dataset014_BraTS2020"]


def test_dataset_id_and_output_location_checks(source, nnunet_env, tmp_path, monkeypatch):
    (tmp_path / "nnUNet_preprocessed" / "Dataset015_Other").mkdir(parents=True)
    with pytest.raises(ConversionError, match=r"dataset ID 15 is already used by '.*Dataset015_Other'"):
        convert_brats([source], 15, num_processes=1)
    with pytest.raises(ConversionError, match="from 1 to 999"):
        convert_brats([source], 1000, num_processes=1)
    with pytest.raises(ConversionError, match="may only contain"):
        convert_brats([source], 16, name="my data", num_processes=1)
    # nnUNet_raw inside the source: refused before anything is written
    before = tree_digest(source)
    monkeypatch.setenv("nnUNet_raw", str(source / "raw"))
    with pytest.raises(ConversionError, match="overlaps the source folder"):
        convert_brats([source], 16, num_processes=1)
    assert tree_digest(source) == before and not (source / "raw").exists()
    monkeypatch.delenv("nnUNet_raw")
    with pytest.raises(ConversionError, match="nnUNet_raw is not set"):
        convert_brats([source], 16, num_processes=1)
    monkeypatch.setenv("nnUNet_raw", str(nnunet_env))
    with pytest.raises(ConversionError, match="no BraTS cases found"):
        convert_brats([tmp_path / "nnUNet_preprocessed"], 16, num_processes=1)
    with pytest.raises(ConversionError, match="does not exist"):
        convert_brats([tmp_path / "nowhere"], 16, num_processes=1)


def test_brats_export_errors(source, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    write(np.full((6, 7, 8), 4, np.uint8), preds / "BraTS20_Validation_001.nii.gz")
    with pytest.raises(ConversionError, match=r"BraTS20_Validation_001.*contains values \[4\]; expected only "
                                              r"\[0, 1, 2, 3\]"):
        export_brats(preds, tmp_path / "out", num_processes=1)
    write(np.zeros((6, 7, 8), np.uint8), preds / "BraTS20_Validation_001.nii.gz")
    export_brats(preds, tmp_path / "out", num_processes=1)
    with pytest.raises(ConversionError, match="already exist.*--overwrite"):
        export_brats(preds, tmp_path / "out", num_processes=1)
    export_brats(preds, tmp_path / "out", num_processes=1, overwrite=True)
    with pytest.raises(ConversionError, match="overlaps the source folder"):
        export_brats(preds, preds, num_processes=1)
    write(np.zeros((6, 7, 8), np.uint8), preds / "TCGA-DU-7294.nii.gz")
    with pytest.raises(ConversionError, match="cannot tell the BraTS label set.*--labels"):
        export_brats(preds, tmp_path / "out2", num_processes=1)
    with pytest.raises(ConversionError, match=r"BraTS20_Validation_001.nii.gz': no complete BraTS case 'BraTS20_Validation_001' under"):
        export_brats(preds, tmp_path / "out2", source=[source], num_processes=1)


def run_cli(monkeypatch, argv):
    # only our subcommands: the test must not depend on other commands' modules
    monkeypatch.setattr(cli, "SUBCOMMANDS", {k: cli.SUBCOMMANDS[k] for k in ("convert", "export")})
    return cli.main(argv)


def test_cli_convert_and_export(source, nnunet_env, tmp_path, monkeypatch, capsys):
    assert run_cli(monkeypatch, ["convert", "brats", str(source), "-d", "20", "-np", "1"]) == 0
    assert "Dataset020_BraTS2020: 3 training cases" in capsys.readouterr().out
    assert run_cli(monkeypatch, ["convert", "brats", str(source), "-d", "20", "-np", "1"]) == 1
    assert "convert brats: error:" in capsys.readouterr().err
    out = tmp_path / "sub"
    assert run_cli(monkeypatch, ["export", "brats", str(nnunet_env / "Dataset020_BraTS2020" / "labelsTr"), str(out),
                                 "--source", str(source), "--labels", "brats2020", "-np", "1"]) == 0
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "BraTS20_Training_001.nii.gz")))
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(source / "BraTS20_Training_001" /
                                                         "BraTS20_Training_001_seg.nii.gz")))
    np.testing.assert_array_equal(exported, original)
    with pytest.raises(SystemExit):  # --source is required for hecktor
        run_cli(monkeypatch, ["export", "hecktor", str(out), str(tmp_path / "x")])
    assert run_cli(monkeypatch, ["convert", "hecktor", str(source), "-d", "21", "--spacing", "1", "1", "0"]) == 1
    assert "spacing must be three positive numbers" in capsys.readouterr().err

"""`nnunetv2_ciml evaluate` round trips through a subprocess, and every bad-input path of the folder runner."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import brats_labels, write_labels as write

from nnunetv2_ciml.evaluation import EvaluationError, evaluate_folder


@pytest.fixture
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    return ref_dir, pred_dir


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nnunetv2_ciml.cli", "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_round_trip_brats(folders, tmp_path):
    ref_dir, pred_dir = folders
    for case, offset in (("BraTS_001", 0), ("BraTS_002", 1)):
        write(ref_dir / f"{case}.nii.gz", brats_labels())
        write(pred_dir / f"{case}.nii.gz", brats_labels(offset))
    write(ref_dir / "BraTS_003.nii.gz", brats_labels())
    result = run_cli("brats", "-ref", ref_dir, "-pred", pred_dir, "-o", tmp_path / "out", "-np", 2)
    assert result.returncode == 0, result.stderr
    assert "WT" in result.stdout and "HD95 mean" in result.stdout
    assert "BraTS_003" in result.stderr  # the missing case is announced
    from_cli = json.loads((tmp_path / "out" / "summary.json").read_text())
    from_api = evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out_api", verbose=False)
    assert from_cli == json.loads(json.dumps(from_api))
    assert from_cli["per_case"]["BraTS_001"]["ET"] == {"Dice": 1.0, "HD95": 0.0}
    assert from_cli["per_case"]["BraTS_002"]["WT"]["HD95"] == 1.0
    assert from_cli["missing"] == ["BraTS_003"]
    assert (tmp_path / "out" / "per_case.csv").read_text().count("\n") == 4


def test_cli_round_trip_nnunet_and_brats2023(folders, tmp_path):
    ref_dir, pred_dir = folders
    seg = brats_labels()
    seg[seg == 4] = 3
    write(ref_dir / "case.nii.gz", seg)
    write(pred_dir / "case.nii.gz", seg)
    result = run_cli("brats", "-ref", ref_dir, "-pred", pred_dir, "-o", tmp_path / "o1", "--labels", "brats2023")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o1" / "summary.json").read_text())["mean"]["ET"]["Dice"] == 1.0
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps({"labels": {"background": 0, "edema": 1, "necrosis": 2, "et": 3},
                                        "file_ending": ".nii.gz", "channel_names": {"0": "x"}, "numTraining": 1}))
    result = run_cli("nnunet", "-ref", ref_dir, "-pred", pred_dir, "-o", tmp_path / "o2", "-dj", dataset_json)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["foreground_mean"] == {"Dice": 1.0, "HD95": 0.0}


@pytest.mark.parametrize("extra, message", [
    (["--labels", "brats2023"], "--labels applies to the brats mode only"),
    (["-dj", "dataset.json"], "-dj applies to the nnunet mode only"),
])
def test_cli_option_misuse(folders, tmp_path, extra, message):
    ref_dir, pred_dir = folders
    result = run_cli("autopet", "-ref", ref_dir, "-pred", pred_dir, "-o", tmp_path / "out", *extra)
    assert result.returncode == 2 and message in result.stderr


def test_cli_nnunet_needs_dataset_json(folders, tmp_path):
    ref_dir, pred_dir = folders
    result = run_cli("nnunet", "-ref", ref_dir, "-pred", pred_dir, "-o", tmp_path / "out")
    assert result.returncode == 2 and "needs -dj" in result.stderr


def test_cli_reports_bad_input_with_the_case_name(folders, tmp_path):
    ref_dir, pred_dir = folders
    write(ref_dir / "BraTS_017.nii.gz", brats_labels())
    write(pred_dir / "BraTS_017.nii.gz", brats_labels()[:, :, :-1])
    result = run_cli("brats", "-ref", ref_dir, "-pred", pred_dir, "-o", tmp_path / "out")
    assert result.returncode == 1
    assert "case 'BraTS_017'" in result.stderr and "shape" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (dict(array=brats_labels()[:, :-1]), r"shape \(x, y, z\) \(14, 11, 10\) vs reference \(14, 12, 10\)"),
    (dict(spacing=(1.0, 1.0, 2.0)), r"spacing \(mm, x, y, z\)"),
    (dict(origin=(0.0, 5.0, 0.0)), r"origin \(mm, x, y, z\)"),
    (dict(direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1)), "direction"),
    (dict(array=brats_labels()[0]), "dimension 2D vs reference 3D"),
    (dict(array=np.where(brats_labels() == 4, 3, brats_labels())), r"contains values \[3\]; expected only \[0, 1, 2, 4\]"),
    (dict(array=brats_labels() * 0.5, dtype=np.float32), "non-integer values"),
])
def test_prediction_errors_name_case_and_file(folders, tmp_path, change, message):
    ref_dir, pred_dir = folders
    write(ref_dir / "BraTS_042.nii.gz", brats_labels())
    kwargs = dict(array=brats_labels())
    kwargs.update(change)
    write(pred_dir / "BraTS_042.nii.gz", **kwargs)
    with pytest.raises(EvaluationError, match=message) as info:
        evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", verbose=False)
    assert "case 'BraTS_042'" in str(info.value) and str(pred_dir / "BraTS_042.nii.gz") in str(info.value)


def test_float_labels_with_integer_values_are_accepted(folders, tmp_path):
    ref_dir, pred_dir = folders
    write(ref_dir / "c.nii.gz", brats_labels())
    write(pred_dir / "c.nii.gz", brats_labels(), dtype=np.float32)
    assert evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", verbose=False)["mean"]["WT"]["Dice"] == 1.0


def test_reference_errors(folders, tmp_path):
    ref_dir, pred_dir = folders
    write(ref_dir / "r1.nii.gz", brats_labels() + 10)
    write(pred_dir / "r1.nii.gz", brats_labels())
    with pytest.raises(EvaluationError, match=r"case 'r1': reference file .*r1.nii.gz.*\[10, 11, 12, 14\]"):
        evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", verbose=False)


def test_unreadable_and_multi_component_files(folders, tmp_path):
    ref_dir, pred_dir = folders
    write(ref_dir / "c1.nii.gz", brats_labels())
    (pred_dir / "c1.nii.gz").write_bytes(b"this is not an image")
    with pytest.raises(EvaluationError, match=r"case 'c1': prediction file .*c1.nii.gz.* cannot be read"):
        evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", verbose=False)
    vector = sitk.Compose([sitk.GetImageFromArray(brats_labels())] * 2)
    sitk.WriteImage(vector, str(pred_dir / "c1.nii.gz"))
    with pytest.raises(EvaluationError, match=r"case 'c1': prediction file .* 2 components per voxel"):
        evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", verbose=False)


def test_errors_in_worker_processes_reach_the_caller(folders, tmp_path):
    ref_dir, pred_dir = folders
    for i in range(3):
        write(ref_dir / f"c{i}.nii.gz", brats_labels())
        write(pred_dir / f"c{i}.nii.gz", brats_labels() if i != 1 else brats_labels()[:-1])
    with pytest.raises(EvaluationError, match="case 'c1'"):
        evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", num_processes=2, verbose=False)


def test_folder_errors(folders, tmp_path):
    ref_dir, pred_dir = folders
    out = tmp_path / "out"
    with pytest.raises(EvaluationError, match="reference folder .*nowhere.* does not exist"):
        evaluate_folder("brats", tmp_path / "nowhere", pred_dir, out)
    with pytest.raises(EvaluationError, match="prediction folder .*nowhere.* does not exist"):
        evaluate_folder("brats", ref_dir, tmp_path / "nowhere", out)
    with pytest.raises(EvaluationError, match=r"has no files ending in '.nii.gz'"):
        evaluate_folder("brats", ref_dir, pred_dir, out)
    write(ref_dir / "c1.nii.gz", brats_labels())
    write(pred_dir / "c1.nii", brats_labels())
    with pytest.raises(EvaluationError, match=r"no file in prediction folder .* matches .*'c1.nii.gz'"):
        evaluate_folder("brats", ref_dir, pred_dir, out)
    with pytest.raises(EvaluationError, match="unknown evaluation mode 'kits'"):
        evaluate_folder("kits", ref_dir, pred_dir, out)
    with pytest.raises(EvaluationError, match="unknown BraTS label convention 'brats2019'"):
        evaluate_folder("brats", ref_dir, pred_dir, out, labels="brats2019")
    with pytest.raises(EvaluationError, match="invalid options for the autopet mode"):
        evaluate_folder("autopet", ref_dir, pred_dir, out, labels="brats2020")
    with pytest.raises(EvaluationError, match="file ending must not be empty"):
        evaluate_folder("brats", ref_dir, pred_dir, out, file_ending="")
    with pytest.raises(EvaluationError, match="num_processes"):
        evaluate_folder("brats", ref_dir, pred_dir, out, num_processes=0, file_ending=".nii")
    assert not out.exists()
    write(ref_dir / "c1.nii", brats_labels())
    assert evaluate_folder("brats", ref_dir, pred_dir, out, file_ending=".nii", verbose=False)["missing"] == []

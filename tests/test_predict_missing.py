"""``nnunetv2_ciml predict`` on real tiny models trained by nnU-Net with modality dropout.

Two 2D region-based models (channels T1ce, T2, FLAIR) are trained by nnU-Net's Python API once for the module,
on the session's dataset planned and preprocessed by nnU-Net (``planned_regions_2d``): CIML (``nnUNetTrainerCIML_modalityDropout_CPUtest``) and plain nnU-Net
(``nnUNetTrainer_modalityDropout_CPUtest``): the dropout trainers run in the real pipeline.
"""
import json
from pathlib import Path
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import nnunet_variables, train_in_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # nnU-Net trains two models
CIML_TRAINER = "nnUNetTrainerCIML_modalityDropout_CPUtest"
PLAIN_TRAINER = "nnUNetTrainer_modalityDropout_CPUtest"


@pytest.fixture(scope="module")
def trained(planned_regions_2d):
    """(raw dataset folder, {trainer: model folder}), trained on the session's planned 2D region dataset;
    nnU-Net's folders stay set for the module."""
    env, raw = planned_regions_2d
    for trainer in (CIML_TRAINER, PLAIN_TRAINER):
        train_in_process(env, int(raw.name[7:10]), "2d", trainer)
    models = {t: Path(env["nnUNet_results"]) / raw.name / f"{t}__nnUNetPlans__2d" for t in (CIML_TRAINER, PLAIN_TRAINER)}
    assert all((m / "fold_0" / "checkpoint_final.pth").is_file() for m in models.values())
    with nnunet_variables(env):
        yield raw, models


def predict(*args: str) -> int:
    from nnunetv2_ciml import cli
    return cli.main(["predict", *args, "-f", "0", "-device", "cpu", "--disable_tta"])


def test_missing_files_bad_cases_and_modalities_json(trained, tmp_path, capsys):
    """case_005: FLAIR deleted; case_006: all three deleted (listed with --cases); case_000: FLAIR of another
    spacing; case_001: an unreadable T1ce; case_002: complete. The good cases are predicted in their input's
    geometry, the bad ones named with their file, the exit status is 1. Fails if a missing file aborts the
    run, if errors stop the other cases, or if modalities.json does not say what each case used and which
    branch each subtask read (FLAIR's subtask reads T2, its default fallback, in case_005)."""
    raw, models = trained
    inp = tmp_path / "in"
    shutil.copytree(raw / "imagesTs", inp)
    for case in ("case_000", "case_001", "case_002"):
        for c in range(3):
            shutil.copy(raw / "imagesTr" / f"{case}_000{c}.nii.gz", inp)
    (inp / "case_001_0000.nii.gz").write_bytes(b"not an image")
    flair = sitk.ReadImage(str(inp / "case_000_0002.nii.gz"))
    flair.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(flair, str(inp / "case_000_0002.nii.gz"))
    (inp / "case_005_0002.nii.gz").unlink()
    for c in range(3):
        (inp / f"case_006_000{c}.nii.gz").unlink()

    out = tmp_path / "out"
    code = predict("-i", str(inp), "-o", str(out), "-m", str(models[CIML_TRAINER]),
                   "--cases", "case_000", "case_001", "case_002", "case_005", "case_006")
    printed = capsys.readouterr()
    err = printed.err
    assert "case_005: without FLAIR (FLAIR reads T2)" in printed.out
    assert code == 1
    assert "case 'case_000'" in err and "case_000_0002.nii.gz" in err and "spacing" in err
    assert "case 'case_001': channel 0 (T1ce) file" in err and "case_001_0000.nii.gz" in err
    assert "case 'case_006' has no modality file" in err
    record = json.loads((out / "modalities.json").read_text())
    assert record["network_told"] is True and record["modalities"] == ["T1ce", "T2", "FLAIR"]
    assert record["cases"] == {
        "case_002": {"present": ["T1ce", "T2", "FLAIR"], "missing": [], "reads": {"FLAIR": ["FLAIR"], "T1ce": ["T1ce"]}},
        "case_005": {"present": ["T1ce", "T2"], "missing": ["FLAIR"], "reads": {"FLAIR": ["T2"], "T1ce": ["T1ce"]}}}
    assert set(record["errors"]) == {"case_000", "case_001", "case_006"}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_002.nii.gz", "case_005.nii.gz"]
    for case, source in (("case_002", raw / "imagesTr" / "case_002_0000.nii.gz"),
                         ("case_005", raw / "imagesTs" / "case_005_0000.nii.gz")):
        p, i = sitk.ReadImage(str(out / f"{case}.nii.gz")), sitk.ReadImage(str(source))
        assert p.GetSize() == i.GetSize() and p.GetSpacing() == i.GetSpacing() and p.GetOrigin() == i.GetOrigin()
        assert set(np.unique(sitk.GetArrayFromImage(p))) <= {0, 1, 2}


def test_complete_cases_equal_nnunet_predictor_and_plain_models_need_zero_fill(trained, tmp_path, capsys):
    """With every file present the command's segmentation equals nnU-Net's own predictor's (the mask path adds
    nothing when all modalities exist); a plain nnU-Net model is refused without --zero-fill (nothing written)
    and predicts with it. Fails if the preprocessing or export differs from nnU-Net's, or if a plain model is
    silently fed zeros."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    raw, models = trained
    out = tmp_path / "ciml"
    assert predict("-i", str(raw / "imagesTs"), "-o", str(out), "-m", str(models[CIML_TRAINER])) == 0
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(str(models[CIML_TRAINER]), use_folds=(0,))
    stock = tmp_path / "stock"
    stock.mkdir()
    predictor.predict_from_files_sequential(str(raw / "imagesTs"), str(stock), save_probabilities=False)
    for case in ("case_005", "case_006"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(stock / f"{case}.nii.gz"))))

    inp = tmp_path / "in"
    shutil.copytree(raw / "imagesTs", inp)
    (inp / "case_005_0002.nii.gz").unlink()
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert predict("-i", str(inp), "-o", str(refused), "-m", str(models[PLAIN_TRAINER])) == 1
    err = capsys.readouterr().err
    assert "plain nnU-Net model" in err and "--zero-fill" in err
    assert not refused.exists()
    plain = tmp_path / "plain"
    assert predict("-i", str(inp), "-o", str(plain), "-m", str(models[PLAIN_TRAINER]), "--zero-fill") == 0
    record = json.loads((plain / "modalities.json").read_text())
    assert record["network_told"] is False and record["cases"]["case_005"]["missing"] == ["FLAIR"]
    assert (plain / "case_005.nii.gz").is_file() and (plain / "case_006.nii.gz").is_file()


def test_truncated_and_nan_channels_are_named_and_the_other_cases_predicted(trained, tmp_path, capsys):
    """case_005: its T2 file truncated (3/4 kept); case_006: its FLAIR file all NaN; case_002: complete. Both bad
    cases are reported with case, channel and file (stderr and the errors of modalities.json), case_002 is still
    predicted, the exit status is 1. Fails if the channels go straight to nnU-Net's reader, which reads the
    missing part of a truncated file and NaN as zeros and predicts all three cases (exit 0)."""
    raw, models = trained
    inp = tmp_path / "in"
    shutil.copytree(raw / "imagesTs", inp)
    for c in range(3):
        shutil.copy(raw / "imagesTr" / f"case_002_000{c}.nii.gz", inp)
    t2 = inp / "case_005_0001.nii.gz"
    data = t2.read_bytes()
    t2.write_bytes(data[:len(data) * 3 // 4])
    flair = inp / "case_006_0002.nii.gz"
    image = sitk.ReadImage(str(flair))
    nan = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, np.nan, np.float32))
    nan.CopyInformation(image)
    sitk.WriteImage(nan, str(flair))

    out = tmp_path / "out"
    code = predict("-i", str(inp), "-o", str(out), "-m", str(models[CIML_TRAINER]))
    err = capsys.readouterr().err
    assert code == 1
    truncated = f"case 'case_005': channel 1 (T2) file '{t2}' cannot be read: the file is truncated"
    non_finite = f"case 'case_006': channel 2 (FLAIR) file '{flair}' holds non-finite voxel values (1024 NaN"
    assert truncated in err and non_finite in err and "Traceback" not in err
    record = json.loads((out / "modalities.json").read_text())
    assert record["errors"]["case_005"].startswith(truncated)
    assert record["errors"]["case_006"].startswith(non_finite)
    assert record["cases"] == {"case_002": {"present": ["T1ce", "T2", "FLAIR"], "missing": [],
                                            "reads": {"FLAIR": ["FLAIR"], "T1ce": ["T1ce"]}}}
    assert sorted(p.name for p in out.iterdir()) == ["case_002.nii.gz", "modalities.json"]


def test_an_empty_input_folder_is_refused_and_nothing_written(trained, tmp_path, capsys):
    """nnUNetv2_predict exits 0 on an empty folder, writing nothing and saying nothing; predict refuses it with a
    message that names the folder and the expected file names, and creates no output folder. Fails if the output
    folder (or modalities.json) is written before the cases are found."""
    raw, models = trained
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    code = predict("-i", str(empty), "-o", str(out), "-m", str(models[CIML_TRAINER]))
    err = capsys.readouterr().err
    assert code == 1
    assert err == (f"nnunetv2_ciml predict: error: no cases in '{empty}': expected files CASE_XXXX.nii.gz, one per "
                   "channel (_0000: T1ce, _0001: T2, _0002: FLAIR)\n")
    assert not out.exists() and not list(empty.iterdir())


def test_an_output_folder_with_earlier_results_is_refused_or_replaced_whole(trained, tmp_path, capsys):
    """Run 1 predicts case_002 and case_005. Run 2 into the same folder without --overwrite is refused and changes
    nothing. Run 3 with --overwrite, where case_005 now has a 4D FLAIR and case_006 (not in run 1) is complete:
    case_005 is refused naming its file and size while the others are predicted, and its earlier segmentation is
    gone: every segmentation in the folder is one modalities.json describes. Fails if an earlier result outlives
    a run (a later evaluate or export would score it), if cases are overwritten silently, or if a 4D image ends
    the run or reaches nnU-Net's preprocessor."""
    raw, models = trained
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(raw / "imagesTs", inp)
    for c in range(3):
        shutil.copy(raw / "imagesTr" / f"case_002_000{c}.nii.gz", inp)
    model = str(models[CIML_TRAINER])
    assert predict("-i", str(inp), "-o", str(out), "-m", model, "--cases", "case_002", "case_005") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["case_002.nii.gz", "case_005.nii.gz", "modalities.json"]
    capsys.readouterr()

    assert predict("-i", str(inp), "-o", str(out), "-m", model, "--cases", "case_002") == 1
    refused = capsys.readouterr().err
    assert "is not empty" in refused and "--overwrite" in refused
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    flair = sitk.ReadImage(str(inp / "case_005_0002.nii.gz"))
    sitk.WriteImage(sitk.JoinSeries([flair, flair]), str(inp / "case_005_0002.nii.gz"))
    code = predict("-i", str(inp), "-o", str(out), "-m", model, "--cases", "case_002", "case_005", "case_006",
                   "--overwrite")
    err = capsys.readouterr().err
    assert code == 1 and "case_005_0002.nii.gz" in err and "is a 4D image of size" in err and "Traceback" not in err
    record = json.loads((out / "modalities.json").read_text())
    assert set(record["cases"]) == {"case_002", "case_006"} and set(record["errors"]) == {"case_005"}
    assert sorted(p.name for p in out.iterdir()) == ["case_002.nii.gz", "case_006.nii.gz", "modalities.json"]


def test_the_dropout_training_log_says_how_often_each_branch_was_read(trained):
    """Every epoch of modality-dropout training logs, per subtask, the share of samples on which each modality's
    branch was read (the primary, or a fallback in its place), in the training log and nnU-Net's logger. Fails if
    the log is missing or the shares of an epoch do not add up (how often fallbacks act: a unit test)."""
    _, models = trained
    fold = models[CIML_TRAINER] / "fold_0"
    text = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert text.count("branches read (share of samples): ") == 2  # 2 epochs
    logging = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    shares = logging["ciml_reading"]
    assert len(shares) == 2 and set(shares[0]) == {"FLAIR", "T1ce"}
    for epoch in shares:
        for subtask, row in epoch.items():
            assert sum(row.values()) == pytest.approx(1.0, abs=1e-3) and set(row) <= {"T1ce", "T2", "FLAIR",
                                                                                     "nothing"}

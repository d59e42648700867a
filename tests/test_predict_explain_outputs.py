"""``predict`` and ``explain`` on untrained models built in seconds (``helpers.untrained_models``): their output folder
policy (an earlier run replaced as a whole, files of yours never deleted or written over, nothing torn left by a
full disk), what they say about missing modalities, and no progress bar where stderr is not a terminal. The
results of trained models: ``test_predict_missing.py`` and ``test_explain.py``."""
import errno
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_ciml import cli
from helpers import tree_digest, untrained_models

CIML = "nnUNetTrainerCIML_CPUtest"
DROPOUT = "nnUNetTrainerCIML_modalityDropout_CPUtest"
CASES = ("case_004", "case_005")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(raw dataset folder, {trainer: model folder}). Tests must not write into them."""
    return untrained_models(tmp_path_factory.mktemp("untrained"), [CIML, DROPOUT])


def inputs(raw: Path, folder: Path, cases=CASES, without=()) -> Path:
    """``folder`` with the channel files of ``cases`` (the dataset's test cases), less the files in ``without``."""
    folder.mkdir()
    for case in cases:
        for path in (raw / "imagesTs").glob(f"{case}_*.nii.gz"):
            if path.name not in without:
                shutil.copy(path, folder / path.name)
    return folder


def run(capsys, command: str, model: Path, inp: Path, out: Path, *extra: str):
    """``nnunetv2_ciml COMMAND`` with fold 0 on the CPU: (exit status, stdout, stderr)."""
    code = cli.main([command, "-m", str(model), "-f", "0", "-i", str(inp), "-o", str(out), "-device", "cpu",
                     "--disable_tta", *extra])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_predict_overwrite_replaces_its_own_predictions_and_nothing_else(models, tmp_path, capsys):
    """Run 1 predicts both cases; the user then puts two label files into the folder. Run 2 (--overwrite, case_004
    only) deletes run 1's case_005.nii.gz, which modalities.json recorded, and keeps the label files byte for byte.
    Into a folder holding a file of the user's named like a prediction, --overwrite stops before predicting and
    changes nothing. Fails if --overwrite deletes every image file in the folder, or writes over the user's."""
    raw, model = models[0], models[1][CIML]
    inp, out = inputs(raw, tmp_path / "in"), tmp_path / "out"
    assert run(capsys, "predict", model, inp, out)[0] == 0
    labels = {name: raw / "labelsTr" / f"case_00{i}.nii.gz" for i, name in enumerate(("mylabel_1.nii.gz",
                                                                                      "mylabel_2.nii.gz"))}
    for name, source in labels.items():
        shutil.copy(source, out / name)
    code, _, err = run(capsys, "predict", model, inp, out, "--cases", "case_004", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["case_004.nii.gz", "modalities.json", *labels]
    assert all((out / name).read_bytes() == source.read_bytes() for name, source in labels.items())
    record = json.loads((out / "modalities.json").read_text())
    assert set(record["cases"]) == {"case_004"} and record["files"] == ["case_004.nii.gz", "modalities.json"]

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    shutil.copy(labels["mylabel_1.nii.gz"], theirs / "case_004.nii.gz")
    before = tree_digest(theirs)
    code, out_text, err = run(capsys, "predict", model, inp, theirs, "--overwrite")
    assert code == 1 and "holds 'case_004.nii.gz', which no earlier run recorded as its own" in err
    assert tree_digest(theirs) == before and "case_004:" not in out_text  # refused before any case was predicted


def test_a_full_disk_during_predict_names_the_case_and_leaves_nothing_torn(models, tmp_path, capsys, monkeypatch):
    """Writing the first case's probabilities fails half way (a full disk). Before, a torn .npz stayed in
    OUT/.predict.partial and the error named no case. Now the run stops naming the case, no staging folder is
    left and the earlier predictions in the folder are untouched."""
    raw, model = models[0], models[1][CIML]
    inp, out = inputs(raw, tmp_path / "in"), tmp_path / "out"
    assert run(capsys, "predict", model, inp, out)[0] == 0
    before = tree_digest(out)

    def full_disk(file, **arrays):
        Path(file).write_bytes(b"PK\x03\x04" + bytes(64))  # the start of an archive, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    code, _, err = run(capsys, "predict", model, inp, out, "--overwrite", "--save_probabilities")
    assert code == 1 and "Traceback" not in err
    assert re.search(r"error: case 'case_004': its prediction cannot be written .*No space left on device", err), err
    assert f"the run stopped and '{out}' was left as it was" in err
    assert tree_digest(out) == before and not (out / ".predict.partial").exists()


def test_predict_says_once_when_a_model_was_not_trained_for_missing_modalities(models, tmp_path, capsys):
    """Both cases lack FLAIR. A model trained without modality dropout gets one warning that names the trainer to
    use; a model trained with it gets none. Fails if nothing is said, or if it is said per case."""
    raw, trained = models
    inp = inputs(raw, tmp_path / "in", without=[f"{c}_0002.nii.gz" for c in CASES])
    code, _, err = run(capsys, "predict", trained[CIML], inp, tmp_path / "out")
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "2 case(s) lack a modality file" in warnings[0]
    assert f"this model ({CIML}) was not trained with modality dropout" in warnings[0]
    assert "Train nnUNetTrainerCIML_modalityDropout" in warnings[0]
    code, _, err = run(capsys, "predict", trained[DROPOUT], inp, tmp_path / "out2")
    assert code == 0 and "warning" not in err


def test_explain_refuses_or_replaces_an_earlier_explain_as_a_whole(models, tmp_path, capsys):
    """Explain two cases into OUT, then one: without --overwrite the second run is refused and changes nothing; with
    it, the first run's case_005 folder is gone (explain.json lists one case), a file of the user's stays, and every
    other file is one explain.json lists. Fails if the first run's second case survives, or if the folder is
    written into without --overwrite."""
    raw, model = models[0], models[1][CIML]
    out = tmp_path / "out"
    assert run(capsys, "explain", model, inputs(raw, tmp_path / "in"), out)[0] == 0
    assert (out / "case_005" / "prediction.nii.gz").is_file()
    (out / "notes.txt").write_text("mine")
    before = tree_digest(out)
    one = inputs(raw, tmp_path / "one", cases=["case_004"])
    code, _, err = run(capsys, "explain", model, one, out)
    assert code == 1 and "is not empty" in err and "--overwrite" in err and tree_digest(out) == before

    assert run(capsys, "explain", model, one, out, "--overwrite")[0] == 0
    summary = json.loads((out / "explain.json").read_text())
    assert set(summary["cases"]) == {"case_004"} and not (out / "case_005").exists()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([*summary["files"], "notes.txt"]) and (out / "notes.txt").read_text() == "mine"


def test_explain_writes_no_map_for_a_missing_sender_and_its_means_add_up(models, tmp_path, capsys):
    """case_005 lacks FLAIR, which sends messages to subtask "T1ce". Before, explain wrote FLAIR_to_T1ce.nii.gz for
    it, left it out of the means (so they summed to more than 1) and printed "n/a (nothing predicted)" for a
    sender that was missing. Now it has no map, counts 0 in the case's means, which add up to 1 per subtask, and
    the line says where it was missing; missing in every case, the line says "missing"."""
    raw, model = models[0], models[1][CIML]
    out = tmp_path / "out"
    code, printed, _ = run(capsys, "explain", model, inputs(raw, tmp_path / "in", without=["case_005_0002.nii.gz"]),
                           out)
    assert code == 0
    summary = json.loads((out / "explain.json").read_text())
    assert (out / "case_004" / "FLAIR_to_T1ce.nii.gz").is_file()
    assert not (out / "case_005" / "FLAIR_to_T1ce.nii.gz").exists()
    assert "map" not in summary["cases"]["case_005"]["subtasks"]["T1ce"]["senders"]["FLAIR"]
    for subtask, shares in summary["mean_share"].items():
        assert sum(shares.values()) == pytest.approx(1.0), subtask
    assert re.search(r"T1ce: T2 0\.\d\d, FLAIR 0\.\d\d \(missing in 1 of 2 cases\)", printed), printed

    code, printed, _ = run(capsys, "explain", model, inputs(raw, tmp_path / "in2", cases=["case_005"],
                                                           without=["case_005_0002.nii.gz"]), tmp_path / "out2")
    assert code == 0 and re.search(r"T1ce: T2 1\.00, FLAIR missing\n", printed), printed


def test_explain_draws_no_progress_bar_where_stderr_is_not_a_terminal(models, tmp_path, capsys):
    """tqdm's bars (the Grad-CAM tiles, the cases) wrote carriage returns and escape sequences into logs; where
    stderr is not a terminal there are only plain progress lines."""
    raw, model = models[0], models[1][CIML]
    code, _, err = run(capsys, "explain", model, inputs(raw, tmp_path / "in"), tmp_path / "out")
    assert code == 0 and "\r" not in err and "\x1b" not in err and "Grad-CAM tiles" not in err

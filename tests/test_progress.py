"""Console progress: nnU-Net's logger -> epochs.jsonl -> one line per epoch; heartbeats; plain progress lines."""
import io
import sys

import pytest

from nnunetv2_ciml.demo.nnunet_steps import StepError, format_epoch, run_step
from nnunetv2_ciml.console_progress import Progress, format_duration
from nnunetv2_ciml.demo.epoch_log import EpochLineLogger, read_epoch_lines
from nnunetv2_ciml.training.progress_plot import plot_ciml_progress


def log_epoch(meta, epoch: int, start: float, dice: list) -> None:
    """The keys in the order nnU-Net's trainer logs them within one epoch (on_epoch_start ... on_epoch_end)."""
    meta.log("epoch_start_timestamps", start, epoch)
    meta.log("lrs", 0.01 - 0.001 * epoch, epoch)
    meta.log("train_losses", -0.1 * (epoch + 1), epoch)
    meta.log("val_losses", -0.2 * (epoch + 1), epoch)
    meta.log("mean_fg_dice", sum(dice) / len(dice), epoch)
    meta.log("dice_per_class_or_region", dice, epoch)
    meta.log("epoch_end_timestamps", start + 10.0, epoch)


def test_epoch_lines_come_from_nnunets_own_logger(tmp_path):
    """Wrong implementations this catches: writing a line before the epoch's end (half the values missing),
    mixing up per-label pseudo Dice (MetaLogger hands lists over as "key/class_1", ...), losing the EMA that
    MetaLogger derives itself, or starting epochs at 1."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    meta = MetaLogger(str(tmp_path), resume=False)
    path = tmp_path / "epochs.jsonl"
    meta.loggers.append(EpochLineLogger(str(path), num_epochs=2))
    log_epoch(meta, 0, 1000.0, [0.5, 0.7])
    lines, offset = read_epoch_lines(str(path))
    assert len(lines) == 1 and offset == path.stat().st_size
    log_epoch(meta, 1, 1010.0, [0.9, 0.3])
    more, _ = read_epoch_lines(str(path), offset)
    first, second = lines[0], more[0]
    assert first == {"epoch": 0, "num_epochs": 2, "start": 1000.0, "lr": 0.01, "train_loss": -0.1, "val_loss": -0.2,
                     "ema_pseudo_dice": pytest.approx(0.6), "pseudo_dice": [0.5, 0.7], "end": 1010.0}
    assert second["epoch"] == 1 and second["pseudo_dice"] == [0.9, 0.3]
    assert second["ema_pseudo_dice"] == pytest.approx(0.9 * 0.6 + 0.1 * 0.6)  # nnU-Net's EMA of mean_fg_dice
    # the console line: epoch i/N counted from 1, time left from the mean epoch time so far
    text = format_epoch(first, first_start=1000.0)
    assert text.startswith("epoch 1/2") and "loss -0.100" in text and "pseudo Dice 0.500 0.700" in text
    assert "about 10 s left" in text
    assert "left" not in format_epoch(second, first_start=1000.0)


def test_a_partly_written_line_waits_for_the_next_read(tmp_path):
    path = tmp_path / "epochs.jsonl"
    path.write_text('{"epoch": 0}\n{"epo')
    lines, offset = read_epoch_lines(str(path))
    assert lines == [{"epoch": 0}] and offset == len('{"epoch": 0}\n')
    with open(path, "a") as f:
        f.write('ch": 1}\n')
    assert read_epoch_lines(str(path), offset)[0] == [{"epoch": 1}]
    assert read_epoch_lines(str(tmp_path / "missing.jsonl")) == ([], 0)


TRAINING = """
import json, sys, time
for epoch in range(2):
    time.sleep(0.6)
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"epoch": epoch, "num_epochs": 2, "train_loss": -0.5, "val_loss": -0.6,
                            "pseudo_dice": [0.8], "start": 100.0 + epoch, "end": 101.0 + epoch}) + "\\n")
print("nnU-Net's own output")
time.sleep(0.8)  # "final validation": nothing new in the epoch file
"""


def test_run_step_prints_every_epoch_and_never_stays_silent(tmp_path):
    """Catches: progress read only at the end of the step, a missing heartbeat after the last epoch, the
    step's own output on the console instead of in its log."""
    console = io.StringIO()
    epochs, log = tmp_path / "epochs.jsonl", tmp_path / "logs" / "train.log"
    run_step([sys.executable, "-c", TRAINING, str(epochs)], {}, log, "train X", epoch_log=epochs, heartbeat=0.3,
             stream=console)
    lines = console.getvalue().splitlines()
    epoch_lines = [i for i, line in enumerate(lines) if "train X: epoch" in line]
    assert [lines[i].split()[3] for i in epoch_lines] == ["1/2", "2/2"]
    assert any("still running" in line or "setting up" in line for line in lines[:epoch_lines[0]])
    assert any("nnU-Net validates fold 0" in line for line in lines[epoch_lines[1]:])
    assert "nnU-Net's own output" in log.read_text() and "own output" not in console.getvalue()


def test_run_step_quiet_and_failing(tmp_path):
    console = io.StringIO()
    run_step([sys.executable, "-c", "import time; time.sleep(0.5)"], {}, tmp_path / "a.log", "quiet", heartbeat=0.1,
             show_progress=False, stream=console)
    assert console.getvalue() == ""
    with pytest.raises(StepError, match=r"(?s)broken failed \(exit code 3\).*b\.log.*went wrong"):
        run_step([sys.executable, "-c", "import sys; print('went wrong'); sys.exit(3)"], {}, tmp_path / "b.log",
                 "broken", stream=console)


def test_progress_lines_without_a_terminal():
    """Off a terminal: a line per ``interval`` and one at the end (never tqdm's carriage returns)."""
    out = io.StringIO()
    with Progress(4, "evaluate brats", unit="case", interval=0.0, stream=out, terminal=False) as bar:
        for _ in range(4):
            bar.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("evaluate brats: 1/4 cases, ") and "left" in lines[0]
    assert lines[-1].startswith("evaluate brats: 4/4 cases, ") and "left" not in lines[-1]
    quiet = io.StringIO()
    with Progress(4, "x", interval=0.0, stream=quiet, terminal=False, enabled=False) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""


def test_format_duration():
    assert [format_duration(s) for s in (0.04, 4.25, 42, 185, 3720)] == ["0.0 s", "4.2 s", "42 s", "3 min 05 s",
                                                                          "1 h 02 min"]


def test_ciml_progress_plot_is_skipped_without_messages(tmp_path):
    logging = {"ciml_beta": [0.0, 0.1], "ciml_message_kl": [[], []], "ciml_message_magnitude": [[], []]}
    assert not plot_ciml_progress(logging, [], str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()
    logging = {"ciml_beta": [0.0, 0.1], "ciml_message_kl": [[3.0, 0.0], [2.0, 1e-3]],
               "ciml_message_magnitude": [[0.1, 0.0], [0.2, 0.01]]}
    assert plot_ciml_progress(logging, ["B->circle", "C->circle"], str(tmp_path / "two.png"))
    assert (tmp_path / "two.png").stat().st_size > 10_000


def test_learning_curves_and_how_far_a_model_was_from_its_plateau(tmp_path):
    """epochs.jsonl -> per-epoch curves (pseudo Dice averaged over labels); the report says a model whose last 3
    epochs rose by more than the threshold over the 3 before is still rising, and one that did not is not. Fails if
    the curves take one label's Dice, or the gain compares single epochs (the noisy last one here dips)."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from nnunetv2_ciml.demo.epoch_log import learning_curves, recent_gain
    from nnunetv2_ciml.demo.report import _plateau_lines

    meta = MetaLogger(str(tmp_path), resume=False)
    meta.loggers.append(EpochLineLogger(str(tmp_path / "epochs.jsonl"), 8))
    rising = [0.80, 0.84, 0.88, 0.90, 0.92, 0.95, 0.96, 0.94]  # last epoch dips, the trend still rises
    for epoch, d in enumerate(rising):
        log_epoch(meta, epoch, 100.0 + epoch, [d - 0.02, d + 0.02])
    curves = learning_curves(str(tmp_path / "epochs.jsonl"))
    assert curves["pseudo_dice"] == pytest.approx(rising)
    assert curves["train_loss"] == pytest.approx([-0.1 * (e + 1) for e in range(8)])
    assert recent_gain(rising) == pytest.approx((0.95 + 0.96 + 0.94 - 0.88 - 0.90 - 0.92) / 3)
    assert recent_gain(rising[:5]) is None
    flat = [0.9, 0.95, 0.99, 0.991, 0.990, 0.992, 0.991, 0.991]
    lines = "\n".join(_plateau_lines({"CIML": {"curves": {"pseudo_dice": rising}},
                                      "nnUNet": {"curves": {"pseudo_dice": flat}}}))
    assert "- CIML: pseudo Dice 0.9400 at its last epoch" in lines and "**still rising**" in lines.split("- nnUNet")[0]
    assert "**no longer rising**" in lines.split("- nnUNet")[1]

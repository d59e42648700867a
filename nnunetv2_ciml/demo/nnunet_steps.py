"""nnU-Net's own planning and training, each in a subprocess: output to a log file, progress on the console.

- Planning and preprocessing run ``nnUNetv2_plan_and_preprocess`` (its entry module, with this
  interpreter).
- Training runs nnU-Net's ``run_training`` (what ``nnUNetv2_train`` runs) through this module's
  ``train`` entry, which only chooses the number of torch threads first: ``nnUNetv2_train -device cpu``
  sets as many threads as the machine has cores, and with augmentation workers and other trainings beside
  them that oversubscribes the cores, which slows every step several times (docs/demo.md). On CUDA the
  threads are nnU-Net's (1).

Progress: the demo's trainers append one JSON line per epoch to ``fold_0/epochs.jsonl`` through
nnU-Net's own logger (:mod:`nnunetv2_ciml.demo.epoch_log`); :func:`run_step` follows that file and
prints one line per epoch (loss, pseudo Dice, time left), and a "still running" line whenever nothing
was printed for ``heartbeat`` seconds (nnU-Net's set-up, its final validation, planning).

A failing step raises :class:`StepError` with the command, the log file and the log's last lines.
"""
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, TextIO

from nnunetv2_ciml.errors import CIMLError

__all__ = ["StepError", "run_step", "plan_and_preprocess", "train", "format_epoch"]

HEARTBEAT_SECONDS = 25.0


class StepError(CIMLError, RuntimeError):
    """An nnU-Net step exited with an error."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def format_epoch(line: dict, first_start: float, dice_names: Sequence[str] = ()) -> str:
    """One console line for an ``epochs.jsonl`` record: epoch i/N, losses, pseudo Dice (nnU-Net's validation Dice
    per label or region, named by ``dice_names``), epoch time, time left."""
    from nnunetv2_ciml.console_progress import format_duration

    done, total = line["epoch"] + 1, line["num_epochs"]
    width = len(str(total))
    values = line.get("pseudo_dice") or []
    names = list(dice_names) if len(dice_names) == len(values) else [""] * len(values)
    dice = " ".join(f"{n + ' ' if n else ''}{d:.3f}" for n, d in zip(names, values) if d is not None)
    per_epoch = (line["end"] - first_start) / done
    text = (f"epoch {done:>{width}}/{total}  loss {line.get('train_loss', float('nan')):+.3f} "
            f"(val {line.get('val_loss', float('nan')):+.3f})  pseudo Dice {dice or 'n/a'}  "
            f"{line['end'] - line['start']:.1f} s")
    if done < total:
        text += f"  about {format_duration(per_epoch * (total - done))} left"
    return text


def run_step(command: Sequence[str], env: Dict[str, str], log_file: Path, description: str,
             epoch_log: Optional[Path] = None, show_progress: bool = True,
             heartbeat: float = HEARTBEAT_SECONDS, stream: Optional[TextIO] = None,
             on_epoch: Optional[Callable[[dict, float], str]] = None, dice_names: Sequence[str] = ()) -> None:
    """Run ``command`` with ``env``, its stdout and stderr going to ``log_file``.

    With ``epoch_log`` (a trainer's ``epochs.jsonl``) one line per finished epoch is printed, followed by what
    ``on_epoch(line, first epoch's start)`` returns (the demo: the whole run's time left); without, and between
    epochs, a line every ``heartbeat`` seconds says the step is still running.
    """
    from nnunetv2_ciml.console_progress import format_duration
    from nnunetv2_ciml.demo.epoch_log import read_epoch_lines

    stream = stream if stream is not None else sys.stdout
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = last_print = time.monotonic()
    offset, epochs_done, num_epochs, first_start = 0, 0, None, None

    def say(text: str) -> None:
        nonlocal last_print
        if show_progress:
            print(f"    {description}: {text}", file=stream, flush=True)
        last_print = time.monotonic()

    with open(log_file, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        # unbuffered: the log file grows as the step runs (users may follow it with tail -f)
        process = subprocess.Popen(list(command), env=dict(env, PYTHONUNBUFFERED="1"), stdout=log,
                                   stderr=subprocess.STDOUT)
        while True:
            code = process.poll()
            if epoch_log is not None:
                lines, offset = read_epoch_lines(str(epoch_log), offset)
                for line in lines:
                    first_start = line["start"] if first_start is None else first_start
                    epochs_done, num_epochs = line["epoch"] + 1, line["num_epochs"]
                    say(format_epoch(line, first_start, dice_names) + (on_epoch(line, first_start) if on_epoch else ""))
            if code is not None:
                break
            if time.monotonic() - last_print >= heartbeat:
                if epoch_log is None:
                    phase = "still running"
                elif epochs_done == 0:
                    phase = "nnU-Net is setting up and training epoch 1"
                elif epochs_done == num_epochs:
                    phase = "training done; nnU-Net validates fold 0"
                else:
                    phase = f"epoch {epochs_done + 1}/{num_epochs} running"
                say(f"{phase} ({format_duration(time.monotonic() - start)} so far; log: {log_file})")
            time.sleep(0.5)
    if code != 0:
        raise StepError(f"{description} failed (exit code {code}): {' '.join(command)}\n"
                        f"full log: {log_file}\n--- last lines ---\n{_tail(log_file)}")


def plan_and_preprocess(dataset_id: int, configuration: str, env: Dict[str, str], log_file: Path,
                        show_progress: bool = True, stream: Optional[TextIO] = None) -> None:
    """``nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION -np 1 -npfp 1``."""
    if int(env.get("nnUNet_n_proc_DA", "1")) < 1:  # nnU-Net's planner sets that many torch threads: 0 fails
        env = dict(env, nnUNet_n_proc_DA="1")
    command = [sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
               "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1"]
    run_step(command, env, log_file, "plan and preprocess", show_progress=show_progress, stream=stream)


def train(dataset_id: int, configuration: str, fold: str, trainer: str, plans: str, device: str, threads: int,
          env: Dict[str, str], log_file: Path, description: str, epoch_log: Optional[Path] = None,
          show_progress: bool = True, stream: Optional[TextIO] = None,
          on_epoch: Optional[Callable[[dict, float], str]] = None, dice_names: Sequence[str] = ()) -> None:
    """``nnUNetv2_train ID CONFIGURATION FOLD -tr TRAINER -p PLANS -device DEVICE`` with ``threads`` torch
    threads on CPU; ``epoch_log``: the trainer's ``epochs.jsonl``, followed for progress (:func:`run_step`)."""
    command = [sys.executable, "-m", "nnunetv2_ciml.demo.nnunet_steps", "train", str(dataset_id), configuration,
               str(fold), trainer, plans, device, str(threads)]
    run_step(command, env, log_file, description, epoch_log=epoch_log, show_progress=show_progress, stream=stream,
             on_epoch=on_epoch, dice_names=dice_names)


def _train_entry(argv: Sequence[str]) -> None:
    dataset_id, configuration, fold, trainer, plans, device, threads = argv
    import torch
    from nnunetv2.run.run_training import run_training

    if device == "cpu":
        torch.set_num_threads(int(threads))
    else:  # as nnUNetv2_train does on CUDA
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    run_training(dataset_id, configuration, fold, trainer, plans, device=torch.device(device))


if __name__ == "__main__":
    if len(sys.argv) != 9 or sys.argv[1] != "train":
        sys.exit("usage: python -m nnunetv2_ciml.demo.nnunet_steps train DATASET CONFIGURATION FOLD TRAINER PLANS "
                 "DEVICE THREADS")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    _train_entry(sys.argv[2:])

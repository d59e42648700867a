"""nnU-Net's own planning and training, each in a subprocess: output to a log file, a progress bar on the terminal.

- Planning and preprocessing run ``nnUNetv2_plan_and_preprocess`` (its entry module, with this
  interpreter).
- Training runs nnU-Net's ``run_training`` (what ``nnUNetv2_train`` runs) through this module's
  ``train`` entry, which only chooses the number of torch threads first: ``nnUNetv2_train -device cpu``
  sets as many threads as the machine has cores, and with augmentation workers beside them that
  oversubscribes the cores (on a shared 2-core machine we measured CIML training steps 7x slower in
  the median, 25x at worst). On CUDA the threads are nnU-Net's (1).

A failing step raises :class:`StepError` with the command, the log file and the log's last lines.
"""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

from nnunetv2_ciml.errors import CIMLError

__all__ = ["StepError", "run_step", "plan_and_preprocess", "train"]

EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")
PSEUDO_DICE_LINE = re.compile(r": Pseudo dice \[(.*)\]\s*$")


class StepError(CIMLError, RuntimeError):
    """An nnU-Net step exited with an error."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_step(command: Sequence[str], env: Dict[str, str], log_file: Path, description: str,
             total_epochs: Optional[int] = None, show_progress: bool = True) -> None:
    """Run ``command`` with ``env``, its stdout and stderr going to ``log_file``.

    With ``total_epochs`` a progress bar follows nnU-Net's ``Epoch N`` lines (and shows the last pseudo
    Dice); without, it shows the elapsed time. Bars appear only when stderr is a terminal.
    """
    from tqdm import tqdm

    log_file.parent.mkdir(parents=True, exist_ok=True)
    # disable=None: no bar when stderr is not a terminal (logs stay readable)
    bar = tqdm(total=total_epochs, desc=description, unit="epoch" if total_epochs else "it",
               disable=None if show_progress else True, leave=True, dynamic_ncols=True, mininterval=1.0,
               bar_format=None if total_epochs else "{desc}: {elapsed}")
    with open(log_file, "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if total_epochs:
                epoch = EPOCH_LINE.search(line)
                if epoch:
                    bar.n = int(epoch.group(1))
                    bar.refresh()
                dice = PSEUDO_DICE_LINE.search(line)
                if dice:
                    values = re.findall(r"[-+]?\d*\.\d+|\d+", re.sub(r"np\.float\d+", "", dice.group(1)))
                    bar.set_postfix_str("pseudo Dice " + ", ".join(f"{float(v):.3f}" for v in values))
            else:
                bar.update(0)
        code = process.wait()
    if code == 0 and total_epochs:
        bar.n = total_epochs
        bar.refresh()
    bar.close()
    if code != 0:
        raise StepError(f"{description} failed (exit code {code}): {' '.join(command)}\n"
                        f"full log: {log_file}\n--- last lines ---\n{_tail(log_file)}")


def plan_and_preprocess(dataset_id: int, configuration: str, env: Dict[str, str], log_file: Path,
                        show_progress: bool = True) -> None:
    """``nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION -np 1 -npfp 1``."""
    if int(env.get("nnUNet_n_proc_DA", "1")) < 1:  # nnU-Net's planner sets that many torch threads: 0 fails
        env = dict(env, nnUNet_n_proc_DA="1")
    command = [sys.executable, "-m", "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
               "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1"]
    run_step(command, env, log_file, "plan and preprocess", show_progress=show_progress)


def train(dataset_id: int, configuration: str, fold: str, trainer: str, plans: str, device: str, threads: int,
          epochs: int, env: Dict[str, str], log_file: Path, description: str, show_progress: bool = True) -> None:
    """``nnUNetv2_train ID CONFIGURATION FOLD -tr TRAINER -p PLANS -device DEVICE`` with ``threads`` torch
    threads on CPU."""
    command = [sys.executable, "-m", "nnunetv2_ciml.demo.nnunet_steps", "train", str(dataset_id), configuration,
               str(fold), trainer, plans, device, str(threads)]
    run_step(command, env, log_file, description, total_epochs=epochs, show_progress=show_progress)


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

"""Training that stops loudly instead of going on silently wrong, and checkpoints that are never torn.

:class:`GuardedTraining` is a mixin for any nnU-Net trainer (``class T(GuardedTraining, nnUNetTrainer)``):
every trainer the package ships has it, CIML or plain. Each hook it overrides calls nnU-Net's own and adds one
thing:

- ``train_step``: a non-finite loss stops training with :class:`TrainingStoppedError`, naming the epoch, the
  iteration and the non-finite term (the loss's ``last_terms`` if it records them, and whatever
  :meth:`GuardedTraining.monitored_values` adds: ``nnUNetTrainerCIML`` adds the mean message KL). Single
  process: at once. DDP: at the end of the epoch, where nnU-Net gathers the losses of all ranks anyway, so
  every rank stops together.
- ``save_checkpoint``: refuses weights holding NaN/Inf (``checkpoint_latest.pth``/``checkpoint_best.pth``
  keep the last good ones) and writes atomically: nnU-Net's ``torch.save`` goes to
  ``.<name>.partial`` in the same folder, which is fsynced and renamed onto ``<name>`` (then the folder
  is fsynced), so a crash or SIGKILL leaves the previous file or the new one, never half of one.
- ``load_checkpoint``: with ``--c`` (nnU-Net hands ``continue_training`` to the trainer in the plans and
  keeps it as ``logger.resume``), an unreadable checkpoint (torn, truncated, not a checkpoint, non-finite weights) is replaced
  by the newest readable one of ``checkpoint_final/latest/best.pth`` (highest epoch; on a tie final,
  latest, best), with a warning in the training log; none readable is a :class:`CheckpointError`.
  Without ``--c`` (``--val``, ``--val_best``) an unreadable checkpoint is an error: validating other
  weights than the ones asked for would be silently wrong. The chosen file is read twice (once to
  check it, once by nnU-Net's ``load_checkpoint``, which takes no dict in 2.8.1); resuming is rare.
"""
import math
import os
from numbers import Real
from os.path import basename, dirname, isfile, join
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.network import unwrap

__all__ = ["TrainingStoppedError", "CheckpointError", "GuardedTraining", "save_atomically", "nonfinite_tensors",
           "checkpoint_problem", "CHECKPOINT_NAMES"]

# nnU-Net's checkpoints in the order run_training's --c looks for them (also the tie-break order).
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


class TrainingStoppedError(CIMLError, RuntimeError):
    """Training produced non-finite numbers; nothing was saved from that point on."""


class CheckpointError(CIMLError, RuntimeError):
    """No usable checkpoint to continue from, or a checkpoint that cannot be read."""


def save_atomically(save: Callable[[str], None], filename: str) -> bool:
    """``save(path)`` to ``.<name>.partial`` next to ``filename``, fsync, rename onto ``filename``, fsync the folder.

    Returns False (and leaves ``filename`` alone) when ``save`` wrote nothing (e.g. nnU-Net with
    checkpointing disabled, or a rank other than 0).
    """
    folder = dirname(os.path.abspath(filename))
    partial = join(folder, f".{basename(filename)}.partial")
    try:
        save(partial)
        if not isfile(partial):
            return False
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, filename)
    finally:
        if isfile(partial):
            os.remove(partial)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def nonfinite_tensors(tensors: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors holding NaN or Inf (one device synchronisation for all)."""
    floats = [(k, t) for k, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point()]
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).cpu().tolist()
    return [k for (k, _), ok in zip(floats, finite) if not ok]


def checkpoint_problem(filename: str) -> Tuple[Optional[str], Optional[int]]:
    """``(None, epoch)`` for a readable nnU-Net checkpoint with finite weights, else ``(reason, None)``."""
    try:
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
    except Exception as e:  # torn zip ("PytorchStreamReader failed ..."), EOFError, UnpicklingError, ...
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        first = lines[0].split(". ")[0] if lines else "unreadable"  # torch appends advice sentences
        return f"{type(e).__name__}: {first}", None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint or "current_epoch" not in checkpoint:
        return "not an nnU-Net checkpoint (no network_weights/current_epoch)", None
    bad = nonfinite_tensors(checkpoint["network_weights"])
    if bad:
        return f"its weights hold NaN/Inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})", None
    return None, int(checkpoint["current_epoch"])


class GuardedTraining:
    """Mixin for ``nnUNetTrainer`` subclasses: non-finite training stops, checkpoints are atomic and
    finite, ``--c`` falls back to the newest readable checkpoint (see the module docstring)."""

    _iteration: int = 0
    _first_nonfinite: Optional[str] = None

    def on_train_epoch_start(self):
        self._iteration, self._first_nonfinite = 0, None
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        self._iteration += 1
        if self._first_nonfinite is None:
            problem = self._nonfinite_terms(result["loss"])
            if problem is not None:
                self._first_nonfinite = (f"non-finite training loss in epoch {self.current_epoch}, iteration "
                                         f"{self._iteration} of {self.num_iterations_per_epoch}: {problem}")
                if not self.is_ddp:
                    self._stop(self._first_nonfinite)
        return result

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        if self.is_ddp and not np.isfinite(self.logger.get_value("train_losses", step=-1)):
            self._stop(self._first_nonfinite or f"non-finite training loss in epoch {self.current_epoch} on "
                                                f"another rank (the mean over ranks is not finite)")

    def monitored_values(self) -> Dict[str, float]:
        """Values of the step just taken that must be finite besides the loss (name -> value); none here.
        Subclasses add their own (``nnUNetTrainerCIML``: the mean message KL)."""
        return {}

    def _nonfinite_terms(self, loss) -> Optional[str]:
        """None if the step's loss and :meth:`monitored_values` are finite, else which terms are not."""
        monitored = self.monitored_values()
        if np.all(np.isfinite(loss)) and all(math.isfinite(v) for v in monitored.values()):
            return None
        terms = {name: float(value) for name, value in getattr(self.loss, "last_terms", {}).items()}
        for name, value in monitored.items():
            terms.setdefault(name, value)
        bad = [n for n, v in terms.items() if not math.isfinite(v)]
        listing = ", ".join(f"{n} = {v:.6g}" for n, v in terms.items())
        what = f"{' and '.join(bad)} not finite" if bad else "loss not finite"
        return f"{what} (loss {float(np.mean(loss)):.6g}{'; ' + listing if listing else ''})"

    def _stop(self, what: str) -> None:
        message = (f"training stopped: {what}. No checkpoint was written from this point on: the checkpoints in "
                   f"{self.output_folder} hold the last finite weights. Likely causes: a KL weight (beta) or learning "
                   f"rate too high, or NaN/Inf in the preprocessed data.")
        self.print_to_log_file(message, also_print_to_console=True)
        for loader in (self.dataloader_train, self.dataloader_val):  # stop augmentation workers, as on_train_end does
            if hasattr(loader, "_finish"):
                loader._finish()
        raise TrainingStoppedError(message)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank == 0 and not self.disable_checkpointing:
            bad = nonfinite_tensors(unwrap(self.network).state_dict())
            if bad:
                self._stop(f"the network weights hold NaN/Inf ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) "
                           f"at the end of epoch {self.current_epoch}; {basename(filename)} was not written")
        save_atomically(super().save_checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str):
            filename_or_checkpoint = self._readable_checkpoint(filename_or_checkpoint)
        super().load_checkpoint(filename_or_checkpoint)

    def _readable_checkpoint(self, filename: str) -> str:
        problem, _ = checkpoint_problem(filename)
        if problem is None:
            return filename
        if not getattr(self.logger, "resume", False):  # nnU-Net's MetaLogger keeps the --c flag
            raise CheckpointError(f"checkpoint {filename!r} cannot be used: {problem}")
        folder = dirname(os.path.abspath(filename))
        usable, unusable = [], [f"{basename(filename)} ({problem})"]
        for rank, name in enumerate(CHECKPOINT_NAMES):
            path = join(folder, name)
            if name == basename(filename) or not isfile(path):
                continue
            other, epoch = checkpoint_problem(path)
            if other is None:
                usable.append((epoch, -rank, path))
            else:
                unusable.append(f"{name} ({other})")
        if not usable:
            raise CheckpointError(f"cannot continue the training in {folder}: no readable checkpoint: "
                                  f"{'; '.join(unusable)}. Remove these files to start the training again")
        epoch, _, chosen = max(usable)
        self.print_to_log_file(f"WARNING: {basename(filename)} cannot be read ({problem}); continuing from "
                               f"{basename(chosen)} (epoch {epoch}), the newest readable checkpoint",
                               also_print_to_console=True)
        return chosen

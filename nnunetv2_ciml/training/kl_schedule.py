"""The KL weight beta over training: CIML's schedules, evaluated per training iteration.

A :class:`KLSchedule` gives beta at every training iteration as a fraction of the trainer's ``kl_weight``;
``nnUNetTrainerCIML.kl_schedule`` names the one it trains with. Why the default is :data:`CONSTANT` (beta at
its full value from the first iteration) and what the warm-ups did to training: docs/design.md; the study that
measured them: ``benchmarks/kl_schedule_study.py``.
"""
import math
from dataclasses import dataclass

__all__ = ["KLSchedule", "CONSTANT", "EPOCH_WARMUP", "ITERATION_WARMUP", "FLOOR_WARMUP"]


@dataclass(frozen=True)
class KLSchedule:
    """beta as a fraction of ``kl_weight``: linear from ``start`` to 1 over the first ``warmup_fraction`` of all
    training iterations, then 1.

    ``per_epoch``: the ramp moves once per epoch (beta is constant within an epoch and reaches 1 at epoch
    ``max(1, warmup_fraction * num_epochs)``); otherwise it moves every iteration. ``warmup_fraction == 0`` is
    a constant beta."""

    warmup_fraction: float = 0.0
    start: float = 0.0
    per_epoch: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.warmup_fraction) and 0 <= self.warmup_fraction <= 1):
            raise ValueError(f"warmup_fraction = {self.warmup_fraction!r}: must lie in [0, 1]")
        if not (math.isfinite(self.start) and 0 <= self.start <= 1):
            raise ValueError(f"start = {self.start!r}: must lie in [0, 1] (a fraction of kl_weight)")

    def describe(self) -> str:
        """In words, for logs and reports ("constant", "linear warm-up from 0 over the first 10 % of the
        iterations", ...)."""
        if self.warmup_fraction == 0:
            return "constant"
        return (f"linear warm-up from {self.start:g} x its final value over the first "
                f"{100 * self.warmup_fraction:g} % of the {'epochs, stepped once per epoch' if self.per_epoch else 'iterations'}")

    def factor(self, iteration: int, iterations_per_epoch: int, num_epochs: int) -> float:
        """beta / kl_weight at training iteration ``iteration`` (0-based, counted over all epochs)."""
        if self.warmup_fraction == 0:
            return 1.0
        if self.per_epoch:
            progress = (iteration // iterations_per_epoch) / max(1.0, self.warmup_fraction * num_epochs)
        else:
            progress = iteration / max(1.0, self.warmup_fraction * num_epochs * iterations_per_epoch)
        return self.start + (1.0 - self.start) * min(1.0, progress)


CONSTANT = KLSchedule()
"""beta = ``kl_weight`` from the first iteration: the messages start at exactly zero and the KL's gradient stops at
the message modules, so there is nothing for a warm-up to protect, while an unweighted KL lets the posteriors drift
far from the prior for a later beta to squeeze at once (docs/design.md)."""

EPOCH_WARMUP = KLSchedule(warmup_fraction=0.1, per_epoch=True)
"""beta 0 in epoch 0, then rising once per epoch to ``kl_weight`` at 10 % of the epochs (the first version's)."""

ITERATION_WARMUP = KLSchedule(warmup_fraction=0.1)
"""beta rising every iteration from 0 to ``kl_weight`` over the first 10 % of the iterations."""

FLOOR_WARMUP = KLSchedule(warmup_fraction=0.1, start=0.1, per_epoch=True)
""":data:`EPOCH_WARMUP` starting at a tenth of ``kl_weight`` instead of 0."""

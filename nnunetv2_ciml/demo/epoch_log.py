"""``epochs.jsonl``: one JSON line per finished epoch, written through nnU-Net's own logger.

nnU-Net's ``MetaLogger`` forwards every value a trainer logs to the loggers in its ``loggers`` list
(that is how its Weights & Biases logger works). :class:`EpochLineLogger` is one more such logger: it
collects an epoch's values and, when nnU-Net logs the epoch's end, appends them as one line to a file
in the fold folder, so that another process can follow training without parsing console text::

    {"epoch": 3, "num_epochs": 30, "train_loss": -0.61, "val_loss": -0.66, "pseudo_dice": [0.91, 0.88],
     "ema_pseudo_dice": 0.87, "lr": 0.0091, "start": 1764664212.3, "end": 1764664224.9}

``epoch`` is 0-based (nnU-Net's ``current_epoch``); ``start``/``end`` are ``time.time()`` seconds.
"""
import json
import os
from typing import Any, Dict, Optional

__all__ = ["EpochLineLogger", "EPOCH_LOG_NAME", "read_epoch_lines", "learning_curves", "recent_gain"]

EPOCH_LOG_NAME = "epochs.jsonl"

# nnU-Net's logger key -> our field (lists arrive per class as "key/class_1", "key/class_2", ...)
_FIELDS = {"train_losses": "train_loss", "val_losses": "val_loss", "ema_fg_dice": "ema_pseudo_dice",
           "lrs": "lr", "epoch_start_timestamps": "start", "epoch_end_timestamps": "end"}
_LISTS = {"dice_per_class_or_region": "pseudo_dice"}


class EpochLineLogger:
    """A logger for nnU-Net's ``MetaLogger.loggers``: appends one JSON line per epoch to ``path``."""

    def __init__(self, path: str, num_epochs: int):
        self.path = os.fspath(path)
        self.num_epochs = num_epochs
        self._epoch: Optional[int] = None
        self._values: Dict[str, Any] = {}

    def update_config(self, config: dict) -> None:
        pass

    def log_summary(self, key: str, value: Any) -> None:
        pass

    def log(self, key: str, value: Any, step: int) -> None:
        if step != self._epoch:
            self._epoch, self._values = step, {}
        base, _, index = key.partition("/class_")
        if base in _LISTS and index:
            values = self._values.setdefault(_LISTS[base], [])
            values.extend([None] * (int(index) - len(values)))
            values[int(index) - 1] = _number(value)
        elif key in _FIELDS:
            self._values[_FIELDS[key]] = _number(value)
        if key == "epoch_end_timestamps":  # nnU-Net logs it first thing in on_epoch_end: the epoch is complete
            line = {"epoch": step, "num_epochs": self.num_epochs, **self._values}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_epoch_lines(path: str, offset: int = 0) -> tuple:
    """The complete lines of ``path`` from byte ``offset`` on: ``(list of dicts, new offset)``; a line still
    being written stays for the next call."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    complete = data[:data.rfind(b"\n") + 1]
    lines = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
    return lines, offset + len(complete)


def learning_curves(path: str) -> Dict[str, list]:
    """Per epoch of a finished ``epochs.jsonl``: ``train_loss``, ``val_loss`` and ``pseudo_dice`` (nnU-Net's
    validation Dice, mean over its labels or regions)."""
    lines, _ = read_epoch_lines(path)
    return {"train_loss": [line["train_loss"] for line in lines], "val_loss": [line["val_loss"] for line in lines],
            "pseudo_dice": [sum(line["pseudo_dice"]) / len(line["pseudo_dice"]) for line in lines]}


def recent_gain(values: list, window: int = 3) -> Optional[float]:
    """How much a curve still rose at its end: the mean of its last ``window`` values minus the mean of the
    ``window`` before them (None if it is shorter than ``2 * window``)."""
    if len(values) < 2 * window:
        return None
    return sum(values[-window:]) / window - sum(values[-2 * window:-window]) / window

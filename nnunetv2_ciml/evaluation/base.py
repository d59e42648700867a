"""Pieces shared by the evaluation modes: the error type, the mode record, Dice and summary statistics.

Summary statistics are taken over cases with NaN-aware numpy functions (``nanmean``,
``nanstd`` with ``ddof=0``, ``nanmedian``). The BraTS, HECKTOR and nnU-Net modes never produce NaN
(their empty-case rules give numbers); the autoPET mode does, by design of the official code,
and its means are then over the cases where the metric is defined. A statistic whose values are
all NaN is NaN. ``summary.json`` writes NaN as ``NaN``, like nnU-Net's own ``summary.json``.
"""
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from nnunetv2_ciml.errors import CIMLError

__all__ = ["EvaluationError", "EvaluationMode", "dice", "case_statistics"]


class EvaluationError(CIMLError, ValueError):
    """Bad input for an evaluation: the message names the case, the file and what is wrong."""


@dataclass(frozen=True)
class EvaluationMode:
    """What the folder runner needs to know about one benchmark's conventions.

    ``case_metrics(ref, pred, spacing) -> dict`` gets integer label arrays on the reference grid
    (SimpleITK array order) and the spacing in mm in that order; ``summarize(per_case) -> dict``
    turns ``{case: case_metrics(...)}`` into the summary (without the ``per_case`` entry, which the
    runner adds). ``valid_labels`` are the values allowed in references (and predictions, unless
    ``valid_prediction_labels`` is given). A reference case without prediction file is scored by
    ``missing_case_metrics(ref, spacing) -> dict`` when given (a benchmark with its own rule for
    missing cases), else as an empty prediction; ``missing_case_rule`` says which, for the runner's
    warning. Callables must be picklable (module-level functions or ``functools.partial``).
    """
    name: str
    file_ending: str
    valid_labels: Tuple[int, ...]
    label_convention: str
    resample_prediction: bool
    case_metrics: Callable[[np.ndarray, np.ndarray, Tuple[float, ...]], dict]
    summarize: Callable[[Dict[str, dict]], dict]
    format_table: Callable[[dict], str]
    valid_prediction_labels: Optional[Tuple[int, ...]] = None  # None: same as valid_labels
    missing_case_metrics: Optional[Callable[[np.ndarray, Tuple[float, ...]], dict]] = None  # None: empty prediction
    missing_case_rule: str = "scored as empty"


def dice(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|) of two boolean masks; NaN if both are empty (callers decide the rule)."""
    total = np.count_nonzero(mask_a) + np.count_nonzero(mask_b)
    if total == 0:
        return float("nan")
    return float(2.0 * np.count_nonzero(mask_a & mask_b) / total)


def _stat(fn: Callable, values: list) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, which is what we want
        return float(fn(np.asarray(values, dtype=float))) if values else float("nan")


def case_statistics(per_case: Dict[str, dict], metrics: Iterable[str], fn: Callable = np.nanmean,
                    group_keys: Optional[Iterable[str]] = None) -> dict:
    """``fn`` over cases of each metric, per group: ``{group: {metric: value}}`` (or flat without groups).

    Args:
        per_case: ``{case: {group: {metric: value}}}`` (``{case: {metric: value}}`` if ``group_keys`` is None).
        metrics: metric names to aggregate, e.g. ``("Dice", "HD95")``.
        fn: a NaN-aware numpy reduction, e.g. ``np.nanmean``.
        group_keys: groups to aggregate (regions, classes, labels), in output order.
    """
    metrics = tuple(metrics)
    cases = list(per_case.values())
    if group_keys is None:
        return {m: _stat(fn, [c[m] for c in cases]) for m in metrics}
    return {g: {m: _stat(fn, [c[g][m] for c in cases]) for m in metrics} for g in group_keys}


def format_grouped_table(title: str, groups: Dict[str, dict], digits: int = 4) -> str:
    """A plain-text table: one row per group, one column per metric (``{group: {metric: value}}``)."""
    columns = []
    for values in groups.values():
        columns += [m for m in values if m not in columns]
    width = max([len(str(g)) for g in groups] + [len(title)]) + 2
    lines = [title.ljust(width) + "".join(c.rjust(14) for c in columns)]
    for g, values in groups.items():
        cells = []
        for c in columns:
            v = values.get(c, "")
            cells.append((f"{v:.{digits}f}" if isinstance(v, float) else str(v)).rjust(14))
        lines.append(str(g).ljust(width) + "".join(cells))
    return "\n".join(lines)

"""Evaluation of any nnU-Net dataset: Dice and HD95 per label or region named in ``dataset.json``.

- What is scored comes from ``dataset.json`` (validated by nnU-Net's ``LabelManager``): every
  entry of ``labels`` except ``background`` and ``ignore``, in file order, under its name. For
  label (softmax) datasets an entry is one label value; for region datasets (BraTS-style lists of
  labels) it is the union of its labels, as nnU-Net evaluates regions. ``file_ending`` is taken
  from ``dataset.json`` (``.nii.gz``, ``.mha``, ``.png``, ... anything SimpleITK reads).
- Valid values in a reference are nnU-Net's label values plus the ignore label; in a
  prediction, the label values. Anything else is an error.
- Masks, counts and the ignore label are nnU-Net's own (``region_or_label_to_mask``,
  ``compute_tp_fp_fn_tn`` of ``nnunetv2.evaluation.evaluate_predictions``): voxels where the reference
  has the ignore label are left out of Dice and HD95. Files are read by the runner's checked reader, not
  the dataset's nnU-Net reader-writer: the checks (truncated files, NaN, geometry against the reference)
  need the SimpleITK image, which nnU-Net's readers do not return.
- Empty cases follow the BraTS rules and are made explicit: each per-case entry carries
  ``n_ref`` and ``n_pred`` (voxel counts) and ``empty`` = ``"none"``, ``"both"`` (Dice 1, HD95 0),
  ``"reference"`` or ``"prediction"`` (Dice 0, HD95 373.12866 mm); the summary lists the cases of
  each kind per label under ``empty_cases``. This differs from nnU-Net's own ``summary.json``,
  where a label absent from both gives Dice NaN and is left out of the mean. The 373.12866 mm
  penalty is BraTS's (the SRI24 box diagonal) whatever the image size, so that a missed or
  hallucinated structure weighs the same as in BraTS; read HD95 means together with
  ``empty_cases``.
- HD95 is the pooled definition of :mod:`nnunetv2_ciml.evaluation.surface_distance`, in mm.
  2D datasets stored as ``(1, Y, X)`` volumes (one slice) get in-plane contours and distances.
- Summary: ``mean``/``std`` (``ddof=0``)/``median`` per label or region over cases, and
  ``foreground_mean``: the mean over labels or regions of ``mean``.
"""
import json
from functools import partial
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np

from nnunetv2_ciml.evaluation.base import (EvaluationError, EvaluationMode, case_statistics,
                                           format_grouped_table)
from nnunetv2_ciml.evaluation.brats import BRATS_HD95_PENALTY_MM, dice_and_hd95

__all__ = ["labels_or_regions_from_dataset_json", "nnunet_case_metrics", "make_nnunet_mode"]

LabelOrRegion = Union[int, Tuple[int, ...]]


def _load_dataset_json(dataset_json: Union[str, Path, dict]) -> dict:
    if isinstance(dataset_json, dict):
        return dataset_json
    path = Path(dataset_json)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EvaluationError(f"cannot read dataset.json {path}: {e}") from None


def labels_or_regions_from_dataset_json(dataset_json: Union[str, Path, dict]
                                        ) -> Tuple[Dict[str, LabelOrRegion], Tuple[int, ...], Union[int, None]]:
    """What to score, per name: ``({name: label or region}, valid label values, ignore label or None)``: the
    network's foreground heads (:func:`nnunetv2_ciml.decomposition.named_heads`)."""
    from nnunetv2_ciml.decomposition import named_heads

    dj = _load_dataset_json(dataset_json)
    if not isinstance(dj.get("labels"), dict):
        raise EvaluationError("dataset.json has no 'labels' dictionary")
    manager, heads = named_heads(dj["labels"], dj.get("regions_class_order"), EvaluationError)
    scored = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    targets = {name: target for name, target in heads.items() if target in scored}
    if not targets:
        raise EvaluationError("dataset.json 'labels' names no foreground label or region")
    valid = tuple(int(v) for v in manager.all_labels)
    return targets, valid, manager.ignore_label


def nnunet_case_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                        targets: Dict[str, LabelOrRegion], ignore_label: Union[int, None] = None) -> Dict[str, dict]:
    """``{name: {"Dice", "HD95", "n_ref", "n_pred", "empty"}}`` of one case.

    Args:
        ref, pred: label maps of the same shape, e.g. ``(Z, Y, X)`` or ``(1, Y, X)`` for 2D data.
        spacing: voxel size in mm per array axis.
        targets: ``{name: label or tuple of labels}``, e.g. from :func:`labels_or_regions_from_dataset_json`.
        ignore_label: reference voxels with this value are left out of both masks.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

    ignore = None if ignore_label is None else ref == ignore_label
    result = {}
    for name, target in targets.items():
        r, p = region_or_label_to_mask(ref, target), region_or_label_to_mask(pred, target)
        tp, fp, fn, _ = compute_tp_fp_fn_tn(r, p, ignore)
        n_ref, n_pred = int(tp + fn), int(tp + fp)
        empty = {(False, False): "none", (True, True): "both", (True, False): "reference",
                 (False, True): "prediction"}[(n_ref == 0, n_pred == 0)]
        if ignore is not None:
            r, p = r & ~ignore, p & ~ignore
        result[name] = {**dice_and_hd95(r, p, spacing), "n_ref": n_ref, "n_pred": n_pred, "empty": empty}
    return result


def summarize_nnunet(per_case: Dict[str, dict], names: Tuple[str, ...]) -> dict:
    summary = {stat: case_statistics(per_case, ("Dice", "HD95"), fn, names)
               for stat, fn in (("mean", np.nanmean), ("std", np.nanstd), ("median", np.nanmedian))}
    summary["foreground_mean"] = {m: float(np.mean([summary["mean"][n][m] for n in names])) for m in ("Dice", "HD95")}
    summary["empty_cases"] = {n: {kind: [c for c, v in per_case.items() if v[n]["empty"] == kind]
                                  for kind in ("both", "reference", "prediction")} for n in names}
    summary["empty_case_rules"] = {"both": "Dice 1, HD95 0",
                                   "reference": f"Dice 0, HD95 {BRATS_HD95_PENALTY_MM}",
                                   "prediction": f"Dice 0, HD95 {BRATS_HD95_PENALTY_MM}"}
    return summary


def format_nnunet_table(summary: dict) -> str:
    rows = {}
    for name, values in summary["mean"].items():
        empties = summary["empty_cases"][name]
        rows[name] = {"Dice mean": values["Dice"], "HD95 mean": values["HD95"],
                      "both empty": len(empties["both"]),
                      "one empty": len(empties["reference"]) + len(empties["prediction"])}
    rows["foreground mean"] = {"Dice mean": summary["foreground_mean"]["Dice"],
                               "HD95 mean": summary["foreground_mean"]["HD95"]}
    return format_grouped_table("label/region", rows)


def make_nnunet_mode(dataset_json: Union[str, Path, dict, None] = None,
                     file_ending: Union[str, None] = None) -> EvaluationMode:
    """The ``nnunet`` mode for a ``dataset.json`` (path or dict); ``file_ending`` overrides its ``file_ending``."""
    if dataset_json is None:
        raise EvaluationError("the nnunet mode needs the dataset's dataset.json (-dj)")
    dj = _load_dataset_json(dataset_json)
    targets, valid, ignore_label = labels_or_regions_from_dataset_json(dj)
    if file_ending is None:
        file_ending = dj.get("file_ending")
        if not isinstance(file_ending, str) or not file_ending:
            raise EvaluationError("dataset.json has no 'file_ending' (e.g. \".nii.gz\")")
    ref_valid = valid + ((ignore_label,) if ignore_label is not None else ())
    return EvaluationMode(name="nnunet", file_ending=file_ending, valid_labels=ref_valid,
                          label_convention=f"dataset.json labels {dict(dj['labels'])}", resample_prediction=False,
                          case_metrics=partial(nnunet_case_metrics, targets=targets, ignore_label=ignore_label),
                          summarize=partial(summarize_nnunet, names=tuple(targets)),
                          format_table=format_nnunet_table, valid_prediction_labels=valid)

"""HECKTOR 2022 evaluation: aggregated Dice (DSCagg) per class over the whole set.

Follows the official notebook (voreille/hecktor, ``notebooks/evaluate_segmentation2022.ipynb``):

- Labels are 0 background, 1 GTVp, 2 GTVn; any other value is an error.
- A prediction whose grid (size, spacing, origin or direction) differs from the reference's is
  resampled onto the reference grid with nearest-neighbour interpolation (background outside
  the prediction's field of view), which crops or pads it into the CT frame. The official
  notebook additionally refuses a prediction whose *spacing* differs from the CT's; we resample
  it anyway so that any grid can be scored, but the runner prints a warning, because such a
  submission would be rejected by the challenge.
- Per class c and case i the intermediate values are ``TP_mm3`` (intersection volume),
  ``vol_ref_mm3`` and ``vol_pred_mm3``, in mm^3 with the reference spacing. Over the whole set:
  ``DSCagg_c = 2 * sum_i TP_i,c / sum_i (vol_ref_i,c + vol_pred_i,c)``, and the ranking value is
  ``mean_DSCagg = (DSCagg_GTVp + DSCagg_GTVn) / 2``. A case without nodes in reference and
  prediction adds nothing; one without nodes in the reference adds its false-positive volume to
  the denominator. DSCagg is NaN only if a class is absent from every reference and prediction.
- Per-case ``Dice`` and ``HD95`` are reported for inspection (HECKTOR 2022 ranked on DSCagg only),
  with the BraTS empty-case rules of :mod:`nnunetv2_ciml.evaluation.brats` (both empty: Dice 1,
  HD95 0; one empty: Dice 0, HD95 373.12866 mm) and the pooled HD95 definition of
  :mod:`nnunetv2_ciml.evaluation.surface_distance`; ``mean`` averages them over cases.
- A reference case without a prediction file is scored as an empty prediction.
"""
from typing import Dict, Iterable, Sequence

import numpy as np

from nnunetv2_ciml.evaluation.base import EvaluationMode, case_statistics, format_grouped_table
from nnunetv2_ciml.evaluation.brats import dice_and_hd95

__all__ = ["HECKTOR_CLASSES", "hecktor_case_metrics", "hecktor_aggregated_dice", "make_hecktor_mode"]

HECKTOR_CLASSES = {"GTVp": 1, "GTVn": 2}


def hecktor_case_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> Dict[str, dict]:
    """``{"GTVp"|"GTVn": {"Dice", "HD95", "TP_mm3", "vol_ref_mm3", "vol_pred_mm3"}}`` of one case.

    Args:
        ref, pred: label maps (0/1/2) on the same grid, e.g. ``(Z, Y, X)``.
        spacing: voxel size in mm per array axis.
    """
    voxel_mm3 = float(np.prod(spacing))
    result = {}
    for name, value in HECKTOR_CLASSES.items():
        r, p = ref == value, pred == value
        result[name] = {**dice_and_hd95(r, p, spacing),
                        "TP_mm3": np.count_nonzero(r & p) * voxel_mm3,
                        "vol_ref_mm3": np.count_nonzero(r) * voxel_mm3,
                        "vol_pred_mm3": np.count_nonzero(p) * voxel_mm3}
    return result


def hecktor_aggregated_dice(case_metrics: Iterable[Dict[str, dict]]) -> dict:
    """``{"GTVp": {"DSCagg"}, "GTVn": {"DSCagg"}, "mean_DSCagg"}`` from per-case :func:`hecktor_case_metrics`."""
    case_metrics = list(case_metrics)
    result = {}
    for name in HECKTOR_CLASSES:
        tp = sum(c[name]["TP_mm3"] for c in case_metrics)
        volumes = sum(c[name]["vol_ref_mm3"] + c[name]["vol_pred_mm3"] for c in case_metrics)
        result[name] = {"DSCagg": float(2.0 * tp / volumes) if volumes > 0 else float("nan")}
    result["mean_DSCagg"] = float(np.mean([result[name]["DSCagg"] for name in HECKTOR_CLASSES]))
    return result


def summarize_hecktor(per_case: Dict[str, dict]) -> dict:
    return {"aggregated": hecktor_aggregated_dice(per_case.values()),
            "mean": case_statistics(per_case, ("Dice", "HD95"), np.nanmean, HECKTOR_CLASSES)}


def format_hecktor_table(summary: dict) -> str:
    agg = summary["aggregated"]
    rows = {name: {"DSCagg": agg[name]["DSCagg"], "Dice mean": summary["mean"][name]["Dice"],
                   "HD95 mean": summary["mean"][name]["HD95"]} for name in HECKTOR_CLASSES}
    rows["ranking (mean)"] = {"DSCagg": agg["mean_DSCagg"]}
    return format_grouped_table("class", rows)


def make_hecktor_mode(file_ending: str = ".nii.gz") -> EvaluationMode:
    return EvaluationMode(name="hecktor", file_ending=file_ending, valid_labels=(0, 1, 2),
                          label_convention="HECKTOR (0 background, 1 GTVp, 2 GTVn)", resample_prediction=True,
                          case_metrics=hecktor_case_metrics, summarize=summarize_hecktor,
                          format_table=format_hecktor_table)

"""autoPET evaluation: foreground Dice, false-positive and false-negative volume (mL).

Follows the official autoPET III code (ClinicalDataScience/autoPETIII,
``evaluation-metrics/evaluation_metrics.py``; the autoPET 2022 and II scripts compute the same
three numbers):

- Labels are 0 (background) and 1 (lesion); any other value is an error.
- ``Dice`` = 2|P and G| / (|P| + |G|) over all lesions of the case (one binary mask).
- ``FPvol_ml``: total volume of the predicted connected components that do not overlap the
  reference at all. ``FNvol_ml``: total volume of the reference components that do not overlap
  the prediction at all. Components use 18-connectivity (faces and edges, not corners), like
  ``cc3d.connected_components(mask, connectivity=18)``; here ``scipy.ndimage.label`` with the
  rank-3, connectivity-2 structure, which is the same neighbourhood (tests compare with cc3d).
  In a 2D image that neighbourhood is the 8-neighbourhood.
- Volumes in mL = voxel count x product of the reference spacing (mm^3) / 1000, the same
  value as the official ``pixdim[1] * pixdim[2] * pixdim[3] / 1000``.

Empty cases, exactly as the autoPET III code:

=============  ===========  ======  ==========  ==========
reference      prediction   Dice    FPvol_ml    FNvol_ml
=============  ===========  ======  ==========  ==========
empty          empty        NaN     0           NaN
empty          non-empty    NaN     FP volume   NaN
non-empty      empty        0       0           FN volume
=============  ===========  ======  ==========  ==========

So a lesion-free case only scores false positives, as in the 2022 and 2024 rankings (autoPET II
also scored FN on such cases; its FN is 0 there anyway). The summary's ``mean`` uses ``nanmean``,
i.e. Dice and FNvol are averaged over the cases with lesions and FPvol over all cases;
``n_cases`` and ``n_cases_with_lesion`` say how many that is. A missing prediction is an empty one.
"""
from typing import Dict, Sequence

import numpy as np
from scipy.ndimage import generate_binary_structure, label

from nnunetv2_ciml.evaluation.base import EvaluationMode, case_statistics, dice, format_grouped_table

__all__ = ["autopet_case_metrics", "make_autopet_mode"]

METRICS = ("Dice", "FPvol_ml", "FNvol_ml")


def _volume_of_components_without_overlap(mask: np.ndarray, other: np.ndarray) -> int:
    """Voxel count of the 18-connected components of ``mask`` that share no voxel with ``other``."""
    components, n = label(mask, structure=generate_binary_structure(mask.ndim, min(2, mask.ndim)))
    if n == 0:
        return 0
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    touching = np.unique(components[mask & other])
    touching = touching[touching > 0]
    return int(sizes[1:].sum() - sizes[touching].sum())


def autopet_case_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """``{"Dice", "FPvol_ml", "FNvol_ml"}`` of one case (NaN conventions in the module docstring).

    Args:
        ref, pred: lesion masks (0/1) of the same shape, e.g. ``(Z, Y, X)``.
        spacing: voxel size in mm per array axis.
    """
    g, p = np.asarray(ref) > 0, np.asarray(pred) > 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    ref_empty = not g.any()
    return {
        "Dice": float("nan") if ref_empty else dice(g, p),
        "FPvol_ml": _volume_of_components_without_overlap(p, g) * voxel_ml,
        "FNvol_ml": float("nan") if ref_empty else _volume_of_components_without_overlap(g, p) * voxel_ml,
    }


def summarize_autopet(per_case: Dict[str, dict]) -> dict:
    return {"mean": case_statistics(per_case, METRICS, np.nanmean),
            "n_cases": len(per_case),
            "n_cases_with_lesion": int(sum(not np.isnan(c["FNvol_ml"]) for c in per_case.values()))}


def format_autopet_table(summary: dict) -> str:
    return format_grouped_table(f"mean over cases (n={summary['n_cases']}, "
                                f"with lesion {summary['n_cases_with_lesion']})", {"lesion": summary["mean"]})


def make_autopet_mode(file_ending: str = ".nii.gz") -> EvaluationMode:
    return EvaluationMode(name="autopet", file_ending=file_ending, valid_labels=(0, 1),
                          label_convention="autoPET (0 background, 1 lesion)", resample_prediction=False,
                          case_metrics=autopet_case_metrics, summarize=summarize_autopet,
                          format_table=format_autopet_table)

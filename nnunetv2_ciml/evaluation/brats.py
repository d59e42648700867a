"""BraTS evaluation: Dice and HD95 per region WT/TC/ET with the BraTS 2020 empty-case rules.

Regions, by label convention (``labels``):

==============  ==========================================  =============  ==========  ======
convention      labels                                      WT             TC          ET
==============  ==========================================  =============  ==========  ======
``brats2020``   1 NCR/NET, 2 edema, 4 ET (default)          {1, 2, 4}      {1, 4}      {4}
``brats2023``   1 NCR, 2 edema, 3 ET                        {1, 2, 3}      {1, 3}      {3}
``brats2024``   as brats2023, plus 4 RC (resection cavity)  {1, 2, 3}      {1, 3}      {3}
``nnunet``      1 edema, 2 NCR, 3 ET (nnU-Net Dataset137)   {1, 2, 3}      {2, 3}      {3}
==============  ==========================================  =============  ==========  ======

Any other label value in a reference or prediction is an error (a wrong convention would
silently give wrong regions). Without ``labels`` the evaluation reads the convention from the references
(:func:`detect_brats_labels`), or refuses where their values cannot tell: nnU-Net's labels without any ET share
their values with BraTS 2020's and 2023's, and only which of labels 1 and 2 is larger tells them apart.

Per case and region (nnU-Net's re-implementation of the BraTS/CaPTk scheme,
``compute_BraTS_dice``/``compute_BraTS_HD95`` in nnU-Net v1's ``Task082_BraTS_2020.py``):

============  ============  ======  ============
reference     prediction    Dice    HD95 (mm)
============  ============  ======  ============
empty         empty         1       0
empty         non-empty     0       373.12866
non-empty     empty         0       373.12866
non-empty     non-empty     Dice    HD95
============  ============  ======  ============

HD95 is the pooled 95th-percentile surface distance of
:mod:`nnunetv2_ciml.evaluation.surface_distance` in mm with the image spacing (BraTS data is 1 mm,
so this equals the challenge's voxel-unit value there). 373.12866 mm is the diagonal of the
240 x 240 x 155 mm SRI24 box, ``sqrt(240^2 + 240^2 + 155^2)``; the penalty is the same whatever the
image size (the newer ``brats-evaluation`` package uses 373). A reference case without a
prediction file is scored as an empty prediction and listed under ``missing`` by the runner.

``summary.json``: ``per_case``, and ``mean``/``std``/``median`` over all cases per region and metric
(``std`` is the population standard deviation, ``ddof=0``).

``lesionwise="gli"`` or ``"mets"`` scores the BraTS 2023+ leaderboards' lesion-wise metrics instead
(:mod:`nnunetv2_ciml.evaluation.brats_lesionwise`); the label convention then defaults to
``brats2024``, and a missing prediction follows the official package's rule (0 everywhere, HD95 373)
unless ``variant="corrected"``.
"""
from functools import partial
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_ciml.evaluation.base import (EvaluationError, EvaluationMode, case_statistics, dice,
                                           format_grouped_table)
from nnunetv2_ciml.evaluation.surface_distance import hd95

__all__ = ["BRATS_HD95_PENALTY_MM", "BRATS_LABEL_CONVENTIONS", "dice_and_hd95", "brats_region_metrics",
           "detect_brats_labels", "make_brats_mode"]

BRATS_HD95_PENALTY_MM = 373.12866
REGION_NAMES = ("WT", "TC", "ET")
# convention -> (valid label values, {region: labels})
BRATS_LABEL_CONVENTIONS: Dict[str, Tuple[Tuple[int, ...], Dict[str, Tuple[int, ...]]]] = {
    "brats2020": ((0, 1, 2, 4), {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}),
    "brats2023": ((0, 1, 2, 3), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}),
    "brats2024": ((0, 1, 2, 3, 4), {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}),
    "nnunet": ((0, 1, 2, 3), {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}),
}


def dice_and_hd95(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """``{"Dice", "HD95"}`` of two boolean masks with the BraTS empty-case rules (table above)."""
    ref_empty, pred_empty = not ref_mask.any(), not pred_mask.any()
    if ref_empty and pred_empty:
        return {"Dice": 1.0, "HD95": 0.0}
    if ref_empty or pred_empty:
        return {"Dice": 0.0, "HD95": BRATS_HD95_PENALTY_MM}
    return {"Dice": dice(ref_mask, pred_mask), "HD95": hd95(ref_mask, pred_mask, spacing)}


def detect_brats_labels(reference_files: Sequence[Path], lesionwise: bool, sample: int = 20) -> Tuple[str, str]:
    """The label convention of a folder of BraTS references, from the voxels per label of (an evenly spaced sample
    of at most ``sample``) files: ``(convention, why)``.

    Label 4 with label 3: BraTS 2024+ (4 = resection cavity). Label 4 without 3: BraTS 2020 (4 = ET) for the
    image-level metrics, where it is the default; refused for the ``lesionwise`` ones, whose default is BraTS 2024
    (4 = resection cavity, and no ET anywhere?). Label 1 larger than label 2: refused (nnU-Net's 1 = oedema, or BraTS
    2023's 1 = NETC?), since the oedema is the largest region in BraTS data. Otherwise BraTS 2023 (labels 1-3; the
    image-level metrics call labels 0-2 alone BraTS 2020, whose regions are the same for them). Raises
    :class:`EvaluationError` with the ``--labels`` choice to make where the values cannot tell."""
    from nnunetv2_ciml.evaluation.label_images import read_label_image

    files = list(reference_files)[::max(1, -(-len(reference_files) // sample))]
    counts = np.zeros(5, np.int64)
    for path in files:
        _, array = read_label_image(path, Path(path).name, "reference")
        counts += np.bincount(array.ravel().clip(0, 4).astype(np.intp), minlength=5)[:5]
    sampled = f"{len(files)} reference file(s) of {len(reference_files)}"
    if counts[4] and not counts[3]:
        if not lesionwise:
            return "brats2020", (f"label 4 without 3 in {sampled}: BraTS 2020 (4 = enhancing tumour); pass --labels "
                                 f"brats2024 if 4 is a resection cavity")
        raise EvaluationError(f"the references hold label 4 but no label 3 ({sampled}): BraTS 2020 labels "
                              f"(4 = enhancing tumour) or BraTS 2024 labels (4 = resection cavity, and no enhancing "
                              f"tumour anywhere)? Pass --labels brats2020 or --labels brats2024")
    if counts[4]:
        return "brats2024", f"labels 1-4 with 3 and 4 present in {sampled}: BraTS 2024+ (4 = resection cavity)"
    if counts[1] > counts[2]:
        raise EvaluationError(f"in the references label 1 holds more voxels than label 2 ({sampled}), as the oedema "
                              f"does in nnU-Net's BraTS labels (1 edema, 2 NCR, 3 ET), not in BraTS's (1 NCR/NETC, "
                              f"2 edema/SNFH). Pass --labels nnunet or --labels brats2023 (brats2020 for BraTS 2020 "
                              f"files)")
    if not counts[3] and not lesionwise:
        return "brats2020", (f"labels 1-2 with label 2 (the oedema) the largest in {sampled}: BraTS 2020 (the same "
                             f"regions as BraTS 2023 for these labels; pass --labels to choose another)")
    return "brats2023", (f"labels 1-3 with label 2 (SNFH, the oedema) the largest in {sampled}: BraTS 2023 "
                         f"(pass --labels to choose another)")


def _check_convention(labels: str) -> None:
    if labels not in BRATS_LABEL_CONVENTIONS:
        raise EvaluationError(f"unknown BraTS label convention {labels!r}; "
                              f"choose one of {sorted(BRATS_LABEL_CONVENTIONS)}")


def brats_region_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float],
                         labels: str = "brats2020") -> Dict[str, Dict[str, float]]:
    """``{"WT"|"TC"|"ET": {"Dice", "HD95"}}`` of one case.

    Args:
        ref, pred: label maps of the same shape, e.g. ``(Z, Y, X)``, in the ``labels`` convention.
        spacing: voxel size in mm per array axis.
        labels: ``"brats2020"``, ``"brats2023"`` or ``"nnunet"`` (see the module docstring).
    """
    _check_convention(labels)
    regions = BRATS_LABEL_CONVENTIONS[labels][1]
    return {name: dice_and_hd95(np.isin(ref, region), np.isin(pred, region), spacing)
            for name, region in regions.items()}


def summarize_brats(per_case: Dict[str, dict]) -> dict:
    return {stat: case_statistics(per_case, ("Dice", "HD95"), fn, REGION_NAMES)
            for stat, fn in (("mean", np.nanmean), ("std", np.nanstd), ("median", np.nanmedian))}


def format_brats_table(summary: dict) -> str:
    rows = {r: {f"{m} {stat}": summary[stat][r][m] for m in ("Dice", "HD95") for stat in ("mean", "std", "median")}
            for r in REGION_NAMES}
    return format_grouped_table("region", rows)


def make_brats_mode(labels: Optional[str] = None, file_ending: str = ".nii.gz", lesionwise: Optional[str] = None,
                    variant: str = "official") -> EvaluationMode:
    """The BraTS mode: image-level Dice/HD95 (default labels ``brats2020``) or, with ``lesionwise``
    (``"gli"``/``"mets"``), the official lesion-wise metrics (default labels ``brats2024``; ``variant``:
    ``"official"`` or ``"corrected"``, see :mod:`~nnunetv2_ciml.evaluation.brats_lesionwise`)."""
    if lesionwise is not None:
        return _make_lesionwise_mode(labels or "brats2024", file_ending, lesionwise, variant)
    if variant != "official":
        raise EvaluationError("variant applies to the lesion-wise BraTS metrics only (lesionwise='gli' or 'mets')")
    labels = labels or "brats2020"
    _check_convention(labels)
    return EvaluationMode(name="brats", file_ending=file_ending, valid_labels=BRATS_LABEL_CONVENTIONS[labels][0],
                          label_convention=f"BraTS {labels}", resample_prediction=False,
                          case_metrics=partial(brats_region_metrics, labels=labels),
                          summarize=summarize_brats, format_table=format_brats_table)


def _make_lesionwise_mode(labels: str, file_ending: str, config: str, variant: str) -> EvaluationMode:
    from nnunetv2_ciml.evaluation.brats_lesionwise import (LESIONWISE_CONFIGS, VARIANTS, brats_lesionwise_metrics,
                                                           format_lesionwise_table, missing_prediction_metrics,
                                                           summarize_lesionwise)
    _check_convention(labels)
    if config not in LESIONWISE_CONFIGS:
        raise EvaluationError(f"unknown lesion-wise configuration {config!r}; "
                              f"choose one of {sorted(LESIONWISE_CONFIGS)}")
    if variant not in VARIANTS:
        raise EvaluationError(f"unknown lesion-wise variant {variant!r}; choose one of {list(VARIANTS)}")
    return EvaluationMode(name="brats", file_ending=file_ending, valid_labels=BRATS_LABEL_CONVENTIONS[labels][0],
                          label_convention=f"BraTS {labels}, lesion-wise ({config} configuration, {variant} variant)",
                          resample_prediction=False,
                          case_metrics=partial(brats_lesionwise_metrics, labels=labels, config=config,
                                               variant=variant),
                          summarize=partial(summarize_lesionwise, config=config), format_table=format_lesionwise_table,
                          missing_case_metrics=partial(missing_prediction_metrics, labels=labels, config=config,
                                                       variant=variant),
                          missing_case_rule=("scored by the official rule (0 everywhere, HD95 373, lesion counts 0; "
                                             "--variant corrected scores them as empty)" if variant == "official"
                                             else "scored as empty"))

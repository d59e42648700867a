"""Lesion-wise BraTS metrics as the BraTS 2024+ leaderboards count them (``brats-evaluation`` 0.0.10).

The official package (``BraTS/BraTS_evaluation``) is a thin layer over panoptica (2.1.x): a YAML
configuration per challenge (``config_gli.yaml``, ``config_mets.yaml``, ...), ``brats-evaluate`` to
score each case and ``brats-parse-metrics {seg,mets}`` to turn panoptica's results into the
leaderboard table. This module re-implements that chain on numpy, ``cc3d`` and our k-d tree surface
distances, without depending on either package; ``tests/golden/`` holds values computed by the
official package and the tests check ours equal them to 1e-6.

Labels. The official package reads every file as BraTS 2023+ labels: 1 NETC, 2 SNFH (edema),
3 ET, 4 RC (resection cavity, post-treatment glioma 2024). Regions (``gli`` configuration):
NETC {1}, SNFH {2}, ET {3}, RC {4}, TC {1, 3}, WT {1, 2, 3}; the ``mets`` configuration scores ET,
RC, TC and WT. Quirk: a BraTS 2020 file (ET = 4) is taken silently there, its enhancing tumour scored
as resection cavity and its ET, TC and WT wrong. Here the label convention is explicit
(``labels``): ``brats2023``/``brats2024`` files are read as they are (the official reading),
``brats2020`` (4 -> 3) and ``nnunet`` (1 edema, 2 NCR, 3 ET) files are converted to the 2023 labels
first, which is what the official package expects its users to have done.

Per case and region (panoptica's pipeline with the BraTS configuration):

1. Lesions are the 26-connected components (``cc3d``) of the region mask, in reference and
   prediction separately.
2. Matching: one-to-one, maximising the summed Dice over reference/prediction lesion pairs
   (``scipy.optimize.linear_sum_assignment`` on cost ``1 - Dice``; pairs with Dice < 1e-6, i.e.
   no overlap, cost ``1 + 1e-6`` and are never matched). A matched pair is a true positive (TP),
   an unmatched predicted lesion a false positive (FP), an unmatched reference lesion a missed
   lesion (FN).
3. Per TP pair, on the two lesion masks alone (other lesions ignored): Dice, HD95 (pooled 95th
   percentile of both directed surface distances, face-connected surface, as
   :mod:`~nnunetv2_ciml.evaluation.surface_distance`) and NSD (normalized surface Dice at a
   tolerance of the smallest voxel spacing: the fraction of surface voxels of each mask within the
   tolerance of the other's surface, averaged over both masks).
4. Lesion-wise Dice, HD95 and NSD of the case are the means over TP pairs (``_std``: their
   population standard deviation, NaN without TP). FPs and FNs do not enter these means (``gli``);
   they count through detection: precision TP / (TP + FP), recall TP / (TP + FN) and
   F1 = TP / (TP + (FP + FN) / 2) (panoptica's "recognition quality").
5. Empty and no-overlap rules (zero TP): no lesion in reference nor prediction: Dice, HD95, NSD and
   F1 are NaN (left out of the means over cases, as pandas does in the official parser); otherwise
   Dice 0, NSD 0, F1 0 and HD95 **infinity** (the official ``seg`` parser passes panoptica's
   infinity through, so a single such case makes the mean HD95 over cases infinite; the
   ``corrected`` variant uses 373 instead). Precision and recall are NaN when their denominator is 0.
6. Global (image-level) values of the region, also reported by the official package: Dice, HD95
   and NSD of the whole region masks. Without any overlapping voxel they follow the zero-TP rules
   above (NaN if both are empty, else 0, 373 (the parser's replacement for infinity here), 0).

Metastasis split (``config="mets"``, ``brats-parse-metrics mets`` with its defaults): a reference
lesion of volume >= ``volume_threshold`` (20 mm^3: voxel count times the voxel volume) is large, else
small. A lesion is detected if matched with Dice >= ``overlap_threshold`` (0.1).

- ``large_Dice``/``large_HD95``/``large_NSD`` (the leaderboard's lesion-wise values for metastases):
  means over the large reference lesions (matched: their Dice/HD95/NSD; missed: 0/373/0) **and every
  false positive lesion of the region, whatever its size** (0/373/0); ``_std`` their population
  standard deviation. NaN when the case has no large reference lesion.
- ``large_TP``/``large_FN``: detected / not detected large lesions; ``small_TP``/``small_FN`` the same
  for small ones; ``large_FP`` = ``small_FP`` = the region's FP count; precision, recall and
  F1 = 2 TP / (2 TP + FP + FN) per size (0 where a denominator is 0; all NaN without lesion of that size).

Variant (``variant``). The official package reads files with SimpleITK and passes ``GetSpacing()``,
in (x, y, z) order, as the spacing of the (z, y, x) array, and computes the global HD95 and NSD in
voxel units (NSD tolerance 0.5 voxel). ``variant="official"`` (default) reproduces that and the
infinite lesion-wise HD95 of rule 5; on BraTS data (1 mm isotropic) the spacing quirk changes nothing.
``variant="corrected"`` uses the spacing of each array axis in mm everywhere (NSD tolerance the smallest
spacing, global values too) and 373 for rule 5's HD95.

Single-slice images stored as 3D, ``(1, Y, X)``: the surface distances use the in-plane contour
(:mod:`~nnunetv2_ciml.evaluation.surface_distance`), where panoptica's erosion would count every voxel
of such an image as surface; values then differ from the official ones (BraTS data is 3D).

Missing prediction (a reference case without prediction file, folder runner). Official rule
(``brats-evaluate`` lists the case under ``missings``; ``brats-parse-metrics`` then fills its row):
every value of every region is 0, except the HD95 means (lesion-wise ``HD95``, ``global_HD95`` and,
with ``mets``, ``large_HD95``), which are 373. That includes the lesion counts (``TP``, ``FP`` and
``FN`` are 0: the missed lesions are not counted as missed), ``Precision``, ``Recall`` and ``F1`` (0),
the ``_std`` values (0), the ``large_*``/``small_*`` counts and scores (0, even without a lesion of
that size), and regions whose reference is empty (Dice 0 and HD95 373 where an empty prediction
would score NaN, i.e. be left out of the means). This is the default (``variant="official"``).
``variant="corrected"`` scores the case as an empty prediction instead: every reference lesion
missed (``FN`` = ``n_ref``, Dice 0, HD95 373, F1 0), regions with an empty reference NaN. ``n_ref``
counts the reference's lesions and ``n_pred`` is 0 in both.

``summary.json``: ``per_case`` (``{case: {region: {metric: value}}}``, with ``n_ref``/``n_pred`` lesion
counts) and ``mean``/``std``/``median`` over cases per region and metric, NaN skipped, ``std`` with
``ddof=1`` (the official parser's pandas).
"""
from functools import partial
from typing import Dict, List, Sequence, Tuple

import cc3d
import numpy as np
from scipy.ndimage import find_objects, label
from scipy.optimize import linear_sum_assignment

from nnunetv2_ciml.evaluation.base import EvaluationError, case_statistics, format_grouped_table
from nnunetv2_ciml.evaluation.surface_distance import bounding_box, directed_surface_distances

__all__ = ["LESIONWISE_CONFIGS", "LESIONWISE_HD95_PENALTY", "to_brats2023_labels", "match_lesions",
           "lesionwise_region_metrics", "brats_lesionwise_metrics", "missing_prediction_metrics",
           "summarize_lesionwise", "format_lesionwise_table"]

LESIONWISE_HD95_PENALTY = 373.0
MATCHING_DICE_THRESHOLD = 1e-6
_UNMATCHED_COST = 1.0 + 1e-6
# region -> BraTS 2023+ labels, per official configuration
LESIONWISE_CONFIGS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "gli": {"NETC": (1,), "SNFH": (2,), "ET": (3,), "RC": (4,), "TC": (1, 3), "WT": (1, 2, 3)},
    "mets": {"ET": (3,), "RC": (4,), "TC": (1, 3), "WT": (1, 2, 3)},
}
# input convention -> lookup table to BraTS 2023+ labels
_TO_BRATS2023 = {
    "brats2020": np.array([0, 1, 2, 3, 3], dtype=np.uint8),  # 4 ET -> 3; 3 is not a 2020 label (checked before)
    "brats2023": None,
    "brats2024": None,
    "nnunet": np.array([0, 2, 1, 3], dtype=np.uint8),  # 1 edema -> 2, 2 NCR -> 1
}
VARIANTS = ("official", "corrected")


def to_brats2023_labels(seg: np.ndarray, labels: str) -> np.ndarray:
    """A label map of convention ``labels`` in BraTS 2023+ labels (1 NETC, 2 SNFH, 3 ET, 4 RC)."""
    if labels not in _TO_BRATS2023:
        raise EvaluationError(f"unknown BraTS label convention {labels!r}; choose one of {sorted(_TO_BRATS2023)}")
    table = _TO_BRATS2023[labels]
    return seg if table is None else table[seg]


def _components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """Lesions labelled 1..N: 26-connected components in 3D (``cc3d``); in 2D, like panoptica, the
    4-connected components of ``scipy.ndimage.label``."""
    if mask.ndim < 3:
        labelled, n = label(mask)
        return labelled, int(n)
    labelled, n = cc3d.connected_components(mask.astype(np.uint8, copy=False), return_N=True)
    return labelled, int(n)


def match_lesions(ref_lesions: np.ndarray, n_ref: int, pred_lesions: np.ndarray, n_pred: int
                  ) -> List[Tuple[int, int, float]]:
    """Optimal one-to-one matching of lesions: ``[(ref label, pred label, Dice)]``, ref labels ascending.

    Args:
        ref_lesions, pred_lesions: lesion label maps of one shape (0 background, lesions 1..n).
        n_ref, n_pred: number of lesions in each.
    """
    if n_ref == 0 or n_pred == 0:
        return []
    both = (ref_lesions > 0) & (pred_lesions > 0)
    pair_code = ref_lesions[both].astype(np.int64) * (n_pred + 1) + pred_lesions[both]
    codes, overlap = np.unique(pair_code, return_counts=True)
    if codes.size == 0:
        return []
    ref_size = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1).astype(np.float64)
    pred_size = np.bincount(pred_lesions.ravel(), minlength=n_pred + 1).astype(np.float64)
    pair_ref, pair_pred = codes // (n_pred + 1), codes % (n_pred + 1)
    dice = 2.0 * overlap / (ref_size[pair_ref] + pred_size[pair_pred])
    cost = np.full((n_ref, n_pred), _UNMATCHED_COST)
    ok = dice >= MATCHING_DICE_THRESHOLD
    cost[pair_ref[ok] - 1, pair_pred[ok] - 1] = 1.0 - dice[ok]
    rows, cols = linear_sum_assignment(cost)
    return [(int(r) + 1, int(c) + 1, float(1.0 - cost[r, c])) for r, c in zip(rows, cols) if cost[r, c] < 1.0]


def _nsd(d_ab: np.ndarray, d_ba: np.ndarray, tolerance: float) -> float:
    """Normalized surface Dice from the two directed distance sets (panoptica's arithmetic)."""
    tp_a, tp_b = np.sum(d_ab <= tolerance) / d_ab.size, np.sum(d_ba <= tolerance) / d_ba.size
    fp, fn = np.sum(d_ab > tolerance) / d_ab.size, np.sum(d_ba > tolerance) / d_ba.size
    return float((tp_a + tp_b) / (tp_a + tp_b + fp + fn + np.finfo(float).tiny))


def _surface_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance: float
                     ) -> Tuple[float, float]:
    """``(HD95, NSD)`` of two non-empty masks."""
    d_ref, d_pred = directed_surface_distances(ref, pred, spacing)
    return float(np.percentile(np.concatenate([d_ref, d_pred]), 95)), _nsd(d_ref, d_pred, tolerance)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _zero_tp(value_if_any_lesion: float, n_ref: int, n_pred: int) -> float:
    return float("nan") if n_ref + n_pred == 0 else value_if_any_lesion


def lesionwise_region_metrics(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                              global_spacing: Sequence[float], nsd_tolerance: float, global_nsd_tolerance: float,
                              zero_tp_hd95: float = float("inf"), volume_threshold: float = 20.0,
                              overlap_threshold: float = 0.1, size_split: bool = False) -> Dict[str, float]:
    """Lesion-wise metrics of one region (module docstring, steps 1-6, and the metastasis split).

    Args:
        ref_mask, pred_mask: boolean masks of one shape, e.g. ``(Z, Y, X)``.
        spacing: spacing (mm) per array axis for the lesion metrics and lesion volumes.
        global_spacing: spacing per array axis for the global HD95 and NSD.
        nsd_tolerance, global_nsd_tolerance: NSD tolerances (same unit as the spacings).
        zero_tp_hd95: lesion-wise HD95 of a region without TP (but with a lesion somewhere).
        volume_threshold: large/small lesion volume boundary (mm^3), with ``size_split``.
        overlap_threshold: Dice a matched lesion needs to count as detected, with ``size_split``.
        size_split: add the metastasis configuration's large/small lesion values.
    """
    box = bounding_box(ref_mask | pred_mask)
    ref_mask, pred_mask = ref_mask[box], pred_mask[box]
    ref_lesions, n_ref = _components(ref_mask)
    pred_lesions, n_pred = _components(pred_mask)
    matches = match_lesions(ref_lesions, n_ref, pred_lesions, n_pred)

    lesion_dice, lesion_hd95, lesion_nsd = [], [], []
    boxes_ref, boxes_pred = _lesion_boxes(ref_lesions, n_ref), _lesion_boxes(pred_lesions, n_pred)
    for r, p, _ in matches:
        sub = _union_box(boxes_ref[r - 1], boxes_pred[p - 1], ref_lesions.shape)
        a, b = ref_lesions[sub] == r, pred_lesions[sub] == p
        lesion_dice.append(2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
        hd, nsd = _surface_metrics(a, b, spacing, nsd_tolerance)
        lesion_hd95.append(hd)
        lesion_nsd.append(nsd)

    tp = len(matches)
    fp, fn = n_pred - tp, n_ref - tp
    out: Dict[str, float] = {"n_ref": n_ref, "n_pred": n_pred, "TP": tp, "FP": fp, "FN": fn,
                             "Precision": _ratio(tp, tp + fp), "Recall": _ratio(tp, tp + fn)}
    out["F1"] = float(tp / (tp + 0.5 * fp + 0.5 * fn)) if tp else _zero_tp(0.0, n_ref, n_pred)
    for name, values, zero_value in (("Dice", lesion_dice, 0.0), ("HD95", lesion_hd95, zero_tp_hd95),
                                     ("NSD", lesion_nsd, 0.0)):
        out[name] = float(np.mean(values)) if values else _zero_tp(zero_value, n_ref, n_pred)
        out[f"{name}_std"] = float(np.std(values)) if values else float("nan")

    overlap = np.count_nonzero(ref_mask & pred_mask)
    if overlap:
        out["global_Dice"] = float(2.0 * overlap / (np.count_nonzero(ref_mask) + np.count_nonzero(pred_mask)))
        out["global_HD95"], out["global_NSD"] = _surface_metrics(ref_mask, pred_mask, global_spacing,
                                                                  global_nsd_tolerance)
    else:
        out["global_Dice"] = _zero_tp(0.0, n_ref, n_pred)
        out["global_HD95"] = _zero_tp(LESIONWISE_HD95_PENALTY, n_ref, n_pred)
        out["global_NSD"] = _zero_tp(0.0, n_ref, n_pred)

    if size_split:
        volumes = np.bincount(ref_lesions.ravel(), minlength=n_ref + 1) * float(np.prod(spacing))
        out.update(_size_split(matches, lesion_dice, lesion_hd95, lesion_nsd, volumes[1:], fp, volume_threshold,
                               overlap_threshold))
    return out


def _lesion_boxes(lesions: np.ndarray, n: int) -> list:
    """Bounding box of each lesion 1..n (``scipy.ndimage.find_objects``)."""
    return find_objects(lesions, max_label=n)


def _union_box(a: Tuple[slice, ...], b: Tuple[slice, ...], shape: Tuple[int, ...], margin: int = 1
               ) -> Tuple[slice, ...]:
    """Union of two boxes plus ``margin``: no axis collapses to one voxel unless the image's does (which
    would make the surface distances drop it)."""
    return tuple(slice(max(min(x.start, y.start) - margin, 0), min(max(x.stop, y.stop) + margin, n))
                 for x, y, n in zip(a, b, shape))


def _detection(tp: int, fp: int, fn: int) -> Dict[str, float]:
    """Counts, precision, recall and F1 = 2TP / (2TP + FP + FN); 0 where a denominator is 0 (official parser)."""
    return {"TP": tp, "FP": fp, "FN": fn, "Precision": tp / (tp + fp) if tp + fp else 0.0,
            "Recall": tp / (tp + fn) if tp + fn else 0.0,
            "F1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0}


def _size_split(matches, lesion_dice, lesion_hd95, lesion_nsd, volumes: np.ndarray, fp: int, volume_threshold: float,
                overlap_threshold: float) -> Dict[str, float]:
    """``large_*`` and ``small_*`` values of ``brats-parse-metrics mets`` (``volumes[i]``: reference lesion i + 1)."""
    matched = {r: i for i, (r, _, _) in enumerate(matches)}
    large_dice, large_hd95, large_nsd = [], [], []
    counts = {"large": [0, 0], "small": [0, 0]}  # [detected, missed]
    for r, volume in enumerate(volumes, start=1):
        size = "large" if volume >= volume_threshold else "small"
        i = matched.get(r)
        if size == "large":
            dice_hd_nsd = (lesion_dice[i], lesion_hd95[i], lesion_nsd[i]) if i is not None else \
                (0.0, LESIONWISE_HD95_PENALTY, 0.0)
            large_dice.append(dice_hd_nsd[0])
            large_hd95.append(dice_hd_nsd[1])
            large_nsd.append(dice_hd_nsd[2])
        detected = i is not None and lesion_dice[i] >= overlap_threshold
        counts[size][0 if detected else 1] += 1
    nan = float("nan")
    out: Dict[str, float] = {}
    has_large, has_small = bool(counts["large"][0] + counts["large"][1]), bool(counts["small"][0] + counts["small"][1])
    if has_large:
        # every false positive lesion (of any size) enters the large-lesion means as Dice 0, HD95 373, NSD 0
        large_dice += [0.0] * fp
        large_hd95 += [LESIONWISE_HD95_PENALTY] * fp
        large_nsd += [0.0] * fp
        for name, values in (("Dice", large_dice), ("HD95", large_hd95), ("NSD", large_nsd)):
            out[f"large_{name}"], out[f"large_{name}_std"] = float(np.mean(values)), float(np.std(values))
    for size, present in (("large", has_large), ("small", has_small)):
        values = _detection(counts[size][0], fp, counts[size][1])
        out.update({f"{size}_{k}": (float(v) if present else nan) for k, v in values.items()})
    if not has_large:
        out.update({f"large_{m}{s}": nan for m in ("Dice", "HD95", "NSD") for s in ("", "_std")})
    return out


def brats_lesionwise_metrics(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], labels: str = "brats2024",
                             config: str = "gli", variant: str = "official", volume_threshold: float = 20.0,
                             overlap_threshold: float = 0.1) -> Dict[str, Dict[str, float]]:
    """``{region: {metric: value}}`` of one case (regions of ``config``, see the module docstring).

    Args:
        ref, pred: label maps of one shape, e.g. ``(Z, Y, X)`` in SimpleITK array order, convention ``labels``.
        spacing: voxel size in mm per array axis (SimpleITK ``GetSpacing()`` reversed).
        labels: ``brats2024``/``brats2023`` (read as is), ``brats2020`` or ``nnunet`` (converted).
        config: ``gli`` (NETC, SNFH, ET, RC, TC, WT) or ``mets`` (ET, RC, TC, WT with the size split).
        variant: ``official`` (the official package's numbers) or ``corrected`` (module docstring).
        volume_threshold: large/small metastasis boundary in mm^3 (``mets``).
        overlap_threshold: Dice a matched lesion needs to count as detected (``mets``).
    """
    if config not in LESIONWISE_CONFIGS:
        raise EvaluationError(f"unknown lesion-wise configuration {config!r}; "
                              f"choose one of {sorted(LESIONWISE_CONFIGS)}")
    if variant not in VARIANTS:
        raise EvaluationError(f"unknown lesion-wise variant {variant!r}; choose one of {list(VARIANTS)}")
    ref, pred = to_brats2023_labels(ref, labels), to_brats2023_labels(pred, labels)
    spacing = tuple(float(s) for s in spacing)
    if variant == "official":
        lesion_spacing = tuple(reversed(spacing))  # GetSpacing() (x, y, z) on the (z, y, x) array
        global_spacing, global_tolerance, zero_tp_hd95 = (1.0,) * ref.ndim, 0.5, float("inf")
    else:
        lesion_spacing = global_spacing = spacing
        global_tolerance, zero_tp_hd95 = min(spacing), LESIONWISE_HD95_PENALTY
    region_fn = partial(lesionwise_region_metrics, spacing=lesion_spacing, global_spacing=global_spacing,
                        nsd_tolerance=min(lesion_spacing), global_nsd_tolerance=global_tolerance,
                        zero_tp_hd95=zero_tp_hd95, volume_threshold=volume_threshold,
                        overlap_threshold=overlap_threshold, size_split=config == "mets")
    # one box for all regions: everything outside the union of all labels is background in every region
    box = bounding_box((ref > 0) | (pred > 0))
    ref, pred = ref[box], pred[box]
    return {name: region_fn(np.isin(ref, region), np.isin(pred, region))
            for name, region in LESIONWISE_CONFIGS[config].items()}


def missing_prediction_metrics(ref: np.ndarray, spacing: Sequence[float], labels: str = "brats2024",
                               config: str = "gli", variant: str = "official", volume_threshold: float = 20.0,
                               overlap_threshold: float = 0.1) -> Dict[str, Dict[str, float]]:
    """``{region: {metric: value}}`` of a case without prediction file (module docstring, "Missing prediction").

    ``variant="official"``: the official parser's row, 0 everywhere and 373 for the HD95 means, whatever the
    reference holds; ``"corrected"``: :func:`brats_lesionwise_metrics` of an empty prediction. Arguments as
    :func:`brats_lesionwise_metrics`.
    """
    if variant == "corrected":
        return brats_lesionwise_metrics(ref, np.zeros_like(ref), spacing, labels=labels, config=config,
                                        variant=variant, volume_threshold=volume_threshold,
                                        overlap_threshold=overlap_threshold)
    if config not in LESIONWISE_CONFIGS:
        raise EvaluationError(f"unknown lesion-wise configuration {config!r}; "
                              f"choose one of {sorted(LESIONWISE_CONFIGS)}")
    if variant not in VARIANTS:
        raise EvaluationError(f"unknown lesion-wise variant {variant!r}; choose one of {list(VARIANTS)}")
    ref = to_brats2023_labels(ref, labels)
    keys = _REGION_KEYS + (_SPLIT_KEYS if config == "mets" else ())
    out = {}
    for name, region in LESIONWISE_CONFIGS[config].items():
        values: Dict[str, float] = {"n_ref": _components(np.isin(ref, region))[1], "n_pred": 0}
        for key in keys:
            if key.endswith(_COUNT_SUFFIXES):
                values[key] = 0
            elif "HD95" in key and not key.endswith("_std"):
                values[key] = LESIONWISE_HD95_PENALTY  # the parser's rule: "hd95" in the column, not "std"
            else:
                values[key] = 0.0
        out[name] = values
    return out


# per-region keys of lesionwise_region_metrics in output order (after n_ref, n_pred), and the size split's
_REGION_KEYS = ("TP", "FP", "FN", "Precision", "Recall", "F1", "Dice", "Dice_std", "HD95", "HD95_std", "NSD",
                "NSD_std", "global_Dice", "global_HD95", "global_NSD")
_SPLIT_KEYS = tuple(f"large_{m}{s}" for m in ("Dice", "HD95", "NSD") for s in ("", "_std")) + \
    tuple(f"{size}_{m}" for size in ("large", "small") for m in ("TP", "FP", "FN", "Precision", "Recall", "F1"))
_COUNT_SUFFIXES = ("TP", "FP", "FN")

_SUMMARY_METRICS = ("Dice", "Dice_std", "HD95", "HD95_std", "NSD", "NSD_std", "F1", "Precision", "Recall", "TP",
                    "FP", "FN", "global_Dice", "global_HD95", "global_NSD")
_SPLIT_METRICS = tuple(f"{size}_{m}" for size in ("large", "small") for m in ("TP", "FP", "FN", "Precision", "Recall",
                                                                             "F1")) + \
    ("large_Dice", "large_Dice_std", "large_HD95", "large_HD95_std", "large_NSD", "large_NSD_std")


def summarize_lesionwise(per_case: Dict[str, dict], config: str = "gli") -> dict:
    """``mean``, ``std`` (``ddof=1``, as the official parser's pandas) and ``median`` over cases, NaN skipped."""
    metrics = _SUMMARY_METRICS + (_SPLIT_METRICS if config == "mets" else ())
    regions = tuple(LESIONWISE_CONFIGS[config])
    return {stat: case_statistics(per_case, metrics, fn, regions)
            for stat, fn in (("mean", np.nanmean), ("std", partial(np.nanstd, ddof=1)), ("median", np.nanmedian))}


def format_lesionwise_table(summary: dict) -> str:
    """Mean over cases per region: the leaderboard's lesion-wise values and lesion counts."""
    mean = summary["mean"]
    columns = ("Dice", "HD95", "NSD", "F1", "TP", "FP", "FN")
    if "large_Dice" in next(iter(mean.values())):
        columns = ("large_Dice", "large_HD95", "large_NSD", "large_F1", "small_F1", "TP", "FP", "FN")
    rows = {r: {m: mean[r][m] for m in columns} for r in mean}
    return "lesion-wise, mean over cases\n" + format_grouped_table("region", rows)

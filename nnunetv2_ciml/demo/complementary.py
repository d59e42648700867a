"""Scores of what needs complementary information in ShapeComposition: pairs, masks and message maps.

In a complementary case every subtask holds (decoy, twin) pairs that its primary modality cannot tell
apart (:mod:`nnunetv2_ciml.demo.shape_composition`); the *complementary mask* marks their footprints
with the label of the subtask that needs outside information. Three views of how a model handles them:

- **pair accuracy**: an object of a pair counts as *predicted* when more than half of its footprint is
  predicted as its label; the decision is correct when a twin is predicted and a decoy is not. A model
  that cannot tell decoys from twins scores 0.5 (it predicts both or neither).
- **mask Dice** per label ``k``: Dice of ``pred == k`` and ``ref == k`` restricted to the voxels of the
  complementary mask with value ``k``, pooled over the cases (sums of intersections and sizes, so that a
  case without pairs of that label adds nothing). Predicting both members of every pair gives 2/3,
  predicting neither gives 0.
- **complementary share** of message maps (Grad-CAM, :mod:`nnunetv2_ciml.interpretability`): the
  fraction of a case's message-map mass that lies inside its complementary mask, next to the mask's
  fraction of the image (``area share``): maps spread without regard to where outside information is
  needed would give a share equal to the area share. :func:`mass_breakdown` says where the rest lies.

Arrays are in SimpleITK order, ``(1, Y, X)`` for 2D cases, all of one shape per case.
"""
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_ciml.demo.shape_composition import LABELS, footprint

__all__ = ["pair_decisions", "pair_accuracy", "mask_dice", "complementary_share", "mass_breakdown"]


def pair_decisions(objects: Sequence[Mapping], prediction: np.ndarray) -> list:
    """``[(role, predicted)]`` for every object of a (decoy, twin) pair of one case.

    ``objects``: the case's entries of ``objects.json`` (``kind``, ``role``, ``center``, ``radius``,
    ``twin``); ``prediction``: its label map.
    """
    size = prediction.shape[-len(objects[0]["center"]):] if objects else prediction.shape
    labels = prediction.reshape(size)
    decisions = []
    for obj in objects:
        if obj["twin"] < 0:
            continue
        inside = footprint(obj["kind"], obj["center"], obj["radius"], size)
        predicted = float(np.mean(labels[inside] == LABELS[obj["kind"]])) > 0.5
        decisions.append((obj["role"], predicted))
    return decisions


def pair_accuracy(decisions: Iterable[Tuple[str, bool]]) -> Optional[float]:
    """Share of pair objects decided correctly (twin predicted, decoy not); None without pairs."""
    correct = [predicted == (role == "true") for role, predicted in decisions]
    return float(np.mean(correct)) if correct else None


def mask_dice(cases: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray]], labels: Sequence[int]) -> Dict[int, float]:
    """Dice per label inside the complementary mask, pooled over ``(reference, prediction, mask)`` cases.

    NaN for a label whose mask region is empty in every case and never predicted there.
    """
    intersection = {k: 0 for k in labels}
    size = {k: 0 for k in labels}
    for ref, pred, mask in cases:
        for k in labels:
            region = mask == k
            r, p = (ref == k) & region, (pred == k) & region
            intersection[k] += int(np.count_nonzero(r & p))
            size[k] += int(np.count_nonzero(r)) + int(np.count_nonzero(p))
    return {k: (2.0 * intersection[k] / size[k] if size[k] else float("nan")) for k in labels}


def complementary_share(maps: Iterable[np.ndarray], mask: np.ndarray) -> Tuple[Optional[float], float]:
    """``(share of the maps' summed mass inside mask, mask's share of the voxels)`` for one case.

    ``maps``: non-negative maps ``(*spatial)`` (e.g. one per message pair), summed before the ratio;
    ``mask``: boolean ``(*spatial)``. The share is None when the maps carry no mass.
    """
    total = None
    for m in maps:
        total = m.astype(np.float64) if total is None else total + m
    area = float(np.mean(mask))
    if total is None:
        return None, area
    mass = float(total.sum())
    return (float(total[mask].sum()) / mass if mass > 0 else None), area


def mass_breakdown(maps: Iterable[np.ndarray], mask: np.ndarray, label: np.ndarray,
                   rim: int = 2) -> Optional[Dict[str, float]]:
    """Where the summed maps' mass lies in one case, as fractions that sum to 1 (None without mass):

    ``mask``: inside the complementary mask; ``rim``: within ``rim`` voxels of it (Grad-CAM of the coarse
    skip levels, upsampled, blurs across edges); ``other_objects``: on (or within ``rim`` voxels of) the
    other labelled objects; ``background``: elsewhere. ``mask``, ``label``: ``(*spatial)``, nonzero inside.
    """
    from scipy import ndimage

    total = None
    for m in maps:
        total = m.astype(np.float64) if total is None else total + m
    if total is None or total.sum() <= 0:
        return None
    inside = mask > 0
    structure = ndimage.generate_binary_structure(inside.ndim, inside.ndim)
    near = ndimage.binary_dilation(inside, structure, iterations=rim) & ~inside
    objects = ndimage.binary_dilation(label > 0, structure, iterations=rim) & ~inside & ~near
    parts = {"mask": inside, "rim": near, "other_objects": objects, "background": ~(inside | near | objects)}
    mass = float(total.sum())
    return {name: float(total[region].sum()) / mass for name, region in parts.items()}

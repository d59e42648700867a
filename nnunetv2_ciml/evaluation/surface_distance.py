"""Surface distances and the 95th-percentile Hausdorff distance (HD95) between two binary masks.

Definition (the one BraTS 2020 used, via CaPTk and nnU-Net's re-implementation of the ranking,
which calls ``medpy.metric.binary.hd95``):

1. The surface of a mask is the set of its voxels that an erosion with the face-connected
   structuring element (6-neighbourhood in 3D, 4 in 2D; outside the image counts as background)
   removes, i.e. ``mask & ~binary_erosion(mask)``.
2. The directed surface distances from A to B are, for every surface voxel of A, the Euclidean
   distance in mm (voxel centres, anisotropic spacing honoured) to the nearest surface voxel of B.
3. HD95 is the 95th percentile (``numpy.percentile``, linear interpolation) of the **pooled**
   set of both directed distance sets, A->B and B->A concatenated.

This is MedPy's ``hd95`` exactly (tests check equality). Other libraries differ: DeepMind's
``surface-distance`` and MONAI take the percentile per direction and report the larger of the
two (never smaller than the pooled value), and DeepMind weights surface elements by area.
HD95 is undefined if either mask is empty; :func:`hd95` raises then, and the challenge modules
apply their empty-case rules (see :mod:`nnunetv2_ciml.evaluation.brats`).

Axes of length 1 are dropped before anything else. A 2D image stored as a 3D volume with a single
slice, ``(1, Y, X)`` in SimpleITK array order (nnU-Net's way of storing 2D data as NIfTI), thus
gets its in-plane contour and in-plane distances, exactly as the ``(Y, X)`` image would. Without
this, the erosion would treat the missing neighbours above and below the slice as background and
every foreground pixel would count as surface. The spacing of a dropped axis plays no role.

Speed: the erosion runs on the bounding box of the union of both masks plus a one-voxel margin
(clipped at the image border), not on the full volume; this is exact because everything outside
the box is background, which is what the erosion assumes beyond the crop. Nearest-surface
distances are exact Euclidean nearest neighbours between the surface voxel centres (in mm) found
with a k-d tree (``scipy.spatial.cKDTree``), each distance computed from the voxel index
difference times the spacing, i.e. the same values a Euclidean distance transform (MedPy,
panoptica) gives, to the last bit where a distance equals a spacing, at a cost that grows with
the number of surface voxels instead of the box volume (``benchmarks/bench_hd95.py`` times both;
docs/benchmarks.md).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import binary_erosion, find_objects, generate_binary_structure
from scipy.spatial import cKDTree

__all__ = ["bounding_box", "surface_mask", "directed_surface_distances", "hd95"]


def bounding_box(mask: np.ndarray, margin: int = 1) -> Tuple[slice, ...]:
    """Bounding box of the non-zero voxels of ``mask`` plus ``margin`` voxels, clipped to the array; the whole
    array if ``mask`` is empty."""
    box = find_objects(np.asarray(mask, dtype=bool).astype(np.uint8), max_label=1)[0]
    if box is None:
        return tuple(slice(None) for _ in range(np.ndim(mask)))
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, np.shape(mask)))


def _as_pair(mask_a: np.ndarray, mask_b: np.ndarray, spacing: Optional[Sequence[float]]
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks without singleton axes, cropped to the union's bounding box plus one voxel."""
    a = np.asarray(mask_a).astype(bool, copy=False)
    b = np.asarray(mask_b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    sp = np.ones(a.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    if sp.shape != (a.ndim,) or not np.all(sp > 0):
        raise ValueError(f"spacing must be {a.ndim} positive values (mm, array axis order), got {spacing}")
    keep = [i for i, n in enumerate(a.shape) if n > 1] or [a.ndim - 1]
    shape = tuple(a.shape[i] for i in keep)
    a, b, sp = a.reshape(shape), b.reshape(shape), sp[keep]

    box = bounding_box(a | b)
    return a[box], b[box], sp


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: removed by a face-connected erosion (outside = background)."""
    structure = generate_binary_structure(mask.ndim, 1)
    return mask & ~binary_erosion(mask, structure=structure, border_value=0)


def _nearest_distances(points: np.ndarray, targets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each voxel index in ``points`` to the nearest one in ``targets``.

    The k-d tree finds the nearest target; the distance is then taken from the index difference,
    ``sqrt(sum((di * spacing_i)^2))``, as a distance transform computes it. Differences of absolute
    positions (``i * spacing - j * spacing``) carry rounding errors that depend on where the voxels lie,
    e.g. 3 * 0.8 - 2 * 0.8 > 0.8, which would flip comparisons with a tolerance of one voxel (NSD).
    """
    _, nearest = cKDTree(targets * spacing).query(points * spacing)
    diff = (points - targets[nearest]) * spacing
    return np.sqrt(np.sum(diff * diff, axis=1))


def directed_surface_distances(mask_a: np.ndarray, mask_b: np.ndarray,
                               spacing: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of A to B's surface, and from each of B's to A's.

    Args:
        mask_a, mask_b: masks of the same shape, e.g. ``(Z, Y, X)``; nonzero = foreground.
        spacing: voxel size in mm per array axis (SimpleITK ``GetSpacing()`` reversed); default 1.
    Returns:
        ``(d_ab, d_ba)``, 1D float arrays with one entry per surface voxel of A and of B.
    Raises:
        ValueError: if either mask is empty (the distances are undefined).
    """
    a, b, sp = _as_pair(mask_a, mask_b, spacing)
    if not a.any() or not b.any():
        raise ValueError("surface distance is undefined for an empty mask")
    pa, pb = np.argwhere(surface_mask(a)), np.argwhere(surface_mask(b))
    return _nearest_distances(pa, pb, sp), _nearest_distances(pb, pa, sp)


def hd95(mask_a: np.ndarray, mask_b: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile of the pooled symmetric surface distances in mm (MedPy / BraTS 2020 HD95).

    Symmetric in its arguments. Raises ValueError if either mask is empty.
    """
    d_ab, d_ba = directed_surface_distances(mask_a, mask_b, spacing)
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))

"""Voxel grids in physical space: index alignment, the common CT/PET field of view, resampling onto a grid.

A :class:`Grid` is what SimpleITK calls the image geometry: ``size`` in voxels and ``spacing`` in mm
(both in SimpleITK's ``(x, y, z)`` order), ``origin`` (the physical position in mm of the centre of
voxel ``(0, 0, 0)``) and ``direction`` (3x3, row-major; column ``k`` is the physical direction of
axis ``k``). Numpy arrays from ``sitk.GetArrayFromImage`` are ``(z, y, x)``.

Resampling onto a grid that is *index-aligned* with the image (same spacing and direction, origin
shifted by a whole number of voxels) is done by exact cropping/zero-padding, never by interpolation:
that keeps CT values and labels bit-exact on the default HECKTOR grid, and makes the way back to the CT
grid exact. Whether two images lie on the same grid is the package's one rule,
:func:`nnunetv2_ciml.image_io.geometry_mismatch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

# Tolerances: spacing like nnU-Net's reader (np.allclose), positions to 1/1000 of a voxel.
_SPACING_RTOL = 1e-5
_DIRECTION_ATOL = 1e-5
_VOXEL_FRACTION_TOL = 1e-3


@dataclass(frozen=True)
class Grid:
    """A 3D voxel grid: ``size`` (x, y, z) voxels, ``spacing`` (x, y, z) mm, ``origin`` mm, ``direction`` 3x3 row-major."""

    size: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]

    @classmethod
    def of(cls, image: Union[sitk.Image, sitk.ImageFileReader]) -> "Grid":
        """The grid of an image, or of a file whose header was read with ``ReadImageInformation``."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @property
    def matrix(self) -> np.ndarray:
        """Direction as a 3x3 array; column k is the physical direction of axis k."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    # The two conversions are SimpleITK's TransformContinuousIndexToPhysicalPoint and its inverse, vectorised
    # over N points (SimpleITK converts one point per call, too slow for every foreground voxel of a label).
    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """Continuous indices ``(N, 3)`` in (x, y, z) order -> physical points ``(N, 3)`` in mm."""
        return np.asarray(self.origin) + (np.asarray(index, float) * np.asarray(self.spacing)) @ self.matrix.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Physical points ``(N, 3)`` in mm -> continuous indices ``(N, 3)`` in (x, y, z) order."""
        return (np.linalg.solve(self.matrix, (np.asarray(points, float) - np.asarray(self.origin)).T).T
                / np.asarray(self.spacing))

    def index_offset_in(self, other: "Grid") -> Optional[Tuple[int, int, int]]:
        """Index of this grid's voxel (0, 0, 0) in ``other`` if the grids are index-aligned, else None."""
        if not np.allclose(self.spacing, other.spacing, rtol=_SPACING_RTOL, atol=0):
            return None
        if not np.allclose(self.direction, other.direction, rtol=0, atol=_DIRECTION_ATOL):
            return None
        offset = other.physical_to_index(np.asarray([self.origin]))[0]
        rounded = np.round(offset)
        if np.any(np.abs(offset - rounded) > _VOXEL_FRACTION_TOL):
            return None
        return tuple(int(v) for v in rounded)

    def same_as(self, other: "Grid") -> bool:
        return self.size == other.size and self.index_offset_in(other) == (0, 0, 0)

    def describe(self) -> str:
        """``size (x, y, z) ..., spacing ... mm, origin ... mm`` (and the direction when it is not the identity)."""
        text = (f"size (x, y, z) {self.size}, spacing {_fmt(self.spacing)} mm, origin {_fmt(self.origin)} mm")
        return text if np.allclose(self.matrix, np.eye(3)) else f"{text}, direction {_fmt(self.direction)}"


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _extent_in_frame(grid: Grid, frame: Grid) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi), in mm along ``frame``'s axes from ``frame``'s origin, covering ``grid``'s voxels."""
    corners = np.array([[i, j, k] for i in (-0.5, grid.size[0] - 0.5) for j in (-0.5, grid.size[1] - 0.5)
                        for k in (-0.5, grid.size[2] - 0.5)])
    coords = (grid.index_to_physical(corners) - np.asarray(frame.origin)) @ frame.matrix
    return coords.min(axis=0), coords.max(axis=0)


def common_fov_grid(ct: Grid, pet: Grid, spacing: Optional[Sequence[float]] = None) -> Grid:
    """The grid, in the CT's orientation, covering the part of space that both CT and PET image.

    ``spacing=None`` (default) keeps the CT's own voxels: the result is the CT grid cropped to the
    PET's field of view (index-aligned with the CT, so the CT is cropped, never interpolated).
    With ``spacing`` (x, y, z) in mm, the box is filled with voxels of that size, centred in it.
    Raises ValueError when CT and PET do not overlap.
    """
    ct_lo, ct_hi = _extent_in_frame(ct, ct)
    pet_lo, pet_hi = _extent_in_frame(pet, ct)
    lo, hi = np.maximum(ct_lo, pet_lo), np.minimum(ct_hi, pet_hi)
    if spacing is None:
        sp = np.asarray(ct.spacing)
        first = np.ceil(lo / sp - _VOXEL_FRACTION_TOL).astype(int)
        last = np.floor(hi / sp + _VOXEL_FRACTION_TOL).astype(int)
        size = last - first + 1
        start = first * sp
    else:
        sp = np.asarray(spacing, dtype=float)
        if sp.shape != (3,) or np.any(sp <= 0):
            raise ValueError(f"spacing must be three positive numbers (x, y, z) in mm, got {tuple(spacing)}")
        size = np.floor((hi - lo) / sp + _VOXEL_FRACTION_TOL).astype(int)
        start = lo + ((hi - lo) - size * sp) / 2 + sp / 2
    if np.any(size < 1):
        raise ValueError(f"CT and PET do not overlap (CT covers {_fmt(ct_lo)} to {_fmt(ct_hi)} mm, PET covers "
                         f"{_fmt(pet_lo)} to {_fmt(pet_hi)} mm along the CT axes from the CT origin)")
    origin = np.asarray(ct.origin) + ct.matrix @ start
    return Grid(tuple(int(s) for s in size), tuple(float(s) for s in sp), tuple(float(o) for o in origin),
                ct.direction)


def resample_to_grid(image: sitk.Image, grid: Grid, interpolator: int, default_value: float = 0.0,
                     clip_to_input_range: bool = False) -> sitk.Image:
    """``image`` on ``grid`` by ``sitk.Resample``: nearest neighbour (an exact crop/zero-pad) if index-aligned,
    else ``interpolator``.

    Interpolated images are float32 (labels, with nearest neighbour, keep their pixel type).
    ``clip_to_input_range`` clips interpolated values to the input's [min, max], which removes the
    over- and undershoot of B-spline interpolation at sharp edges (e.g. negative SUV next to a hot spot).
    Voxels outside the image get ``default_value``.
    """
    aligned = grid.index_offset_in(Grid.of(image)) is not None
    # on an index-aligned grid nearest neighbour hits voxel centres: an exact crop/zero-pad, pixel type kept
    is_label = aligned or interpolator in (sitk.sitkNearestNeighbor, sitk.sitkLabelGaussian)
    result = sitk.Resample(image, list(grid.size), sitk.Transform(),
                           sitk.sitkNearestNeighbor if aligned else interpolator, list(grid.origin), list(grid.spacing),
                           list(grid.direction), float(default_value),
                           image.GetPixelID() if is_label else sitk.sitkFloat32)
    if clip_to_input_range and not is_label:
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        result = sitk.Clamp(result, sitk.sitkFloat32, stats.GetMinimum(), stats.GetMaximum())
    result.SetSpacing(grid.spacing)
    result.SetOrigin(grid.origin)
    result.SetDirection(grid.direction)
    return result


def voxels_outside(label: sitk.Image, grid: Grid) -> dict:
    """Foreground voxels of ``label`` whose centres lie outside ``grid``, per label value: ``{value: count}``."""
    arr = sitk.GetArrayViewFromImage(label)
    zyx = np.argwhere(arr != 0)
    if zyx.size == 0:
        return {}
    index = grid.physical_to_index(Grid.of(label).index_to_physical(zyx[:, ::-1]))
    outside = np.any((index < -0.5 - _VOXEL_FRACTION_TOL) | (index > np.asarray(grid.size) - 0.5 + _VOXEL_FRACTION_TOL),
                     axis=1)
    values, counts = np.unique(arr[tuple(zyx[outside].T)], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def header_grid(path: str) -> Grid:
    """The grid of an image file, reading only its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return Grid.of(reader)


"""Reading label images with SimpleITK, checking their values and geometry, nearest-neighbour resampling.

Arrays are in SimpleITK array order, ``(Z, Y, X)`` for 3D and ``(Y, X)`` for 2D; spacings returned
here are in mm in that same order (``GetSpacing()`` reversed). Whether a prediction lies on its reference's
grid is the package's one rule, :func:`nnunetv2_ciml.image_io.geometry_mismatch`.
"""
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.evaluation.base import EvaluationError

__all__ = ["read_label_image", "array_spacing", "resample_nearest_to"]



def array_spacing(image: sitk.Image) -> Tuple[float, ...]:
    """Voxel size in mm in array axis order."""
    return tuple(float(s) for s in reversed(image.GetSpacing()))


def read_label_image(path: Path, case: str, role: str) -> Tuple[sitk.Image, np.ndarray]:
    """The image and its integer label array; ``role`` ("reference"/"prediction") goes into error messages.

    Read by :func:`nnunetv2_ciml.image_io.read_image`: a truncated or corrupt file, or one holding NaN/Inf,
    is an invalid prediction (or reference) and stops the evaluation, never a set of zero voxels.
    """
    from nnunetv2_ciml.image_io import ImageFileError, read_image

    where = f"case {case!r}: {role} file {str(path)!r}"
    try:
        image = read_image(path, case, role)
    except ImageFileError as e:
        raise EvaluationError(str(e)) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise EvaluationError(f"{where} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                              f"a label map has one")
    if image.GetDimension() not in (2, 3):
        raise EvaluationError(f"{where} is {image.GetDimension()}D; expected a 2D or 3D label map")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise EvaluationError(f"{where} holds non-integer values; expected integer labels")
        array = array.astype(np.int64)
    elif array.dtype.kind not in "iub":
        raise EvaluationError(f"{where} has pixel type {array.dtype}; expected integer labels")
    return image, array


def resample_nearest_to(prediction: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """``prediction`` resampled onto ``reference``'s grid (nearest neighbour, 0 outside), as an array."""
    resampled = sitk.Resample(prediction, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              prediction.GetPixelID())
    return sitk.GetArrayFromImage(resampled)

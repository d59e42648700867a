"""Maps from nnU-Net's preprocessed grid back to the input image, and written in its geometry.

nnU-Net preprocesses by transpose -> crop to the nonzero region -> resample to the target
spacing; :func:`to_input_geometry` reverts that for maps exactly as nnU-Net's export reverts logits
(``convert_predicted_logits_to_segmentation_with_correct_shape``): the configuration's
``resampling_fn_probabilities`` back to the cropped shape, ``insert_crop_into_image`` into the
uncropped shape (zero outside the crop), ``transpose_backward``. The result is in the array order
of the model's reader (for SimpleITK: ``sitk.GetArrayFromImage`` order, 2D images as ``(1, Y, X)``).
"""
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

__all__ = ["to_input_geometry", "can_write_map", "write_map"]


def to_input_geometry(maps: Union[np.ndarray, torch.Tensor], properties: dict, plans_manager: PlansManager,
                      configuration_manager: ConfigurationManager) -> np.ndarray:
    """``(P, *preprocessed_spatial)`` maps -> ``(P, *input_spatial)`` float32, non-negative.

    ``properties`` are the case's properties after nnU-Net's preprocessing (``bbox_used_for_cropping``,
    ``shape_before_cropping``, ...). Interpolation overshoot (higher-order resampling) is clipped at 0.
    """
    maps = np.asarray(maps, dtype=np.float32)
    spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    # A 2D configuration leaves the slice axis alone; its spacing has one entry less (as in nnU-Net's export).
    grid_spacing = configuration_manager.spacing if len(configuration_manager.spacing) == len(cropped_shape) \
        else [spacing[0], *configuration_manager.spacing]
    resampled = np.asarray(configuration_manager.resampling_fn_probabilities(maps, cropped_shape, grid_spacing,
                                                                             spacing), dtype=np.float32)
    full = np.zeros((maps.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    full = insert_crop_into_image(full, resampled, properties["bbox_used_for_cropping"])
    full = full.transpose([0, *[i + 1 for i in plans_manager.transpose_backward]])
    return np.ascontiguousarray(np.maximum(full, 0))


def can_write_map(properties: dict) -> bool:
    """Whether :func:`write_map` knows the geometry of an input read with these properties."""
    return "sitk_stuff" in properties or "nibabel_stuff" in properties


def write_map(array: np.ndarray, path: Path, properties: dict) -> None:
    """Write ``array`` ``(*input_spatial)`` (a float32 map or an integer label map, dtype kept) to NIfTI
    ``path`` with the input image's geometry.

    ``properties`` are the reader's: SimpleITK readers (``sitk_stuff``: spacing, origin, direction, and
    the original orientation for ``SimpleITKIOWithReorient``) or nibabel readers (``nibabel_stuff``:
    the original affine, and the reoriented one for ``NibabelIOWithReorient``).
    """
    array = np.asarray(array)
    if "sitk_stuff" in properties:
        geometry = properties["sitk_stuff"]
        if len(geometry["spacing"]) == 2:
            array = array[0]
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(geometry["spacing"])
        image.SetOrigin(geometry["origin"])
        image.SetDirection(geometry["direction"])
        if "original_orientation" in geometry:
            image = sitk.DICOMOrient(image, geometry["original_orientation"])
        sitk.WriteImage(image, str(path), True)
    elif "nibabel_stuff" in properties:
        import nibabel
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        geometry = properties["nibabel_stuff"]
        # nnU-Net's nibabel readers hand out arrays with the axes reversed
        if "reoriented_affine" in geometry:
            image = nibabel.Nifti1Image(array.transpose((2, 1, 0)), affine=geometry["reoriented_affine"])
            image = image.as_reoriented(ornt_transform(axcodes2ornt("RAS"),
                                                       io_orientation(geometry["original_affine"])))
        else:
            image = nibabel.Nifti1Image(array.transpose((2, 1, 0)), affine=geometry["original_affine"])
        nibabel.save(image, str(path))
    else:
        raise ValueError(f"cannot write {path.name}: the reader's properties carry no SimpleITK or nibabel "
                         f"geometry (keys {sorted(properties)})")

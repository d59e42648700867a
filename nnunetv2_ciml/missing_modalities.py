"""Cases whose channel files are partly absent: find them, read what exists, predict with nnU-Net's predictor.

A case's channels are nnU-Net's input files ``CASE_XXXX<file_ending>``; a missing file is a missing modality.
Its channel is filled with zeros after nnU-Net's preprocessing (normalisation included) and a
:class:`~nnunetv2_ciml.network.CIMLUNet` is told which modalities exist
(:func:`~nnunetv2_ciml.network.modalities_present`), so it ignores the filled channel instead of reading it as
data. A plain nnU-Net network only sees the zeros (``zero_fill``).
"""
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.image_io import ImageFileError, check_normalisable, geometry_mismatch, verify_image_file

__all__ = ["CaseError", "PredictionWriteError", "find_case_files", "image_dimension", "check_case_files", "read_case",
           "zero_missing_channels", "predict_case", "is_ciml", "missing_summary"]


class CaseError(CIMLError, ValueError):
    """One case cannot be used (no modality at all, an unreadable file, files of different geometry)."""


class PredictionWriteError(CIMLError, RuntimeError):
    """A case's prediction cannot be written (a full disk, no permission): the run cannot go on."""


# The image file endings nnU-Net's readers take: a channel file with one of them but not the model's is refused
# by name, never taken for a missing modality.
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".png", ".bmp", ".tif", ".tiff")


def _ending(name: str) -> str:
    return next((e for e in IMAGE_ENDINGS if name.lower().endswith(e)), "")


def find_case_files(input_dir: Union[str, Path], file_ending: str, num_modalities: int,
                    cases: Optional[Sequence[str]] = None, modality_names: Optional[Sequence[str]] = None
                    ) -> Dict[str, Dict[int, str]]:
    """``{case: {channel: path}}`` for the files ``CASE_XXXX<image ending>`` of ``input_dir`` (sorted by case).

    A file of a channel beyond the model's (``_0007``) or with another image ending than ``file_ending``
    (``CASE_0001.nii`` among ``.nii.gz`` files) is listed as it is, so that :func:`read_case` refuses that case by
    name while the other cases go on. ``cases``: only these, each listed even when it has no file (``{}``, for
    :func:`read_case` to report). A :class:`CaseError` names the files for a ``file_ending`` file without the
    channel suffix, and the expected names (``modality_names`` in the message) for a folder without any case.
    Not nnU-Net's ``create_lists_from_splitted_dataset_folder``: that lists the files present only (a missing
    channel cannot be marked), says nothing about misnamed files, and starts a pool of processes."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise CaseError(f"input folder {str(input_dir)!r} does not exist")
    names = list(modality_names) if modality_names else [f"channel {c}" for c in range(num_modalities)]
    expected = f"CASE_XXXX{file_ending}, one per channel ({', '.join(f'_{c:04d}: {n}' for c, n in enumerate(names))})"
    found: Dict[str, Dict[int, str]] = {}
    unnamed = []
    for path in sorted(input_dir.iterdir()):
        ending = _ending(path.name)
        if not (ending or path.name.endswith(file_ending)):
            continue
        match = re.match(r"^(.+)_(\d{4})$", path.name[:-len(ending or file_ending)])
        if match is None:
            if path.name.endswith(file_ending) and path.is_file():
                unnamed.append(path.name)
            continue
        # A folder or a broken link named like a channel file is listed too: check_case_files refuses it by name
        # instead of taking it for a missing modality.
        channels = found.setdefault(match.group(1), {})
        channel = int(match.group(2))
        if channel not in channels or not path.name.endswith(file_ending) or not path.is_file():  # never hidden
            channels[channel] = str(path)
    if unnamed:
        raise CaseError(f"{str(input_dir)!r}: file(s) {unnamed[:5]} lack the channel suffix; name each case's "
                        f"files {expected}")
    if cases is not None:
        return {case: found.get(case, {}) for case in cases}
    if not found:
        raise CaseError(f"no cases in {str(input_dir)!r}: expected files {expected}")
    return dict(sorted(found.items()))


def image_dimension(plans_manager) -> int:
    """The dimension of the image files a model was trained on: 2 for a dataset of 2D images (nnU-Net's readers
    give them the spacing 999 along their first axis), else 3."""
    spacing = plans_manager.plans.get("original_median_spacing_after_transp") or []
    return 2 if any(float(s) == 999 for s in spacing) else 3


def _not_a_file(path: Path) -> Optional[str]:
    """Why ``path``, named like a channel file, is not one (None if it is a file)."""
    if path.is_file():
        return None
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link (to {os.readlink(path)!r})"
    return "is a folder" if path.is_dir() else "is not a regular file"


def _ending_problem(path: str, file_ending: str) -> str:
    """What is wrong with the ending of ``path``, which does not end in ``file_ending``."""
    name = Path(path).name
    ending = name[len(name) - len(_ending(name)):] if _ending(name) else Path(name).suffix
    if ending.lower() == file_ending.lower():
        return (f"ends in {ending!r}, and file endings are case-sensitive: this model reads {file_ending!r} files; "
                f"rename it to {name[:-len(ending)] + file_ending!r}")
    return (f"ends in {ending!r}, but this model reads {file_ending!r} files; convert it (a file of another type is "
            f"not taken for a missing modality)")


def check_case_files(case: str, files: Dict[int, str], num_modalities: int,
                     modality_names: Optional[Sequence[str]] = None, file_ending: Optional[str] = None) -> List[str]:
    """Raise :class:`CaseError` naming the case and the file when a case has no file, a file of a channel beyond
    ``num_modalities``, one that does not end in ``file_ending``, or a name that is not a file (a folder, a broken
    link); returns the modality names."""
    names = list(modality_names) if modality_names else [f"channel {c}" for c in range(num_modalities)]
    if not files:
        raise CaseError(f"case {case!r} has no modality file at all (expected any of "
                        f"{', '.join(f'_{c:04d} ({n})' for c, n in enumerate(names))})")
    for channel, path in sorted(files.items()):
        if channel >= num_modalities:
            raise CaseError(f"case {case!r}: file {path!r} is channel {channel}, but the model has {num_modalities} "
                            f"modalities (_0000 to _{num_modalities - 1:04d}: {', '.join(names)})")
        problem = _not_a_file(Path(path))
        if problem:
            raise CaseError(f"case {case!r}: {path!r} ({names[channel]}) {problem}; a channel file must be a readable "
                            f"image (only a file that does not exist is a missing modality)")
        if file_ending is not None and not path.endswith(file_ending):
            raise CaseError(f"case {case!r}: file {path!r} ({names[channel]}) {_ending_problem(path, file_ending)}")
    return names


def read_case(reader, case: str, files: Dict[int, str], num_modalities: int,
              modality_names: Optional[Sequence[str]] = None, file_ending: Optional[str] = None,
              dimension: Optional[int] = None) -> Tuple[np.ndarray, dict, np.ndarray]:
    """Read the existing channel files of one case with nnU-Net's ``reader`` (an image reader/writer instance),
    each first checked by :func:`nnunetv2_ciml.image_io.verify_image_file` (readable, complete, finite).

    Returns ``image`` ``(num_modalities, *spatial)`` float32 (missing channels 0), the properties of the first
    existing file and ``present`` ``(num_modalities,)`` bool. Raises :class:`CaseError` naming the case and the
    file for what :func:`check_case_files` refuses, and when a file is not a ``dimension``-D image (its size
    given), cannot be read, is not on the case's first file's grid
    (:func:`nnunetv2_ciml.image_io.geometry_mismatch`) or holds values too large to normalise
    (:func:`nnunetv2_ciml.image_io.check_normalisable`)."""
    names = check_case_files(case, files, num_modalities, modality_names, file_ending)
    arrays: Dict[int, np.ndarray] = {}
    first_properties, first_file, first_info = None, None, None
    for channel, path in sorted(files.items()):
        try:  # the package's checked reading path first: truncated files, NaN/Inf voxels
            info = verify_image_file(path, case, f"channel {channel} ({names[channel]})")
        except ImageFileError as e:
            raise CaseError(str(e)) from None
        if dimension is not None and len(info.size) != dimension:
            raise CaseError(f"case {case!r}: file {path!r} ({names[channel]}) is a {len(info.size)}D image of size "
                            f"{'x'.join(map(str, info.size))}; this model reads {dimension}D images")
        problem = None if first_info is None else geometry_mismatch(info, first_info)
        if problem:
            raise CaseError(f"case {case!r}: file {path!r} ({names[channel]}) has another geometry than "
                            f"{first_file!r}: {problem}")
        try:
            array, properties = reader.read_images([path])
        except Exception as e:  # nnU-Net's readers raise whatever their backend raises
            lines = str(e).strip().splitlines()
            raise CaseError(f"case {case!r}: file {path!r} ({names[channel]}) cannot be read: "
                            f"{lines[-1] if lines else type(e).__name__}") from None
        try:
            check_normalisable(array[0], path, case, f"channel {channel} ({names[channel]})")
        except ImageFileError as e:
            raise CaseError(str(e)) from None
        if first_properties is None:
            first_properties, first_file, first_info = properties, path, info
        arrays[channel] = array[0]
    shape = arrays[min(arrays)].shape
    image = np.zeros((num_modalities, *shape), np.float32)
    for channel, array in arrays.items():
        image[channel] = array
    present = np.array([c in arrays for c in range(num_modalities)])
    return image, first_properties, present


def zero_missing_channels(data: np.ndarray, present: np.ndarray) -> np.ndarray:
    """``data`` ``(M, *spatial)`` (preprocessed) with missing channels set to 0, in place; returns it."""
    data[~np.asarray(present, bool)] = 0
    return data


def is_ciml(network: torch.nn.Module) -> bool:
    from nnunetv2_ciml.network import CIMLUNet, unwrap
    return isinstance(unwrap(network), CIMLUNet)


def predict_case(predictor, image: np.ndarray, properties: dict, present: np.ndarray,
                 output_file_truncated: str, save_probabilities: bool = False) -> None:
    """Preprocess, predict and export one case as nnU-Net's predictor does, with the modalities not in
    ``present`` zeroed after preprocessing and, for a CIML network, masked in the network. A file that cannot be
    written raises :class:`PredictionWriteError` naming the case."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    from nnunetv2_ciml.network import modalities_present

    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(image, None, properties, predictor.plans_manager,
                                                    predictor.configuration_manager, predictor.dataset_json)
    data = torch.from_numpy(np.ascontiguousarray(zero_missing_channels(data, present), dtype=np.float32))
    if is_ciml(predictor.network):
        mask = torch.as_tensor(present, dtype=torch.float32, device=predictor.device)[None]
        with modalities_present(predictor.network, mask):
            logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
    else:
        logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
    try:
        export_prediction_from_logits(logits, properties, predictor.configuration_manager, predictor.plans_manager,
                                      predictor.dataset_json, output_file_truncated, save_probabilities)
    except (OSError, RuntimeError) as e:  # SimpleITK reports a failed write as a RuntimeError
        lines = str(e).strip().splitlines()
        reason = lines[-1] if lines else type(e).__name__
        raise PredictionWriteError(f"case {Path(output_file_truncated).name!r}: its prediction cannot be written "
                                   f"to '{output_file_truncated}*': {reason}") from None


def missing_summary(present: np.ndarray, modality_names: List[str], network: Optional[torch.nn.Module] = None) -> dict:
    """What ``modalities.json`` records for one case: the modalities present and missing, and for a CIML
    ``network`` which modalities' branches each subtask read (``reads``: its primary, or the fallback that took
    a missing primary's place)."""
    from nnunetv2_ciml.network import unwrap

    summary = {"present": [n for n, p in zip(modality_names, present) if p],
               "missing": [n for n, p in zip(modality_names, present) if not p]}
    if network is not None and is_ciml(network):
        network = unwrap(network)
        summary["reads"] = dict(zip(network.subtask_names, network.acting_primaries([bool(p) for p in present])))
    return summary

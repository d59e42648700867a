"""Where did each modality contribute? Grad-CAM maps of CIML's messages, in the input's geometry.

For every (sender modality j -> receiving subtask i) of a trained CIML model and every case, a map
of where j's messages ``m_{j->i}^s`` contributed to i's predicted outputs (Grad-CAM on the message
tensors, summed over skip levels: :mod:`nnunetv2_ciml.interpretability.message_gradcam`), computed
through nnU-Net's own pipeline: the model folder's preprocessing (``run_case_npy`` of the
configuration's preprocessor), its prediction (``nnUNetPredictor.predict_sliding_window_return_logits``,
which defines the Grad-CAM target), its sliding-window tiles and Gaussian weights, and its way back
to the input grid (:mod:`nnunetv2_ciml.interpretability.geometry`).

A sender's *share* for a subtask is its map's mass (sum over the input's voxels) divided by the
mass of all senders to that subtask; it is ``None`` when the model predicts none of the subtask's
outputs in the case (no target, all maps zero). Restricting ``senders`` changes what is returned
and written, not the numbers: maps and shares are always computed for all senders of the selected
subtasks.

Python API::

    predictor = load_predictor(model_folder, fold=0, device="cpu")
    result = explain_case(predictor, ["case_0000.nii.gz", "case_0001.nii.gz"])
    result.maps[("T2", "whole tumor")]          # (*input spatial) float32, reader array order
    result.shares["whole tumor"]                # {"T1ce": 0.6, "T2": 0.4}
    write_case_explanation(result, out_dir)     # NIfTI maps, prediction, overlay PNGs

    summary = explain_folder(model_folder, 0, input_dir, out_dir)   # all of it, plus explain.json
"""
import re
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunetv2_ciml.interpretability.geometry import can_write_map, to_input_geometry
from nnunetv2_ciml.interpretability.message_gradcam import MessageGradCAM, sliding_window_message_cams
from nnunetv2_ciml.interpretability.model import ExplainError, ciml_network, select_pairs
from nnunetv2_ciml.missing_modalities import CaseError, image_dimension, read_case, zero_missing_channels
from nnunetv2_ciml.network import CIMLUNet, MessagePair, modalities_present

__all__ = ["CaseExplanation", "read_case_files", "explain_image", "explain_case"]


@dataclass
class CaseExplanation:
    """Message maps of one case, in the geometry of its input images.

    ``maps[(sender, subtask)]``: ``(*input_spatial)`` float32 (the reader's array order: for SimpleITK
    ``sitk.GetArrayFromImage``, 2D images as ``(1, Y, X)``), for the selected senders that the case has.
    ``shares[subtask][sender]`` and ``masses[subtask][sender]``: for all senders of each selected
    subtask. ``target_voxels[subtask]``: predicted voxels of the subtask on nnU-Net's preprocessed grid
    (0: nothing to explain). ``segmentation``: nnU-Net's prediction ``(*input_spatial)``;
    ``predicted[subtask]``: its voxels of the subtask's outputs (bool). ``image``: ``(M, *input_spatial)``.
    ``present``/``missing``: the modalities the case has and lacks; ``reads[subtask]``: the modalities whose
    branch the subtask's decoder read (its primary, or the fallback that took a missing primary's place). A
    sender that sent nothing (missing, or read as the subtask's fallback) has share ``None`` and mass 0.
    """

    case: str
    maps: Dict[Tuple[str, str], np.ndarray]
    shares: Dict[str, Dict[str, Optional[float]]]
    masses: Dict[str, Dict[str, float]]
    target_voxels: Dict[str, int]
    segmentation: np.ndarray
    predicted: Dict[str, np.ndarray]
    image: np.ndarray
    properties: dict
    modalities: List[str]
    primaries: Dict[str, str]
    senders: Dict[str, List[str]] = field(default_factory=dict)
    present: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    reads: Dict[str, List[str]] = field(default_factory=dict)


def _target_channels(network: CIMLUNet, has_regions: bool) -> Dict[int, List[int]]:
    # Softmax channel 0 is background: what a subtask finds is its foreground.
    return {i: [k for k in outs if has_regions or k != 0] for i, outs in enumerate(network.subtask_outputs)}


def _predicted_channels(logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """``(K, *spatial)`` uint8: where the model predicts each output channel (sigmoid > 0.5 or argmax)."""
    logits = np.asarray(logits.detach().float().cpu())
    if has_regions:
        return torch.from_numpy((logits > 0).astype(np.uint8))
    winner = logits.argmax(0)
    return torch.from_numpy(np.stack([winner == k for k in range(logits.shape[0])]).astype(np.uint8))


def _predicted_outputs(segmentation: np.ndarray, channels: Sequence[int], label_manager) -> np.ndarray:
    """Voxels of nnU-Net's exported segmentation that belong to these output channels (bool)."""
    if label_manager.has_regions:
        regions = [label_manager.foreground_regions[k] for k in channels]
        values = sorted({int(v) for r in regions for v in np.atleast_1d(r)})
    else:
        values = [int(label_manager.all_labels[k]) for k in channels]
    return np.isin(segmentation, values)


def explain_image(predictor: nnUNetPredictor, image: np.ndarray, properties: dict,
                  subtasks: Optional[Sequence[str]] = None, senders: Optional[Sequence[str]] = None,
                  case: str = "case", present: Optional[Sequence[bool]] = None) -> CaseExplanation:
    """Explain one case given as the model's reader returns it: ``image`` ``(M, *spatial)``, ``properties``;
    ``present`` ``(M,)``: which modalities exist (default all; a missing one sends nothing).

    ``subtasks``/``senders``: names (case-insensitive) to restrict to; default all. Uses the predictor's
    network with the weights it holds now (after ``initialize_from_trained_model_folder``: the first fold's;
    weights edited in memory included); the predictor's ``use_mirroring`` and ``tile_step_size`` apply.
    """
    network = ciml_network(predictor)
    chosen, computed, shown = select_pairs(network, subtasks, senders)
    if image.shape[0] != len(network.modality_names):
        raise ExplainError(f"case {case!r} has {image.shape[0]} channels; the model expects "
                           f"{len(network.modality_names)} ({', '.join(network.modality_names)})")
    # CPU threads as nnU-Net's own inference sets them (predict_logits_from_preprocessed_data).
    threads = torch.get_num_threads()
    torch.set_num_threads(min(default_num_processes, threads))
    try:
        mask = None if present is None else torch.as_tensor(np.asarray(present), dtype=torch.float32)[None]
        with modalities_present(network, mask):
            return _explain_image(predictor, network, image, properties, chosen, computed, shown, case, present)
    finally:
        torch.set_num_threads(threads)


def _explain_image(predictor: nnUNetPredictor, network: CIMLUNet, image: np.ndarray, properties: dict,
                   chosen: List[int], computed: List[MessagePair], shown: List[MessagePair],
                   case: str, present: Optional[Sequence[bool]] = None) -> CaseExplanation:
    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    label_manager = predictor.label_manager
    preprocessor = configuration_manager.preprocessor_class(verbose=predictor.verbose_preprocessing)
    data, _, props = preprocessor.run_case_npy(image, None, deepcopy(properties), plans_manager,
                                               configuration_manager, predictor.dataset_json)
    if present is not None:
        data = zero_missing_channels(data, np.asarray(present, bool))
    data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))

    show_progress, predictor.allow_tqdm = predictor.allow_tqdm, False  # one progress bar (the Grad-CAM tiles)
    try:
        logits = predictor.predict_sliding_window_return_logits(data).cpu()
    finally:
        predictor.allow_tqdm = show_progress
    targets = _predicted_channels(logits, label_manager.has_regions)
    target_channels = _target_channels(network, label_manager.has_regions)
    with MessageGradCAM(network, computed, target_channels) as gradcam:
        cams = sliding_window_message_cams(predictor, gradcam, data, targets)
    maps = to_input_geometry(cams, props, plans_manager, configuration_manager)
    segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.float(), plans_manager, configuration_manager, label_manager, props)
    segmentation = np.asarray(segmentation)

    modalities, subtask_names = network.modality_names, network.subtask_names
    exists = [True] * len(modalities) if present is None else [bool(p) for p in present]
    reads = network.acting_primaries(exists)
    result = CaseExplanation(case=case, maps={}, shares={}, masses={}, target_voxels={},
                             segmentation=segmentation, predicted={}, image=image, properties=props,
                             modalities=list(modalities), primaries={},
                             present=[m for m, e in zip(modalities, exists) if e],
                             missing=[m for m, e in zip(modalities, exists) if not e])
    for i in chosen:
        subtask = subtask_names[i]
        result.primaries[subtask] = modalities[network.subtask_primaries[i]]
        result.reads[subtask] = reads[i]
        result.predicted[subtask] = _predicted_outputs(segmentation, target_channels[i], label_manager)
        result.target_voxels[subtask] = int(targets[target_channels[i]].amax(0).sum()) if target_channels[i] else 0
        pairs = [p for p in computed if p.subtask == i]
        masses = {modalities[p.sender]: float(maps[computed.index(p)].sum(dtype=np.float64))
                  for p in pairs}
        sending = {modalities[p.sender] for p in pairs if exists[p.sender] and modalities[p.sender] not in reads[i]}
        total = sum(m for s, m in masses.items() if s in sending)
        result.masses[subtask] = masses
        result.shares[subtask] = {s: (m / total if total > 0 and s in sending else None) for s, m in masses.items()}
        # A missing sender sent nothing: it gets no map (an all-zero map would read as "contributed nothing").
        drawn = [p for p in pairs if p in shown and exists[p.sender]]
        result.senders[subtask] = [modalities[p.sender] for p in drawn]
        for p in drawn:
            result.maps[(modalities[p.sender], subtask)] = maps[computed.index(p)]
    return result


def read_case_files(predictor: nnUNetPredictor, case: str, files: Sequence[Optional[Union[str, Path]]]
                    ) -> Tuple[np.ndarray, dict, Optional[np.ndarray]]:
    """One case as the model's reader reads it: ``(image (M, *spatial), properties, present (M,) or None if
    all present)``. Every channel file is checked (:func:`nnunetv2_ciml.missing_modalities.read_case`: complete,
    finite, one geometry); ``None`` is a missing modality, but not all of them. ExplainError names case and file."""
    names = ciml_network(predictor).modality_names
    reader = predictor.plans_manager.image_reader_writer_class()
    try:
        image, properties, present = read_case(reader, case, {c: str(f) for c, f in enumerate(files) if f is not None},
                                               len(files), names, predictor.dataset_json["file_ending"],
                                               image_dimension(predictor.plans_manager))
    except CaseError as e:
        raise ExplainError(str(e)) from None
    if not can_write_map(properties):
        raise ExplainError(f"case {case!r}: maps are written as NIfTI in the input's geometry, which needs a "
                           f"SimpleITK or nibabel reader; this model reads with {type(reader).__name__}")
    return image, properties, None if present.all() else present


def explain_case(predictor: nnUNetPredictor, image_files: Sequence[Optional[Union[str, Path]]],
                 subtasks: Optional[Sequence[str]] = None, senders: Optional[Sequence[str]] = None,
                 case: Optional[str] = None) -> CaseExplanation:
    """Explain one case from its channel files (``_0000``, ``_0001``, ... in order; ``None`` for a missing
    modality, :mod:`nnunetv2_ciml.missing_modalities`), read by :func:`read_case_files`."""
    if case is None:
        name = Path(str(next((f for f in image_files if f is not None), "case"))).name
        case = re.sub(r"_\d{4}$", "", name[:-len(predictor.dataset_json["file_ending"])]) \
            if name.endswith(predictor.dataset_json["file_ending"]) else name
    image, properties, present = read_case_files(predictor, case, image_files)
    return explain_image(predictor, image, properties, subtasks, senders, case, present)

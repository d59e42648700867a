"""Explaining a folder of cases (``nnunetv2_ciml explain``): case discovery, checks first, and the summary
``explain.json`` (per case, and each sender's mean share per subtask)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import save_json
from tqdm import tqdm

from nnunetv2_ciml.interpretability.explain import explain_case, read_case_files
from nnunetv2_ciml.interpretability.model import ExplainError, ciml_network, load_predictor, select_pairs
from nnunetv2_ciml.interpretability.writing import write_case_explanation
from nnunetv2_ciml.missing_modalities import CaseError, check_case_files, find_case_files

__all__ = ["SUMMARY_FILE", "find_cases", "explain_folder"]

SUMMARY_FILE = "explain.json"


def find_cases(input_dir: Union[str, Path], file_ending: str, modalities: Sequence[str]
               ) -> Dict[str, List[Optional[str]]]:
    """Channel files per case in an nnU-Net input folder (``CASE_XXXX<file_ending>``, found by
    :func:`nnunetv2_ciml.missing_modalities.find_case_files`); ``None`` where a modality's file is missing. A file
    of a channel beyond the model's or of another image type stops the run by name
    (:func:`~nnunetv2_ciml.missing_modalities.check_case_files`)."""
    try:
        cases = find_case_files(input_dir, file_ending, len(modalities), modality_names=modalities)
        for case, files in cases.items():
            check_case_files(case, files, len(modalities), modalities, file_ending)
    except CaseError as e:
        raise ExplainError(str(e)) from None
    return {case: [files.get(c) for c in range(len(modalities))] for case, files in cases.items()}


def explain_folder(model_folder: Union[str, Path], fold: Union[int, str], input_dir: Union[str, Path],
                   out_dir: Union[str, Path], subtasks: Optional[Sequence[str]] = None,
                   senders: Optional[Sequence[str]] = None, device: Union[str, torch.device, None] = None,
                   checkpoint_name: str = "checkpoint_final.pth", tile_step_size: float = 0.5,
                   use_mirroring: bool = True) -> dict:
    """Explain every case of ``input_dir`` (named as for ``nnUNetv2_predict``) with one fold of a CIML model.

    Writes ``out_dir/<case>/`` (:func:`write_case_explanation`) and ``out_dir/explain.json``; returns that
    summary: ``{"cases": {case: {...}}, "mean_share": {subtask: {sender: mean over cases with a target}}, ...}``.
    All inputs (names, channel files, their contents and grids: :func:`read_case_files`) are checked
    before any case is computed or anything is written.
    """
    predictor = load_predictor(model_folder, fold, device, checkpoint_name, tile_step_size, use_mirroring)
    network = ciml_network(predictor)
    chosen, computed, _ = select_pairs(network, subtasks, senders)
    cases = find_cases(input_dir, predictor.dataset_json["file_ending"], network.modality_names)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(input_dir).resolve():
        raise ExplainError(f"the output folder must differ from the input folder {str(input_dir)!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExplainError(f"the output folder {str(out_dir)!r} is a file")
    for case, files in cases.items():
        read_case_files(predictor, case, files)  # read twice, so that a bad case stops the run before any output
    out_dir.mkdir(parents=True, exist_ok=True)
    modalities = network.modality_names
    summary = {
        "model_folder": str(Path(model_folder).resolve()), "fold": str(fold), "checkpoint": checkpoint_name,
        "trainer": predictor.trainer_name, "modalities": list(modalities),
        "subtasks": {network.subtask_names[i]: {
            "primary": modalities[network.subtask_primaries[i]],
            "senders": [modalities[p.sender] for p in computed if p.subtask == i]}
            for i in chosen},
        "method": "Grad-CAM on the message tensors per (sender, subtask): target = subtask's foreground logits summed "
                  "over the voxels nnU-Net predicts as them; ReLU(sum_c mean(grad_c) * message_c) per skip level, "
                  "mass-preserving upsampling, summed over levels; share = sender's mass / all senders' mass",
        "cases": {},
    }
    for case, files in tqdm(cases.items(), desc="explain", disable=not predictor.allow_tqdm):
        explanation = explain_case(predictor, files, subtasks, senders, case)
        summary["cases"][case] = write_case_explanation(explanation, out_dir)
    summary["mean_share"] = {}
    for subtask, info in summary["subtasks"].items():
        summary["mean_share"][subtask] = {}
        for sender in info["senders"]:
            values = [c["subtasks"][subtask]["senders"][sender]["share"] for c in summary["cases"].values()]
            values = [v for v in values if v is not None]
            summary["mean_share"][subtask][sender] = float(np.mean(values)) if values else None
    save_json(summary, str(out_dir / SUMMARY_FILE), sort_keys=False)
    return summary

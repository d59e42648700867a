"""Explaining a folder of cases (``nnunetv2_ciml explain``): case discovery, checks first, the output policy of
``predict`` (:mod:`nnunetv2_ciml.output_folder`), and the summary ``explain.json`` (per case, and each sender's mean
share per subtask)."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from nnunetv2_ciml.console_progress import progress
from nnunetv2_ciml.interpretability.explain import explain_case, read_case_files
from nnunetv2_ciml.interpretability.model import ExplainError, ciml_network, load_predictor, select_pairs
from nnunetv2_ciml.interpretability.writing import write_case_explanation
from nnunetv2_ciml.missing_modalities import CaseError, check_case_files, find_case_files
from nnunetv2_ciml.output_folder import (check_output_folder, recorded_files, refuse_foreign, replace_outputs,
                                         staging_folder)

__all__ = ["SUMMARY_FILE", "find_cases", "explain_folder", "mean_shares", "describe_mean_shares"]

SUMMARY_FILE = "explain.json"
STAGING = ".explain.partial"  # where a run writes before its files replace the output folder's


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


def _cases_predicting(summary: dict, subtask: str) -> List[dict]:
    """The cases of ``summary`` that predict ``subtask``'s outputs (some sender has a share there)."""
    return [c for c in summary["cases"].values()
            if any(v["share"] is not None for v in c["subtasks"][subtask]["senders"].values())]


def mean_shares(summary: dict) -> dict:
    """Each sender's mean share per subtask over the cases that predict the subtask; a sender that sent nothing in
    a case (missing, or read in place of a missing primary) counts 0 there, so a subtask's means add up to 1.
    ``{subtask: {sender: mean, or None when no case predicts the subtask}}``."""
    means = {}
    for subtask, info in summary["subtasks"].items():
        cases = _cases_predicting(summary, subtask)
        means[subtask] = {s: float(np.mean([c["subtasks"][subtask]["senders"][s]["share"] or 0.0 for c in cases]))
                          if cases else None for s in info["senders"]}
    return means


def describe_mean_shares(summary: dict) -> Dict[str, str]:
    """One line per subtask for the console: each sender's mean share, ``missing`` for a sender missing in every
    case that predicts the subtask, and in how many of them it was missing otherwise."""
    lines = {}
    for subtask, shares in summary["mean_share"].items():
        cases = _cases_predicting(summary, subtask)
        parts = []
        for sender, share in shares.items():
            missing = sum(sender in c["missing"] for c in cases)
            if share is None:
                parts.append(f"{sender} n/a (nothing predicted)")
            elif missing == len(cases):
                parts.append(f"{sender} missing")
            else:
                parts.append(f"{sender} {share:.2f}" + (f" (missing in {missing} of {len(cases)} cases)" if missing
                                                        else ""))
        lines[subtask] = ", ".join(parts)
    return lines


def explain_folder(model_folder: Union[str, Path], fold: Union[int, str], input_dir: Union[str, Path],
                   out_dir: Union[str, Path], subtasks: Optional[Sequence[str]] = None,
                   senders: Optional[Sequence[str]] = None, device: Union[str, torch.device, None] = None,
                   checkpoint_name: str = "checkpoint_final.pth", tile_step_size: float = 0.5,
                   use_mirroring: bool = True, overwrite: bool = False, allow_tqdm: Optional[bool] = None) -> dict:
    """Explain every case of ``input_dir`` (named as for ``nnUNetv2_predict``) with one fold of a CIML model.

    Writes ``out_dir/<case>/`` (:func:`write_case_explanation`) and ``out_dir/explain.json``; returns that
    summary: ``{"cases": {case: {...}}, "mean_share": {subtask: {sender: mean}} (:func:`mean_shares`), "files": [...],
    ...}``. All inputs (names, channel files, their contents and grids: :func:`read_case_files`) are checked
    before any case is computed or anything is written. ``out_dir`` follows ``predict``'s policy
    (:mod:`nnunetv2_ciml.output_folder`): not empty is refused unless ``overwrite``, which replaces the files an
    earlier explain recorded in its explain.json and keeps any other. ``allow_tqdm``: None (default) a bar per case
    and per Grad-CAM tile on a terminal, plain progress lines elsewhere; False: none.
    """
    predictor = load_predictor(model_folder, fold, device, checkpoint_name, tile_step_size, use_mirroring,
                               allow_tqdm)
    network = ciml_network(predictor)
    chosen, computed, _ = select_pairs(network, subtasks, senders)
    cases = find_cases(input_dir, predictor.dataset_json["file_ending"], network.modality_names)
    check_output_folder(out_dir, [input_dir], overwrite, STAGING)
    for case, files in cases.items():
        read_case_files(predictor, case, files)  # read twice, so that a bad case stops the run before any output
    out_dir = Path(out_dir)
    earlier = recorded_files(out_dir, SUMMARY_FILE)
    refuse_foreign(out_dir, [SUMMARY_FILE, *(f"{case}/prediction.nii.gz" for case in cases)], earlier, SUMMARY_FILE)
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
                  "mass-preserving upsampling, summed over levels; share = sender's mass / all senders' mass; "
                  "mean_share: over the cases that predict the subtask, a sender that sent nothing counting 0",
        "cases": {},
    }
    with staging_folder(out_dir, STAGING) as staging:
        for case, files in progress(cases.items(), len(cases), "explain", enabled=allow_tqdm is not False):
            explanation = explain_case(predictor, files, subtasks, senders, case)
            summary["cases"][case] = write_case_explanation(explanation, staging)
        summary["mean_share"] = mean_shares(summary)
        summary["files"] = replace_outputs(out_dir, staging, SUMMARY_FILE, summary, earlier)
    return summary

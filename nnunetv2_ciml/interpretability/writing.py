"""Writing one explained case: NIfTI maps and the prediction in the input's geometry, overlay PNGs."""
import re
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from nnunetv2_ciml.interpretability.explain import CaseExplanation
from nnunetv2_ciml.interpretability.geometry import write_map
from nnunetv2_ciml.interpretability.overlay import render_subtask_overlay

__all__ = ["map_file_name", "write_case_explanation"]


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_") or "unnamed"


def map_file_name(sender: str, subtask: str) -> str:
    """``<sender>_to_<subtask>.nii.gz`` (characters other than letters, digits, ``.+-`` become ``_``)."""
    return f"{_file_name(sender)}_to_{_file_name(subtask)}.nii.gz"


def write_case_explanation(explanation: CaseExplanation, out_dir: Union[str, Path],
                           outlines: Optional[Dict[str, Tuple[str, np.ndarray]]] = None) -> dict:
    """Write ``out_dir/<case>/``: one NIfTI map per (sender the case has, subtask) ``<sender>_to_<subtask>.nii.gz``,
    ``prediction.nii.gz`` (nnU-Net's segmentation) and ``messages_to_<subtask>.png``, all in the input's
    geometry; ``outlines[subtask]``: ``(what, mask)`` outlined in that subtask's overlay. Returns the case's summary
    (shares, masses, file names relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    case_dir = out_dir / explanation.case
    case_dir.mkdir(parents=True, exist_ok=True)
    props = explanation.properties
    prediction = case_dir / "prediction.nii.gz"
    write_map(explanation.segmentation.astype(np.uint8 if explanation.segmentation.max(initial=0) < 256
                                              else np.uint16), prediction, props)
    spacing = props["spacing"]
    aspect = float(spacing[-2]) / float(spacing[-1]) if len(spacing) >= 2 else 1.0
    images = {m: explanation.image[c] for c, m in enumerate(explanation.modalities)}
    summary = {"prediction": prediction.relative_to(out_dir).as_posix(), "present": explanation.present,
               "missing": explanation.missing, "subtasks": {}}
    for subtask, shares in explanation.shares.items():
        entry = {"primary": explanation.primaries[subtask], "reads": explanation.reads[subtask],
                 "target_voxels": explanation.target_voxels[subtask], "senders": {}}
        for sender, share in shares.items():
            entry["senders"][sender] = {"share": share, "mass": explanation.masses[subtask][sender]}
            if (sender, subtask) in explanation.maps:
                path = case_dir / map_file_name(sender, subtask)
                write_map(explanation.maps[(sender, subtask)], path, props)
                entry["senders"][sender]["map"] = path.relative_to(out_dir).as_posix()
        shown = {s: explanation.maps[(s, subtask)] for s in explanation.senders[subtask]}
        if shown:
            png = case_dir / f"messages_to_{_file_name(subtask)}.png"
            reads = explanation.reads.get(subtask)
            entry["slices"] = render_subtask_overlay(png, explanation.case, subtask, explanation.primaries[subtask],
                                                     images, shown, shares, explanation.predicted[subtask], aspect,
                                                     read=reads[0] if reads else None,
                                                     outline=(outlines or {}).get(subtask),
                                                     missing=explanation.missing)
            entry["overlay"] = png.relative_to(out_dir).as_posix()
        summary["subtasks"][subtask] = entry
    return summary

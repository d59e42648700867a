"""The demo's explanation stage: Grad-CAM on CIML's messages (:mod:`nnunetv2_ciml.interpretability`) for every
held-out case, and where their mass lies against the complementary masks.

``complementary_share`` is the mean over complementary cases of the share of the message-map mass (all senders,
all subtasks) inside the complementary mask, ``complementary_area_share`` the mean of the mask's share of the
image over the same cases (claim 3 of :mod:`nnunetv2_ciml.demo.claims`).
"""
import sys
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

from nnunetv2_ciml.demo.evaluate import mean_of
from nnunetv2_ciml.image_io import read_image_array

__all__ = ["explain_model"]


def explain_model(predictor, cases: Dict[str, List[str]], raw: Path, complementary_cases: List[str],
                  figure_cases: List[str], out_dir: Path, file_ending: str, verbose: bool,
                  console: Optional[TextIO] = None) -> Tuple[dict, Dict[str, object]]:
    """complementary_share and its parts for CIML's ``predictor``; the maps of ``figure_cases`` written to
    ``out_dir`` with their part of ``explain.json``. Returns (results, explanations of the figure cases)."""
    from nnunetv2_ciml.demo.complementary import complementary_share, mass_breakdown
    from nnunetv2_ciml.demo.shape_composition import LABELS
    from batchgenerators.utilities.file_and_folder_operations import save_json

    from nnunetv2_ciml.interpretability import explain_case, write_case_explanation
    from nnunetv2_ciml.interpretability.folder import SUMMARY_FILE
    from nnunetv2_ciml.network import pair_name
    from nnunetv2_ciml.console_progress import progress

    predictor.allow_tqdm = False
    shares, areas, breakdowns = [], [], []
    pair_shares: Dict[str, List[float]] = {}
    all_shares, all_areas = [], []
    kept, written = {}, {}
    for case, files in progress(cases.items(), len(cases), "    explain CIML", enabled=verbose,
                                stream=console if console is not None else sys.stdout):
        explanation = explain_case(predictor, files, case=case)
        mask = read_image_array(raw / "complementaryTs" / f"{case}{file_ending}")
        share, area = complementary_share(explanation.maps.values(), mask > 0)
        if case in complementary_cases:
            if share is not None:
                shares.append(share)
                areas.append(area)
                label = read_image_array(raw / "labelsTs" / f"{case}{file_ending}")
                breakdowns.append(mass_breakdown(explanation.maps.values(), mask, label))
            for (sender, subtask), m in explanation.maps.items():
                s, _ = complementary_share([m], mask == LABELS[subtask])
                if s is not None:
                    pair_shares.setdefault(pair_name(sender, subtask), []).append(s)
        if share is not None:
            all_shares.append(share)
            all_areas.append(area)
        if case in figure_cases:
            kept[case] = explanation
            pairs = {subtask: ("decoy/twin pairs", mask == LABELS[subtask]) for subtask in explanation.shares}
            written[case] = write_case_explanation(explanation, out_dir, outlines=pairs)
    # the per-case part of what ``nnunetv2_ciml explain`` writes, for the cases whose maps are kept
    save_json({"cases": written}, str(out_dir / SUMMARY_FILE), sort_keys=False)
    result = {
        "complementary_share": mean_of(shares),
        "complementary_area_share": mean_of(areas),
        "num_cases": len(shares),
        "cases_share_above_area_share": sum(s > a for s, a in zip(shares, areas)),
        "mass_breakdown": {k: mean_of(b[k] for b in breakdowns) for k in breakdowns[0]} if breakdowns else None,
        "complementary_share_by_pair": {k: mean_of(v) for k, v in pair_shares.items()},
        "all_cases": {"complementary_share": mean_of(all_shares), "complementary_area_share": mean_of(all_areas),
                      "num_cases": len(all_shares)},
    }
    return result, kept

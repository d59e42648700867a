"""The demo's evaluation stage: Dice and HD95 per label on all held-out cases (``evaluate nnunet``), and on the
complementary cases (those with decoy/twin pairs) Dice, Dice inside the complementary masks and pair accuracy
(:mod:`nnunetv2_ciml.demo.complementary`)."""
import math
from pathlib import Path
from typing import List, Optional

from nnunetv2_ciml.demo.complementary import mask_dice, pair_accuracy, pair_decisions
from nnunetv2_ciml.demo.shape_composition import LABELS
from nnunetv2_ciml.image_io import read_image_array

__all__ = ["evaluate_model", "mean_of"]


def mean_of(values) -> Optional[float]:
    """The mean of the values that are numbers (None and NaN left out); None if there are none."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(sum(values) / len(values)) if values else None


def evaluate_model(raw: Path, pred_dir: Path, out_dir: Path, objects: dict, complementary_cases: List[str],
                   file_ending: str) -> dict:
    """One model's predictions in ``pred_dir`` against the held-out labels of the raw dataset ``raw``
    (``evaluate nnunet``'s files in ``out_dir``): mean Dice and HD95 per label, and on the complementary cases
    Dice, Dice inside the masks and pair accuracy (the ``models`` entries of ``results.json``)."""
    from nnunetv2_ciml.evaluation import evaluate_folder

    summary = evaluate_folder("nnunet", raw / "labelsTs", pred_dir, out_dir, num_processes=1, verbose=False,
                              dataset_json=str(raw / "dataset.json"))
    names = [n for n in LABELS if n != "background"]
    per_case = summary["per_case"]
    result = {"mean_dice": summary["foreground_mean"]["Dice"],
              "dice": {n: summary["mean"][n]["Dice"] for n in names},
              "hd95": {n: summary["mean"][n]["HD95"] for n in names},
              "mean_hd95": summary["foreground_mean"]["HD95"]}

    decisions, arrays = [], []
    for case in complementary_cases:
        ref = read_image_array(raw / "labelsTs" / f"{case}{file_ending}")
        pred = read_image_array(pred_dir / f"{case}{file_ending}")
        mask = read_image_array(raw / "complementaryTs" / f"{case}{file_ending}")
        decisions += pair_decisions(objects[case]["objects"], pred)
        arrays.append((ref, pred, mask))
    in_mask = mask_dice(arrays, [LABELS[n] for n in names])
    comp_dice = {n: mean_of(per_case[c][n]["Dice"] for c in complementary_cases) for n in names}
    others = [c for c in per_case if c not in complementary_cases]
    result["complementary_cases"] = {
        "num_cases": len(complementary_cases),
        "mean_dice": mean_of(comp_dice.values()),
        "dice": comp_dice,
        "mask_dice": {n: in_mask[LABELS[n]] for n in names},
        "mean_mask_dice": mean_of(in_mask.values()),
        "pair_accuracy": pair_accuracy(decisions),
        "num_pair_objects": len(decisions),
    }
    other_dice = {n: mean_of(per_case[c][n]["Dice"] for c in others) for n in names}
    result["other_cases"] = {"num_cases": len(others), "mean_dice": mean_of(other_dice.values()), "dice": other_dice}
    return result

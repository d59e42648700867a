"""BraTS mode: label conventions, empty-case rules, spacing, real data against an independent computation."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import brute_force_hd95
from nnunetv2_ciml.evaluation import (BRATS_HD95_PENALTY_MM, EvaluationError, brats_region_metrics,
                                      evaluate_folder)

DATA = Path(__file__).resolve().parent / "data" / "brats_TCGA-DU-7294"  # cropped around the tumour
TEAMS = ("hnfnetv1-20", "sanet0-20", "scan-20", "yixinmpl-20")


def independent_dice_hd95(ref: np.ndarray, pred: np.ndarray, spacing):
    """Dice by counting; HD95 by brute force (explicit 6-neighbour surfaces, all pairwise distances)."""
    if not ref.any() and not pred.any():
        return 1.0, 0.0
    if not ref.any() or not pred.any():
        return 0.0, BRATS_HD95_PENALTY_MM
    dice = 2 * np.sum(ref & pred) / (np.sum(ref) + np.sum(pred))
    return dice, brute_force_hd95(ref, pred, spacing)


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_empty_case_rules():
    ref = np.zeros((8, 9, 10), np.uint8)
    ref[2:5, 2:6, 3:7] = 2  # edema only: WT non-empty, TC and ET empty
    pred = np.zeros_like(ref)
    m = brats_region_metrics(ref, pred, (1, 1, 1))
    assert m["WT"] == {"Dice": 0.0, "HD95": BRATS_HD95_PENALTY_MM}  # prediction empty
    assert m["TC"] == {"Dice": 1.0, "HD95": 0.0} and m["ET"] == {"Dice": 1.0, "HD95": 0.0}  # both empty
    m = brats_region_metrics(pred, ref, (1, 1, 1))
    assert m["WT"] == {"Dice": 0.0, "HD95": 373.12866}  # reference empty
    assert BRATS_HD95_PENALTY_MM == pytest.approx(np.sqrt(240 ** 2 + 240 ** 2 + 155 ** 2), abs=1e-5)


@pytest.mark.parametrize("labels, value, expected_non_empty", [
    ("brats2020", 1, {"WT", "TC"}), ("brats2020", 2, {"WT"}), ("brats2020", 4, {"WT", "TC", "ET"}),
    ("brats2023", 1, {"WT", "TC"}), ("brats2023", 2, {"WT"}), ("brats2023", 3, {"WT", "TC", "ET"}),
    ("nnunet", 1, {"WT"}), ("nnunet", 2, {"WT", "TC"}), ("nnunet", 3, {"WT", "TC", "ET"}),
])
def test_label_conventions(labels, value, expected_non_empty):
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = value
    m = brats_region_metrics(ref, np.zeros_like(ref), (1, 1, 1), labels=labels)
    non_empty = {r for r, v in m.items() if v["Dice"] == 0.0}  # empty prediction: 0 where reference is non-empty
    assert non_empty == expected_non_empty


def test_hd95_uses_the_spacing():
    ref = np.zeros((12, 6, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[2] = 2
    pred[6] = 2
    assert brats_region_metrics(ref, pred, (3.0, 1.0, 1.0))["WT"]["HD95"] == pytest.approx(12.0)
    assert brats_region_metrics(ref, pred, (1.0, 1.0, 1.0))["WT"]["HD95"] == pytest.approx(4.0)


def test_unknown_convention():
    with pytest.raises(EvaluationError, match="brats2021"):
        brats_region_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1, 1, 1), labels="brats2021")


@pytest.mark.parametrize("team", TEAMS)
def test_real_case_against_independent_computation(team):
    ref, pred = read(DATA / "isen-20.nii.gz"), read(DATA / f"{team}.nii.gz")
    metrics = brats_region_metrics(ref, pred, (1.0, 1.0, 1.0))
    for region, labels in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        dice, hd = independent_dice_hd95(np.isin(ref, labels), np.isin(pred, labels), (1.0, 1.0, 1.0))
        assert metrics[region]["Dice"] == pytest.approx(dice, abs=1e-12), region
        assert metrics[region]["HD95"] == pytest.approx(hd, abs=1e-12), region
    # isen-20 has no enhancing tumour: hnfnetv1-20 and sanet0-20 predict some, the others none
    predicts_et = team in ("hnfnetv1-20", "sanet0-20")
    assert metrics["ET"] == ({"Dice": 0.0, "HD95": 373.12866} if predicts_et else {"Dice": 1.0, "HD95": 0.0})
    assert 0.9 < metrics["WT"]["Dice"] < 1.0 and 0 < metrics["WT"]["HD95"] < 10


def test_folder_with_real_segmentations(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for team in TEAMS + ("nobody",):
        shutil.copy(DATA / "isen-20.nii.gz", ref_dir / f"case_{team}.nii.gz")
    for team in TEAMS:
        shutil.copy(DATA / f"{team}.nii.gz", pred_dir / f"case_{team}.nii.gz")
    shutil.copy(DATA / "scan-20.nii.gz", pred_dir / "not_a_reference_case.nii.gz")
    (pred_dir / "notes.txt").write_text("not a case")

    summary = evaluate_folder("brats", ref_dir, pred_dir, tmp_path / "out", num_processes=2)

    cases = sorted(f"case_{t}" for t in TEAMS + ("nobody",))  # cases come in sorted file-name order
    assert list(summary["per_case"]) == cases
    assert summary["missing"] == ["case_nobody"] and summary["unmatched_predictions"] == ["not_a_reference_case"]
    ref = read(DATA / "isen-20.nii.gz")
    for team in TEAMS:
        expected = brats_region_metrics(ref, read(DATA / f"{team}.nii.gz"), (1, 1, 1))
        assert summary["per_case"][f"case_{team}"] == expected
    # missing prediction = empty prediction: WT/TC penalised, ET (empty in isen-20) both empty
    assert summary["per_case"]["case_nobody"] == {"WT": {"Dice": 0.0, "HD95": 373.12866},
                                                  "TC": {"Dice": 0.0, "HD95": 373.12866},
                                                  "ET": {"Dice": 1.0, "HD95": 0.0}}
    for region in ("WT", "TC", "ET"):
        for metric in ("Dice", "HD95"):
            values = [summary["per_case"][c][region][metric] for c in cases]
            assert summary["mean"][region][metric] == pytest.approx(np.mean(values))
            assert summary["std"][region][metric] == pytest.approx(np.std(values))
            assert summary["median"][region][metric] == pytest.approx(np.median(values))

    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    with open(tmp_path / "out" / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == cases
    assert list(rows[0]) == ["case", "prediction_missing", "WT_Dice", "WT_HD95", "TC_Dice", "TC_HD95", "ET_Dice",
                            "ET_HD95"]
    assert [r["prediction_missing"] for r in rows] == [str(c == "case_nobody") for c in cases]
    assert float(rows[0]["WT_HD95"]) == summary["per_case"]["case_hnfnetv1-20"]["WT"]["HD95"]
    # inputs untouched
    assert sorted(p.name for p in pred_dir.iterdir()) == sorted([f"case_{t}.nii.gz" for t in TEAMS] +
                                                                ["not_a_reference_case.nii.gz", "notes.txt"])


def test_labels_are_read_from_the_references_or_refused_as_lesion_wise(tmp_path, capsys):
    """A real case's segmentations in nnU-Net's labels (1 edema, 2 NCR, 3 ET) with the ET merged into the NCR, so that
    no file holds label 3: their values are valid BraTS 2020 labels, and without --labels the image-level evaluation
    scored nnU-Net's oedema as the tumour core. Now it reads the convention from the references as the lesion-wise
    evaluation does and refuses with the choice to make; with --labels nnunet its TC is the original TC. BraTS 2020
    files are still read without --labels, and BraTS 2023 files (ET = 3) are read instead of refused. Fails if the
    image-level evaluation assumes BraTS 2020 whenever the values allow it."""
    from nnunetv2_ciml.cli import main

    ref_2020, pred_2020 = read(DATA / f"{TEAMS[0]}.nii.gz"), read(DATA / f"{TEAMS[1]}.nii.gz")
    conventions = {"nnunet": np.array([0, 2, 1, 0, 2], np.uint8), "brats2020": np.arange(5, dtype=np.uint8),
                   "brats2023": np.array([0, 1, 2, 0, 3], np.uint8)}  # indexed by the BraTS 2020 labels
    summaries = {}
    for name, table in conventions.items():
        for folder, array in (("ref", ref_2020), ("pred", pred_2020)):
            (tmp_path / name / folder).mkdir(parents=True)
            sitk.WriteImage(sitk.GetImageFromArray(table[array]), str(tmp_path / name / folder / "case.nii.gz"))
        argv = ["evaluate", "brats", "-ref", str(tmp_path / name / "ref"), "-pred", str(tmp_path / name / "pred"),
                "-o", str(tmp_path / name / "out")]
        code = main(argv)
        err = capsys.readouterr().err
        if name == "nnunet":
            assert code == 1 and "label 1 holds more voxels than label 2" in err and "--labels nnunet" in err
            assert not (tmp_path / name / "out").exists()
            code = main(argv + ["--labels", "nnunet"])
        assert code == 0
        summaries[name] = json.loads((tmp_path / name / "out" / "summary.json").read_text())
    expected = brats_region_metrics(ref_2020, pred_2020, (1, 1, 1))
    assert summaries["brats2020"]["per_case"]["case"] == summaries["brats2023"]["per_case"]["case"] == expected
    nnunet = summaries["nnunet"]["per_case"]["case"]  # its ET was merged into the NCR: the same WT and TC
    assert (nnunet["WT"], nnunet["TC"], nnunet["ET"]) == (expected["WT"], expected["TC"], {"Dice": 1.0, "HD95": 0.0})
    assert "detected: label" in summaries["brats2020"]["label_convention"]
    assert summaries["brats2023"]["label_convention"].startswith("BraTS brats2023; detected")

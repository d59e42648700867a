"""autoPET mode: component volumes with 18-connectivity, official NaN conventions, summary means."""
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from helpers import write_labels

from nnunetv2_ciml.evaluation import EvaluationError, autopet_case_metrics, evaluate_folder

SPACING = (3.0, 2.0, 2.0)  # mm, array order: 12 mm^3 = 0.012 mL per voxel


def official_autopet3(gt: np.ndarray, pred: np.ndarray, voxel_ml: float):
    """The autoPET III evaluation_metrics.py algorithm, written out (cc3d, per-component loop)."""
    cc3d = pytest.importorskip("cc3d")

    def count(mask, other):
        components = cc3d.connected_components(mask.astype(int), connectivity=18)
        return sum(int((components == i).sum()) for i in range(1, components.max() + 1)
                   if ((components == i) * other).sum() == 0)

    fp = 0.0 if pred.sum() == 0 else count(pred, gt) * voxel_ml
    fn = math.nan if gt.sum() == 0 else count(gt, pred) * voxel_ml
    dice = math.nan if gt.sum() == 0 else 2 * (gt * pred).sum() / (gt.sum() + pred.sum())
    return dice, fp, fn


def write(path, array, spacing=SPACING):
    write_labels(path, array, spacing[::-1])  # SPACING is in array order


def test_components_and_volumes():
    gt = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[2:5, 2:5, 2:5] = 1  # 27 voxels, overlapped by the prediction
    gt[10:12, 10:12, 10:12] = 1  # 8 voxels, missed
    gt[17, 17, 17] = 1  # 1 voxel, missed
    pred[3:6, 3:6, 3:6] = 1  # 27 voxels, 8 of them inside the first lesion
    pred[6, 6, 4] = 1  # shares an edge with the block: same 18-connected component, not a false positive
    pred[6, 6, 6] = 1  # shares only a corner: its own component, a false positive
    pred[14:17, 2:4, 2:4] = 1  # 12 voxels, a false positive
    m = autopet_case_metrics(gt, pred, SPACING)
    assert m["Dice"] == pytest.approx(2 * 8 / (36 + 41))
    assert m["FPvol_ml"] == pytest.approx(13 * 0.012)
    assert m["FNvol_ml"] == pytest.approx(9 * 0.012)
    assert (m["Dice"], m["FPvol_ml"], m["FNvol_ml"]) == pytest.approx(official_autopet3(gt, pred, 0.012))


def test_empty_conventions_of_the_official_code():
    empty = np.zeros((6, 6, 6), np.uint8)
    lesion = empty.copy()
    lesion[1:3, 1:3, 1:3] = 1
    both_empty = autopet_case_metrics(empty, empty, SPACING)
    assert math.isnan(both_empty["Dice"]) and both_empty["FPvol_ml"] == 0 and math.isnan(both_empty["FNvol_ml"])
    no_lesion = autopet_case_metrics(empty, lesion, SPACING)
    assert math.isnan(no_lesion["Dice"]) and no_lesion["FPvol_ml"] == pytest.approx(8 * 0.012)
    assert math.isnan(no_lesion["FNvol_ml"])
    missed = autopet_case_metrics(lesion, empty, SPACING)
    assert missed == {"Dice": 0.0, "FPvol_ml": 0.0, "FNvol_ml": pytest.approx(8 * 0.012)}


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_official_algorithm_on_random_lesions(seed):
    rng = np.random.default_rng(seed)

    def blobs():
        smooth = gaussian_filter(rng.random((20, 24, 22)), 1.2)
        return (smooth > np.quantile(smooth, 0.9)).astype(np.uint8)

    gt, pred = blobs(), blobs()
    m = autopet_case_metrics(gt, pred, SPACING)
    assert (m["Dice"], m["FPvol_ml"], m["FNvol_ml"]) == pytest.approx(official_autopet3(gt, pred, 0.012))
    assert m["FPvol_ml"] > 0 and m["FNvol_ml"] > 0


def test_folder_summary_uses_nan_means(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    empty = np.zeros((8, 8, 8), np.uint8)
    lesion = empty.copy()
    lesion[2:4, 2:4, 2:4] = 1
    half = empty.copy()
    half[2:4, 2:4, 2:3] = 1
    write(ref_dir / "negative.nii.gz", empty)
    write(pred_dir / "negative.nii.gz", lesion)  # 8 voxels FP
    write(ref_dir / "positive.nii.gz", lesion)
    write(pred_dir / "positive.nii.gz", half)
    write(ref_dir / "unpredicted.nii.gz", lesion)  # no prediction: empty

    summary = evaluate_folder("autopet", ref_dir, pred_dir, tmp_path / "out")
    assert summary["missing"] == ["unpredicted"]
    assert summary["n_cases"] == 3 and summary["n_cases_with_lesion"] == 2
    assert summary["per_case"]["positive"] == {"Dice": pytest.approx(2 * 4 / 12), "FPvol_ml": 0.0, "FNvol_ml": 0.0}
    assert summary["per_case"]["unpredicted"] == {"Dice": 0.0, "FPvol_ml": 0.0, "FNvol_ml": pytest.approx(0.096)}
    assert summary["mean"]["Dice"] == pytest.approx((2 * 4 / 12 + 0.0) / 2)  # over cases with a lesion
    assert summary["mean"]["FPvol_ml"] == pytest.approx(0.096 / 3)  # over all cases
    assert summary["mean"]["FNvol_ml"] == pytest.approx(0.096 / 2)
    header = (tmp_path / "out" / "per_case.csv").read_text().splitlines()[0]
    assert header == "case,prediction_missing,Dice,FPvol_ml,FNvol_ml"


def test_rejects_labels_other_than_0_and_1(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1] = 2
    write(ref_dir / "patient_7.nii.gz", labels > 0)
    write(pred_dir / "patient_7.nii.gz", labels)
    with pytest.raises(EvaluationError, match=r"case 'patient_7': prediction file .*patient_7.nii.gz.* \[2\]"):
        evaluate_folder("autopet", ref_dir, pred_dir, tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()

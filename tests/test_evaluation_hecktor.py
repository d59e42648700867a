"""HECKTOR mode: aggregated Dice in mm^3 over the set, nearest-neighbour resampling onto the reference grid."""
import math

import numpy as np
import pytest

from helpers import write_labels as write

from nnunetv2_ciml.evaluation import EvaluationError, evaluate_folder, hecktor_aggregated_dice, hecktor_case_metrics


def labels_with(shape, counts):
    """A label map with ``counts[label] = (first flat index, number of voxels)``."""
    flat = np.zeros(int(np.prod(shape)), np.uint8)
    for label, (start, n) in counts.items():
        flat[start:start + n] = label
    return flat.reshape(shape)


def test_aggregated_dice_by_hand():
    shape = (4, 5, 6)
    # case 1, 1 mm^3 voxels: GTVp ref 10, pred 8, overlap 6; GTVn only predicted (4 voxels of FP)
    ref1 = labels_with(shape, {1: (0, 10)})
    pred1 = labels_with(shape, {1: (4, 8), 2: (50, 4)})
    # case 2, 8 mm^3 voxels: GTVp ref 5 = pred 5; GTVn ref 6, pred 3 inside it
    ref2 = labels_with(shape, {1: (0, 5), 2: (20, 6)})
    pred2 = labels_with(shape, {1: (0, 5), 2: (20, 3)})
    # case 3: no nodes anywhere, perfect GTVp
    ref3 = labels_with(shape, {1: (0, 7)})
    c1 = hecktor_case_metrics(ref1, pred1, (1.0, 1.0, 1.0))
    c2 = hecktor_case_metrics(ref2, pred2, (2.0, 2.0, 2.0))
    c3 = hecktor_case_metrics(ref3, ref3, (1.0, 1.0, 1.0))
    assert c1["GTVp"]["TP_mm3"] == 6 and c2["GTVn"]["TP_mm3"] == 24 and c2["GTVn"]["vol_ref_mm3"] == 48
    agg = hecktor_aggregated_dice([c1, c2])
    assert agg["GTVp"]["DSCagg"] == pytest.approx(2 * (6 + 40) / (18 + 80))
    assert agg["GTVn"]["DSCagg"] == pytest.approx(2 * 24 / (4 + 72))
    assert agg["mean_DSCagg"] == pytest.approx((92 / 98 + 48 / 76) / 2)
    with_3 = hecktor_aggregated_dice([c1, c2, c3])
    assert with_3["GTVn"]["DSCagg"] == agg["GTVn"]["DSCagg"]  # a case without nodes adds nothing to GTVn
    assert with_3["GTVp"]["DSCagg"] == pytest.approx(2 * (6 + 40 + 7) / (18 + 80 + 14))
    # per-case values use the BraTS empty-case rules
    assert c1["GTVn"]["Dice"] == 0.0 and c1["GTVn"]["HD95"] == 373.12866
    assert c3["GTVn"]["Dice"] == 1.0 and c3["GTVn"]["HD95"] == 0.0


def test_class_absent_from_the_whole_set_is_nan():
    ref = labels_with((3, 3, 3), {1: (0, 4)})
    agg = hecktor_aggregated_dice([hecktor_case_metrics(ref, ref, (1.0, 1.0, 1.0))])
    assert agg["GTVp"]["DSCagg"] == 1.0 and math.isnan(agg["GTVn"]["DSCagg"]) and math.isnan(agg["mean_DSCagg"])


def test_predictions_on_other_grids_are_resampled(tmp_path, capsys):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    spacing = (1.0, 1.0, 3.0)  # x, y, z like a CT
    ref = np.zeros((6, 10, 12), np.uint8)  # (z, y, x)
    ref[1:4, 2:6, 3:8] = 1
    ref[2:5, 6:9, 8:11] = 2
    for case in ("shifted", "finer", "same"):
        write(ref_dir / f"{case}.nii.gz", ref, spacing, origin=(10.0, 20.0, 30.0))
    # larger field of view, origin two voxels lower in x and one slice lower in z
    big = np.zeros((9, 12, 16), np.uint8)
    big[1:7, 0:10, 2:14] = ref
    big[8, 11, 15] = 1  # outside the reference field of view: cropped away
    write(pred_dir / "shifted.nii.gz", big, spacing, origin=(8.0, 20.0, 27.0))
    # half the spacing, same origin: fine voxel 2i has the centre of reference voxel i
    finer = np.repeat(np.repeat(np.repeat(ref, 2, 0), 2, 1), 2, 2)
    write(pred_dir / "finer.nii.gz", finer, (0.5, 0.5, 1.5), origin=(10.0, 20.0, 30.0))
    write(pred_dir / "same.nii.gz", ref, spacing, origin=(10.0, 20.0, 30.0))

    summary = evaluate_folder("hecktor", ref_dir, pred_dir, tmp_path / "out")
    assert summary["resampled"] == ["finer", "shifted"]
    for case in ("shifted", "finer", "same"):
        for name in ("GTVp", "GTVn"):
            assert summary["per_case"][case][name]["Dice"] == 1.0
            assert summary["per_case"][case][name]["vol_ref_mm3"] == pytest.approx(3 * (60 if name == "GTVp" else 27))
    assert summary["aggregated"] == {"GTVp": {"DSCagg": 1.0}, "GTVn": {"DSCagg": 1.0}, "mean_DSCagg": 1.0}
    err = capsys.readouterr().err
    assert "case 'finer': prediction resampled" in err and "official evaluator rejects" in err
    assert "case 'shifted': prediction resampled" in err
    assert "official evaluator rejects" not in err.split("case 'shifted'")[1]
    assert "resampled" in (tmp_path / "out" / "per_case.csv").read_text().splitlines()[0]


def test_rejects_labels_other_than_0_1_2(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    ref = labels_with((3, 3, 3), {1: (0, 4), 3: (10, 2)})
    write(ref_dir / "CHUM-001.nii.gz", ref)
    write(pred_dir / "CHUM-001.nii.gz", ref)
    with pytest.raises(EvaluationError, match=r"case 'CHUM-001': reference file .*\[3\].*GTVn"):
        evaluate_folder("hecktor", ref_dir, pred_dir, tmp_path / "out", verbose=False)

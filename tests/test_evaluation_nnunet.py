"""nnunet mode: labels and regions from dataset.json, 2D data stored as (1, Y, X), ignore label, file endings."""
import json

import numpy as np
import pytest

from helpers import brute_force_hd95, read_array as read, write_labels as write

from nnunetv2_ciml.evaluation import (EvaluationError, evaluate_folder,
                                      labels_or_regions_from_dataset_json, nnunet_case_metrics)

DEMO_JSON = {"channel_names": {"0": "A", "1": "B"}, "labels": {"background": 0, "circle": 1, "square": 2},
             "numTraining": 2, "file_ending": ".nii.gz"}
BRATS_REGIONS_JSON = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                      "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                 "enhancing tumor": [3]},
                      "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}


def shapes_2d(circle_centre, with_square=True, size=48):
    yy, xx = np.mgrid[:size, :size]
    seg = np.zeros((size, size), np.uint8)
    seg[(yy - circle_centre[0]) ** 2 + (xx - circle_centre[1]) ** 2 <= 36] = 1
    if with_square:
        seg[30:40, 28:42] = 2
    return seg


def test_2d_dataset_stored_as_single_slice_volumes(tmp_path):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    spacing_xyz = (0.5, 0.8, 1.0)  # array order (z, y, x) = (1.0, 0.8, 0.5)
    ref_a, pred_a = shapes_2d((12, 14)), shapes_2d((14, 17))
    ref_b, pred_b = shapes_2d((20, 20), with_square=False), shapes_2d((20, 20))
    for folder, arrays in ((ref_dir, (ref_a, ref_b)), (pred_dir, (pred_a, pred_b))):
        for case, seg in zip(("demo_000", "demo_001"), arrays):
            write(folder / f"{case}.nii.gz", seg[None], spacing_xyz)
    (tmp_path / "dataset.json").write_text(json.dumps(DEMO_JSON))

    summary = evaluate_folder("nnunet", ref_dir, pred_dir, tmp_path / "out", dataset_json=tmp_path / "dataset.json")

    circle = summary["per_case"]["demo_000"]["circle"]
    # in-plane contours: equals MedPy on the 2D image with the in-plane spacing (y, x)
    assert circle["HD95"] == pytest.approx(medpy_binary.hd95(pred_a == 1, ref_a == 1, voxelspacing=(0.8, 0.5)))
    assert circle["Dice"] == pytest.approx(medpy_binary.dc(pred_a == 1, ref_a == 1))
    assert circle["empty"] == "none" and circle["n_ref"] == np.count_nonzero(ref_a == 1)
    assert 0 < circle["HD95"] < 5
    assert summary["per_case"]["demo_000"]["square"] == {"Dice": 1.0, "HD95": 0.0, "n_ref": 140, "n_pred": 140,
                                                         "empty": "none"}
    assert summary["per_case"]["demo_001"]["square"] == {"Dice": 0.0, "HD95": 373.12866, "n_ref": 0, "n_pred": 140,
                                                         "empty": "reference"}
    assert summary["empty_cases"]["square"] == {"both": [], "reference": ["demo_001"], "prediction": []}
    assert summary["empty_case_rules"]["both"] == "Dice 1, HD95 0"
    assert summary["mean"]["square"]["HD95"] == pytest.approx(373.12866 / 2)
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        np.mean([summary["mean"][n]["Dice"] for n in ("circle", "square")]))
    header = (tmp_path / "out" / "per_case.csv").read_text().splitlines()[0]
    assert header == ("case,prediction_missing,circle_Dice,circle_HD95,circle_n_ref,circle_n_pred,circle_empty,"
                      "square_Dice,square_HD95,square_n_ref,square_n_pred,square_empty")


@pytest.mark.parametrize("dataset_json, ignore", [
    (BRATS_REGIONS_JSON, None),
    ({"labels": {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3, "ignore": 4}, "file_ending": ".nii.gz"},
     4),
])
def test_folder_metrics_equal_nnunets_compute_metrics_and_brute_force_hd95(tmp_path, dataset_json, ignore):
    """Per case and per label or region: Dice, n_ref and n_pred as nnU-Net's own ``compute_metrics`` gives them
    (which gives NaN where both are empty: ours is 1 there, marked ``both``), HD95 as the brute-force reference
    with the anisotropic spacing. Cases: perturbed, missed ET, ET absent from both. Fails on regions taken as
    single labels, a wrong ignore mask, spacing axes swapped, or a wrong empty-case rule."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(0)
    spacing_xyz = (0.9, 1.2, 2.0)
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    base = np.zeros((12, 18, 20), np.uint8)
    base[3:10, 4:15, 5:16] = 1
    base[4:9, 6:12, 7:13] = 2
    base[5:8, 8:10, 9:11] = 3
    cases = {}
    perturbed = np.roll(base, 1, axis=2)
    perturbed[rng.random(base.shape) < 0.03] = 1
    cases["perturbed"] = (base, perturbed)
    cases["missed_et"] = (base, np.where(base == 3, 2, base))
    no_et = np.where(base == 3, 2, base)
    cases["no_et"] = (no_et, np.roll(no_et, -1, axis=1))
    for name, (ref, pred) in cases.items():
        if ignore is not None:
            ref = ref.copy()
            ref[:, :3] = ignore  # unannotated rows: whatever is predicted there does not count
            pred = pred.copy()
            pred[:, :3] = rng.integers(0, 4, pred[:, :3].shape)
        write(ref_dir / f"{name}.nii.gz", ref, spacing_xyz)
        write(pred_dir / f"{name}.nii.gz", pred, spacing_xyz)
    (tmp_path / "dataset.json").write_text(json.dumps(dataset_json))

    summary = evaluate_folder("nnunet", ref_dir, pred_dir, tmp_path / "out", dataset_json=tmp_path / "dataset.json")

    targets, _, _ = labels_or_regions_from_dataset_json(dataset_json)
    checked_both_empty = 0
    for case in cases:
        theirs = compute_metrics(str(ref_dir / f"{case}.nii.gz"), str(pred_dir / f"{case}.nii.gz"), SimpleITKIO(),
                                 list(targets.values()), ignore)["metrics"]
        ref, pred = read(ref_dir / f"{case}.nii.gz"), read(pred_dir / f"{case}.nii.gz")
        keep = ref != ignore if ignore is not None else np.ones(ref.shape, bool)
        for name, target in targets.items():
            ours, nnunet = summary["per_case"][case][name], theirs[target]
            assert (ours["n_ref"], ours["n_pred"]) == (nnunet["n_ref"], nnunet["n_pred"]), (case, name)
            if np.isnan(nnunet["Dice"]):
                assert ours["empty"] == "both" and ours["Dice"] == 1.0 and ours["HD95"] == 0.0
                checked_both_empty += 1
                continue
            assert ours["Dice"] == pytest.approx(nnunet["Dice"], abs=1e-12), (case, name)
            r, p = np.isin(ref, target) & keep, np.isin(pred, target) & keep
            if r.any() and p.any():
                assert ours["HD95"] == pytest.approx(brute_force_hd95(r, p, spacing_xyz[::-1]), rel=1e-6), (case, name)
            else:
                assert ours["HD95"] == 373.12866
    assert checked_both_empty == 1


def test_ignore_label_is_left_out():
    dataset_json = {"labels": {"background": 0, "organ": 1, "ignore": 2}, "file_ending": ".nii.gz"}
    targets, valid, ignore = labels_or_regions_from_dataset_json(dataset_json)
    assert targets == {"organ": 1} and valid == (0, 1) and ignore == 2
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    ref[4:6, 4:6, 4:6] = 2  # unannotated: the prediction there does not count
    pred = ref.copy()
    pred[ref == 2] = 1
    m = nnunet_case_metrics(ref, pred, (1, 1, 1), targets, ignore_label=ignore)
    assert m["organ"]["Dice"] == 1.0 and m["organ"]["HD95"] == 0.0 and m["organ"]["n_pred"] == 8


def test_ignore_label_in_a_prediction_is_an_error(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    seg = np.zeros((4, 4, 4), np.uint8)
    seg[0, 0, 0] = 2
    write(ref_dir / "c1.nii.gz", seg, (1, 1, 1))
    write(pred_dir / "c1.nii.gz", seg, (1, 1, 1))
    dataset_json = {"labels": {"background": 0, "organ": 1, "ignore": 2}, "file_ending": ".nii.gz"}
    with pytest.raises(EvaluationError, match=r"case 'c1': prediction file .*\[2\]"):
        evaluate_folder("nnunet", ref_dir, pred_dir, tmp_path / "out", dataset_json=dataset_json, verbose=False)


@pytest.mark.parametrize("ending", [".mha", ".png"])
def test_file_ending_comes_from_dataset_json(tmp_path, ending):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    seg = shapes_2d((20, 20))
    write(ref_dir / f"img_1{ending}", seg, (1.0, 1.0))
    write(pred_dir / f"img_1{ending}", seg, (1.0, 1.0))
    write(ref_dir / "other.nii.gz", seg, (1.0, 1.0))  # not a case of this dataset
    summary = evaluate_folder("nnunet", ref_dir, pred_dir, tmp_path / "out",
                              dataset_json={**DEMO_JSON, "file_ending": ending}, verbose=False)
    assert list(summary["per_case"]) == ["img_1"]
    assert summary["per_case"]["img_1"]["circle"]["Dice"] == 1.0


@pytest.mark.parametrize("dataset_json, message", [
    ({"labels": {"background": 0, "a": 1}}, "file_ending"),
    ({"labels": {"a": 1}, "file_ending": ".nii.gz"}, "Background label not declared"),
    ({"labels": {"background": 0, "wt": [1, 2], "tc": [2]}, "file_ending": ".nii.gz"}, "regions_class_order"),
    ({"file_ending": ".nii.gz"}, "no 'labels'"),
    ({"labels": {"background": 0}, "file_ending": ".nii.gz"}, "no foreground"),
    (None, "needs the dataset's dataset.json"),
])
def test_invalid_dataset_json(tmp_path, dataset_json, message):
    (tmp_path / "ref").mkdir()
    with pytest.raises(EvaluationError, match=message):
        evaluate_folder("nnunet", tmp_path / "ref", tmp_path / "ref", tmp_path / "out", dataset_json=dataset_json)


def test_unreadable_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(EvaluationError, match="cannot read dataset.json .*dataset.json"):
        evaluate_folder("nnunet", tmp_path, tmp_path, tmp_path / "out", dataset_json=tmp_path / "dataset.json")

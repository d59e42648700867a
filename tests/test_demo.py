"""The demonstration: its complementary-information scores on known arrays, and ``nnunetv2_ciml demo --quick``
end to end through the CLI (every stage of the real nnU-Net pipeline runs).

The quick budget says nothing about CIML, so its numbers are checked for form and range, not for which
model wins (that is the default run's job, reported in its report.md).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import read_array

from nnunetv2_ciml.demo.complementary import (complementary_share, mass_breakdown, mask_dice, pair_accuracy,
                                              pair_decisions)
from nnunetv2_ciml.demo.claims import CLEAR_MARGIN, SHARE_FACTOR, SPREAD, claims
from nnunetv2_ciml.demo.dataset import DATASET_NAME, MODELS, PLANS
from nnunetv2_ciml.demo.pipeline import training_layout
from nnunetv2_ciml.demo.shape_composition import ShapeCompositionSpec, make_case

STAGES = {"generate", "plan_and_preprocess", "train", *(f"predict_{m}" for m in MODELS), "evaluate", "explain",
          "report", "total"}


def test_pair_scores_tell_a_resolving_model_from_one_that_guesses():
    spec = ShapeCompositionSpec(size=(48, 48), radius=(4, 7), num_modalities=3)
    case = make_case(spec, 0, "Ts", 1)
    assert case.is_complementary
    objects = [{"kind": o.kind, "role": o.role, "center": o.center, "radius": o.radius, "twin": o.twin}
               for o in case.objects]
    ref, mask = case.label[None], case.complementary[None]
    both = np.where(mask > 0, mask, ref)  # predicts decoys and twins alike
    for prediction, accuracy, dice in ((ref, 1.0, 1.0), (both, 0.5, 2 / 3)):
        assert pair_accuracy(pair_decisions(objects, prediction)) == accuracy
        in_mask = mask_dice([(ref, prediction, mask)], [1, 2])
        assert all(abs(v - dice) < 0.02 for v in in_mask.values()), in_mask  # twin and decoy differ by a few pixels
    assert pair_accuracy([]) is None


def test_complementary_share_and_mass_breakdown():
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 2:6, 2:6] = 1
    label = np.zeros_like(mask)
    label[0, 12:16, 12:16] = 2
    a, b = np.zeros((1, 20, 20)), np.zeros((1, 20, 20))
    a[0, 3, 3], a[0, 6, 6] = 2.0, 0.5  # inside the mask, on its rim
    b[0, 14, 14], b[0, 0, 19] = 1.0, 0.5  # on another object, on the background
    share, area = complementary_share([a, b], mask > 0)
    assert share == 0.5 and area == 16 / 400
    assert mass_breakdown([a, b], mask, label) == {"mask": 0.5, "rim": 0.125, "other_objects": 0.25,
                                                   "background": 0.125}
    assert complementary_share([np.zeros((1, 20, 20))], mask > 0) == (None, area)
    assert mass_breakdown([np.zeros((1, 20, 20))], mask, label) is None


def _results(ciml, plain, comp_ciml, comp_ablation, share, area) -> dict:
    models = {"CIML": (ciml, comp_ciml), "nnUNet": (plain, 0.0), "CIML_noMessages": (0.0, comp_ablation)}
    return {"models": {m: {"mean_dice": d, "complementary_cases": {"mean_dice": c}} for m, (d, c) in models.items()},
            "complementary_share": share, "complementary_area_share": area}


@pytest.mark.parametrize("numbers, outcomes", [
    ((0.80, 0.80, 0.70, 0.64, 0.50, 0.20), ["within noise", "held", "held"]),  # a tie; +0.06; 2.5x
    ((0.8010, 0.80, 0.70, 0.64, 0.50, 0.20), ["within noise", "held", "held"]),  # +0.001: inside the spread
    ((0.7990, 0.80, 0.70, 0.64, 0.50, 0.20), ["within noise", "held", "held"]),  # -0.001: inside the spread
    ((0.79, 0.80, 0.70, 0.66, 0.39, 0.20), ["not held", "not held", "not held"]),  # -0.01; +0.04 < margin; 1.95x
    ((0.90, 0.10, 0.90, 0.10, 0.20, 0.10), ["held", "held", "held"]),  # far ahead; exactly 2x is "at least"
    ((0.50, 0.40, 0.30, 0.50, None, 0.20), ["held", "not held", "not held"]),  # ablation better; no share
    ((0.50, 0.40, 0.30, 0.10, 0.20, 0.0), ["held", "held", "not held"]),  # zero area: no ratio, not held
])
def test_claims_are_decided_from_the_numbers_and_the_run_to_run_spread(numbers, outcomes):
    """The three claims (``CLEAR_MARGIN`` 0.05, ``SHARE_FACTOR`` 2) on hand-made numbers; claim 1 is "within noise"
    when CIML and nnU-Net differ by less than the measured spread, either way. Fails on a decision that ignores
    the spread (a tie or +-0.001 called held or missed), a strict comparison where the claim says "at least", a
    margin or factor not applied, the wrong model compared, or a crash on a missing share; and if the report's
    wording uses internal names instead of saying what is compared."""
    assert (CLEAR_MARGIN, SHARE_FACTOR) == (0.05, 2.0) and 0.001 < SPREAD["dice_difference"] < 0.01
    result = claims(_results(*numbers))
    assert [c["outcome"] for c in result] == outcomes
    assert [c["held"] for c in result] == [o == "held" for o in outcomes]
    assert all(type(c["held"]) is bool for c in result)
    ciml, plain, comp_ciml, comp_ablation, share, area = numbers
    assert f"CIML {ciml:.4f} vs nnU-Net {plain:.4f}" in result[0]["measured"]
    assert f"CIML {comp_ciml:.4f} vs CIML without messages {comp_ablation:.4f}" in result[1]["measured"]
    assert f"{SPREAD['dice_difference']:.4f}" in result[0]["spread"]
    if share is not None and area:
        assert f"({share / area:.2f}x)" in result[2]["measured"]
    assert not any("_" in c["claim"] for c in result)  # no internal names such as complementary_share


@pytest.mark.parametrize("device, cores, layout", [("cpu", 1, (1, 1)), ("cpu", 2, (2, 1)), ("cpu", 3, (3, 1)),
                                                   ("cpu", 16, (3, 5)), ("cuda", 16, (1, 1))])
def test_training_layout_shares_the_cores_among_at_most_three_trainings(device, cores, layout):
    """Fails if trainings oversubscribe the cores (threads x parallel > cores), run more at a time than there
    are models, or run side by side on the one GPU."""
    assert training_layout(device, cores) == layout


def _dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Dice by counting, with the BraTS rules the demo's evaluation states: both empty 1, one empty 0."""
    if not ref.any() and not pred.any():
        return 1.0
    return 2 * np.count_nonzero(ref & pred) / (np.count_nonzero(ref) + np.count_nonzero(pred))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    env = dict(os.environ)
    # The user's own nnU-Net folders: the demo must leave them alone.
    user = {k: root / "user" / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, folder in user.items():
        folder.mkdir(parents=True)
        env[k] = str(folder)
    env.update(nnUNet_compile="f", nnUNet_def_n_proc="1")
    out = root / "out"
    run = subprocess.run([sys.executable, "-m", "nnunetv2_ciml.cli", "demo", "--quick", "--device", "cpu",
                          "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"demo failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return out, run, user, env


@pytest.mark.integration
@pytest.mark.slow
def test_results_json_schema_and_ranges(demo):
    out, _, _, _ = demo
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == set(MODELS)
    for model, r in results["models"].items():
        assert set(r["dice"]) == set(r["hd95"]) == {"circle", "square"}, model
        assert 0 <= r["mean_dice"] <= 1 and math.isclose(r["mean_dice"], sum(r["dice"].values()) / 2)
        assert all(0 <= v <= 1 for v in r["dice"].values()) and all(0 <= v <= 373.2 for v in r["hd95"].values())
        comp = r["complementary_cases"]
        assert comp["num_cases"] == 2 and comp["num_pair_objects"] == 2 * 2 * 2  # 2 cases x 2 subtasks x 2 objects
        assert 0 <= comp["pair_accuracy"] <= 1 and 0 <= comp["mean_dice"] <= 1
    share, area = results["complementary_share"], results["complementary_area_share"]
    assert _finite(share) and 0 <= share <= 1 and _finite(area) and 0 < area < 1
    # the area share is the masks' own: the generator's figure for the held-out complementary cases
    structure = results["data"]["held_out_information_structure"]
    assert math.isclose(area, structure["complementary_area_share_in_complementary_cases"], rel_tol=1e-9)
    breakdown = results["explain"]["mass_breakdown"]
    assert set(breakdown) == {"mask", "rim", "other_objects", "background"}
    assert math.isclose(sum(breakdown.values()), 1.0) and math.isclose(breakdown["mask"], share)
    assert set(results["seconds"]) == STAGES and all(_finite(v) and v >= 0 for v in results["seconds"].values())
    assert results["seconds"]["total"] >= sum(v for k, v in results["seconds"].items() if k != "total") - 1
    assert [c["held"] for c in results["claims"]] and all(isinstance(c["held"], bool) for c in results["claims"])
    kl = results["ciml_message_log"]
    assert len(kl["pairs"]) == 4 and len(kl["kl"]) == 2 and all(len(e) == 4 for e in kl["kl"])  # 2 epochs x 4 pairs


@pytest.mark.integration
@pytest.mark.slow
def test_report_figures_and_models_exist_and_user_folders_untouched(demo):
    out, run, user, _ = demo
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for claim in results["claims"]:
        assert claim["measured"] in report
    assert "Quick run" in report and "nnUNetv2_train 990 2d 0 -tr nnUNetTrainerCIML_ShapeCompositionDemoQuick" in report
    for name in ("examples.png", "dice_hd95.png", "kl_per_message.png"):
        assert (out / name).stat().st_size > 10_000, name
        assert f"]({name})" in report
    for model in MODELS:
        assert len(list((out / "predictions" / model).glob("test_*.nii.gz"))) == 4
        trainer = results["training"][model]["trainer"]
        model_folder = out / "nnUNet_results" / "Dataset990_ShapeComposition" / f"{trainer}__{PLANS}__2d"
        assert (model_folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert list((out / "explain").glob("*/*_to_*.nii.gz"))
    # explain.json (which the report cites) covers exactly the cases whose maps are written, and each subtask's
    # sender shares are parts of one whole
    explained = json.loads((out / "explain" / "explain.json").read_text())["cases"]
    assert set(explained) == {p.name for p in (out / "explain").iterdir() if p.is_dir()}
    for case in explained.values():
        for subtask in case["subtasks"].values():
            shares = [s["share"] for s in subtask["senders"].values() if s["share"] is not None]
            assert not shares or math.isclose(sum(shares), 1.0, rel_tol=1e-6)
    assert all(not any(folder.iterdir()) for folder in user.values())
    for stage in ("plan_and_preprocess", "train", "explain", "report"):  # stage timings on the terminal
        assert f"{stage} done in" in run.stdout
    # the trainings ran side by side on a machine with 2+ cores: their wall time together is less than the sum
    # (fails if they ran one after another, or if a model's own time were not recorded)
    parallel, threads = training_layout("cpu", len(os.sched_getaffinity(0)))
    assert (results["parallel_trainings"], results["training_threads"]) == (parallel, threads)
    own = [results["training"][m]["seconds"] for m in MODELS]
    assert all(s > 0 for s in own) and results["seconds"]["train"] >= max(own)
    if parallel > 1:
        assert results["seconds"]["train"] < sum(own) - 0.5 * min(own)
    # where the logs are, then one line per epoch of every training (from nnU-Net's logger, via epochs.jsonl)
    assert f"logs: one per nnU-Net step in {out / 'logs'}" in run.stdout
    for model in MODELS:
        assert f"train {model}: epoch 1/2  loss" in run.stdout and f"train {model}: epoch 2/2  loss" in run.stdout
        epochs = (Path(results["training"][model]["model_folder"]) / "fold_0" / "epochs.jsonl").read_text()
        assert [json.loads(line)["epoch"] for line in epochs.splitlines()] == [0, 1]
    assert "claims (quick run: " in run.stdout and "say nothing about CIML" in run.stdout
    # a model without messages has no KL, hence no beta; the report says how the narrower plans are made
    assert results["training"]["CIML_noMessages"]["beta"] is None and results["training"]["CIML"]["beta"] > 0
    assert "features_per_stage" in report and "nnUNetPlans.json" in report


@pytest.mark.integration
@pytest.mark.slow
def test_refuses_foreign_or_earlier_output_without_overwrite(demo, tmp_path):
    out, _, _, env = demo
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    for folder, expected in ((foreign, "holds no earlier demo run"), (out, "pass --overwrite")):
        run = subprocess.run([sys.executable, "-m", "nnunetv2_ciml.cli", "demo", "--quick", "--device", "cpu",
                              "--out", str(folder)], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and expected in run.stderr
    assert (foreign / "keep.txt").read_text() == "user data" and (out / "results.json").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_results_json_dice_is_that_of_the_written_predictions(demo):
    """Recompute every model's Dice from ``predictions/`` and the held-out labels: per label and mean, on all
    held-out cases and on the complementary ones. Fails if results.json reports numbers of other files, of
    another model, or averaged differently (e.g. over voxels instead of cases)."""
    out, _, _, _ = demo
    results = json.loads((out / "results.json").read_text())
    labels_dir = out / "nnUNet_raw" / DATASET_NAME / "labelsTs"
    complementary = results["data"]["held_out_information_structure"]["complementary_cases"]
    cases = sorted(p.name[:-len(".nii.gz")] for p in labels_dir.glob("*.nii.gz"))
    assert len(cases) == 4 and set(complementary) <= set(cases)
    for model in MODELS:
        per_case = {}
        for case in cases:
            ref, pred = read_array(labels_dir / f"{case}.nii.gz"), read_array(out / "predictions" / model /
                                                                                f"{case}.nii.gz")
            per_case[case] = {name: _dice(ref == value, pred == value) for name, value in (("circle", 1), ("square", 2))}
        reported = results["models"][model]
        for name in ("circle", "square"):
            assert reported["dice"][name] == pytest.approx(np.mean([d[name] for d in per_case.values()]), abs=1e-9)
            assert reported["complementary_cases"]["dice"][name] == pytest.approx(
                np.mean([per_case[c][name] for c in complementary]), abs=1e-9)
        assert reported["mean_dice"] == pytest.approx(
            np.mean([np.mean([d[n] for d in per_case.values()]) for n in ("circle", "square")]), abs=1e-9)


def test_a_silent_stage_says_it_is_still_running(capsys):
    """A stage that prints nothing for longer than the heartbeat gets a "still running" line; one that keeps
    printing gets none. Fails if a stage can stay silent (the explain stage once was for a minute)."""
    import time

    from nnunetv2_ciml.demo.pipeline import _Console, _Stages

    console = _Console(verbose=True)
    stages = _Stages(console, heartbeat=0.2)
    with stages("quiet", "sleeps"):
        time.sleep(0.7)
    with stages("busy", "prints"):
        for _ in range(7):
            console.say("    busy: working")
            time.sleep(0.1)
    out = capsys.readouterr().out
    assert "quiet: still running" in out and "busy: still running" not in out
    assert "quiet done in" in out and "busy done in" in out


def test_time_left_covers_the_queued_trainings_and_the_stages_after_them():
    """Two slots, nnU-Net (1 FLOP unit) and CIML (2 units) training, the ablation (2 units) queued: after epoch
    5 of 10 of both at 1 s and 2 s per epoch with 3 s of set-up each, CIML's slot has 10 s of epochs and 3 s of
    validation left, nnU-Net's 5 + 3 s and then the ablation's 3 + 20 + 3 s; then 10 nnU-Net epochs for the
    stages after training. Fails if the queued training, nnU-Net's set-up and validation or the stages after
    training are left out, or if the queued model's speed is not scaled by its FLOPs."""
    from nnunetv2_ciml.demo.pipeline import STAGES_AFTER_TRAINING_IN_EPOCHS, _TimeLeft

    estimate = _TimeLeft({"nnUNet": 10, "CIML": 10, "CIML_noMessages": 10},
                         {"nnUNet": 1.0, "CIML": 2.0, "CIML_noMessages": 2.0}, parallel=2)
    for model, per_epoch in (("nnUNet", 1.0), ("CIML", 2.0)):
        estimate.launched[model] = 100.0
        estimate.epoch(model, {"epoch": 4, "start": 103.0 + 4 * per_epoch, "end": 103.0 + 5 * per_epoch}, 103.0)
    expected = max(10 + 3, 5 + 3 + 3 + 20 + 3) + STAGES_AFTER_TRAINING_IN_EPOCHS * 1.0
    assert estimate._seconds_left() == pytest.approx(expected)


def test_every_command_uses_one_device_rule(monkeypatch):
    """``auto`` (the default of demo, predict and explain) is CUDA when torch sees it, else the CPU; ``cuda``
    without a device is an error naming the way out. Fails on a command defaulting to cuda (predict once did)."""
    import torch

    from nnunetv2_ciml.cli import build_parser
    from nnunetv2_ciml.devices import DeviceError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA device.*-device cpu or auto"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    parser = build_parser()
    for argv in (["demo"], ["predict", "-i", "a", "-o", "b", "-m", "c"], ["explain", "-m", "a", "-f", "0", "-i", "b",
                                                                          "-o", "c"]):
        assert parser.parse_args(argv).device == "auto", argv

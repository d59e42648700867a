"""CIML's branch width on the ShapeComposition demo: mean Dice of nnU-Net and CIML over several seeds.

For each seed the demo's data (``DemoSettings.seed``) and plans are made anew and every model trains once
with the demo's budget (training itself is not seeded: nnU-Net's sampling and augmentation differ per run);
the held-out mean Dice is the demo's (``evaluate nnunet``, all held-out cases). Models: nnU-Net and CIML at
each width factor asked for (``matched``: the MAC-matching rule of ``nnunetv2_ciml.planning``,
``nnUNetTrainerCIML_MACmatched``; ``0.75``; ``1.0``: ``nnUNetTrainerCIML``'s default).

The rule that set ``nnUNetTrainerCIML``'s default width: if CIML (matched) is below nnU-Net's mean Dice
minus ``TOLERANCE`` over the seeds, the default becomes the smallest factor of (matched, 0.75, 1.0) that is
not. Results are written after every model (``--out/width_study.json``), so a partial run keeps what it
measured; the table printed at the end says how many seeds each mean covers. A model already trained in
``--out`` is predicted again, not retrained. ``benchmarks/results/width_study.json`` holds the published
table: copy it into ``--out`` and only what it lacks is measured.

    python benchmarks/demo_width_study.py --out width_study --seeds 0 1 2 3 4 --models nnUNet CIML_matched CIML_0.75 CIML_1.0
"""
import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

TOLERANCE = 0.005
TRAINERS = {"nnUNet": "nnUNetTrainer_ShapeCompositionDemo",
            "CIML_matched": "nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo",
            "CIML_0.75": "nnUNetTrainerCIML_width075_ShapeCompositionDemo",
            "CIML_1.0": "nnUNetTrainerCIML_ShapeCompositionDemo"}


def run_seed(out_dir: Path, seed: int, models, results: dict, results_file: Path, threads: int = 2) -> None:
    from nnunetv2_ciml.demo import nnunet_steps
    from nnunetv2_ciml.demo.pipeline import (CONFIGURATION, DATASET_ID, DATASET_NAME, DEFAULT_SETTINGS, FOLD, PLANS,
                                             _evaluate_model, _predict, _test_cases, narrow_plans,
                                             nnunet_environment)
    from nnunetv2_ciml.demo.shape_composition import generate_shape_composition, information_structure

    settings = replace(DEFAULT_SETTINGS, seed=seed)
    run_dir = out_dir / f"seed_{seed}"  # the layout of benchmarks/missing_modalities.py
    env = nnunet_environment(run_dir, "cpu")
    raw = run_dir / "nnUNet_raw" / DATASET_NAME
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not (raw / "dataset.json").exists():
        generate_shape_composition(raw, num_train=settings.num_train, num_test=settings.num_test, size=settings.size,
                                   radius=settings.radius, num_modalities=settings.num_modalities, seed=seed)
    preprocessed = run_dir / "nnUNet_preprocessed" / DATASET_NAME
    if not (preprocessed / f"{PLANS}.json").exists():
        nnunet_steps.plan_and_preprocess(DATASET_ID, CONFIGURATION, env, logs / "plan_and_preprocess.log", False)
        narrow_plans(preprocessed, CONFIGURATION, settings.base_features, settings.max_features, settings.batch_size)
    objects = json.loads((raw / "objects.json").read_text())
    complementary = list(information_structure(raw)["Ts"]["complementary_cases"])
    file_ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    cases = _test_cases(raw, file_ending, settings.num_modalities)
    for model in models:
        if str(seed) in results.get(model, {}):
            continue
        trainer = TRAINERS[model]
        start = time.perf_counter()
        folder = run_dir / "nnUNet_results" / DATASET_NAME / f"{trainer}__{PLANS}__{CONFIGURATION}"
        if not (folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():  # a model trained before is kept
            nnunet_steps.train(DATASET_ID, CONFIGURATION, FOLD, trainer, PLANS, "cpu", threads, env,
                               logs / f"train_{model}.log", model, show_progress=False)
        _predict(folder, cases, run_dir / "predictions" / model, "cpu", logs / f"predict_{model}.log", model, False)
        evaluation = _evaluate_model(raw, run_dir / "predictions" / model, run_dir / "evaluation" / model, objects,
                                     complementary, file_ending)
        plans = json.loads((folder / "plans.json").read_text())
        features = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]["features_per_stage"]
        results.setdefault(model, {})[str(seed)] = {
            "mean_dice": evaluation["mean_dice"], "complementary_mean_dice": evaluation["complementary_cases"]["mean_dice"],
            "features_per_stage": features, "seconds": round(time.perf_counter() - start, 1)}
        results_file.write_text(json.dumps(results, indent=2))
        print(f"seed {seed} {model:13s} features {features}: mean Dice {evaluation['mean_dice']:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


def decide(results: dict) -> str:
    """The default width the rule picks from the seeds every model has, or why it cannot yet."""
    seeds = set.intersection(*(set(v) for v in results.values())) if results else set()
    if "nnUNet" not in results or not seeds:
        return "no complete seed yet"
    baseline = statistics.mean(results["nnUNet"][s]["mean_dice"] for s in seeds)
    for model in ("CIML_matched", "CIML_0.75", "CIML_1.0"):
        if model in results:
            mean = statistics.mean(results[model][s]["mean_dice"] for s in seeds)
            if mean >= baseline - TOLERANCE:
                return f"{model} (mean Dice {mean:.4f} >= nnU-Net {baseline:.4f} - {TOLERANCE}, {len(seeds)} seeds)"
    return f"none of {sorted(m for m in results if m != 'nnUNet')} meets nnU-Net {baseline:.4f} - {TOLERANCE}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="+", default=["nnUNet", "CIML_matched"], choices=list(TRAINERS))
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per training (two runs with 1 each share 2 cores better than one with 2)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "width_study.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for seed in args.seeds:
        run_seed(args.out.resolve(), seed, args.models, results, results_file, args.threads)
    print(f"\n{'model':13s} " + " ".join(f"seed {s:>2d}" for s in args.seeds) + "    mean   n")
    for model, per_seed in results.items():
        values = [per_seed.get(str(s), {}).get("mean_dice") for s in args.seeds]
        done = [v for v in values if v is not None]
        print(f"{model:13s} " + " ".join(f"{v:7.4f}" if v is not None else "      -" for v in values)
              + (f"  {statistics.mean(done):.4f}  {len(done)}" if done else "       -  0"))
    print(f"width rule: {decide(results)}")


if __name__ == "__main__":
    sys.exit(main())

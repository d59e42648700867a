"""CIML's cost/Dice front on the ShapeComposition demo: every width variant against nnU-Net, several seeds.

For each seed the demo's data (``DemoSettings.seed``) and plans are made anew and every model trains once
with the demo's budget (training itself is not seeded: nnU-Net's sampling and augmentation differ per run);
the held-out mean Dice is the demo's (``evaluate nnunet``, all held-out cases). Each model's cost is counted on
the meta device for the demo's plans (``nnunetv2_ciml.costs``: convolution FLOPs of one sample, activations kept
for backward by one training batch, parameters) and printed as a ratio to nnU-Net's.

The rule that sets ``nnUNetTrainerCIML``'s default: the cheapest variant by counted FLOPs (on nnU-Net's BraTS
plan, ``bench_ciml_vs_plain.py --count``) whose mean Dice over the seeds is within ``TOLERANCE`` of full
width's; otherwise full width. The script prints the Dice side of it.

Trainings run ``--parallel`` at a time with one torch thread each (two on two cores finish in about the time
one two-thread training takes). Results are written after every model (``--out/width_study.json``), so a
partial run keeps what it measured; a model already trained in ``--out`` is predicted again, not retrained.
``benchmarks/results/width_study.json`` holds the published run (copy it into ``--out`` to add seeds or models).

    python benchmarks/demo_width_study.py --out width_study --seeds 0 1 2
"""
import argparse
import concurrent.futures
import json
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

TOLERANCE = 0.003
TRAINERS = {"nnUNet": "nnUNetTrainer_ShapeCompositionDemo",
            "CIML_fullWidth": "nnUNetTrainerCIML_fullWidth_ShapeCompositionDemo",
            "CIML_narrowFullResEncoders": "nnUNetTrainerCIML_narrowFullResEncoders_ShapeCompositionDemo",
            "CIML_narrowFullResDecoders": "nnUNetTrainerCIML_narrowFullResDecoders_ShapeCompositionDemo",
            "CIML_width075": "nnUNetTrainerCIML_ShapeCompositionDemo",  # the default's widths
            "CIML_MACmatched": "nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo"}


def prepare_seed(out_dir: Path, seed: int):
    """Data and plans of one seed in ``out_dir/seed_<seed>`` (kept when already there): ``(run dir, nnU-Net
    environment, DemoData)``."""
    from nnunetv2_ciml.demo.dataset import DEFAULT_SETTINGS, nnunet_environment, prepare_dataset

    run_dir = out_dir / f"seed_{seed}"  # the layout of benchmarks/missing_modalities.py
    env = nnunet_environment(run_dir, "cpu")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    data = prepare_dataset(run_dir, replace(DEFAULT_SETTINGS, seed=seed), env, run_dir / "logs", verbose=False)
    return run_dir, env, data


def counted_cost(model_folder: Path) -> dict:
    """FLOPs, activation bytes and parameters of the trained model's network on the demo's patch and batch."""
    from nnunetv2_ciml.costs import network_cost
    from nnunetv2_ciml.demo.dataset import CONFIGURATION

    plans = json.loads((model_folder / "plans.json").read_text())
    dataset = json.loads((model_folder / "dataset.json").read_text())
    config = plans["configurations"][CONFIGURATION]
    cost = network_cost(config["architecture"], len(dataset["channel_names"]), len(dataset["labels"]),
                        config["patch_size"], config["batch_size"])
    kwargs = config["architecture"]["arch_kwargs"]
    return {"conv_flops": cost.conv_flops, "activation_bytes": cost.activation_bytes, "parameters": cost.parameters,
            "features_per_stage": kwargs["features_per_stage"],
            "decoder_features_per_stage": kwargs.get("decoder_features_per_stage")}


def run_model(seed: int, model: str, prepared, results: dict, results_file: Path, lock: threading.Lock) -> None:
    from nnunetv2_ciml.demo import nnunet_steps
    from nnunetv2_ciml.demo.dataset import CONFIGURATION, DATASET_ID, FOLD, PLANS, model_folder
    from nnunetv2_ciml.demo.evaluate import evaluate_model
    from nnunetv2_ciml.demo.predict import predict_model

    run_dir, env, data = prepared
    trainer = TRAINERS[model]
    start = time.perf_counter()
    folder = model_folder(run_dir, trainer)
    if not (folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():  # a model trained before is kept
        nnunet_steps.train(DATASET_ID, CONFIGURATION, FOLD, trainer, PLANS, "cpu", 1, env,
                           run_dir / "logs" / f"train_{model}.log", model, show_progress=False)
    trained = round(time.perf_counter() - start, 1)
    with lock:  # one in-process prediction at a time (torch's thread pool is the process's)
        predict_model(folder, data.cases, run_dir / "predictions" / model, "cpu",
                      run_dir / "logs" / f"predict_{model}.log", model, False)
        evaluation = evaluate_model(data.raw, run_dir / "predictions" / model, run_dir / "evaluation" / model,
                                    data.objects, data.complementary_cases, data.file_ending)
        results.setdefault(model, {})[str(seed)] = {
            "mean_dice": evaluation["mean_dice"],
            "complementary_mean_dice": evaluation["complementary_cases"]["mean_dice"],
            "training_seconds": trained, **counted_cost(folder)}
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"seed {seed} {model:28s} mean Dice {evaluation['mean_dice']:.4f} (training {trained:.0f} s)", flush=True)


def summary(results: dict, seeds) -> str:
    """Per model: mean Dice over the seeds it has, its difference to full width over the seeds both have, and
    its counted costs relative to nnU-Net's on the demo's plans."""
    lines = [f"{'model':28s} {'seeds':>5s} {'mean Dice':>9s} {'vs full':>8s} {'FLOPs':>6s} {'activ.':>6s} "
             f"{'params':>6s}"]
    plain = next(iter(results.get("nnUNet", {}).values()), None)
    full = results.get("CIML_fullWidth", {})
    for model, per_seed in results.items():
        done = [s for s in map(str, seeds) if s in per_seed]
        if not done:
            continue
        mean = statistics.mean(per_seed[s]["mean_dice"] for s in done)
        both = [s for s in done if s in full]
        diff = (statistics.mean(per_seed[s]["mean_dice"] - full[s]["mean_dice"] for s in both) if both else None)
        cost = per_seed[done[0]]
        ratios = [cost[k] / plain[k] if plain else float("nan") for k in ("conv_flops", "activation_bytes",
                                                                         "parameters")]
        lines.append(f"{model:28s} {len(done):5d} {mean:9.4f} " + (f"{diff:+8.4f}" if diff is not None else " " * 8)
                     + "".join(f" {r:6.2f}" for r in ratios))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time (one torch thread each)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "width_study.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results = results.get("results", results)  # the published copy (benchmarks/results) wraps them
    prepared = {seed: prepare_seed(out, seed) for seed in args.seeds}
    jobs = [(seed, model) for model in args.models for seed in args.seeds if str(seed) not in results.get(model, {})]
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_model, seed, model, prepared[seed], results, results_file, lock)
                   for seed, model in jobs]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # the first failure stops the run (the trainings under way finish first)
    print("\n" + summary(results, args.seeds))


if __name__ == "__main__":
    sys.exit(main())

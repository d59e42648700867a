"""CIML's cost/Dice front on the ShapeComposition demo: every width variant against nnU-Net, several seeds.

For each seed the demo's data (``DemoSettings.seed``) and plans are made anew (the layout of
:mod:`nnunetv2_ciml.demo.study`: a model another study trained there is reused) and every model trains once
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
from pathlib import Path

TOLERANCE = 0.003
TRAINERS = {"nnUNet": "nnUNetTrainer_ShapeCompositionDemo",
            "CIML_width075": "nnUNetTrainerCIML_ShapeCompositionDemo",  # the default: shared encoder, 0.75 widths
            "CIML_fullWidth": "nnUNetTrainerCIML_fullWidth_ShapeCompositionDemo",
            "CIML_narrowFullResEncoders": "nnUNetTrainerCIML_narrowFullResEncoders_ShapeCompositionDemo",
            "CIML_narrowFullResDecoders": "nnUNetTrainerCIML_narrowFullResDecoders_ShapeCompositionDemo",
            "CIML_MACmatched": "nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo",
            "CIML_inputEmbedding": "nnUNetTrainerCIML_inputEmbedding_ShapeCompositionDemo",
            "CIML_groupedBranches": "nnUNetTrainerCIML_groupedBranches_ShapeCompositionDemo",
            "CIML_groupedBranches_fullWidth": "nnUNetTrainerCIML_groupedBranches_fullWidth_ShapeCompositionDemo"}


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


def run_model(run, model: str, results: dict, results_file: Path, lock: threading.Lock) -> None:
    from nnunetv2_ciml.demo.evaluate import evaluate_model
    from nnunetv2_ciml.demo.predict import predict_model
    from nnunetv2_ciml.demo.study import train_model

    trainer, data, seed = TRAINERS[model], run.data, run.seed
    trained = train_model(run, trainer, model)  # a model trained before is kept (0 s)
    with lock:  # one in-process prediction at a time (torch's thread pool is the process's)
        predict_model(run.model_folder(trainer), data.cases, run.run_dir / "predictions" / model, "cpu",
                      run.run_dir / "logs" / f"predict_{model}.log", model, False)
        evaluation = evaluate_model(data.raw, run.run_dir / "predictions" / model, run.run_dir / "evaluation" / model,
                                    data.objects, data.complementary_cases, data.file_ending)
        results.setdefault(model, {})[str(seed)] = {
            "mean_dice": evaluation["mean_dice"],
            "complementary_mean_dice": evaluation["complementary_cases"]["mean_dice"],
            "training_seconds": trained, **counted_cost(run.model_folder(trainer))}
        results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(f"seed {seed} {model:28s} mean Dice {evaluation['mean_dice']:.4f} (training {trained:.0f} s)", flush=True,
          file=sys.__stdout__)  # another thread's prediction may have redirected sys.stdout


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


# width-study model -> bench_ciml_vs_plain.py model of the same network
COUNTED_AS = {"nnUNet": "plain", "CIML_width075": "ciml", "CIML_fullWidth": "ciml_fullWidth",
              "CIML_narrowFullResEncoders": "ciml_narrowFullResEncoders",
              "CIML_narrowFullResDecoders": "ciml_narrowFullResDecoders", "CIML_MACmatched": "ciml_MACmatched",
              "CIML_inputEmbedding": "ciml_inputEmbedding", "CIML_groupedBranches": "ciml_groupedBranches",
              "CIML_groupedBranches_fullWidth": "ciml_groupedBranches_fullWidth"}


def plot_front(results: dict, counts: dict, path: Path, setup: str = "brats") -> None:
    """The cost/Dice front: demo mean Dice (mean and standard deviation over the seeds) against the counted
    convolution FLOPs and kept activations of the same network on ``setup``'s plans (``counts``: the JSON of
    ``bench_ciml_vs_plain.py --count``), relative to plain nnU-Net."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counted = counts["results"][setup]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "conv_flops", "convolution FLOPs"),
                           (axes[1], "activation_bytes", "activations kept for backward")):
        points = []
        for model, per_seed in results.items():
            dice = [v["mean_dice"] for v in per_seed.values()]
            x = counted[COUNTED_AS[model]][key] / counted["plain"][key]
            y, e = statistics.mean(dice), statistics.stdev(dice) if len(dice) > 1 else 0.0
            ax.errorbar(x, y, yerr=e, fmt="s" if model == "nnUNet" else "o", capsize=3,
                        color="#8d99ae" if model == "nnUNet" else "#d62828")
            ax.annotate(model.replace("CIML_", ""), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
            points.append((x, y, model))
        front = sorted(p for p in points if p[2] != "nnUNet" and not any(
            q[0] <= p[0] and q[1] > p[1] and q[2] != "nnUNet" for q in points))
        ax.plot([p[0] for p in front], [p[1] for p in front], color="#d62828", lw=0.8, ls="--", label="CIML front")
        ax.set_xlabel(f"{label}, x plain nnU-Net ({setup} plan)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("demo mean Dice (held-out, mean +- std over seeds)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("CIML's cost/Dice front: counted on nnU-Net's BraTS 128^3 plan, Dice on the ShapeComposition demo",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time (one torch thread each)")
    parser.add_argument("--plot", nargs=2, metavar=("COUNTS_JSON", "PNG"),
                        help="only draw the front from --out's results and bench_ciml_vs_plain.py --count --json")
    args = parser.parse_args()
    if args.plot:
        results = json.loads((args.out / "width_study.json").read_text())
        plot_front(results.get("results", results), json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]))
        return
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "width_study.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results = results.get("results", results)  # the published copy (benchmarks/results) wraps them
    from nnunetv2_ciml.demo.study import prepare_seed

    runs = {seed: prepare_seed(out, seed) for seed in args.seeds}
    jobs = [(seed, model) for model in args.models for seed in args.seeds if str(seed) not in results.get(model, {})]
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_model, runs[seed], model, results, results_file, lock) for seed, model in jobs]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # the first failure stops the run (the trainings under way finish first)
    print("\n" + summary(results, args.seeds))


if __name__ == "__main__":
    sys.exit(main())

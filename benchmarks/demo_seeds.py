"""The demonstration over several data seeds: its numbers, how much they move, and how long a run takes.

Runs ``nnunetv2_ciml demo`` (:func:`nnunetv2_ciml.demo.pipeline.run_demo`, the default settings but for the data
seed) once per seed into ``OUT/seed_<k>`` and writes ``OUT/demo_seeds.json``: per seed the mean Dice of each model
on all held-out cases and on the complementary ones, the pair accuracy, the three claims' quantities (CIML's mean
Dice minus nnU-Net's, CIML's complementary-case Dice minus the ablation's, the message mass share over the area
share), the run's stage times and each model's learning curves (train loss, validation loss and pseudo Dice per
epoch); then over the seeds the mean and standard deviation of each, the curves epoch by epoch. The standard
deviations are the run-to-run spread that ``nnunetv2_ciml.demo.claims.SPREAD`` holds and the report states.
``--plot PNG`` draws the learning curves (mean +- std over the seeds) from ``OUT/demo_seeds.json``.
Training is not seeded, so a rerun of one seed moves its numbers by about as much. A seed already in
``OUT/demo_seeds.json`` is kept.

    python benchmarks/demo_seeds.py --out demo_seeds --seeds 0 1 2 3 4
    python benchmarks/demo_seeds.py --out demo_seeds --plot docs/demo_learning_curves.png
"""
import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

QUANTITIES = ("dice_difference", "complementary_gain", "share_ratio")


def measure(results: dict) -> dict:
    """What one demo run contributes: Dice per model, the claims' quantities and outcomes, its stage times."""
    models = results["models"]
    share, area = results["complementary_share"], results["complementary_area_share"]
    return {
        "mean_dice": {m: r["mean_dice"] for m, r in models.items()},
        "complementary_mean_dice": {m: r["complementary_cases"]["mean_dice"] for m, r in models.items()},
        "pair_accuracy": {m: r["complementary_cases"]["pair_accuracy"] for m, r in models.items()},
        "dice_difference": models["CIML"]["mean_dice"] - models["nnUNet"]["mean_dice"],
        "complementary_gain": (models["CIML"]["complementary_cases"]["mean_dice"]
                               - models["CIML_noMessages"]["complementary_cases"]["mean_dice"]),
        "share_ratio": share / area if share is not None and area else None,
        "outcomes": [c["outcome"] for c in results["claims"]],
        "seconds": results["seconds"],
        "curves": {m: t["curves"] for m, t in results["training"].items()},
    }


def summarize(per_seed: dict) -> dict:
    """Mean and standard deviation over the seeds of every number of :func:`measure`."""
    def stats(values):
        values = [v for v in values if v is not None]
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                "n": len(values)} if values else None

    runs = list(per_seed.values())
    summary = {q: stats([r[q] for r in runs]) for q in QUANTITIES}
    for key in ("mean_dice", "complementary_mean_dice", "pair_accuracy"):
        summary[key] = {m: stats([r[key][m] for r in runs]) for m in runs[0][key]}
    summary["total_seconds"] = stats([r["seconds"]["total"] for r in runs])
    with_curves = [r for r in runs if "curves" in r]
    if with_curves:
        summary["curves"] = {m: {k: {"mean": [statistics.mean(v) for v in zip(*[r["curves"][m][k] for r in with_curves])],
                                     "std": [statistics.stdev(v) if len(v) > 1 else 0.0
                                             for v in zip(*[r["curves"][m][k] for r in with_curves])]}
                                 for k in ("train_loss", "val_loss", "pseudo_dice")}
                             for m in with_curves[0]["curves"]}
    return summary


def plot_curves(summary: dict, path: Path) -> None:
    """Train loss, validation loss and pseudo Dice per epoch, mean +- std over the seeds, per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunetv2_ciml.demo.figures import MODEL_COLOURS

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"train_loss": "train loss (Dice + CE, + beta x KL for CIML)", "val_loss": "validation loss (Dice + CE)",
              "pseudo_dice": "pseudo Dice (validation, mean of the labels)"}
    n = summary["mean_dice"][next(iter(summary["mean_dice"]))]["n"]
    for ax, key in zip(axes, labels):
        for model, curves in summary["curves"].items():
            mean, std = curves[key]["mean"], curves[key]["std"]
            epochs = range(len(mean))
            ax.plot(epochs, mean, color=MODEL_COLOURS.get(model), marker="o", ms=3, label=model)
            ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=MODEL_COLOURS.get(model), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels[key])
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0.5, 1.0)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"The demo's learning curves, mean +- std over {n} data seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--plot", type=Path, help="only draw the learning curves from OUT's results into this PNG")
    args = parser.parse_args()
    if args.plot:
        plot_curves(json.loads((args.out / "demo_seeds.json").read_text())["summary"], args.plot)
        return 0
    from nnunetv2_ciml.demo.dataset import DEFAULT_SETTINGS
    from nnunetv2_ciml.demo.pipeline import run_demo

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "demo_seeds.json"
    per_seed = json.loads(results_file.read_text())["seeds"] if results_file.is_file() else {}
    for seed in args.seeds:
        if str(seed) in per_seed:
            continue
        results = run_demo(out / f"seed_{seed}", device="cpu", overwrite=True,
                           settings=replace(DEFAULT_SETTINGS, seed=seed))
        per_seed[str(seed)] = measure(results)
        results_file.write_text(json.dumps({"seeds": per_seed, "summary": summarize(per_seed)}, indent=2) + "\n")
    summary = summarize(per_seed)
    results_file.write_text(json.dumps({"seeds": per_seed, "summary": summary}, indent=2) + "\n")
    for q in (*QUANTITIES, "total_seconds"):
        s = summary[q]
        print(f"{q:20s} mean {s['mean']:+.4f}  std {s['std'] if s['std'] is None else round(s['std'], 4)}  "
              f"({s['n']} seeds)")
    for m, s in summary["mean_dice"].items():
        print(f"mean Dice {m:16s} {s['mean']:.4f} +- {s['std'] or 0:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

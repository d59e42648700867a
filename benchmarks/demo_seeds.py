"""The demonstration over several data seeds: its numbers, how much they move, and how long a run takes.

Runs ``nnunetv2_ciml demo`` (:func:`nnunetv2_ciml.demo.pipeline.run_demo`, the default settings but for the data
seed) once per seed into ``OUT/seed_<k>`` and writes ``OUT/demo_seeds.json``: per seed the mean Dice of each model
on all held-out cases and on the complementary ones, the pair accuracy, the three claims' quantities (CIML's mean
Dice minus nnU-Net's, CIML's complementary-case Dice minus the ablation's, the message mass share over the area
share) and the run's stage times; then over the seeds the mean and standard deviation of each. The standard
deviations are the run-to-run spread that ``nnunetv2_ciml.demo.claims.SPREAD`` holds and the report states.
Training is not seeded, so a rerun of one seed moves its numbers by about as much. A seed already in
``OUT/demo_seeds.json`` is kept.

    python benchmarks/demo_seeds.py --out demo_seeds --seeds 0 1 2 3 4
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
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
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

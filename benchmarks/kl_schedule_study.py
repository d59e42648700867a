"""CIML's KL schedule on the demo's data: what each candidate does to training, and which one ships.

    python benchmarks/kl_schedule_study.py --out kl_study --seeds 0 1 2 3 4 [--models ...] [--parallel 2]
    python benchmarks/kl_schedule_study.py --out kl_study --plot docs/kl_schedule.png

Per data seed (the layout of :mod:`nnunetv2_ciml.demo.study`) it trains, on the demo's budget, nnU-Net, the
no-message ablation and the demo's CIML (beta 0.1) once per candidate (:data:`CANDIDATES`: a schedule of beta or
a KL term; trainers in :mod:`nnunetv2_ciml.demo.trainers`). Every CIML candidate logs each training iteration
(:mod:`nnunetv2_ciml.demo.iteration_log`: beta, the loss terms, each message's KL and gate, the gradient norms
of branches, messages and decoders). Each model predicts the held-out cases; the demo's evaluation gives the mean
Dice and the complementary cases' Dice.

Writes ``OUT/kl_schedule_study.json``: per model and seed the Dice, the training time and the per-epoch train
loss, validation loss and pseudo Dice; per candidate the per-iteration traces of the first :data:`TRACED_EPOCHS`
epochs averaged over the seeds; and the rule below applied. ``--plot`` draws the traces and the epoch losses.

The rule (:func:`decide`), on the seeds given: a candidate qualifies if its mean Dice is at least nnU-Net's minus
:data:`MEAN_TOLERANCE`, its worst seed within :data:`WORST_TOLERANCE` of nnU-Net's worst, no epoch after the
first raises its train loss by more than :data:`MAX_LOSS_RISE` in any seed, and claim 2 (complementary-case Dice
at least :data:`~nnunetv2_ciml.demo.claims.CLEAR_MARGIN` above the ablation's) holds in every seed. The
qualifying candidate with the highest mean Dice ships; if none qualifies, the candidate with the highest mean
Dice, with what it misses named. Candidates not measured on every seed given are listed, not judged.
"""
import argparse
import concurrent.futures
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

BASELINES = {"nnUNet": "nnUNetTrainer_ShapeCompositionDemo",
             "CIML_noMessages": "nnUNetTrainerCIML_noMessages_ShapeCompositionDemo"}
CANDIDATES = {"epochWarmup": "nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo",
              "constantBeta": "nnUNetTrainerCIML_constantBeta_ShapeCompositionDemo",
              "iterationWarmup": "nnUNetTrainerCIML_iterationWarmup_ShapeCompositionDemo",
              "floorWarmup": "nnUNetTrainerCIML_floorWarmup_ShapeCompositionDemo",
              "freeBits": "nnUNetTrainerCIML_freeBits_ShapeCompositionDemo",
              "klPerLatentChannel": "nnUNetTrainerCIML_klPerLatentChannel_ShapeCompositionDemo",
              "priorStart": "nnUNetTrainerCIML_priorStart_ShapeCompositionDemo",
              "klOnMessages": "nnUNetTrainerCIML_klOnMessages_ShapeCompositionDemo"}
MODELS = {**BASELINES, **CANDIDATES}
MEAN_TOLERANCE, WORST_TOLERANCE, MAX_LOSS_RISE = 0.001, 0.005, 0.1
TRACED_EPOCHS = 5
TRACE_FIELDS = ("beta", "loss", "segmentation_loss", "weighted_kl", "kl")


def iteration_traces(path: Path, epochs: int) -> dict:
    """The per-iteration lines of ``iterations.jsonl`` of the first ``epochs`` epochs, as lists per field."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs, lines = lines[0]["message_pairs"], [line for line in lines[1:] if line["epoch"] < epochs]
    traces = {field: [line[field] for line in lines] for field in TRACE_FIELDS}
    traces.update({f"grad_norm_{g}": [line["grad_norm"][g] for line in lines]
                   for g in ("branches", "messages", "decoders", "total")})
    for key in ("message_kl", "message_gate"):
        traces[key] = {name: [line[key][p] for line in lines] for p, name in enumerate(pairs)}
    return traces


def segmentation_loss_per_epoch(path: Path) -> List[float]:
    """The mean segmentation loss (Dice + CE, without beta x KL) of each epoch, from ``iterations.jsonl``."""
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()]
    epochs = sorted({line["epoch"] for line in lines})
    return [statistics.mean(line["segmentation_loss"] for line in lines if line["epoch"] == e) for e in epochs]


def run_model(run, model: str, lock: threading.Lock) -> dict:
    """Train (unless trained), predict and evaluate one model on one seed; its record for the results file."""
    from nnunetv2_ciml.demo.evaluate import evaluate_model
    from nnunetv2_ciml.demo.iteration_log import ITERATION_LOG_NAME
    from nnunetv2_ciml.demo.predict import predict_model
    from nnunetv2_ciml.demo.study import learning_curves, train_model

    trainer, data = MODELS[model], run.data
    seconds = train_model(run, trainer, model)
    with lock:  # one in-process prediction at a time (torch's thread pool is the process's)
        predict_model(run.model_folder(trainer), data.cases, run.run_dir / "predictions" / model, "cpu",
                      run.run_dir / "logs" / f"predict_{model}.log", model, False)
        evaluation = evaluate_model(data.raw, run.run_dir / "predictions" / model, run.run_dir / "evaluation" / model,
                                    data.objects, data.complementary_cases, data.file_ending)
    record = {"mean_dice": evaluation["mean_dice"],
              "complementary_mean_dice": evaluation["complementary_cases"]["mean_dice"],
              "pair_accuracy": evaluation["complementary_cases"]["pair_accuracy"],
              "training_seconds": seconds, **learning_curves(run, trainer)}
    iterations = run.fold_folder(trainer) / ITERATION_LOG_NAME
    if iterations.is_file():
        record["iterations"] = iteration_traces(iterations, TRACED_EPOCHS)
        record["segmentation_loss"] = segmentation_loss_per_epoch(iterations)
    print(f"seed {run.seed} {model:20s} mean Dice {record['mean_dice']:.4f}  complementary "
          f"{record['complementary_mean_dice']:.4f}  max epoch loss rise {max_loss_rise(record['train_loss']):+.3f}",
          flush=True, file=sys.__stdout__)  # another thread's prediction may have redirected sys.stdout
    return record


def max_loss_rise(train_loss: List[float]) -> float:
    """The largest rise of the train loss from one epoch to the next (epoch 1 on; negative if it only fell)."""
    return max(b - a for a, b in zip(train_loss, train_loss[1:]))


def _mean_traces(records: List[dict]) -> dict:
    """Per-iteration traces averaged over seeds (element by element, over the seeds that have the iteration)."""
    def mean(lists):
        n = min(len(v) for v in lists)
        return [round(statistics.mean(v[k] for v in lists), 6) for k in range(n)]

    traces = [r["iterations"] for r in records]
    out = {k: mean([t[k] for t in traces]) for k in traces[0] if not isinstance(traces[0][k], dict)}
    for key in ("message_kl", "message_gate"):
        out[key] = {p: mean([t[key][p] for t in traces]) for p in traces[0][key]}
    return out


def decide(dice: Dict[str, Dict[str, dict]], seeds: List[str]) -> dict:
    """The rule of the module docstring on the per-seed records ``dice[seed][model]``."""
    from nnunetv2_ciml.demo.claims import CLEAR_MARGIN

    def values(model, key):
        return [dice[s][model][key] for s in seeds]

    plain = values("nnUNet", "mean_dice")
    ablation = values("CIML_noMessages", "complementary_mean_dice")
    table, misses = {}, {}
    for model in CANDIDATES:
        if not all(model in dice[s] for s in seeds):
            continue
        mean_dice = values(model, "mean_dice")
        gains = [c - a for c, a in zip(values(model, "complementary_mean_dice"), ablation)]
        rises = [max_loss_rise(loss) for loss in values(model, "train_loss")]
        row = {"mean_dice": statistics.mean(mean_dice), "std": statistics.stdev(mean_dice) if len(seeds) > 1 else None,
               "worst_seed": min(mean_dice), "max_loss_rise": max(rises), "claim2_gains": gains,
               "dice_per_seed": mean_dice}
        miss = []
        if row["mean_dice"] < statistics.mean(plain) - MEAN_TOLERANCE:
            miss.append(f"mean Dice {row['mean_dice']:.4f} below nnU-Net's {statistics.mean(plain):.4f} - "
                        f"{MEAN_TOLERANCE}")
        if row["worst_seed"] < min(plain) - WORST_TOLERANCE:
            miss.append(f"worst seed {row['worst_seed']:.4f} more than {WORST_TOLERANCE} below nnU-Net's worst "
                        f"{min(plain):.4f}")
        if row["max_loss_rise"] > MAX_LOSS_RISE:
            miss.append(f"train loss rose by {row['max_loss_rise']:.3f} from one epoch to the next")
        if min(gains) < CLEAR_MARGIN:
            miss.append(f"claim 2 missed in {sum(g < CLEAR_MARGIN for g in gains)} seed(s)")
        table[model], misses[model] = row, miss
    if not table:
        return {}
    qualifying = [m for m in table if not misses[m]]
    ships = max(qualifying or table, key=lambda m: table[m]["mean_dice"])
    return {"seeds": seeds, "nnUNet": {"mean_dice": statistics.mean(plain), "worst_seed": min(plain),
                                       "dice_per_seed": plain},
            "candidates": table, "misses": misses, "ships": ships, "qualifies": not misses[ships]}


def plot(results: dict, path: Path) -> None:
    """Top: the first epochs per iteration (mean over seeds): train loss, message KL, gradient norm. Bottom: the whole
    training per epoch (mean +- std over seeds): train loss, its segmentation part, pseudo Dice; nnU-Net's for
    reference (its train loss is all segmentation loss)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    traces, dice = results["traces"], results["dice"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    colours = dict(zip(CANDIDATES, plt.get_cmap("tab10").colors))
    shipped = results.get("decision", {}).get("ships")
    for model, t in traces.items():
        x, lw = np.arange(len(t["loss"])), 2.0 if model == shipped else 0.9
        axes[0, 0].plot(x, t["loss"], color=colours[model], lw=lw, label=model + (" (ships)" if model == shipped else ""))
        axes[0, 1].semilogy(x, np.maximum(t["kl"], 1e-3), color=colours[model], lw=lw)
        axes[0, 2].semilogy(x, t["grad_norm_total"], color=colours[model], lw=lw)
    per_epoch = results["iterations_per_epoch"]
    for ax in axes[0]:
        for e in range(1, TRACED_EPOCHS):
            ax.axvline(e * per_epoch, color="0.85", lw=0.6, zorder=0)
        ax.set_xlabel(f"training iteration ({per_epoch} per epoch)")
    axes[0, 0].set_ylabel("train loss (Dice + CE + beta x KL)")
    axes[0, 1].set_ylabel("mean message KL (nats per voxel)")
    axes[0, 2].axhline(12, color="k", ls=":", lw=0.8, label="nnU-Net clips the norm to 12")
    axes[0, 2].set_ylabel("gradient norm before clipping")
    axes[0, 2].legend(fontsize=8)
    seeds = sorted(dice, key=int)
    keys = {axes[1, 0]: ("train_loss", "train loss"), axes[1, 1]: ("segmentation_loss", "its Dice + CE part"),
            axes[1, 2]: ("pseudo_dice", "pseudo Dice (validation)")}
    for ax, (key, label) in keys.items():
        for model in ["nnUNet", *CANDIDATES]:
            name = "train_loss" if model == "nnUNet" and key == "segmentation_loss" else key
            curves = [dice[s][model][name] for s in seeds if model in dice[s] and name in dice[s][model]]
            if not curves:
                continue
            mean, std = np.mean(curves, 0), np.std(curves, 0)
            colour = "#8d99ae" if model == "nnUNet" else colours[model]
            ax.plot(mean, color=colour, lw=2.0 if model == shipped else 1.2, ls="--" if model == "nnUNet" else "-",
                    label=model)
            ax.fill_between(np.arange(len(mean)), mean - std, mean + std, color=colour, alpha=0.12)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{label} per epoch, mean +- std")
    axes[1, 2].set_ylim(0.7, 1.0)
    axes[0, 0].legend(fontsize=8)
    axes[1, 1].legend(fontsize=8)
    fig.suptitle(f"CIML's KL schedule on the demo (beta 0.1): top, the first {TRACED_EPOCHS} epochs per iteration "
                 "(mean over seeds); bottom, the whole training per epoch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(dice: dict, seeds: List[str], iterations_per_epoch: int) -> dict:
    traces = {}
    for model in CANDIDATES:
        records = [dice[s][model] for s in dice if model in dice[s] and "iterations" in dice[s][model]]
        if records:
            traces[model] = _mean_traces(records)
    slim = {s: {m: {k: v for k, v in r.items() if k != "iterations"} for m, r in per_model.items()}
            for s, per_model in dice.items()}
    return {"dice": slim, "traces": traces, "iterations_per_epoch": iterations_per_epoch,
            "decision": decide(dice, seeds) if all({"nnUNet", "CIML_noMessages"} <= set(dice.get(s, {}))
                                                   for s in seeds) else {}}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time (one torch thread each)")
    parser.add_argument("--plot", type=Path, help="only draw the figure from OUT's results into this PNG")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    results_file = out / "kl_schedule_study.json"
    if args.plot:
        plot(json.loads(results_file.read_text()), args.plot)
        return 0
    from nnunetv2_ciml.demo.study import prepare_seed
    from nnunetv2_ciml.demo.trainers import DemoBudget

    out.mkdir(parents=True, exist_ok=True)
    raw_file = out / "per_seed_records.json"  # full records (with traces), so that a run resumes
    dice = json.loads(raw_file.read_text()) if raw_file.is_file() else {}
    seeds = [str(s) for s in args.seeds]
    runs = {seed: prepare_seed(out, seed) for seed in args.seeds}
    lock = threading.Lock()

    def write() -> None:
        raw_file.write_text(json.dumps(dice) + "\n")
        results_file.write_text(json.dumps(summarize(dice, [s for s in seeds if s in dice],
                                                     DemoBudget.budget_iterations), indent=1) + "\n")

    def job(seed: int, model: str) -> None:
        record = run_model(runs[seed], model, lock)
        with lock:
            dice.setdefault(str(seed), {})[model] = record
            write()

    for seed, per_model in dice.items():  # records of an earlier version of this script
        for model, record in per_model.items():
            iterations = runs[int(seed)].fold_folder(MODELS[model]) / "iterations.jsonl" if int(seed) in runs else None
            if "segmentation_loss" not in record and iterations is not None and iterations.is_file():
                record["segmentation_loss"] = segmentation_loss_per_epoch(iterations)
    # baselines first, then every candidate seed by seed, so that a partial run can already be judged
    jobs = [(seed, model) for model in args.models for seed in args.seeds if model not in dice.get(str(seed), {})]
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for future in concurrent.futures.as_completed([pool.submit(job, s, m) for s, m in jobs]):
            future.result()
    with lock:
        write()
    decision = json.loads(results_file.read_text())["decision"]
    if decision:
        print(f"\nnnU-Net mean Dice {decision['nnUNet']['mean_dice']:.4f}, worst seed {decision['nnUNet']['worst_seed']:.4f}")
        for model, row in decision["candidates"].items():
            print(f"{model:20s} mean {row['mean_dice']:.4f} worst {row['worst_seed']:.4f} max loss rise "
                  f"{row['max_loss_rise']:+.3f} claim-2 gain min {min(row['claim2_gains']):+.3f}  "
                  + ("qualifies" if not decision["misses"][model] else "; ".join(decision["misses"][model])))
        print(f"ships: {decision['ships']} ({'meets the rule' if decision['qualifies'] else 'best mean Dice; none meets the rule'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What CIML's decomposition buys and costs when one modality is corrupted: Dice per label of nnU-Net, CIML and CIML
without messages on the demo's held-out cases, with one modality at a time misregistered, noisier or replaced.

    python benchmarks/modality_robustness.py --runs demo_seeds --seeds 0 1 2 [--out results.json]

``--runs``: a folder of demo runs with the layout of :mod:`nnunetv2_ciml.demo.study` (``benchmarks/demo_seeds.py``'s
``--out``: ``seed_<k>`` holds the three trained models of data seed k). Each model predicts every held-out case
(nnU-Net's predictor, in memory) under each condition, and Dice per label is scored against the held-out labels
(a label absent from both prediction and reference counts 1):

- ``clean``;
- ``shift_<M>_<k>``: modality M moved by k = 1, 2, 4 voxels along both image axes (edges repeated), as a
  misregistration;
- ``noise_<M>_<f>``: white Gaussian noise added to modality M, of f = 1 and 2 times the generator's level
  (``ShapeCompositionSpec.noise``, in the images' units);
- ``replaced_<M>``: modality M replaced by noise of the generator's level alone (a wrong or empty sequence).

``--first-version-runs``: runs of ``benchmarks/kl_schedule_study.py`` (the same layout and data seeds) whose
``nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo`` models (the first version's KL and schedule) are scored too,
as ``CIML_first_version``: whether the fixed schedule changes what a corrupted modality costs.

``CIML_without_B->circle`` is the trained CIML model with B's message to the circle subtask switched off at
inference (its projection zeroed at every stage): with it, the share of CIML's circle loss under a corrupted B that
travels through that message is ``1 - loss without it / loss with it``. Writes ``--out`` (default
``RUNS/modality_robustness.json``): per seed, model, condition and label the mean Dice, and the means over seeds.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

MODELS = ("nnUNet", "CIML", "CIML_noMessages")
SHIFTS, NOISE_FACTORS = (1, 2, 4), (1, 2)
SILENCED = ("B", "circle")  # (sender, subtask) of the message switched off in CIML_without_B->circle
FIRST_VERSION, FIRST_VERSION_TRAINER = "CIML_first_version", "nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo"


def conditions(modalities: List[str]) -> List[str]:
    names = ["clean"]
    for m in modalities:
        names += [f"shift_{m}_{k}" for k in SHIFTS] + [f"noise_{m}_{f}" for f in NOISE_FACTORS] + [f"replaced_{m}"]
    return names


def corrupt(image: np.ndarray, condition: str, modalities: List[str], noise: float,
            rng: np.random.Generator) -> np.ndarray:
    """``image`` ``(M, *spatial)`` under ``condition`` (see the module docstring); a copy."""
    out = image.copy()
    if condition == "clean":
        return out
    kind, modality, *amount = condition.split("_")
    c = modalities.index(modality)
    if kind == "shift":
        k = int(amount[0])
        moved = out[c]
        for axis in (-2, -1):  # the two image axes; edges repeated where the image moved away
            moved = np.take(moved, np.clip(np.arange(moved.shape[axis]) - k, 0, moved.shape[axis] - 1), axis=axis)
        out[c] = moved
    elif kind == "noise":
        out[c] = out[c] + float(amount[0]) * noise * rng.standard_normal(out[c].shape).astype(out.dtype)
    elif kind == "replaced":
        out[c] = noise * rng.standard_normal(out[c].shape).astype(out.dtype)
    else:
        raise ValueError(f"unknown condition {condition!r}")
    return out


def silence_message(predictor, sender: str, subtask: str) -> None:
    """Zero the projection of message ``sender -> subtask`` at every stage, in the weights the predictor loads."""
    import torch

    from nnunetv2_ciml.network import pair_name, unwrap

    network = unwrap(predictor.network)
    network.load_state_dict(predictor.list_of_parameters[0])
    pair = next(p for p in network.message_pairs if p.name == pair_name(sender, subtask))
    with torch.no_grad():
        for module in network.messages.values():
            module.projection(pair).zero_()
    predictor.list_of_parameters = [{k: v.clone() for k, v in network.state_dict().items()}]


def label_dice(reference: np.ndarray, prediction: np.ndarray, labels: Dict[str, int]) -> Dict[str, float]:
    from nnunetv2_ciml.evaluation.base import dice

    scores = {name: dice(reference == value, prediction == value) for name, value in labels.items()}
    return {name: 1.0 if np.isnan(d) else d for name, d in scores.items()}  # absent from both: 1


def evaluate_seed(run, models: Dict[str, str], seed: int, first_version=None) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{model: {condition: {label: mean Dice over the held-out cases}}}`` of one seed's run (and of the first
    version's CIML model of ``first_version``, a run of the same data seed, when given)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    data = run.data
    modalities = [data.dataset_json["channel_names"][str(c)] for c in range(len(data.dataset_json["channel_names"]))]
    labels = {n: v for n, v in data.dataset_json["labels"].items() if v != 0}
    noise = data.dataset_json["shape_composition"]["noise"]
    results = {}
    folders = {model: run.model_folder(trainer) for model, trainer in models.items()}
    if first_version is not None:
        folders[FIRST_VERSION] = first_version.model_folder(FIRST_VERSION_TRAINER)
    for model, folder in folders.items():
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                    perform_everything_on_device=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=("0",))
        if model == "CIML_without_B->circle":
            silence_message(predictor, *SILENCED)
        reader = predictor.plans_manager.image_reader_writer_class()
        per_condition = {}
        for k, condition in enumerate(conditions(modalities)):
            if model == "CIML_without_B->circle" and condition != "clean" and f"_{SILENCED[0]}" not in condition:
                continue  # the silenced message matters where its sender is corrupted
            rng = np.random.default_rng(1000 * seed + k)  # the same corruption for every model
            scores = []
            for case, files in data.cases.items():
                image, properties = reader.read_images(files)
                reference, _ = reader.read_seg(str(data.raw / "labelsTs" / f"{case}{data.file_ending}"))
                prediction = predictor.predict_single_npy_array(
                    corrupt(image, condition, modalities, noise, rng), properties)
                scores.append(label_dice(reference[0], prediction, labels))
            per_condition[condition] = {n: float(np.mean([s[n] for s in scores])) for n in labels}
        results[model] = per_condition
        print(f"seed {seed} {model:24s} clean " + " ".join(f"{n} {d:.3f}" for n, d in per_condition["clean"].items()),
              flush=True)
    return results


def summarize(per_seed: Dict[str, dict]) -> dict:
    """Mean and standard deviation over the seeds, per model, condition and label; per model, condition and label
    the Dice lost against clean; the share of CIML's loss carried by the silenced message."""
    seeds = sorted(per_seed, key=int)
    first = per_seed[seeds[0]]
    mean, loss = {}, {}
    for model, per_condition in first.items():  # conditions of the seed's first model (all, or B's for silenced)
        mean[model], loss[model] = {}, {}
        for condition, per_label in per_condition.items():
            values = {n: [per_seed[s][model][condition][n] for s in seeds] for n in per_label}
            mean[model][condition] = {n: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                                      for n, v in values.items()}
            loss[model][condition] = {n: statistics.mean(per_seed[s][model]["clean"][n] - per_seed[s][model][condition][n]
                                                         for s in seeds) for n in per_label}
    share = {}
    silenced = "CIML_without_B->circle"
    if silenced in loss:
        for condition, per_label in loss["CIML"].items():
            full = per_label[SILENCED[1]]
            if condition.startswith(f"shift_{SILENCED[0]}_") or condition.startswith(f"noise_{SILENCED[0]}_") \
                    or condition == f"replaced_{SILENCED[0]}":
                share[condition] = (1 - loss[silenced][condition][SILENCED[1]] / full) if full > 0.005 else None
    return {"seeds": seeds, "dice": mean, "dice_lost": loss, "share_through_silenced_message": share}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="runs of `nnunetv2_ciml demo --quick` (a smoke test)")
    parser.add_argument("--first-version-runs", type=Path, help="runs of benchmarks/kl_schedule_study.py")
    args = parser.parse_args(argv)
    from nnunetv2_ciml.demo.dataset import DEFAULT_SETTINGS, QUICK_SETTINGS
    from nnunetv2_ciml.demo.study import prepare_seed

    runs = args.runs.resolve()
    out = args.out or runs / "modality_robustness.json"
    trainers = (QUICK_SETTINGS if args.quick else DEFAULT_SETTINGS).trainers
    models = {m: trainers[m] for m in MODELS}
    models["CIML_without_B->circle"] = trainers["CIML"]
    per_seed = json.loads(out.read_text())["per_seed"] if out.is_file() else {}
    for seed in args.seeds:
        if str(seed) not in per_seed:
            first = prepare_seed(args.first_version_runs.resolve(), seed) if args.first_version_runs else None
            per_seed[str(seed)] = evaluate_seed(prepare_seed(runs, seed, args.quick), models, seed, first)
            out.write_text(json.dumps({"per_seed": per_seed, "summary": summarize(per_seed)}, indent=1) + "\n")
    summary = summarize(per_seed)
    out.write_text(json.dumps({"per_seed": per_seed, "summary": summary}, indent=1) + "\n")
    print(f"\nDice lost against clean, mean over seeds {', '.join(summary['seeds'])} (circle / square):")
    for condition in summary["dice_lost"]["CIML"]:
        print(f"{condition:14s} " + "  ".join(
            f"{model} " + "/".join(f"{lost[condition][n]:+.3f}" for n in ("circle", "square"))
            for model, lost in summary["dice_lost"].items() if condition in lost))
    return 0


if __name__ == "__main__":
    sys.exit(main())

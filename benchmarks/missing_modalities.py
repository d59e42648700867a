"""Missing modalities on the ShapeComposition demo: every non-empty subset of its 3 modalities, 4 models.

    python benchmarks/missing_modalities.py OUT_DIR [--quick] [--seeds 0 1 2] [--device auto] [--threads 2]

Per seed (the data seed of the demo's generator), in ``OUT_DIR/seed_<k>``: the demo's dataset and narrower
plans (:mod:`nnunetv2_ciml.demo.pipeline`), then ``nnUNetv2_train`` fold 0 of four models on the demo's
budget (``--quick``: the smoke-test budget and data, which say nothing about the method):

- ``CIML``: ``nnUNetTrainerCIML_ShapeCompositionDemo`` (no modality dropout);
- ``CIML_dropout``: ``nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo``;
- ``nnUNet_zero_fill``: ``nnUNetTrainer_ShapeCompositionDemo``, missing channels zero-filled at prediction;
- ``nnUNet_dropout``: ``nnUNetTrainer_modalityDropout_ShapeCompositionDemo`` (zeroed channels in training).

Each model predicts the held-out cases with every non-empty subset of the modality files (the others deleted
from a copy of ``imagesTs``) through ``nnunetv2_ciml predict``'s code (:mod:`nnunetv2_ciml.missing_modalities`),
and :func:`nnunetv2_ciml.evaluation.evaluate_folder` (nnU-Net mode) gives the mean foreground Dice. Writes
``OUT_DIR/results.json`` (per seed, model and subset), ``OUT_DIR/report.md`` (table: rows = subsets, columns =
models, mean +- std over seeds; the two goals checked) and ``OUT_DIR/missing_modalities.png``. A model already
trained in ``OUT_DIR/seed_<k>`` and a prediction already written are kept, so an interrupted run resumes, and
seeds run apart (``OUT_A --seeds 0 1`` beside ``OUT_B --seeds 2``) are reported together by running
``OUT --seeds 0 1 2`` after linking ``OUT_B/seed_2`` into ``OUT``: only the evaluation runs again.
"""
import argparse
import itertools
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Sequence

MODELS = {"CIML": "nnUNetTrainerCIML_ShapeCompositionDemo",
          "CIML_dropout": "nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo",
          "nnUNet_zero_fill": "nnUNetTrainer_ShapeCompositionDemo",
          "nnUNet_dropout": "nnUNetTrainer_modalityDropout_ShapeCompositionDemo"}
# the dropout study (--models): the defaults of nnUNetTrainerCIML_modalityDropout (rate 0.5, primaries droppable)
# against other choices; CIML_dropout above is the default
DROPOUT_STUDY = {"CIML_dropout_rate0.25": "nnUNetTrainerCIML_modalityDropout_rate025_ShapeCompositionDemo",
                 "CIML_dropout_rate0.75": "nnUNetTrainerCIML_modalityDropout_rate075_ShapeCompositionDemo",
                 "CIML_dropout_keepPrimaries": "nnUNetTrainerCIML_modalityDropout_keepPrimaries_ShapeCompositionDemo"}
TRAINERS = {**MODELS, **DROPOUT_STUDY}
FULL_DICE_TOLERANCE = 0.005  # goal: CIML with dropout within this of CIML with every modality


def subsets(modalities: Sequence[str]) -> List[tuple]:
    """Non-empty subsets of channel indices, largest first."""
    n = len(modalities)
    return sorted((s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)), key=lambda s: (-len(s), s))


def subset_name(subset: Sequence[int], modalities: Sequence[str]) -> str:
    return "+".join(modalities[c] for c in subset)


def run_seed(out: Path, seed: int, quick: bool, device: str, threads: int,
             models: Sequence[str] = tuple(MODELS)) -> Dict[str, Dict[str, float]]:
    import torch

    from nnunetv2_ciml.demo import nnunet_steps
    from nnunetv2_ciml.demo.pipeline import (CONFIGURATION, DATASET_ID, DATASET_NAME, DEFAULT_SETTINGS, FOLD, PLANS,
                                             QUICK_SETTINGS, _resolve_device, narrow_plans, nnunet_environment)
    from nnunetv2_ciml.demo.shape_composition import generate_shape_composition
    from nnunetv2_ciml.evaluation import evaluate_folder
    from nnunetv2_ciml.missing_modalities import find_case_files, predict_case, read_case
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    settings = replace(QUICK_SETTINGS if quick else DEFAULT_SETTINGS, seed=seed)
    device = _resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    env = nnunet_environment(out, device)
    logs = out / "logs"
    raw = out / "nnUNet_raw" / DATASET_NAME
    if not (raw / "dataset.json").is_file():
        generate_shape_composition(raw, num_train=settings.num_train, num_test=settings.num_test, size=settings.size,
                                   radius=settings.radius, num_modalities=settings.num_modalities, seed=seed)
    preprocessed = out / "nnUNet_preprocessed" / DATASET_NAME
    if not (preprocessed / f"{PLANS}.json").is_file():
        nnunet_steps.plan_and_preprocess(DATASET_ID, CONFIGURATION, env, logs / "plan_and_preprocess.log")
        narrow_plans(preprocessed, CONFIGURATION, settings.base_features, settings.max_features, settings.batch_size)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    modalities = [dataset_json["channel_names"][str(c)] for c in range(len(dataset_json["channel_names"]))]
    ending = dataset_json["file_ending"]

    inputs = {}
    for subset in subsets(modalities):
        folder = out / "inputs" / subset_name(subset, modalities)
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for path in (raw / "imagesTs").iterdir():
                if int(path.name[:-len(ending)][-4:]) in subset:
                    shutil.copy(path, folder / path.name)
        inputs[subset_name(subset, modalities)] = folder

    torch.set_num_threads(threads)
    results: Dict[str, Dict[str, float]] = {}
    for model in models:
        trainer = TRAINERS[model]
        model_folder = out / "nnUNet_results" / DATASET_NAME / f"{trainer}{'Quick' if quick else ''}__{PLANS}__{CONFIGURATION}"
        trainer_name = f"{trainer}{'Quick' if quick else ''}"
        if not (model_folder / f"fold_{FOLD}" / "checkpoint_final.pth").is_file():
            nnunet_steps.train(DATASET_ID, CONFIGURATION, FOLD, trainer_name, PLANS, device, threads, env,
                               logs / f"train_{model}.log", f"seed {seed}: train {model}")
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device(device),
                                    perform_everything_on_device=device == "cuda", allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(FOLD,))
        reader = predictor.plans_manager.image_reader_writer_class()
        results[model] = {}
        for name, folder in inputs.items():
            pred = out / "predictions" / model / name
            pred.mkdir(parents=True, exist_ok=True)
            for case, files in find_case_files(folder, ending, len(modalities)).items():
                if (pred / f"{case}{ending}").is_file():  # predicted by an earlier, interrupted run
                    continue
                image, properties, present = read_case(reader, case, files, len(modalities), modalities)
                predict_case(predictor, image, properties, present, str(pred / case))
            summary = evaluate_folder("nnunet", raw / "labelsTs", pred, out / "evaluation" / model / name,
                                      num_processes=1, verbose=False, dataset_json=str(raw / "dataset.json"))
            results[model][name] = float(summary["foreground_mean"]["Dice"])
            print(f"seed {seed} {model:16s} {name:12s} Dice {results[model][name]:.4f}", flush=True)
    return results


def write_report(out: Path, per_seed: Dict[str, Dict[str, Dict[str, float]]], quick: bool, command: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = list(per_seed)
    models = [m for m in TRAINERS if all(m in per_seed[s] for s in seeds)]
    names = list(next(iter(per_seed.values()))["CIML"])
    table = {m: {n: [per_seed[s][m][n] for s in seeds] for n in names} for m in models}
    mean = {m: {n: float(np.mean(v)) for n, v in table[m].items()} for m in models}
    over_subsets = {m: float(np.mean(list(mean[m].values()))) for m in models}
    full = names[0]
    lines = ["# Missing modalities on ShapeComposition", "",
             f"Command: `{command}`. Seeds: {', '.join(seeds)}. Mean foreground Dice on the held-out cases "
             f"(nnU-Net evaluation), mean {'+- std ' if len(seeds) > 1 else ''}over seeds; rows = modalities "
             f"present, columns = models.", ""]
    if quick:
        lines += ["**Quick run: smoke-test budget and data. These numbers say nothing about the method.**", ""]
    lines += ["| present | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for n in names:
        cells = [f"{np.mean(table[m][n]):.3f}" + (f" +- {np.std(table[m][n]):.3f}" if len(seeds) > 1 else "")
                 for m in models]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **mean over subsets** | " + " | ".join(f"{over_subsets[m]:.3f}" for m in models) + " |")
    gap = mean["CIML"][full] - mean["CIML_dropout"][full]
    lines += ["", "Goals (the numbers, whether met or not):", "",
              f"- CIML with dropout keeps its full-modality Dice within {FULL_DICE_TOLERANCE} of CIML's: "
              f"{mean['CIML_dropout'][full]:.4f} vs {mean['CIML'][full]:.4f} (gap {gap:+.4f}): "
              f"{'met' if gap <= FULL_DICE_TOLERANCE else 'NOT met'}",
              f"- its mean over subsets beats nnU-Net with dropout: {over_subsets['CIML_dropout']:.4f} vs "
              f"{over_subsets['nnUNet_dropout']:.4f}: "
              f"{'met' if over_subsets['CIML_dropout'] > over_subsets['nnUNet_dropout'] else 'NOT met'}", "",
              "![Dice per subset](missing_modalities.png)", ""]
    (out / "report.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(models)
    x = np.arange(len(names))
    for k, m in enumerate(models):
        ax.bar(x + (k - (len(models) - 1) / 2) * width, [mean[m][n] for n in names], width,
               yerr=[np.std(table[m][n]) for n in names] if len(seeds) > 1 else None, label=m)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"Modalities present at prediction ({len(seeds)} seed(s){', quick' if quick else ''})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out / "missing_modalities.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true", help="smoke-test budget and data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(TRAINERS),
                        help="the four models of the comparison (default), and/or the dropout study's variants; "
                             "results of other models already in OUT_DIR/results.json are kept")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per training and for prediction (on 2 cores, two runs of this script "
                             "on different seeds with 1 thread each finish sooner than one with 2)")
    args = parser.parse_args(argv)
    results_file = args.out / "results.json"
    earlier = json.loads(results_file.read_text()) if results_file.is_file() else {}
    dice = earlier.get("dice", {}) if earlier.get("quick") == args.quick else {}
    for seed in args.seeds:
        dice.setdefault(str(seed), {}).update(
            run_seed(args.out / f"seed_{seed}", seed, args.quick, args.device, args.threads, args.models))
        results_file.write_text(json.dumps({"quick": args.quick, "models": TRAINERS, "dice": dice}, indent=2) + "\n")
    per_seed = {str(seed): dice[str(seed)] for seed in args.seeds}
    if not all(set(MODELS) <= set(per_seed[s]) for s in per_seed):
        print(f"results so far: {results_file} (the report needs the four models {list(MODELS)} on every seed)")
        return 0
    write_report(args.out, per_seed, args.quick, " ".join(["python", "benchmarks/missing_modalities.py"] +
                                                          (argv if argv is not None else sys.argv[1:])))
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

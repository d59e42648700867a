"""Missing modalities on the ShapeComposition demo: every non-empty subset of its 3 modalities, CIML and nnU-Net.

    python benchmarks/missing_modalities.py OUT_DIR [--quick] [--seeds 0 1 2] [--models ...] [--parallel 2]

Per seed (the data seed of the demo's generator), in ``OUT_DIR/seed_<k>``: the demo's dataset and narrower
plans (:mod:`nnunetv2_ciml.demo.dataset`), then ``nnUNetv2_train`` fold 0 of every model on the demo's budget
(``--quick``: the smoke-test budget and data, which say nothing about the method), ``--parallel`` trainings at a
time with one torch thread each:

- ``CIML``: ``nnUNetTrainerCIML_ShapeCompositionDemo`` (no modality dropout; a missing primary's place is taken
  by its first present fallback, as in every CIML model);
- ``CIML_dropout``: ``nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo`` (``nnUNetTrainerCIML``'s network:
  one encoder shared by every modality, with a scale and shift per modality after every normalisation, so that a
  fallback's branch computes its features with the primary's filters; the first present fallback's branch read as
  it is);
- ``CIML_grouped_dropout``: the same with the grouped encoder (one weight set per modality,
  ``nnUNetTrainerCIML_groupedBranches``');
- ``CIML_inputEmbedding_dropout``: the shared encoder told each modality by a learnt input code instead;
- ``CIML_dropout_fallbackAffine``, ``CIML_dropout_meanFallback`` (grouped encoder): the first present fallback
  through a learnt scale and shift of its skip features; the mean of the present fallbacks (as HeMIS fuses);
- ``nnUNet_zero_fill``: ``nnUNetTrainer_ShapeCompositionDemo``, missing channels zero-filled at prediction;
- ``nnUNet_dropout``: ``nnUNetTrainer_modalityDropout_ShapeCompositionDemo`` (zeroed channels in training).

Each model predicts the held-out cases with every non-empty subset of the modality files (the others deleted
from a copy of ``imagesTs``) through ``nnunetv2_ciml predict``'s code (:mod:`nnunetv2_ciml.missing_modalities`),
and :func:`nnunetv2_ciml.evaluation.evaluate_folder` (nnU-Net mode) gives the mean foreground Dice. Writes
``OUT_DIR/results.json`` (per seed, model and subset), ``OUT_DIR/report.md`` (table: rows = subsets, columns =
models, mean +- std over seeds; the rule below applied) and ``OUT_DIR/missing_modalities.png``. A model already
trained in ``OUT_DIR/seed_<k>`` and a prediction already written are kept, so an interrupted run resumes.

The rule that chooses ``nnUNetTrainerCIML_modalityDropout``'s mechanism: of the CIML dropout models, those that
keep the full-modality Dice within ``FULL_DICE_TOLERANCE`` of CIML without dropout, reach a mean over the subsets
at least nnU-Net with dropout's and at least ``C_ALONE_TARGET`` with modality C alone; of these, the highest
subset mean; if none meets all three, the highest subset mean, with the targets it misses named.

The rule for the shared encoder (:func:`decide_shared`): the shared encoder is the modality-dropout default
(``CIML_dropout``) if its subset mean beats the grouped encoder's (``CIML_grouped_dropout``) and its full-modality
Dice is within ``FULL_DICE_TOLERANCE`` of it.
"""
import argparse
import concurrent.futures
import itertools
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Dict, List, Sequence

MODELS = {"CIML": "nnUNetTrainerCIML_ShapeCompositionDemo",
          "CIML_dropout": "nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo",
          "CIML_grouped_dropout": "nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo",
          "CIML_dropout_fallbackAffine": "nnUNetTrainerCIML_modalityDropout_fallbackAffine_ShapeCompositionDemo",
          "CIML_dropout_meanFallback": "nnUNetTrainerCIML_modalityDropout_meanFallback_ShapeCompositionDemo",
          "nnUNet_zero_fill": "nnUNetTrainer_ShapeCompositionDemo",
          "nnUNet_dropout": "nnUNetTrainer_modalityDropout_ShapeCompositionDemo",
          "CIML_inputEmbedding_dropout": "nnUNetTrainerCIML_inputEmbedding_modalityDropout_ShapeCompositionDemo"}
MECHANISMS = ("CIML_dropout", "CIML_grouped_dropout", "CIML_dropout_fallbackAffine", "CIML_dropout_meanFallback",
              "CIML_inputEmbedding_dropout")
# the dropout-rate study of an earlier network (--models): other rates, primaries kept
DROPOUT_STUDY = {"CIML_dropout_rate0.25": "nnUNetTrainerCIML_modalityDropout_rate025_ShapeCompositionDemo",
                 "CIML_dropout_rate0.75": "nnUNetTrainerCIML_modalityDropout_rate075_ShapeCompositionDemo",
                 "CIML_dropout_keepPrimaries": "nnUNetTrainerCIML_modalityDropout_keepPrimaries_ShapeCompositionDemo"}
# CIML without dropout on the grouped encoder (--models): what sharing the encoder changes without dropout
GROUPED_REFERENCE = {"CIML_grouped": "nnUNetTrainerCIML_groupedBranches_ShapeCompositionDemo"}
TRAINERS = {**MODELS, **DROPOUT_STUDY, **GROUPED_REFERENCE}
FULL_DICE_TOLERANCE = 0.003  # targets: full-modality Dice within this of CIML without dropout,
C_ALONE_TARGET = 0.75  # at least this with modality C alone, and a subset mean at least nnU-Net with dropout's


def subsets(modalities: Sequence[str]) -> List[tuple]:
    """Non-empty subsets of channel indices, largest first."""
    n = len(modalities)
    return sorted((s for k in range(1, n + 1) for s in itertools.combinations(range(n), k)), key=lambda s: (-len(s), s))


def subset_name(subset: Sequence[int], modalities: Sequence[str]) -> str:
    return "+".join(modalities[c] for c in subset)


def prepare_seed(out: Path, seed: int, quick: bool):
    """Data, plans (:func:`nnunetv2_ciml.demo.study.prepare_seed`) and the subset input folders of one seed:
    ``(SeedRun, modalities, {subset name: input folder})``."""
    from nnunetv2_ciml.demo.study import prepare_seed as prepare_run

    run = prepare_run(out, seed, quick)
    data = run.data
    channels = data.dataset_json["channel_names"]
    modalities = [channels[str(c)] for c in range(len(channels))]
    ending = data.file_ending
    inputs = {}
    for subset in subsets(modalities):
        folder = run.run_dir / "inputs" / subset_name(subset, modalities)
        if not folder.is_dir():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            for path in (data.raw / "imagesTs").iterdir():
                if int(path.name[:-len(ending)][-4:]) in subset:
                    shutil.copy(path, partial / path.name)
            partial.rename(folder)
        inputs[subset_name(subset, modalities)] = folder
    return run, modalities, inputs


def run_model(seed: int, model: str, quick: bool, prepared, lock: threading.Lock) -> Dict[str, float]:
    """Train (unless trained) and predict every subset with one model; returns ``{subset: mean Dice}``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_ciml.demo.dataset import FOLD
    from nnunetv2_ciml.demo.study import train_model
    from nnunetv2_ciml.evaluation import evaluate_folder
    from nnunetv2_ciml.missing_modalities import find_case_files, predict_case, read_case

    run, modalities, inputs = prepared
    run_dir, data = run.run_dir, run.data
    trainer = f"{TRAINERS[model]}{'Quick' if quick else ''}"
    folder = run.model_folder(trainer)
    train_model(run, trainer, model)  # a model trained before is kept
    results: Dict[str, float] = {}
    with lock:  # one in-process prediction at a time (torch's thread pool is the process's)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                    perform_everything_on_device=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=(FOLD,))
        reader = predictor.plans_manager.image_reader_writer_class()
        for name, inputs_folder in inputs.items():
            pred = run_dir / "predictions" / model / name
            pred.mkdir(parents=True, exist_ok=True)
            for case, files in find_case_files(inputs_folder, data.file_ending, len(modalities)).items():
                if (pred / f"{case}{data.file_ending}").is_file():  # predicted by an earlier, interrupted run
                    continue
                image, properties, present = read_case(reader, case, files, len(modalities), modalities,
                                                       data.file_ending)
                predict_case(predictor, image, properties, present, str(pred / case))
            summary = evaluate_folder("nnunet", data.raw / "labelsTs", pred, run_dir / "evaluation" / model / name,
                                      num_processes=1, verbose=False, dataset_json=str(data.raw / "dataset.json"))
            results[name] = float(summary["foreground_mean"]["Dice"])
    print(f"seed {seed} {model:28s} " + " ".join(f"{n} {d:.3f}" for n, d in results.items()), flush=True,
          file=sys.__stdout__)
    return results


def decide(mean: Dict[str, Dict[str, float]], over_subsets: Dict[str, float], full: str, alone: str) -> dict:
    """The rule of the module docstring on per-model mean Dice per subset."""
    targets = {}
    for model in (m for m in MECHANISMS if m in mean):
        misses = []
        if mean["CIML"][full] - mean[model][full] > FULL_DICE_TOLERANCE:
            misses.append(f"full-modality Dice {mean[model][full]:.4f} more than {FULL_DICE_TOLERANCE} below "
                          f"CIML's {mean['CIML'][full]:.4f}")
        if over_subsets[model] < over_subsets["nnUNet_dropout"]:
            misses.append(f"subset mean {over_subsets[model]:.4f} below nnU-Net with dropout's "
                          f"{over_subsets['nnUNet_dropout']:.4f}")
        if mean[model][alone] < C_ALONE_TARGET:
            misses.append(f"{alone} alone {mean[model][alone]:.4f} below {C_ALONE_TARGET}")
        targets[model] = misses
    if not targets:  # no CIML dropout model in this run
        return {"default": None, "meets_targets": False, "misses": {}}
    meeting = [m for m, misses in targets.items() if not misses]
    best = max(meeting or targets, key=lambda m: over_subsets[m])
    return {"default": best, "meets_targets": not targets[best], "misses": targets}


def decide_shared(mean: Dict[str, Dict[str, float]], over_subsets: Dict[str, float], full: str) -> dict:
    """The shared-encoder rule of the module docstring (needs CIML_dropout and CIML_grouped_dropout)."""
    shared, grouped = "CIML_dropout", "CIML_grouped_dropout"
    beats = over_subsets[shared] > over_subsets[grouped]
    close = mean[grouped][full] - mean[shared][full] <= FULL_DICE_TOLERANCE
    return {"subset_mean": {shared: over_subsets[shared], grouped: over_subsets[grouped]},
            "full_dice": {shared: mean[shared][full], grouped: mean[grouped][full]},
            "shared_becomes_default": beats and close}


def write_report(out: Path, per_seed: Dict[str, Dict[str, Dict[str, float]]], quick: bool, command: str) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    seeds = sorted(per_seed, key=int)
    models = [m for m in TRAINERS if all(m in per_seed[s] for s in seeds)]
    names = list(next(iter(per_seed.values()))["CIML"])
    table = {m: {n: [per_seed[s][m][n] for s in seeds] for n in names} for m in models}
    mean = {m: {n: float(np.mean(v)) for n, v in table[m].items()} for m in models}
    over_subsets = {m: float(np.mean(list(mean[m].values()))) for m in models}
    full, alone = names[0], names[-1]  # all modalities; C alone (the last single-modality subset)
    decision = decide(mean, over_subsets, full, alone)
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
    lines += ["", f"Targets for CIML with dropout: full-modality Dice within {FULL_DICE_TOLERANCE} of CIML's, subset "
              f"mean at least nnU-Net with dropout's, at least {C_ALONE_TARGET} with {alone} alone.", ""]
    for model, misses in decision["misses"].items():
        lines.append(f"- {model}: {'meets all three' if not misses else 'misses: ' + '; '.join(misses)}")
    if {"CIML_dropout", "CIML_grouped_dropout"} <= set(models):
        shared = decision["shared"] = decide_shared(mean, over_subsets, full)
        lines += ["", f"Shared encoder: subset mean {over_subsets['CIML_dropout']:.4f} against the grouped "
                  f"encoder's {over_subsets['CIML_grouped_dropout']:.4f}, full-modality Dice "
                  f"{mean['CIML_dropout'][full]:.4f} against {mean['CIML_grouped_dropout'][full]:.4f}: "
                  + ("the shared encoder is the modality-dropout default." if shared["shared_becomes_default"] else
                     "the rule asks for the grouped encoder as the modality-dropout default.")]
    if decision["default"] is not None:
        lines += ["", f"Rule: `{decision['default']}` becomes the default mechanism "
                  f"({'it meets the targets with the highest subset mean' if decision['meets_targets'] else 'none meets all targets; it has the highest subset mean'})."]
    lines += ["", "![Dice per subset](missing_modalities.png)", ""]
    (out / "report.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(models)
    x = np.arange(len(names))
    for k, m in enumerate(models):
        ax.bar(x + (k - (len(models) - 1) / 2) * width, [mean[m][n] for n in names], width,
               yerr=[np.std(table[m][n]) for n in names] if len(seeds) > 1 else None, label=m)
    ax.axhline(C_ALONE_TARGET, color="k", lw=0.8, ls=":", label=f"target with {alone} alone ({C_ALONE_TARGET})")
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.set_title(f"Modalities present at prediction ({len(seeds)} seed(s){', quick' if quick else ''})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "missing_modalities.png", dpi=120)
    plt.close(fig)
    return decision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quick", action="store_true", help="smoke-test budget and data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(TRAINERS),
                        help="the models of the comparison (default), and/or the dropout-rate study's; results of "
                             "other models already in OUT_DIR/results.json are kept")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time (one torch thread each)")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    earlier = json.loads(results_file.read_text()) if results_file.is_file() else {}
    dice = earlier.get("dice", {}) if earlier.get("quick") == args.quick else {}  # benchmarks/results' copy too
    prepared = {seed: prepare_seed(out, seed, args.quick) for seed in args.seeds}
    jobs = [(seed, model) for model in args.models for seed in args.seeds if model not in dice.get(str(seed), {})]
    lock = threading.Lock()

    def job(seed: int, model: str) -> None:
        measured = run_model(seed, model, args.quick, prepared[seed], lock)
        with lock:
            dice.setdefault(str(seed), {})[model] = measured
            results_file.write_text(json.dumps({"quick": args.quick, "models": TRAINERS, "dice": dice}, indent=2)
                                    + "\n")

    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        for future in concurrent.futures.as_completed([pool.submit(job, s, m) for s, m in jobs]):
            future.result()  # the first failure stops the run (the trainings under way finish first)
    per_seed = {str(seed): dice[str(seed)] for seed in args.seeds}
    if not all({"CIML", "nnUNet_dropout"} <= set(per_seed[s]) for s in per_seed):
        print(f"results so far: {results_file} (the report needs CIML and nnUNet_dropout on every seed)")
        return 0
    decision = write_report(out, per_seed, args.quick, " ".join(["python", "benchmarks/missing_modalities.py"] +
                                                                 (argv if argv is not None else sys.argv[1:])))
    results = json.loads(results_file.read_text())
    results_file.write_text(json.dumps({**results, "decision": decision}, indent=2) + "\n")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demonstration's ``report.md``, from the ``results.json`` dictionary of
:func:`~nnunetv2_ciml.demo.pipeline.run_demo` (figures: :mod:`nnunetv2_ciml.demo.figures`)."""
import datetime
from pathlib import Path
from typing import List, Mapping

import numpy as np

from nnunetv2_ciml.demo.epoch_log import recent_gain
from nnunetv2_ciml.demo.figures import FAINT, message_log_summary

__all__ = ["write_report"]


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _models_table(models: Mapping[str, dict]) -> List[str]:
    names = list(next(iter(models.values()))["dice"])
    head = ["model", "mean Dice", *(f"Dice {n}" for n in names), *(f"HD95 {n} (mm)" for n in names),
            "Dice, compl. cases", "Dice in compl. masks", "pair accuracy", "Dice, other cases"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, r in models.items():
        comp = r["complementary_cases"]
        row = [model, _f(r["mean_dice"]), *(_f(r["dice"][n]) for n in names), *(_f(r["hd95"][n], 2) for n in names),
               _f(comp["mean_dice"]), _f(comp["mean_mask_dice"]), _f(comp["pair_accuracy"]),
               _f(r["other_cases"]["mean_dice"])]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _breakdown_lines(breakdown, num_modalities: int) -> List[str]:
    if not breakdown:
        return []
    owner = (" With softmax outputs the background logit belongs to subtask `circle`, whose primary modality A "
             "shows every square alike (a weak solid copy), so telling a true square from a decoy is outside "
             "information for it at every square, not only at the square pairs."
             if num_modalities == 3 else "")
    return [f"Where the message mass lies on the complementary cases (mean over cases): "
            f"{_f(breakdown['mask'])} inside the masks, {_f(breakdown['rim'])} within 2 pixels of them, "
            f"{_f(breakdown['other_objects'])} on the other objects, {_f(breakdown['background'])} on the background. "
            f"Grad-CAM weighs each message channel by its gradient averaged over the image, so a channel that matters "
            f"at the pairs also shows wherever else it is active, and maps of the coarse skip levels spread further "
            f"when upsampled." + owner, ""]


PLATEAU_GAIN = 0.002  # pseudo Dice: a model whose last 3 epochs rose less than this over the 3 before is at a plateau


def _plateau_lines(training: Mapping[str, dict]) -> List[str]:
    """How far each model was from its plateau at its last epoch, from its pseudo Dice per epoch."""
    lines = []
    for model, t in training.items():
        curve = t.get("curves", {}).get("pseudo_dice") or []
        gain = recent_gain(curve)
        if gain is None:
            continue
        state = "still rising" if gain > PLATEAU_GAIN else "no longer rising"
        lines.append(f"- {model}: pseudo Dice {curve[-1]:.4f} at its last epoch; the mean of its last 3 epochs differs "
                     f"by {gain:+.4f} from that of the 3 before: **{state}**.")
    if not lines:
        return []
    return ["## How far training got", "",
            "nnU-Net's pseudo Dice (its validation Dice during training, mean over the labels; a few validation "
            "batches per epoch, so it moves by about 0.01 from epoch to epoch) per model, and how much it still rose "
            f"at the end of the budget (a gain of {PLATEAU_GAIN} or less counts as no longer rising):", "", *lines, ""]


def write_report(results: dict, out_dir: Path) -> Path:
    """Write ``out_dir/report.md`` from the results; returns its path."""
    models = results["models"]
    structure = results["data"]["held_out_information_structure"]
    spec = results["data"]["dataset_json_spec"]
    training = results["training"]
    edits = results["plans"]["edits"]
    explain = results["explain"]
    seconds = results["seconds"]
    lines = ["# CIML on ShapeComposition (`nnunetv2_ciml demo`)", ""]
    if results["quick"]:
        lines += ["> **Quick run** (`--quick`): a few training iterations to check that every stage works. "
                  "Its numbers say nothing about CIML; run `nnunetv2_ciml demo` without `--quick` for the "
                  "demonstration.", ""]
    total = seconds.get("total")
    started = results.get("started") or datetime.datetime.now().isoformat(timespec="seconds")
    lines += [f"Run started {started} on {results['device']}"
              + (f" ({results['parallel_trainings']} training(s) at a time with {results['training_threads']} torch "
                 f"thread(s) each; {results['threads']} for inference)" if results["threads"] else "")
              + (f", wall time {total / 60:.1f} min ({total:.0f} s)." if total is not None else "."), ""]

    lines += ["## What was run", "",
              f"- **Data** (`nnunetv2_ciml.demo.shape_composition`, seed {spec['seed']}): "
              f"{results['data']['num_train']} "
              f"training and {results['data']['num_test']} held-out cases of {' x '.join(map(str, spec['size']))} "
              f"pixels, modalities {', '.join(('A', 'B', 'C')[:spec['num_modalities']])}; circles (label 1, primary A) "
              f"and squares (label 2, primary B), radius {spec['radius'][0]}-{spec['radius'][1]}, noise "
              f"{spec['noise']}, weak copies at {spec['redundant_amplitude']}. "
              f"{len(structure['complementary_cases'])} of {structure['num_cases']} held-out cases are "
              f"complementary (decoy/twin pairs that only another modality tells apart); their masks cover "
              f"{100 * structure['complementary_area_share_in_complementary_cases']:.1f} % of those images.",
              f"- **nnU-Net pipeline**: `nnUNetv2_plan_and_preprocess -c {results['plans']['configuration']}`; then "
              f"plans `{results['plans']['name']}`, nnU-Net's with features per stage "
              f"{edits['features_per_stage'][0]} -> {edits['features_per_stage'][1]} and batch size "
              f"{edits['batch_size'][0]} -> {edits['batch_size'][1]} (sized for a CPU run of minutes); training on "
              f"fold {results['plans']['fold']} of nnU-Net's 5-fold split; nnU-Net's predictor on the held-out cases.",
              "- **Models**, all with the same budget (no mirroring; otherwise nnU-Net's training):"]
    for model, t in training.items():
        ciml = "" if "beta" not in t else (f", KL weight beta {t['beta']:g} ({t['beta_schedule']})" if t["messages"]
                                           else ", no messages")
        lines.append(f"  - {model}: `{t['trainer']}`, {t['epochs']} epochs x {t['iterations_per_epoch']} iterations"
                     + ciml + f"; trained in {t['seconds'] / 60:.1f} min")
    lines.append("")

    lines += ["## Results on the held-out cases", "", *_models_table(models), "",
              "Dice and HD95: `nnunetv2_ciml.evaluation` (`nnunet` mode; a label missing from reference or "
              "prediction scores Dice 0 and HD95 373.13 mm, absent from both Dice 1 and HD95 0). Complementary "
              "cases: those with decoy/twin pairs. Dice in compl. masks: Dice inside the pairs' footprints, pooled "
              "over cases (predicting both members of every pair gives 0.667). Pair accuracy: share of pair "
              "objects decided right (twin predicted, decoy not; chance 0.5).", ""]

    lines += _plateau_lines(training)
    lines += ["## Claims", "",
              "Training is not seeded: a rerun moves every number. Each claim states how far, measured as the "
              "standard deviation over five data seeds (`benchmarks/demo_seeds.py`, docs/demo.md); claim 1 is "
              "*within noise* when CIML and nnU-Net differ by less than that.", ""]
    for c in results["claims"]:
        lines.append(f"- **{c['outcome']}**: {c['claim']}. Measured: {c['measured']}; {c['spread']}.")
    lines.append("")

    lines += ["## Where CIML's messages act", "",
              f"Grad-CAM on the message tensors (`nnunetv2_ciml.interpretability`) of every held-out case. On the "
              f"{explain['num_cases']} complementary cases, **{_f(results['complementary_share'])}** of the "
              f"message-map mass (all senders, both subtasks) lies inside the complementary masks, which cover "
              f"**{_f(results['complementary_area_share'])}** of the image (`complementary_share` vs "
              f"`complementary_area_share`); the share exceeds the area share in "
              f"{explain['cases_share_above_area_share']} "
              f"of these {explain['num_cases']} cases. Over all held-out cases: "
              f"{_f(explain['all_cases']['complementary_share'])} vs "
              f"{_f(explain['all_cases']['complementary_area_share'])}.", "",
              *_breakdown_lines(explain.get("mass_breakdown"), spec["num_modalities"]),
              "Per message, the share of its mass inside the mask of its receiving subtask's label (complementary "
              "cases):", "", "| message | share inside its subtask's mask |", "|---|---|"]
    for pair, share in explain["complementary_share_by_pair"].items():
        lines.append(f"| {pair} | {_f(share)} |")
    lines += ["", "This is the part of one message's own map mass inside the masks (mean over the complementary "
              "cases where its map is not empty). The `share` in the overlays of `explain/` and in "
              "`explain/explain.json` is another quantity: a sender's part of all senders' map mass to a subtask in "
              "one case. A message can hold a fair part of its own mass inside the masks and still be close to 0 % "
              "of a case's total when another sender's map is much larger there.", ""]

    figures = results.get("figures", {})
    captions = {
        "examples": ("Examples", "Cases that need complementary information. The message maps of a row share one "
                     "colour scale (the row's strongest peak), so their brightness compares; a map below "
                     f"{FAINT:.0%} of that peak is marked faint. White outlines mark the decoy/twin pairs."),
        "metrics": ("The three claims", "CIML's Dice minus nnU-Net's per label and on average, the grey band the "
                    "run-to-run spread (claim 1); HD95 per label; on the cases that need complementary "
                    "information, Dice, Dice inside the masks and pair accuracy, whose chance level is the dashed "
                    "line (claim 2); CIML's message Grad-CAM mass inside the masks against the masks' area share, "
                    "with the 2x it needs dotted (claim 3)."),
        "message_kl": ("CIML messages over training", "KL (nats per voxel) and magnitude (root mean square) per "
                       "message on log scales, and beta. " + (message_log_summary(results["ciml_message_log"]) or "")),
    }
    if figures:
        lines += ["## Figures", ""]
        for key, name in figures.items():
            heading, caption = captions.get(key, (key, ""))
            lines += [f"### {heading}", "", f"![{key}]({name})", "", caption, ""]
        lines += ["Per-case message maps as NIfTI (in the input geometry) and overlays: `explain/`.", ""]

    lines += ["## Stage timings", "", f"The trainings run {results['parallel_trainings']} at a time; `train` is their wall "
              "time together.", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {value:.1f} |" for stage, value in seconds.items()]
    lines.append("")

    results_dir = Path(training["CIML"]["model_folder"]).parents[1]
    raw = results_dir.parent / "nnUNet_raw" / results["data"]["dataset"]
    preprocessed = results_dir.parent / "nnUNet_preprocessed"
    dataset_id, configuration, fold = results["data"]["dataset_id"], results["plans"]["configuration"], \
        results["plans"]["fold"]
    plans = results["plans"]["name"]
    lines += ["## Reproduce with nnU-Net's own commands", "", "```bash",
              f"export nnUNet_raw={raw.parent} nnUNet_preprocessed={preprocessed} nnUNet_results={results_dir}",
              f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c {configuration}",
              f"# the narrower plans {plans}: a copy of nnU-Net's plans with fewer features per stage and another",
              "# batch size (edit the JSON by hand, or:)",
              f"python -c \"import json; folder = '{preprocessed / results['data']['dataset']}'; "
              f"p = json.load(open(folder + '/nnUNetPlans.json')); c = p['configurations']['{configuration}']; "
              f"c['architecture']['arch_kwargs']['features_per_stage'] = {edits['features_per_stage'][1]}; "
              f"c['batch_size'] = {edits['batch_size'][1]}; p['plans_name'] = '{plans}'; "
              f"json.dump(p, open(folder + '/{plans}.json', 'w'), indent=4)\""]
    lines += [f"nnUNetv2_train {dataset_id} {configuration} {fold} -tr {t['trainer']} -p {plans}"
              for t in training.values()]
    lines += [f"nnUNetv2_predict -i {raw / 'imagesTs'} -o predictions_CIML -d {dataset_id} -c {configuration} "
              f"-f {fold} -tr {training['CIML']['trainer']} -p {plans}",
              f"nnunetv2_ciml explain -m {training['CIML']['model_folder']} -f {fold} -i {raw / 'imagesTs'} "
              f"-o explain_all", "```", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path

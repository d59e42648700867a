"""The demonstration's figures and ``report.md``, from the ``results.json`` dictionary of :func:`run_demo`.

Figures (PNG, in the demo's output folder):

- ``examples.png``: rows are complementary held-out cases; columns the three modalities, the ground
  truth (white outline: complementary mask), the three models' predictions and CIML's message maps
  (Grad-CAM per sender -> subtask, each on its own colour scale with its peak relative to the row's
  strongest map printed on it; white outline: the complementary mask of that subtask's label; a map that
  is 0 everywhere says so);
- ``dice_hd95.png``: the three claims: per model, Dice and HD95 per label on all held-out cases; on the
  complementary cases Dice, Dice inside the complementary masks and pair accuracy (with its chance level);
  CIML's message Grad-CAM mass inside the masks against their area share (with the factor claim 3 needs);
- ``kl_per_message.png``: CIML's KL (nats per voxel) and message RMS (log scales) per (sender -> subtask)
  over the epochs, and beta (``nnunetv2_ciml.training.progress.plot_ciml_progress``).
"""
import datetime
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["write_figures", "write_report"]

LABEL_COLOURS = ("black", "#ff9f1c", "#2ec4b6")  # background, circle, square
MODEL_COLOURS = {"nnUNet": "#8d99ae", "CIML": "#d62828", "CIML_noMessages": "#f4a261"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _read(path: Path) -> np.ndarray:
    from nnunetv2_ciml.image_io import read_image_array
    return read_image_array(path)


def _slice2d(array: np.ndarray) -> np.ndarray:
    """The middle slice along the first axis (2D cases are ``(1, Y, X)``)."""
    return array[array.shape[0] // 2] if array.ndim == 3 else array


def plot_examples(path: Path, raw: Path, predictions: Path, models: Sequence[str], cases: Sequence[str],
                  explanations: Mapping[str, object], file_ending: str) -> None:
    """``examples.png`` (see module docstring)."""
    from matplotlib.colors import ListedColormap

    from nnunetv2_ciml.demo.shape_composition import LABELS
    from nnunetv2_ciml.network import pair_name

    label_cmap = ListedColormap(LABEL_COLOURS)
    if not cases:
        return
    first = explanations[cases[0]]
    modalities = list(first.modalities)
    pairs = list(first.maps)
    columns = len(modalities) + 1 + len(models) + len(pairs)
    fig = _figure(1.55 * columns, 1.7 * len(cases) + 0.5)
    axes = fig.subplots(len(cases), columns, squeeze=False)
    for r, case in enumerate(cases):
        explanation = explanations[case]
        mask = _slice2d(_read(raw / "complementaryTs" / f"{case}{file_ending}"))
        panels = [(m, _slice2d(explanation.image[c]), "gray") for c, m in enumerate(modalities)]
        panels.append(("ground truth", _slice2d(_read(raw / "labelsTs" / f"{case}{file_ending}")), "labels"))
        panels += [(m, _slice2d(_read(predictions / m / f"{case}{file_ending}")), "labels") for m in models]
        # each map on its own scale, so that a weak map still shows where it points; its peak relative to
        # the row's strongest map is printed on it, so that senders still compare within a case
        row_max = max([float(explanation.maps[p].max()) for p in pairs] + [0.0]) or 1.0
        panels += [(pair_name(s, t), _slice2d(explanation.maps[(s, t)]), ("map", LABELS[t])) for s, t in pairs]
        image_map = None
        for c, (title, image, kind) in enumerate(panels):
            ax = axes[r, c]
            if kind == "gray":
                ax.imshow(image, cmap="gray", interpolation="nearest")
            elif kind == "labels":
                ax.imshow(image, cmap=label_cmap, vmin=0, vmax=len(LABEL_COLOURS) - 1, interpolation="nearest")
                if title == "ground truth" and mask.any():
                    ax.contour(mask > 0, levels=[0.5], colors="white", linewidths=0.7)
            else:
                peak = float(image.max())
                image_map = ax.imshow(image / (peak or 1.0), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
                own = mask == kind[1]
                if own.any():
                    ax.contour(own, levels=[0.5], colors="white", linewidths=0.7)
                if peak > 0:
                    ax.text(0.03, 0.03, f"peak {peak / row_max:.2g} x row's", transform=ax.transAxes, ha="left",
                            va="bottom", color="white", fontsize=6)
                else:
                    ax.text(0.5, 0.5, "0 everywhere\n(see below)", transform=ax.transAxes, ha="center", va="center",
                            color="white", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(case, fontsize=8)
        if image_map is not None:
            bar = fig.colorbar(image_map, ax=list(axes[r, columns - len(pairs):]), shrink=0.85, pad=0.01, aspect=12)
            bar.set_label("Grad-CAM / map's peak", fontsize=7)
            bar.ax.tick_params(labelsize=6)
    fig.suptitle("Held-out cases that need complementary information: the modalities, the ground truth (white outline: "
                 "decoy/twin pairs, told apart only by another modality),\neach model's prediction (orange circle, "
                 "teal square) and CIML's message Grad-CAM per sender -> subtask (white outline: that subtask's "
                 "pairs)", fontsize=9)
    if any(not explanations[case].maps[pair].any() for case in cases for pair in pairs):
        fig.supxlabel("A map that is 0 everywhere: Grad-CAM keeps only positive evidence (ReLU), and that message "
                      "adds none to its subtask's prediction in this case (its gate is closed there or it only "
                      "lowers the logits).", fontsize=7)
    fig.savefig(str(path))


def plot_metrics(path: Path, models: Mapping[str, dict], share: Optional[float] = None,
                 area: Optional[float] = None) -> None:
    """``dice_hd95.png`` (see module docstring); with ``share`` and ``area`` (``complementary_share`` and
    ``complementary_area_share``) a fourth panel shows the third claim."""
    from nnunetv2_ciml.demo.pipeline import CLEAR_MARGIN, SHARE_FACTOR

    names = list(next(iter(models.values()))["dice"])
    panels = [
        ("Dice, all held-out cases\n(claim 1: CIML at least nnU-Net)", [*names, "mean"],
         lambda r: [*(r["dice"][n] for n in names), r["mean_dice"]], (0, 1.05)),
        ("HD95 (mm), all held-out cases\n(lower is better)", [*names, "mean"],
         lambda r: [*(r["hd95"][n] for n in names), r["mean_hd95"]], None),
        (f"cases that need complementary information\n(claim 2: CIML beats no messages by {CLEAR_MARGIN:g})",
         ["Dice", "Dice in masks", "pair accuracy"],
         lambda r: [r["complementary_cases"]["mean_dice"], r["complementary_cases"]["mean_mask_dice"],
                    r["complementary_cases"]["pair_accuracy"]], (0, 1.05)),
    ]
    with_share = share is not None and bool(area)
    fig = _figure(16 if with_share else 13, 4.3)
    axes = fig.subplots(1, len(panels) + with_share,
                        gridspec_kw={"width_ratios": [3] * len(panels) + [1.6] * with_share})
    width = 0.8 / len(models)
    for ax, (title, groups, values, ylim) in zip(axes, panels):
        x = np.arange(len(groups))
        for k, (model, result) in enumerate(models.items()):
            v = np.array([np.nan if a is None else a for a in values(result)], dtype=float)
            bars = ax.bar(x + (k - (len(models) - 1) / 2) * width, v, width, label=model,
                          color=MODEL_COLOURS.get(model))
            for text in ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1):
                # on a white ground above the reference lines, so that a line through a number hides it
                text.set_bbox(dict(facecolor="white", edgecolor="none", pad=0.2, alpha=0.85))
                text.set_zorder(5)
        ax.set_xticks(x, groups, fontsize=8)
        ax.set_title(title, fontsize=9)
        if ylim:
            ax.set_ylim(*ylim)
    # a guess decides half the pairs right: a line over that group only, in the legend
    chance = axes[2].hlines(0.5, 1.55, 2.45, color="k", lw=1.0, ls="--", label="pair accuracy by chance (0.5)")
    handles, labels = axes[0].get_legend_handles_labels()
    handles, labels = handles + [chance], labels + [chance.get_label()]
    if with_share:
        ax = axes[-1]
        bars = ax.bar([0, 1], [share, area], 0.6, color=[MODEL_COLOURS["CIML"], "#bbbbbb"])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        needed = ax.hlines(SHARE_FACTOR * area, -0.4, 0.4, color="k", lw=1.0, ls=":",
                           label=f"claim 3 holds above {SHARE_FACTOR:g}x the area share")
        ax.set_xticks([0, 1], ["message mass\ninside masks", "masks' area\nshare"], fontsize=8)
        ax.set_ylim(0, max(1.0, share * 1.15, SHARE_FACTOR * area * 1.15))
        ax.set_title(f"CIML's message Grad-CAM\n(claim 3: {share / area:.2f}x area)", fontsize=9)
        handles, labels = handles + [needed], labels + [needed.get_label()]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("The demonstration's three claims on the held-out cases", fontsize=10)
    fig.savefig(str(path))


def plot_message_kl(path: Path, message_log: Mapping[str, list]) -> None:
    """``kl_per_message.png`` (see module docstring)."""
    from nnunetv2_ciml.training.progress import plot_ciml_progress

    plot_ciml_progress({"ciml_beta": message_log["beta"], "ciml_message_kl": message_log["kl"],
                        "ciml_message_magnitude": message_log["magnitude"]}, message_log["pairs"], str(path))


def write_figures(results: dict, raw: Path, out_dir: Path, explanations: Mapping[str, object],
                  figure_cases: Sequence[str], file_ending: str) -> Dict[str, str]:
    """Write the three figures into ``out_dir`` (predictions in ``out_dir/predictions/<model>``); returns
    ``{figure: file name}``."""
    figures = {"examples": "examples.png", "metrics": "dice_hd95.png", "message_kl": "kl_per_message.png"}
    plot_examples(out_dir / figures["examples"], raw, out_dir / "predictions", list(results["models"]),
                  list(figure_cases), explanations, file_ending)
    plot_metrics(out_dir / figures["metrics"], results["models"], results.get("complementary_share"),
                 results.get("complementary_area_share"))
    plot_message_kl(out_dir / figures["message_kl"], results["ciml_message_log"])
    return {k: v for k, v in figures.items() if (out_dir / v).is_file()}


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
        ciml = "" if "beta" not in t else (f", KL weight beta {t['beta']:g} (linear warm-up over the first "
                                           f"{100 * t['beta_warmup_fraction']:.0f} % of epochs)" if t["messages"]
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

    lines += ["## Claims", ""]
    for c in results["claims"]:
        lines.append(f"- **{'held' if c['held'] else 'NOT held'}**: {c['claim']}. Measured: {c['measured']}.")
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
        "examples": ("Examples", "Cases that need complementary information. Each message map has its own colour "
                     "scale, with its peak relative to the row's strongest map printed on it; white outlines mark "
                     "the decoy/twin pairs."),
        "metrics": ("The three claims", "Dice and HD95 per label (claim 1); on the cases that need complementary "
                    "information, Dice, Dice inside the masks and pair accuracy, whose chance level is the dashed "
                    "line (claim 2); CIML's message Grad-CAM mass inside the masks against the masks' area share, "
                    "with the 2x it needs dotted (claim 3)."),
        "message_kl": ("CIML messages over training", "KL and magnitude per message (log scales), and beta: "
                       "messages that carry nothing fall towards zero KL."),
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

"""The demonstration's figures, from the ``results.json`` dictionary of :func:`~nnunetv2_ciml.demo.pipeline.run_demo`.

Figures (PNG, in the demo's output folder):

- ``examples.png``: rows are complementary held-out cases; columns the three modalities, the ground
  truth (white outline: complementary mask), the three models' predictions and CIML's message maps
  (Grad-CAM per sender -> subtask, all maps of a row on one colour scale, the row's strongest map's peak; a
  map whose peak is below :data:`FAINT` of it says so; white outline: the complementary mask of that subtask's
  label);
- ``dice_hd95.png``: the three claims: CIML's Dice minus nnU-Net's per label and on average, with the
  run-to-run spread as a band (claim 1); HD95 per model and label; on the complementary cases Dice, Dice inside
  the complementary masks and pair accuracy (with its chance level) (claim 2); CIML's message Grad-CAM mass
  inside the masks against their area share (with the factor claim 3 needs);
- ``kl_per_message.png``: CIML's KL (nats per voxel) and message RMS (log scales) per (sender -> subtask)
  over the epochs, and beta (``nnunetv2_ciml.training.progress_plot.plot_ciml_progress``).
"""
import datetime
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunetv2_ciml.image_io import read_image_array

__all__ = ["write_figures", "plot_examples", "plot_metrics", "plot_message_kl", "MODEL_COLOURS"]

LABEL_COLOURS = ("black", "#ff9f1c", "#2ec4b6")  # background, circle, square
FAINT = 0.01  # a message map below this fraction of its row's strongest peak is drawn as faint
MODEL_COLOURS = {"nnUNet": "#8d99ae", "CIML": "#d62828", "CIML_noMessages": "#f4a261"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


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
        mask = _slice2d(read_image_array(raw / "complementaryTs" / f"{case}{file_ending}"))
        panels = [(m, _slice2d(explanation.image[c]), "gray") for c, m in enumerate(modalities)]
        panels.append(("ground truth", _slice2d(read_image_array(raw / "labelsTs" / f"{case}{file_ending}")), "labels"))
        panels += [(m, _slice2d(read_image_array(predictions / m / f"{case}{file_ending}")), "labels") for m in models]
        # one scale per row, so that a map's brightness compares with the other senders' in the same case
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
                image_map = ax.imshow(image / row_max, cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
                own = mask == kind[1]
                if own.any():
                    ax.contour(own, levels=[0.5], colors="white", linewidths=0.7)
                if peak < FAINT * row_max:
                    ax.text(0.5, 0.5, "0 everywhere" if peak == 0 else f"faint: peak\n{peak / row_max:.1g} x row's",
                            transform=ax.transAxes, ha="center", va="center", color="white", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(case, fontsize=8)
        if image_map is not None:
            bar = fig.colorbar(image_map, ax=list(axes[r, columns - len(pairs):]), shrink=0.85, pad=0.01, aspect=12)
            bar.set_label("Grad-CAM / row's peak", fontsize=7)
            bar.ax.tick_params(labelsize=6)
    fig.suptitle("Held-out cases that need complementary information: the modalities, the ground truth (white outline: "
                 "decoy/twin pairs, told apart only by another modality),\neach model's prediction (orange circle, "
                 "teal square) and CIML's message Grad-CAM per sender -> subtask (white outline: that subtask's "
                 "pairs)", fontsize=9)
    fig.supxlabel("The message maps of a row share one colour scale. A map that is faint or 0 everywhere: Grad-CAM "
                  "keeps only positive evidence (ReLU), and that message adds little or none to its subtask's "
                  "prediction in this case (its gate is closed there or it only lowers the logits).", fontsize=7)
    fig.savefig(str(path))


def plot_metrics(path: Path, models: Mapping[str, dict], share: Optional[float] = None,
                 area: Optional[float] = None) -> None:
    """``dice_hd95.png`` (see module docstring); with ``share`` and ``area`` (``complementary_share`` and
    ``complementary_area_share``) a fourth panel shows the third claim."""
    from nnunetv2_ciml.demo.claims import CLEAR_MARGIN, SHARE_FACTOR, SPREAD

    names = list(next(iter(models.values()))["dice"])
    with_share = share is not None and bool(area)
    fig = _figure(17 if with_share else 14, 4.3)
    axes = fig.subplots(1, 3 + with_share, gridspec_kw={"width_ratios": [2.2, 3, 3] + [1.6] * with_share})

    # claim 1: the difference itself, against the run-to-run spread (on a 0..1 axis both would read 0.99)
    ax = axes[0]
    groups = [*names, "mean"]
    ciml, plain = models["CIML"], models["nnUNet"]
    difference = [ciml["dice"][n] - plain["dice"][n] for n in names] + [ciml["mean_dice"] - plain["mean_dice"]]
    band = SPREAD["dice_difference"]
    limit = max(3 * band, 1.25 * max(abs(d) for d in difference))
    ax.axhspan(-band, band, color="#cccccc", alpha=0.6, lw=0, label=f"run-to-run spread (+-{band:.4f})")
    ax.axhline(0, color="k", lw=0.8)
    bars = ax.bar(np.arange(len(groups)), difference, 0.6, color=MODEL_COLOURS["CIML"])
    for text in ax.bar_label(bars, fmt="%+.4f", fontsize=6, padding=1):
        text.set_bbox(dict(facecolor="white", edgecolor="none", pad=0.2, alpha=0.85))
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set_ylim(-limit, limit)
    ax.set_title("claim 1: CIML's Dice minus nnU-Net's,\nall held-out cases (grey: within noise)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right", frameon=False)

    panels = [
        (axes[1], "HD95 (mm), all held-out cases\n(lower is better)", groups,
         lambda r: [*(r["hd95"][n] for n in names), r["mean_hd95"]], None),
        (axes[2], f"cases that need complementary information\n(claim 2: CIML beats no messages by {CLEAR_MARGIN:g})",
         ["Dice", "Dice in masks", "pair accuracy"],
         lambda r: [r["complementary_cases"]["mean_dice"], r["complementary_cases"]["mean_mask_dice"],
                    r["complementary_cases"]["pair_accuracy"]], (0, 1.05)),
    ]
    width = 0.8 / len(models)
    for ax, title, labels, values, ylim in panels:
        x = np.arange(len(labels))
        for k, (model, result) in enumerate(models.items()):
            v = np.array([np.nan if a is None else a for a in values(result)], dtype=float)
            bars = ax.bar(x + (k - (len(models) - 1) / 2) * width, v, width, label=model,
                          color=MODEL_COLOURS.get(model))
            for text in ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1):
                # on a white ground above the reference lines, so that a line through a number hides it
                text.set_bbox(dict(facecolor="white", edgecolor="none", pad=0.2, alpha=0.85))
                text.set_zorder(5)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        if ylim:
            ax.set_ylim(*ylim)
    # a guess decides half the pairs right: a line over that group only, in the legend
    chance = axes[2].hlines(0.5, 1.55, 2.45, color="k", lw=1.0, ls="--", label="pair accuracy by chance (0.5)")
    handles, labels = axes[1].get_legend_handles_labels()
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


def message_log_summary(message_log: Mapping[str, list]) -> Optional[str]:
    """What ``kl_per_message.png`` shows, in words, from the numbers it plots: how far the messages' KL fell and
    how far apart the KL and the magnitudes ended, and which messages are the strongest."""
    kl, rms = np.asarray(message_log["kl"], float), np.asarray(message_log["magnitude"], float)
    if kl.ndim != 2 or len(kl) < 2 or not kl.shape[1] or np.any(kl <= 0) or np.any(rms[-1] <= 0):
        return None
    fall = np.log10(kl[0] / kl[-1])
    order = np.argsort(rms[-1])[::-1]
    strongest = [message_log["pairs"][k] for k in order[:2]]
    return (f"Over training every message's KL fell by {fall.min():.1f} to {fall.max():.1f} decades and ended within "
            f"a factor of {kl[-1].max() / kl[-1].min():.1f} of each other: the KL alone does not single out the "
            f"messages that matter. Their magnitudes ended {rms[-1].max() / rms[-1].min():.0f}x apart; the strongest "
            f"are {' and '.join(strongest)}.")


def plot_message_kl(path: Path, message_log: Mapping[str, list]) -> None:
    """``kl_per_message.png`` (see module docstring)."""
    from nnunetv2_ciml.training.progress_plot import plot_ciml_progress

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

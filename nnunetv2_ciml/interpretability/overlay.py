"""PNG overlays of message maps on the most informative slices.

One figure per (case, subtask): a row for the primary modality (or the fallback read in its place) with the
predicted outline of the subtask, then one row per sender with its map over its own image; columns are the
slices (along the first array axis, i.e. axial slices of a SimpleITK-read volume) with the most map mass summed
over the senders shown. All senders share one colour scale, so a weak sender looks weak.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from nnunetv2_ciml.network.message import pair_name

__all__ = ["informative_slices", "render_subtask_overlay"]


def informative_slices(maps: Sequence[np.ndarray], fallback: Optional[np.ndarray] = None, n: int = 3) -> List[int]:
    """Indices (ascending) of the ``n`` slices along axis 0 with the largest summed map mass.

    Maps are ``(S, ...)``. Without any mass, the slices with the most ``fallback`` voxels (e.g. the
    prediction), and without those the middle slice.
    """
    num = maps[0].shape[0] if maps else fallback.shape[0]
    mass = np.zeros(num)
    for m in maps:
        mass += m.reshape(num, -1).sum(1)
    if not mass.any() and fallback is not None:
        mass = fallback.reshape(num, -1).sum(1).astype(float)
    if not mass.any():
        return [num // 2]
    best = np.argsort(-mass, kind="stable")[:n]
    return sorted(int(i) for i in best if mass[i] > 0)


def _window(image: np.ndarray) -> tuple:
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0, 1)
    return float(lo), float(hi if hi > lo else lo + 1)


def render_subtask_overlay(path: Path, case: str, subtask: str, primary: str, images: Dict[str, np.ndarray],
                           maps: Dict[str, np.ndarray], shares: Dict[str, Optional[float]],
                           prediction: np.ndarray, pixel_aspect: float = 1.0, n_slices: int = 3,
                           read: Optional[str] = None, outline: Optional[Tuple[str, np.ndarray]] = None,
                           missing: Sequence[str] = ()) -> List[int]:
    """Write the overlay PNG; returns the slice indices shown.

    ``images``: modality name -> ``(S, Y, X)`` image; ``maps``: sender -> ``(S, Y, X)`` map;
    ``prediction``: ``(S, Y, X)`` bool, the subtask's predicted outputs; ``pixel_aspect``: row spacing /
    column spacing; ``read``: the modality whose branch the subtask read (default its ``primary``; a fallback
    when the primary is missing), shown in the first row; ``outline``: ``(what, (S, Y, X) bool)``, a region
    drawn in white on every panel and named in the title (the demo: its decoy/twin pairs); ``missing``: the case's
    missing modalities, named in the title (they send nothing and have no row) and on the first row when it is one.
    """
    # matplotlib's own defaults, whatever styles others set globally (nnU-Net's progress plot calls seaborn.set)
    defaults = {k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"}
    with matplotlib.rc_context(defaults):
        return _render(path, case, subtask, primary, read or primary, images, maps, shares, prediction, pixel_aspect,
                       n_slices, outline, list(missing))


def _render(path: Path, case: str, subtask: str, primary: str, read: str, images: Dict[str, np.ndarray],
            maps: Dict[str, np.ndarray], shares: Dict[str, Optional[float]], prediction: np.ndarray,
            pixel_aspect: float, n_slices: int, outline: Optional[Tuple[str, np.ndarray]],
            missing: List[str]) -> List[int]:
    slices = informative_slices(list(maps.values()), prediction, n_slices)
    vmax = max([float(m.max()) for m in maps.values()] + [0.0]) or 1.0
    rows = [read, *maps]
    fig = Figure(figsize=(max(2.4 * len(slices) + 1.6, 5.0), 2.4 * len(rows) + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(len(rows), len(slices), squeeze=False)
    mappable = None
    for r, name in enumerate(rows):
        image = images[name]
        for c, z in enumerate(slices):
            ax = axes[r, c]
            lo, hi = _window(image[z])
            ax.imshow(image[z], cmap="gray", vmin=lo, vmax=hi, aspect=pixel_aspect, interpolation="nearest")
            if r > 0:
                heat = np.ma.masked_less_equal(maps[name][z], 0)
                mappable = ax.imshow(heat, cmap="inferno", vmin=0, vmax=vmax, alpha=0.6, aspect=pixel_aspect,
                                     interpolation="nearest")
            if prediction[z].any() and not prediction[z].all():
                ax.contour(prediction[z].astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
            if outline is not None and outline[1][z].any():
                ax.contour(outline[1][z].astype(np.float32), levels=[0.5], colors="white", linewidths=0.8,
                           linestyles="dashed")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and prediction.shape[0] > 1:  # 2D images are one slice
                ax.set_title(f"slice {z}", fontsize=8)
            if c == 0:
                share = shares.get(name)
                first = f"{name} (primary)" if name == primary else f"{name} (read for missing {primary})"
                if name in missing:
                    first = f"{name} (primary, missing:\ndecoded from messages only)"
                label = first if r == 0 else \
                    f"{pair_name(name, subtask)}\nshare {share:.2f}" if share is not None else pair_name(name, subtask)
                ax.set_ylabel(label, fontsize=8)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes.ravel().tolist(), shrink=0.6, label="message Grad-CAM")
    legend = "cyan: its predicted outputs" + (f"; dashed white: {outline[0]}" if outline is not None else "")
    absent = [m for m in missing if m not in maps and m not in (read, primary)]
    if absent:
        legend += f"\nmissing in this case, no messages (no row): {', '.join(absent)}"
    fig.suptitle(f"{case}: messages to subtask '{subtask}'\n{legend}", fontsize=9)
    fig.savefig(str(path))
    return slices

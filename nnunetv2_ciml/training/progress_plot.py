"""``ciml_progress.png``: what the messages do over training, next to nnU-Net's ``progress.png``."""
import os
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["plot_ciml_progress"]

# Receiving subtask -> line style, sender -> colour and marker: every (sender -> subtask) line stays
# distinguishable where lines overlap.
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_ciml_progress(logging: Mapping[str, list], pair_names: Sequence[str], output_file: str,
                       title: Optional[str] = None) -> bool:
    """Plot per-epoch KL (nats per voxel) and message RMS (root mean square over channels and voxels), both on
    log scales, for each ``"sender->subtask"`` message, and beta in a narrow strip below.

    ``logging``: ``ciml_beta`` (per epoch), ``ciml_message_kl`` and ``ciml_message_magnitude`` (per epoch, one
    value per message). Writes nothing and returns False when there is nothing to draw (no epoch yet, or
    a model without messages); returns True when ``output_file`` was written.
    """
    epochs = len(logging["ciml_beta"])
    if epochs == 0 or not pair_names:
        return False
    import matplotlib.style

    # nnU-Net's progress.png sets a seaborn theme with 2.5x fonts for the whole process: draw in matplotlib's
    # own style so that this figure looks the same inside and outside a trainer
    with matplotlib.style.context("default"):
        return _plot(logging, pair_names, output_file, epochs, title)


def _plot(logging: Mapping[str, list], pair_names: Sequence[str], output_file: str, epochs: int,
          title: Optional[str]) -> bool:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    x = np.arange(1, epochs + 1)
    kl = np.asarray(logging["ciml_message_kl"], dtype=float).reshape(epochs, -1)
    magnitude = np.asarray(logging["ciml_message_magnitude"], dtype=float).reshape(epochs, -1)
    senders = list(dict.fromkeys(name.split("->")[0] for name in pair_names))
    subtasks = list(dict.fromkeys(name.split("->")[-1] for name in pair_names))

    fig = Figure(figsize=(10, 6.5), dpi=100, layout="constrained")
    ax_kl, ax_rms, ax_beta = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 1]})
    markevery = max(1, epochs // 10)
    for p, name in enumerate(pair_names):
        sender, subtask = name.split("->")[0], name.split("->")[-1]
        style = dict(color=f"C{senders.index(sender) % 10}", ls=_STYLES[subtasks.index(subtask) % len(_STYLES)],
                     marker=_MARKERS[senders.index(sender) % len(_MARKERS)], markevery=markevery, markersize=4,
                     lw=1.4, alpha=0.9)
        # log scale: a KL of exactly 0 (closed or unused message) has no place on it and is left out
        ax_kl.plot(x, np.where(kl[:, p] > 0, kl[:, p], np.nan), label=name.replace("->", " -> "), **style)
        ax_rms.plot(x, np.where(magnitude[:, p] > 0, magnitude[:, p], np.nan), **style)
    # messages differ by orders of magnitude: on a linear axis the small ones lie flat on zero
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.02, 3, 40 rather than 2x10^-2 on every minor tick
    for ax, values in ((ax_kl, kl), (ax_rms, magnitude)):
        if np.any(values > 0):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(plain)
    ax_beta.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_kl.set_ylabel("KL (nats/voxel)", fontsize=9)
    ax_kl.set_title("KL of each message (log scale)", fontsize=9, loc="left")
    ax_rms.set_ylabel("message RMS", fontsize=9)
    ax_rms.set_title("magnitude of each message added to its subtask's skip connection (log scale)", fontsize=9,
                     loc="left")
    ax_beta.plot(x, logging["ciml_beta"], color="k", lw=1.2)
    ax_beta.set_ylabel("beta", fontsize=9)
    ax_beta.set_xlabel("epoch", fontsize=9)
    ax_beta.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_kl, ax_rms, ax_beta):
        ax.tick_params(which="both", labelsize=8)
        ax.grid(alpha=0.3, which="major" if ax is ax_beta else "both", lw=0.5)
    fig.legend(*ax_kl.get_legend_handles_labels(), loc="outside right upper", fontsize=8,
               title="sender -> subtask", title_fontsize=8, frameon=False)
    fig.suptitle(title or "CIML messages over training", fontsize=11)
    fig.savefig(os.fspath(output_file))
    return True

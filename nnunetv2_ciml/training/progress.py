"""``ciml_progress.png``: what the messages do over training, next to nnU-Net's ``progress.png``."""
import os
from typing import Mapping, Sequence

import numpy as np


def plot_ciml_progress(logging: Mapping[str, list], pair_names: Sequence[str], output_file: str) -> None:
    """Plot per-epoch KL (nats/voxel) and message RMS (root-mean-square over channels and voxels) for each (sender -> subtask) pair, and beta."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = len(logging["ciml_beta"])
    if epochs == 0:
        return
    x = np.arange(epochs)
    fig, axes = plt.subplots(3, 1, figsize=(12, 12), sharex=True)
    kl = np.asarray(logging["ciml_message_kl"], dtype=float).reshape(epochs, -1)
    magnitude = np.asarray(logging["ciml_message_magnitude"], dtype=float).reshape(epochs, -1)
    for p, name in enumerate(pair_names):
        axes[0].plot(x, kl[:, p], label=name)
        axes[1].plot(x, magnitude[:, p], label=name)
    axes[0].set_ylabel("KL per voxel (nats)")
    axes[1].set_ylabel("message RMS")
    axes[2].plot(x, logging["ciml_beta"], color="k")
    axes[2].set_ylabel("beta (KL weight)")
    axes[2].set_xlabel("epoch")
    for ax in axes[:2]:
        if pair_names:
            ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(output_file))
    plt.close(fig)

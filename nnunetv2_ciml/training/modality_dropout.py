"""Modality dropout: train once, predict with whatever sequences a case has (``nnunetv2_ciml predict``).

``nnUNetTrainerCIML_modalityDropout`` removes, per training sample, a random subset of modalities: the
removed input channels are zeroed and the network is told which modalities exist
(:func:`~nnunetv2_ciml.network.modalities_present`), so a removed modality sends no messages and a subtask whose
primary was removed reads its first present fallback (see :class:`~nnunetv2_ciml.network.CIMLUNet`): the
fallbacks learn to act as primaries. ``nnUNetTrainer_modalityDropout`` is the same removal applied to plain
nnU-Net (zeroed input channels; a zero after nnU-Net's z-score normalisation is the channel's mean intensity),
the baseline of published missing-modality work on nnU-Net. Both only override ``train_step``; validation sees
every modality.

Defaults: half of the samples (``modality_dropout_rate = 0.5``) lose modalities, primaries included
(``primaries_droppable = True``), and the kept subset of such a sample is drawn uniformly from the non-empty
proper subsets; a fallback's skip features are read as they are; the CIML branches are one shared encoder. How
these were chosen, and what they give: docs/missing_modalities.md.
"""
from itertools import product
from typing import List, Optional, Sequence

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ciml.network import modalities_present, unwrap
from nnunetv2_ciml.training.guards import GuardedTraining
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML

READING_LOG_KEY = "ciml_reading"

__all__ = ["sample_present_modalities", "nnUNetTrainerCIML_modalityDropout", "nnUNetTrainer_modalityDropout"]


def sample_present_modalities(batch_size: int, num_modalities: int, rate: float,
                              kept: Sequence[int] = (), generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``(batch_size, num_modalities)`` bool, True where a sample keeps a modality.

    Each sample, with probability ``rate``, keeps a subset drawn uniformly from the non-empty proper subsets
    that contain every modality in ``kept`` (modalities that may not be removed); otherwise it keeps all.
    No sample ever loses every modality. With nothing removable it keeps all."""
    subsets = torch.tensor([s for s in product((False, True), repeat=num_modalities)
                            if any(s) and not all(s) and all(s[k] for k in kept)], dtype=torch.bool)
    present = torch.ones(batch_size, num_modalities, dtype=torch.bool)
    if len(subsets) == 0:
        return present
    dropped = torch.rand(batch_size, generator=generator) < rate
    choice = torch.randint(len(subsets), (batch_size,), generator=generator)
    present[dropped] = subsets[choice[dropped]]
    return present


def _zero_missing(data: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``data`` ``(B, M, *spatial)`` with the channels of missing modalities set to 0 (a new tensor)."""
    data = torch.as_tensor(data)
    return data * present.to(data.dtype).view(*present.shape, *[1] * (data.dim() - 2))


class nnUNetTrainer_modalityDropout(GuardedTraining, nnUNetTrainer):
    """Plain nnU-Net trained with modality dropout: a removed modality's input channel is zeroed (the
    baseline). ``modality_dropout_rate``: fraction of samples that lose modalities (see module docstring).
    With the package's training guards (:class:`~nnunetv2_ciml.training.guards.GuardedTraining`), as the CIML
    variant."""

    modality_dropout_rate: float = 0.5

    def train_step(self, batch: dict) -> dict:
        data = batch["data"]
        present = sample_present_modalities(data.shape[0], data.shape[1], self.modality_dropout_rate)
        return super().train_step(dict(batch, data=_zero_missing(data, present)))


class nnUNetTrainerCIML_modalityDropout(nnUNetTrainerCIML):
    """CIML trained with modality dropout: removed modalities are zeroed AND masked in the network (no
    messages from them; a subtask without its primary reads its first present fallback's branch as it is, see
    :class:`~nnunetv2_ciml.network.CIMLUNet`), so that the fallbacks learn to act as primaries. The shared encoder
    of :class:`nnUNetTrainerCIML` matters most here: a fallback's branch computes its features with the filters of
    the primary it replaces, which measured better with missing modalities than separate branches
    (docs/missing_modalities.md).

    ``modality_dropout_rate``: fraction of samples that lose modalities; ``primaries_droppable``: whether a
    subtask's primary may be removed (False: only modalities that are nobody's primary are, and fallbacks never
    act in training). Each epoch the training log says, per subtask, on which share of the samples each
    modality's branch was read (``ciml_reading`` in the logger)."""

    modality_dropout_rate: float = 0.5
    primaries_droppable: bool = True

    def initialize(self):
        super().initialize()
        self.logger.local_logger.my_fantastic_logging.setdefault(READING_LOG_KEY, [])

    def on_train_epoch_start(self):
        network = unwrap(self.network)
        self._reading = torch.zeros(len(network.subtask_primaries), network.num_modalities + 1)
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"]
        network = unwrap(self.network)
        kept = () if self.primaries_droppable else tuple(network.subtask_primaries)
        present = sample_present_modalities(data.shape[0], data.shape[1], self.modality_dropout_rate, kept)
        read = network.reading_weights(present.float()) > 0  # (B, S, M)
        self._reading[:, :-1] += read.sum(0)
        self._reading[:, -1] += (~read.any(2)).sum(0)
        with modalities_present(self.network, present.to(self.device)):
            return super().train_step(dict(batch, data=_zero_missing(data, present)))

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        network = unwrap(self.network)
        shares = {name: {m: round(float(v), 4) for m, v in zip([*network.modality_names, "nothing"], row / row.sum())
                         if v > 0}
                  for name, row in zip(network.subtask_names, self._reading)}
        self.logger.log(READING_LOG_KEY, shares, self.current_epoch)
        self.print_to_log_file("branches read (share of samples): " + "; ".join(
            f"{name}: " + ", ".join(f"{m} {v:.2f}" for m, v in row.items()) for name, row in shares.items()))

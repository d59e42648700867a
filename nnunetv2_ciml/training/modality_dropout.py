"""Modality dropout: train once, predict with whatever sequences a case has (``nnunetv2_ciml predict``).

``nnUNetTrainerCIML_modalityDropout`` removes, per training sample, a random subset of modalities: the
removed input channels are zeroed and the network is told which modalities exist
(:func:`~nnunetv2_ciml.network.modalities_present`), so a removed modality sends no messages and a removed
primary leaves its subtask with the messages alone (see :class:`~nnunetv2_ciml.network.CIMLUNet`).
``nnUNetTrainer_modalityDropout`` is the same removal applied to plain nnU-Net (zeroed input channels; a
zero after nnU-Net's z-score normalisation is the channel's mean intensity), the baseline of published
missing-modality work on nnU-Net. Both only override ``train_step``; validation sees every modality.

Defaults: half of the samples (``modality_dropout_rate = 0.5``) lose modalities, primaries included
(``primaries_droppable = True``), and the kept subset of such a sample is drawn uniformly from the non-empty
proper subsets. Measured on the demo's data over 3 seeds (``benchmarks/missing_modalities.py``, docs/
missing_modalities.md): of the settings that keep the full-modality Dice within 0.005 of CIML without
dropout, rate 0.5 has the best mean Dice over the modality subsets (0.846; rate 0.25: 0.824); rate 0.75
(0.852) costs 0.006 of full-modality Dice, and keeping the primaries leaves the gates of a subtask without
its primary untrained (0.652).
"""
from itertools import product
from typing import Optional, Sequence

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_ciml.network import modalities_present, unwrap
from nnunetv2_ciml.training.demo_trainers import _DemoBudget, _QuickDemoBudget
from nnunetv2_ciml.training.guards import GuardedTraining
from nnunetv2_ciml.training.trainers import _CPUTestBudget, nnUNetTrainerCIML

__all__ = ["sample_present_modalities", "nnUNetTrainerCIML_modalityDropout", "nnUNetTrainer_modalityDropout",
           "nnUNetTrainerCIML_modalityDropout_CPUtest", "nnUNetTrainer_modalityDropout_CPUtest",
           "nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_rate025_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_rate075_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_keepPrimaries_ShapeCompositionDemo",
           "nnUNetTrainer_modalityDropout_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemoQuick",
           "nnUNetTrainer_modalityDropout_ShapeCompositionDemoQuick"]


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
    messages from them; a subtask without its primary decodes from messages through gates that open).

    ``modality_dropout_rate``: fraction of samples that lose modalities; ``primaries_droppable``: whether a
    subtask's primary may be removed (False: only modalities that are nobody's primary are, and a case missing
    a primary at prediction time gets gates that were never trained open)."""

    modality_dropout_rate: float = 0.5
    primaries_droppable: bool = True

    def train_step(self, batch: dict) -> dict:
        data = batch["data"]
        kept = () if self.primaries_droppable else tuple(unwrap(self.network).subtask_primaries)
        present = sample_present_modalities(data.shape[0], data.shape[1], self.modality_dropout_rate, kept)
        with modalities_present(self.network, present.to(self.device)):
            return super().train_step(dict(batch, data=_zero_missing(data, present)))


class nnUNetTrainerCIML_modalityDropout_CPUtest(nnUNetTrainerCIML_modalityDropout, _CPUTestBudget):
    """``nnUNetTrainerCIML_modalityDropout`` on the CPU-test budget."""


class nnUNetTrainer_modalityDropout_CPUtest(nnUNetTrainer_modalityDropout, _CPUTestBudget):
    """``nnUNetTrainer_modalityDropout`` on the CPU-test budget."""


class nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo(nnUNetTrainerCIML_modalityDropout, _DemoBudget):
    """CIML with modality dropout on the demonstration's budget, beta 0.1 as the demo's CIML."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_modalityDropout_rate025_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The dropout study (``benchmarks/missing_modalities.py``): a quarter of the samples lose modalities."""

    modality_dropout_rate = 0.25


class nnUNetTrainerCIML_modalityDropout_rate075_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The dropout study: three quarters of the samples lose modalities."""

    modality_dropout_rate = 0.75


class nnUNetTrainerCIML_modalityDropout_keepPrimaries_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The dropout study: only modalities that are nobody's primary are removed."""

    primaries_droppable = False


class nnUNetTrainer_modalityDropout_ShapeCompositionDemo(nnUNetTrainer_modalityDropout, _DemoBudget):
    """Plain nnU-Net with modality dropout on the demonstration's budget."""


class nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemoQuick(nnUNetTrainerCIML_modalityDropout,
                                                                  _QuickDemoBudget):
    """CIML with modality dropout on the ``--quick`` budget, beta 0.1."""

    kl_weight = 1e-1


class nnUNetTrainer_modalityDropout_ShapeCompositionDemoQuick(nnUNetTrainer_modalityDropout, _QuickDemoBudget):
    """Plain nnU-Net with modality dropout on the ``--quick`` budget."""

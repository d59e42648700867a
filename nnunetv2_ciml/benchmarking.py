"""Trainers that time ``nnUNetv2_train`` epochs, CIML against plain nnU-Net, data augmentation included.

On a GPU, nnU-Net's own ``nnUNetTrainerBenchmark_5epochs`` (5 epochs, real data loading with nnU-Net's
augmentation workers) and ``nnUNetTrainerBenchmark_5epochs_noDataLoading`` (the network alone) measure
what a user feels; ``nnUNetTrainerCIMLBenchmark_5epochs`` and its ``_noDataLoading`` twin are the same
with CIML. nnU-Net's benchmark trainers require CUDA, so on a CPU ``nnUNetTrainer_EpochTime`` and
``nnUNetTrainerCIML_EpochTime`` (and the full-width and MAC-matched networks' twins) take their place: 3 epochs
of 5 iterations, no checkpoints, no final validation. ``benchmarks/bench_epoch_time.py`` runs a pair on one preprocessed dataset and prints the ratios.

``nnUNetTrainerCIML_KLScheduleCPU`` and ``nnUNetTrainerCIML_epochWarmup_KLScheduleCPU``: ``nnUNetTrainerCIML``'s KL
and schedule and the first version's, with every training iteration logged (:mod:`nnunetv2_ciml.demo.iteration_log`),
on a CPU budget of 20 epochs of 10 iterations (``benchmarks/kl_schedule_brats.py``).
"""
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs import \
    nnUNetTrainerBenchmark_5epochs
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs_noDataLoading import \
    nnUNetTrainerBenchmark_5epochs_noDataLoading

from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunetv2_ciml.demo.iteration_log import IterationLog
from nnunetv2_ciml.demo.trainers import KLIntoBranches
from nnunetv2_ciml.training.budget import TrainingBudget
from nnunetv2_ciml.training.kl_schedule import EPOCH_WARMUP
from nnunetv2_ciml.training.guards import GuardedTraining
from nnunetv2_ciml.training.trainers import (nnUNetTrainerCIML, nnUNetTrainerCIML_fullWidth, nnUNetTrainerCIML_MACmatched,
                                             nnUNetTrainerCIML_groupedBranches)

__all__ = ["nnUNetTrainerCIMLBenchmark_5epochs", "nnUNetTrainerCIMLBenchmark_5epochs_noDataLoading",
           "nnUNetTrainer_EpochTime", "nnUNetTrainerCIML_EpochTime", "nnUNetTrainerCIML_fullWidth_EpochTime",
           "nnUNetTrainerCIML_MACmatched_EpochTime", "nnUNetTrainerCIML_groupedBranches_EpochTime",
           "nnUNetTrainerCIML_KLScheduleCPU", "nnUNetTrainerCIML_epochWarmup_KLScheduleCPU"]


class nnUNetTrainerCIMLBenchmark_5epochs(nnUNetTrainerCIML, nnUNetTrainerBenchmark_5epochs):
    """nnU-Net's 5-epoch GPU benchmark (``benchmark_result.json``, fastest epoch) training CIML."""


class nnUNetTrainerCIMLBenchmark_5epochs_noDataLoading(nnUNetTrainerCIML, nnUNetTrainerBenchmark_5epochs_noDataLoading):
    """nnU-Net's 5-epoch GPU benchmark on one synthetic batch (the network's share of the epoch) with CIML."""


class nnUNetTrainer_EpochTime(GuardedTraining, TrainingBudget):
    """3 epochs of 5 training and 1 validation iterations on any device; nnU-Net logs each epoch's time. With the
    training guards, as ``nnUNetTrainerCIML_EpochTime``, so that both time the same per-step work."""

    budget_epochs, budget_iterations, budget_val_iterations = 3, 5, 1

    def on_train_start(self):
        self.disable_checkpointing = True  # only the epochs are timed
        super().on_train_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass  # only the epochs are timed


class nnUNetTrainerCIML_EpochTime(nnUNetTrainerCIML, nnUNetTrainer_EpochTime):
    """``nnUNetTrainer_EpochTime`` training CIML."""


class nnUNetTrainerCIML_fullWidth_EpochTime(nnUNetTrainerCIML_fullWidth, nnUNetTrainer_EpochTime):
    """``nnUNetTrainer_EpochTime`` training ``nnUNetTrainerCIML_fullWidth``'s network."""


class nnUNetTrainerCIML_MACmatched_EpochTime(nnUNetTrainerCIML_MACmatched, nnUNetTrainer_EpochTime):
    """``nnUNetTrainer_EpochTime`` training ``nnUNetTrainerCIML_MACmatched``'s network."""


class nnUNetTrainerCIML_groupedBranches_EpochTime(nnUNetTrainerCIML_groupedBranches, nnUNetTrainer_EpochTime):
    """``nnUNetTrainer_EpochTime`` training ``nnUNetTrainerCIML_groupedBranches``'s network."""


class KLScheduleCPUBudget(TrainingBudget, nnUNetTrainerNoMirroring):
    """nnU-Net's 1000 x 250 iterations compressed to 20 epochs of 10 (2 validation iterations), no mirroring: a
    schedule defined in fractions of the training keeps its shape."""

    budget_epochs, budget_iterations, budget_val_iterations = 20, 10, 2


class nnUNetTrainerCIML_KLScheduleCPU(IterationLog, nnUNetTrainerCIML, KLScheduleCPUBudget):
    """``nnUNetTrainerCIML`` (beta 1e-3, its schedule) on the compressed budget, every iteration logged."""


class nnUNetTrainerCIML_epochWarmup_KLScheduleCPU(KLIntoBranches, nnUNetTrainerCIML_KLScheduleCPU):
    """The same with the first version's schedule (beta 0 in epoch 0, rising per epoch over 10 % of the epochs) and
    KL (its gradient also reaching the branches)."""

    kl_schedule = EPOCH_WARMUP

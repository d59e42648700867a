"""Trainers that time ``nnUNetv2_train`` epochs, CIML against plain nnU-Net, data augmentation included.

On a GPU, nnU-Net's own ``nnUNetTrainerBenchmark_5epochs`` (5 epochs, real data loading with nnU-Net's
augmentation workers) and ``nnUNetTrainerBenchmark_5epochs_noDataLoading`` (the network alone) measure
what a user feels; ``nnUNetTrainerCIMLBenchmark_5epochs`` and its ``_noDataLoading`` twin are the same
with CIML. nnU-Net's benchmark trainers require CUDA, so on a CPU ``nnUNetTrainer_EpochTime`` and
``nnUNetTrainerCIML_EpochTime`` take their place: 3 epochs of 5 iterations, no checkpoints, no final
validation. ``benchmarks/bench_epoch_time.py`` runs a pair on one preprocessed dataset and prints the ratios.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs import \
    nnUNetTrainerBenchmark_5epochs
from nnunetv2.training.nnUNetTrainer.variants.benchmarking.nnUNetTrainerBenchmark_5epochs_noDataLoading import \
    nnUNetTrainerBenchmark_5epochs_noDataLoading

from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML

__all__ = ["nnUNetTrainerCIMLBenchmark_5epochs", "nnUNetTrainerCIMLBenchmark_5epochs_noDataLoading",
           "nnUNetTrainer_EpochTime", "nnUNetTrainerCIML_EpochTime"]


class nnUNetTrainerCIMLBenchmark_5epochs(nnUNetTrainerCIML, nnUNetTrainerBenchmark_5epochs):
    """nnU-Net's 5-epoch GPU benchmark (``benchmark_result.json``, fastest epoch) training CIML."""


class nnUNetTrainerCIMLBenchmark_5epochs_noDataLoading(nnUNetTrainerCIML, nnUNetTrainerBenchmark_5epochs_noDataLoading):
    """nnU-Net's 5-epoch GPU benchmark on one synthetic batch (the network's share of the epoch) with CIML."""


class nnUNetTrainer_EpochTime(nnUNetTrainer):
    """3 epochs of 5 training and 1 validation iterations on any device; nnU-Net logs each epoch's time."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 5
        self.num_val_iterations_per_epoch = 1
        self.disable_checkpointing = True

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass  # only the epochs are timed


class nnUNetTrainerCIML_EpochTime(nnUNetTrainerCIML, nnUNetTrainer_EpochTime):
    """``nnUNetTrainer_EpochTime`` training CIML."""

"""Trainers for the test suite: the package's trainers on a budget a 2-core CPU trains in seconds.

2 epochs of 4 iterations (2 validation iterations), no mirroring: they check that the real nnU-Net pipeline
runs, and say nothing about results. nnU-Net finds them by name like every trainer of the package::

    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerCIML_CPUtest
"""
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunetv2_ciml.training.budget import TrainingBudget
from nnunetv2_ciml.training.modality_dropout import nnUNetTrainer_modalityDropout, nnUNetTrainerCIML_modalityDropout
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML, nnUNetTrainerCIML_groupedBranches

__all__ = ["nnUNetTrainerCIML_CPUtest", "nnUNetTrainerCIML_modalityDropout_CPUtest",
           "nnUNetTrainer_modalityDropout_CPUtest", "nnUNetTrainerCIML_groupedBranches_CPUtest"]


class CPUTestBudget(TrainingBudget, nnUNetTrainerNoMirroring):
    """2 epochs of 4 iterations (2 validation iterations), no mirroring."""

    budget_epochs, budget_iterations, budget_val_iterations = 2, 4, 2


class nnUNetTrainerCIML_CPUtest(nnUNetTrainerCIML, CPUTestBudget):
    """``nnUNetTrainerCIML`` on the CPU-test budget."""


class nnUNetTrainerCIML_modalityDropout_CPUtest(nnUNetTrainerCIML_modalityDropout, CPUTestBudget):
    """``nnUNetTrainerCIML_modalityDropout`` on the CPU-test budget."""


class nnUNetTrainer_modalityDropout_CPUtest(nnUNetTrainer_modalityDropout, CPUTestBudget):
    """``nnUNetTrainer_modalityDropout`` on the CPU-test budget."""


class nnUNetTrainerCIML_groupedBranches_CPUtest(nnUNetTrainerCIML_groupedBranches, CPUTestBudget):
    """``nnUNetTrainerCIML_groupedBranches`` on the CPU-test budget."""


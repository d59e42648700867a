"""Trainers with the ShapeComposition demonstration's budget (``nnunetv2_ciml demo``, see ``nnunetv2_ciml.demo``).

The three models the demonstration compares share one budget, so that only the network differs:

- ``nnUNetTrainer_ShapeCompositionDemo``: plain nnU-Net (nnU-Net's ``nnUNetTrainer``, early fusion U-Net);
- ``nnUNetTrainerCIML_ShapeCompositionDemo``: CIML with KL weight beta = 0.1;
- ``nnUNetTrainerCIML_noMessages_ShapeCompositionDemo``: CIML without messages (the ablation);

and the same three with ``Quick`` appended (``nnunetv2_ciml demo --quick``, the test suite): a smoke-test
budget, not results. Budget: 15 epochs of 40 iterations (600 iterations, batch size from the plans),
no mirroring in augmentation or inference (the shapes are mirror-symmetric, and mirroring would
multiply the inference time by 4 in 2D); everything else is nnU-Net's (SGD, poly learning rate,
Dice + CE, deep supervision, augmentation). All of them have the package's training guards (non-finite
training stops, atomic checkpoints, ``--c`` fallback; :mod:`nnunetv2_ciml.training.guards`). They work like
any trainer::

    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerCIML_ShapeCompositionDemo

Why beta = 0.1 rather than ``nnUNetTrainerCIML``'s 1e-3: with 1e-3 the messages also carry what the
receiving branch already has (a weak bottleneck), and their Grad-CAM mass spreads over every object:
measured on the demo's data (seed 0, 1000 iterations, all 60 training cases) the share of message
mass inside the complementary masks was 0.28 for beta 1e-3, 0.31 for 1e-2 and 0.49 for 1e-1, against
0.23 for the masks' area, with every decoy/twin pair resolved in all three. On other data (seed 1, this
budget, fold 0) beta 0.1, 0.3 and 1 gave 0.50, 0.47 and 0.39 against 0.24 (pair accuracy 0.99, 1.0,
0.99). 0.1 keeps the messages on what only another modality knows without starving them. (These runs
had the attention gates start half open; with the current nearly closed start see docs/demo.md.)
"""
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunetv2_ciml.training.epoch_log import EPOCH_LOG_NAME, EpochLineLogger
from nnunetv2_ciml.training.guards import GuardedTraining
from nnunetv2_ciml.training.trainers import (TrainingBudget, nnUNetTrainerCIML,
                                             nnUNetTrainerCIML_narrowFullResDecoders,
                                             nnUNetTrainerCIML_narrowFullResEncoders, nnUNetTrainerCIML_noMessages)

__all__ = ["nnUNetTrainer_ShapeCompositionDemo", "nnUNetTrainerCIML_ShapeCompositionDemo",
           "nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo", "nnUNetTrainerCIML_width075_ShapeCompositionDemo",
           "nnUNetTrainerCIML_narrowFullResEncoders_ShapeCompositionDemo",
           "nnUNetTrainerCIML_narrowFullResDecoders_ShapeCompositionDemo",
           "nnUNetTrainerCIML_noMessages_ShapeCompositionDemo", "nnUNetTrainer_ShapeCompositionDemoQuick",
           "nnUNetTrainerCIML_ShapeCompositionDemoQuick", "nnUNetTrainerCIML_noMessages_ShapeCompositionDemoQuick"]


class _DemoBudget(TrainingBudget, nnUNetTrainerNoMirroring):
    """The demonstration's budget: 15 epochs x 40 training iterations, no mirroring; each epoch's numbers also
    go to ``fold_X/epochs.jsonl`` (:mod:`nnunetv2_ciml.training.epoch_log`)."""

    budget_epochs, budget_iterations, budget_val_iterations = 15, 40, 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # one JSON line per epoch in the fold folder: `nnunetv2_ciml demo` follows training through it
        if self.local_rank == 0:
            self.logger.loggers.append(EpochLineLogger(join(self.output_folder, EPOCH_LOG_NAME), self.num_epochs))


class _QuickDemoBudget(_DemoBudget):
    """``--quick``: 2 epochs of 5 iterations; checks that every stage runs, says nothing about the method."""

    budget_epochs, budget_iterations, budget_val_iterations = 2, 5, 1


class nnUNetTrainer_ShapeCompositionDemo(GuardedTraining, _DemoBudget):
    """Plain nnU-Net (early fusion ``PlainConvUNet`` from the plans) on the demonstration's budget, with the
    package's training guards (:class:`~nnunetv2_ciml.training.guards.GuardedTraining`)."""


class nnUNetTrainerCIML_ShapeCompositionDemo(nnUNetTrainerCIML, _DemoBudget):
    """``nnUNetTrainerCIML`` on the demonstration's budget, beta 0.1 (see module docstring)."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """Branches sized by the MAC-matching rule, as ``nnUNetTrainerCIML_MACmatched`` (the width study,
    ``benchmarks/demo_width_study.py``)."""

    branch_width_factor = None


class nnUNetTrainerCIML_width075_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """Branches 0.75x as wide as the plain U-Net's (the width study, ``benchmarks/demo_width_study.py``)."""

    branch_width_factor = 0.75


class nnUNetTrainerCIML_narrowFullResEncoders_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """``nnUNetTrainerCIML_narrowFullResEncoders``'s widths (the width study)."""

    encoder_stage_factors = nnUNetTrainerCIML_narrowFullResEncoders.encoder_stage_factors


class nnUNetTrainerCIML_narrowFullResDecoders_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """``nnUNetTrainerCIML_narrowFullResDecoders``'s widths (the width study)."""

    decoder_stage_factors = nnUNetTrainerCIML_narrowFullResDecoders.decoder_stage_factors


class nnUNetTrainerCIML_noMessages_ShapeCompositionDemo(nnUNetTrainerCIML_noMessages, _DemoBudget):
    """``nnUNetTrainerCIML_noMessages`` on the demonstration's budget."""


class nnUNetTrainer_ShapeCompositionDemoQuick(GuardedTraining, _QuickDemoBudget):
    """Plain nnU-Net on the ``--quick`` budget, with the training guards."""


class nnUNetTrainerCIML_ShapeCompositionDemoQuick(nnUNetTrainerCIML, _QuickDemoBudget):
    """``nnUNetTrainerCIML`` on the ``--quick`` budget, beta 0.1."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_noMessages_ShapeCompositionDemoQuick(nnUNetTrainerCIML_noMessages, _QuickDemoBudget):
    """``nnUNetTrainerCIML_noMessages`` on the ``--quick`` budget."""


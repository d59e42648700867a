"""Trainers of the ShapeComposition demonstration (``nnunetv2_ciml demo``) and of the studies run on its data.

The three models the demonstration compares share one budget (:class:`DemoBudget`), so that only the network
differs:

- ``nnUNetTrainer_ShapeCompositionDemo``: plain nnU-Net (nnU-Net's ``nnUNetTrainer``, early fusion U-Net);
- ``nnUNetTrainerCIML_ShapeCompositionDemo``: ``nnUNetTrainerCIML`` with KL weight beta = 0.1;
- ``nnUNetTrainerCIML_noMessages_ShapeCompositionDemo``: CIML without messages (the ablation);

and the same three with ``Quick`` appended (``nnunetv2_ciml demo --quick``, the test suite): a smoke-test
budget, not results. Budget: 15 epochs of 40 iterations (600 iterations, batch size from the plans),
no mirroring in augmentation or inference (the shapes are mirror-symmetric, and mirroring would
multiply the inference time by 4 in 2D); everything else is nnU-Net's (SGD, poly learning rate,
Dice + CE, deep supervision, augmentation). All of them have the package's training guards (non-finite
training stops, atomic checkpoints, ``--c`` fallback; :mod:`nnunetv2_ciml.training.guards`). They work like
any trainer::

    nnUNetv2_train DATASET 2d 0 -tr nnUNetTrainerCIML_ShapeCompositionDemo

The studies on the demo's data (``benchmarks/demo_width_study.py``: CIML's widths;
``benchmarks/missing_modalities.py``: modality dropout and fallback primaries) train the same budget with the
variants below. Why the demo's beta is 0.1 rather than ``nnUNetTrainerCIML``'s 1e-3: docs/demo.md.
"""
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunetv2_ciml.training.budget import TrainingBudget
from nnunetv2_ciml.demo.epoch_log import EPOCH_LOG_NAME, EpochLineLogger
from nnunetv2_ciml.training.guards import GuardedTraining
from nnunetv2_ciml.training.modality_dropout import nnUNetTrainer_modalityDropout, nnUNetTrainerCIML_modalityDropout
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML, nnUNetTrainerCIML_noMessages

__all__ = ["nnUNetTrainer_ShapeCompositionDemo", "nnUNetTrainerCIML_ShapeCompositionDemo",
           "nnUNetTrainerCIML_noMessages_ShapeCompositionDemo", "nnUNetTrainer_ShapeCompositionDemoQuick",
           "nnUNetTrainerCIML_ShapeCompositionDemoQuick", "nnUNetTrainerCIML_noMessages_ShapeCompositionDemoQuick",
           "nnUNetTrainerCIML_fullWidth_ShapeCompositionDemo", "nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo",
           "nnUNetTrainerCIML_narrowFullResEncoders_ShapeCompositionDemo",
           "nnUNetTrainerCIML_narrowFullResDecoders_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_fallbackAffine_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_meanFallback_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_rate025_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_rate075_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_keepPrimaries_ShapeCompositionDemo",
           "nnUNetTrainer_modalityDropout_ShapeCompositionDemo",
           "nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemoQuick",
           "nnUNetTrainer_modalityDropout_ShapeCompositionDemoQuick"]


class DemoBudget(TrainingBudget, nnUNetTrainerNoMirroring):
    """The demonstration's budget: 15 epochs x 40 training iterations, no mirroring; each epoch's numbers also
    go to ``fold_X/epochs.jsonl`` (:mod:`nnunetv2_ciml.demo.epoch_log`)."""

    budget_epochs, budget_iterations, budget_val_iterations = 15, 40, 2

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # one JSON line per epoch in the fold folder: `nnunetv2_ciml demo` follows training through it
        if self.local_rank == 0:
            self.logger.loggers.append(EpochLineLogger(join(self.output_folder, EPOCH_LOG_NAME), self.num_epochs))


class QuickDemoBudget(DemoBudget):
    """``--quick``: 2 epochs of 5 iterations; checks that every stage runs, says nothing about the method."""

    budget_epochs, budget_iterations, budget_val_iterations = 2, 5, 1


class nnUNetTrainer_ShapeCompositionDemo(GuardedTraining, DemoBudget):
    """Plain nnU-Net (early fusion ``PlainConvUNet`` from the plans) on the demonstration's budget, with the
    package's training guards (:class:`~nnunetv2_ciml.training.guards.GuardedTraining`)."""


class nnUNetTrainerCIML_ShapeCompositionDemo(nnUNetTrainerCIML, DemoBudget):
    """``nnUNetTrainerCIML`` on the demonstration's budget, beta 0.1 (see module docstring)."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_fullWidth_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """Branches as wide as the plain U-Net's, as ``nnUNetTrainerCIML_fullWidth`` (the width study,
    ``benchmarks/demo_width_study.py``)."""

    branch_width_factor = 1.0


class nnUNetTrainerCIML_MACmatched_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """Branches sized by the MAC-matching rule, as ``nnUNetTrainerCIML_MACmatched`` (the width study)."""

    branch_width_factor = None


class nnUNetTrainerCIML_narrowFullResEncoders_ShapeCompositionDemo(nnUNetTrainerCIML_fullWidth_ShapeCompositionDemo):
    """The width study: full width but for the full-resolution modality branches, a quarter as wide."""

    encoder_stage_factors = (0.25,)


class nnUNetTrainerCIML_narrowFullResDecoders_ShapeCompositionDemo(nnUNetTrainerCIML_fullWidth_ShapeCompositionDemo):
    """The width study: full width but for the full-resolution subtask decoder stages, a quarter as wide."""

    decoder_stage_factors = (0.25,)


class nnUNetTrainerCIML_noMessages_ShapeCompositionDemo(nnUNetTrainerCIML_noMessages, DemoBudget):
    """``nnUNetTrainerCIML_noMessages`` on the demonstration's budget."""


class nnUNetTrainer_ShapeCompositionDemoQuick(GuardedTraining, QuickDemoBudget):
    """Plain nnU-Net on the ``--quick`` budget, with the training guards."""


class nnUNetTrainerCIML_ShapeCompositionDemoQuick(nnUNetTrainerCIML, QuickDemoBudget):
    """``nnUNetTrainerCIML`` on the ``--quick`` budget, beta 0.1."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_noMessages_ShapeCompositionDemoQuick(nnUNetTrainerCIML_noMessages, QuickDemoBudget):
    """``nnUNetTrainerCIML_noMessages`` on the ``--quick`` budget."""



class nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo(nnUNetTrainerCIML_modalityDropout, DemoBudget):
    """CIML with modality dropout on the demonstration's budget, beta 0.1 as the demo's CIML."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_modalityDropout_fallbackAffine_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The fallback study (``benchmarks/missing_modalities.py``): the first present fallback's skip features
    through a learnt per-(subtask, fallback) scale and shift."""

    fallback_affine = True


class nnUNetTrainerCIML_modalityDropout_meanFallback_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The fallback study: the mean of the present fallbacks' skip features (as HeMIS fuses modalities)."""

    fallback_mode, fallback_affine = "mean", False


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


class nnUNetTrainer_modalityDropout_ShapeCompositionDemo(nnUNetTrainer_modalityDropout, DemoBudget):
    """Plain nnU-Net with modality dropout on the demonstration's budget."""


class nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemoQuick(nnUNetTrainerCIML_modalityDropout,
                                                                  QuickDemoBudget):
    """CIML with modality dropout on the ``--quick`` budget, beta 0.1."""

    kl_weight = 1e-1


class nnUNetTrainer_modalityDropout_ShapeCompositionDemoQuick(nnUNetTrainer_modalityDropout, QuickDemoBudget):
    """Plain nnU-Net with modality dropout on the ``--quick`` budget."""

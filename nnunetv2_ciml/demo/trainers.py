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
``benchmarks/missing_modalities.py``: modality dropout and fallback primaries; ``benchmarks/kl_schedule_study.py``:
the KL schedule) train the same budget with the variants below. Why the demo's beta is 0.1 rather than ``nnUNetTrainerCIML``'s 1e-3: docs/demo.md.
"""
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch import nn
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import \
    nnUNetTrainerNoMirroring

from nnunetv2_ciml.training.budget import TrainingBudget
from nnunetv2_ciml.demo.epoch_log import EPOCH_LOG_NAME, EpochLineLogger
from nnunetv2_ciml.demo.iteration_log import IterationLog
from nnunetv2_ciml.network import unwrap
from nnunetv2_ciml.training import kl_schedule
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
           "nnUNetTrainer_modalityDropout_ShapeCompositionDemoQuick",
           "nnUNetTrainerCIML_constantBeta_ShapeCompositionDemo", "nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo",
           "nnUNetTrainerCIML_iterationWarmup_ShapeCompositionDemo",
           "nnUNetTrainerCIML_floorWarmup_ShapeCompositionDemo", "nnUNetTrainerCIML_freeBits_ShapeCompositionDemo",
           "nnUNetTrainerCIML_klPerLatentChannel_ShapeCompositionDemo", "nnUNetTrainerCIML_priorStart_ShapeCompositionDemo",
           "nnUNetTrainerCIML_klOnMessages_ShapeCompositionDemo",
           "nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemoQuick",
           "nnUNetTrainerCIML_groupedBranches_ShapeCompositionDemo",
           "nnUNetTrainerCIML_groupedBranches_fullWidth_ShapeCompositionDemo",
           "nnUNetTrainerCIML_inputEmbedding_ShapeCompositionDemo",
           "nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo",
           "nnUNetTrainerCIML_inputEmbedding_modalityDropout_ShapeCompositionDemo"]


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
    """CIML with modality dropout (its shared branches) on the demonstration's budget, beta 0.1 as the demo's CIML."""

    kl_weight = 1e-1


class nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The missing-modality study (``benchmarks/missing_modalities.py``): modality dropout with the grouped encoder
    (one weight set per modality, ``nnUNetTrainerCIML_groupedBranches``'); the fallback and dropout-rate studies below build on it."""

    shared_branches = False


class nnUNetTrainerCIML_modalityDropout_fallbackAffine_ShapeCompositionDemo(
        nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo):
    """The fallback study (``benchmarks/missing_modalities.py``): the first present fallback's skip features
    through a learnt per-(subtask, fallback) scale and shift."""

    fallback_affine = True


class nnUNetTrainerCIML_modalityDropout_meanFallback_ShapeCompositionDemo(
        nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo):
    """The fallback study: the mean of the present fallbacks' skip features (as HeMIS fuses modalities)."""

    fallback_mode, fallback_affine = "mean", False


class nnUNetTrainerCIML_modalityDropout_rate025_ShapeCompositionDemo(
        nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo):
    """The dropout study (``benchmarks/missing_modalities.py``): a quarter of the samples lose modalities."""

    modality_dropout_rate = 0.25


class nnUNetTrainerCIML_modalityDropout_rate075_ShapeCompositionDemo(
        nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo):
    """The dropout study: three quarters of the samples lose modalities."""

    modality_dropout_rate = 0.75


class nnUNetTrainerCIML_modalityDropout_keepPrimaries_ShapeCompositionDemo(
        nnUNetTrainerCIML_groupedBranches_modalityDropout_ShapeCompositionDemo):
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


# The KL-schedule study (benchmarks/kl_schedule_study.py): the demo's CIML with one schedule or KL term each, and
# every training iteration logged (fold_0/iterations.jsonl, nnunetv2_ciml.demo.iteration_log). The candidates
# but the last keep the first version's KL, whose gradient also reached the branches (KLIntoBranches). All keep
# the grouped encoder the study ran on, so that it reproduces.

FREE_NATS = 0.1  # nats per voxel per message and stage: about a third of a trained demo message's KL


class KLIntoBranches(nnUNetTrainerCIML):
    """Mixin: the first version's KL, whose gradient also reaches the modality branches
    (``StageMessages.kl_reaches_branches``), on the grouped encoder that the study measured."""

    shared_branches = False

    def initialize(self):
        super().initialize()
        for module in unwrap(self.network).messages.values():
            module.kl_reaches_branches = True


class nnUNetTrainerCIML_constantBeta_ShapeCompositionDemo(KLIntoBranches, IterationLog,
                                                          nnUNetTrainerCIML_ShapeCompositionDemo):
    """The KL-schedule study: beta 0.1 from the first iteration (``kl_schedule.CONSTANT``), the first version's KL."""

    kl_schedule = kl_schedule.CONSTANT


class nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo(KLIntoBranches, IterationLog,
                                                         nnUNetTrainerCIML_ShapeCompositionDemo):
    """The KL-schedule study: the first version: beta 0 in epoch 0, rising once per epoch to 0.1 at 10 % of the
    epochs (``kl_schedule.EPOCH_WARMUP``), the KL's gradient reaching the branches."""

    kl_schedule = kl_schedule.EPOCH_WARMUP


class nnUNetTrainerCIML_iterationWarmup_ShapeCompositionDemo(KLIntoBranches, IterationLog,
                                                             nnUNetTrainerCIML_ShapeCompositionDemo):
    """The KL-schedule study: beta rising every iteration from 0 to 0.1 over the first 10 % of the iterations."""

    kl_schedule = kl_schedule.ITERATION_WARMUP


class nnUNetTrainerCIML_floorWarmup_ShapeCompositionDemo(KLIntoBranches, IterationLog,
                                                         nnUNetTrainerCIML_ShapeCompositionDemo):
    """The KL-schedule study: the epoch warm-up from a tenth of beta instead of 0."""

    kl_schedule = kl_schedule.FLOOR_WARMUP


class nnUNetTrainerCIML_freeBits_ShapeCompositionDemo(nnUNetTrainerCIML_constantBeta_ShapeCompositionDemo):
    """The KL-schedule study: constant beta; each message's KL at each stage costs nothing up to
    :data:`FREE_NATS` ("free bits")."""

    def kl_term(self, network: nn.Module) -> torch.Tensor:
        return network.stage_kl.clamp_min(FREE_NATS).mean()


class nnUNetTrainerCIML_klPerLatentChannel_ShapeCompositionDemo(nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo):
    """The KL-schedule study: the epoch warm-up, with each message's KL divided by its latent channels (the stages'
    KLs weigh alike whatever their width; a weaker bottleneck overall)."""

    def kl_term(self, network: nn.Module) -> torch.Tensor:
        latent = torch.tensor([float(network.messages[str(s)].latent_channels) for s in network.message_stages],
                              device=network.stage_kl.device)
        return (network.stage_kl / latent[:, None]).mean()


class nnUNetTrainerCIML_priorStart_ShapeCompositionDemo(nnUNetTrainerCIML_constantBeta_ShapeCompositionDemo):
    """The KL-schedule study: constant beta, and every message's posterior starting near the prior (KL near 0
    at the first iteration instead of tens of nats per voxel: ``StageMessages.start_posteriors_near_the_prior``)."""

    def initialize(self):
        super().initialize()
        for module in unwrap(self.network).messages.values():
            module.start_posteriors_near_the_prior()


class nnUNetTrainerCIML_klOnMessages_ShapeCompositionDemo(IterationLog, nnUNetTrainerCIML_ShapeCompositionDemo):
    """The KL-schedule study: constant beta, the KL's gradient stopped at the modality branches' features (the
    bottleneck shapes the message modules; the branches learn from the segmentation loss alone): the method as
    ``nnUNetTrainerCIML`` trains it, on the grouped encoder that the study measured."""

    kl_schedule = kl_schedule.CONSTANT
    shared_branches = False


class nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemoQuick(KLIntoBranches, IterationLog,
                                                              nnUNetTrainerCIML_ShapeCompositionDemoQuick):
    """The first version's schedule and KL on the ``--quick`` budget, logged per iteration (a smoke test)."""

    kl_schedule = kl_schedule.EPOCH_WARMUP


# Shared against grouped modality branches (benchmarks/demo_width_study.py, benchmarks/missing_modalities.py)

class nnUNetTrainerCIML_groupedBranches_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """``nnUNetTrainerCIML_groupedBranches`` on the demonstration's budget: one weight set per modality."""

    shared_branches = False


class nnUNetTrainerCIML_groupedBranches_fullWidth_ShapeCompositionDemo(
        nnUNetTrainerCIML_groupedBranches_ShapeCompositionDemo):
    """The width study: grouped branches as wide as the plain U-Net's."""

    branch_width_factor = 1.0


class nnUNetTrainerCIML_inputEmbedding_ShapeCompositionDemo(nnUNetTrainerCIML_ShapeCompositionDemo):
    """The width study: the shared encoder told each modality by a learnt code at the input instead of affines."""

    modality_conditioning = "input_embedding"


class nnUNetTrainerCIML_inputEmbedding_modalityDropout_ShapeCompositionDemo(
        nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo):
    """The missing-modality study: modality dropout, the shared encoder told each modality by a learnt input code."""

    modality_conditioning = "input_embedding"

"""``nnUNetTrainerCIML`` and its named variants.

Use them exactly like nnU-Net's own trainers::

    nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerCIML
    nnUNetv2_predict -i IN -o OUT -d DATASET -c 3d_fullres -tr nnUNetTrainerCIML -f 0
"""
import math
from functools import partial
from numbers import Real
from os.path import isdir, join
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_ciml.decomposition import Decomposition, count_label_voxels, resolve_decomposition
from nnunetv2_ciml.errors import CIMLError, report_without_traceback
from nnunetv2_ciml.network import unwrap
from nnunetv2_ciml.network.shared import MODALITY_CONDITIONINGS
from nnunetv2_ciml.planning import CIML_NETWORK, ciml_architecture
from nnunetv2_ciml.training.guards import GuardedTraining
from nnunetv2_ciml.training.kl_schedule import CONSTANT, KLSchedule
from nnunetv2_ciml.training.loss import KLRegularizedLoss
from nnunetv2_ciml.training.progress_plot import plot_ciml_progress

__all__ = ["nnUNetTrainerCIML", "nnUNetTrainerCIML_beta1e2", "nnUNetTrainerCIML_beta1e4",
           "nnUNetTrainerCIML_fullWidth", "nnUNetTrainerCIML_MACmatched", "nnUNetTrainerCIML_noMessages",
           "nnUNetTrainerCIML_groupedBranches",
           "validate_ciml_attributes"]

LOG_KEYS = ("ciml_beta", "ciml_kl", "ciml_message_kl", "ciml_message_magnitude")


def validate_ciml_attributes(trainer) -> None:
    """Raise CIMLError for a trainer whose CIML settings cannot train: ``kl_weight`` a finite number >= 0,
    ``kl_schedule`` a :class:`KLSchedule`, ``messages`` and ``recompute_activations`` bools, ``branch_width_factor`` None
    or a finite number > 0, ``encoder_stage_factors`` and ``decoder_stage_factors`` tuples of finite numbers > 0."""
    name = type(trainer).__name__

    def number(attr: str) -> float:
        value = getattr(trainer, attr)
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise CIMLError(f"{name}.{attr} = {value!r}: must be a finite number")
        return float(value)

    if number("kl_weight") < 0:
        raise CIMLError(f"{name}.kl_weight = {trainer.kl_weight!r}: the KL weight (beta) must be >= 0")
    if not isinstance(trainer.kl_schedule, KLSchedule):
        raise CIMLError(f"{name}.kl_schedule = {trainer.kl_schedule!r}: must be a "
                        "nnunetv2_ciml.training.kl_schedule.KLSchedule (e.g. CONSTANT, EPOCH_WARMUP)")
    if not isinstance(getattr(trainer, "messages", True), bool):
        raise CIMLError(f"{name}.messages = {trainer.messages!r}: must be True or False")
    if getattr(trainer, "branch_width_factor", None) is not None and number("branch_width_factor") <= 0:
        raise CIMLError(f"{name}.branch_width_factor = {trainer.branch_width_factor!r}: must be > 0 (or None for "
                        "the MAC-matching rule)")
    for attr in ("encoder_stage_factors", "decoder_stage_factors"):
        factors = getattr(trainer, attr, ())
        if not isinstance(factors, (tuple, list)) or not all(
                isinstance(f, Real) and not isinstance(f, bool) and math.isfinite(f) and f > 0 for f in factors):
            raise CIMLError(f"{name}.{attr} = {factors!r}: must be a tuple of finite numbers > 0, one per stage from "
                            "full resolution (stages not listed keep factor 1)")
    for attr in ("recompute_activations", "fallback_affine", "shared_branches"):
        if not isinstance(getattr(trainer, attr, False), bool):
            raise CIMLError(f"{name}.{attr} = {getattr(trainer, attr)!r}: must be True or False")
    if getattr(trainer, "modality_conditioning", "norm_affine") not in MODALITY_CONDITIONINGS:
        raise CIMLError(f"{name}.modality_conditioning = {trainer.modality_conditioning!r}: must be one of "
                        f"{', '.join(MODALITY_CONDITIONINGS)} (how shared branches tell the modalities apart)")
    if getattr(trainer, "fallback_mode", "first") not in ("first", "mean"):
        raise CIMLError(f"{name}.fallback_mode = {trainer.fallback_mode!r}: must be 'first' (the first present "
                        "fallback takes a missing primary's place) or 'mean' (the mean of the present fallbacks)")


class nnUNetTrainerCIML(GuardedTraining, nnUNetTrainer):
    """nnU-Net training of a :class:`~nnunetv2_ciml.network.CIMLUNet`; loss = nnU-Net's + beta(t) * KL.

    ``initialize`` resolves the decomposition (``ciml`` block of dataset.json, or the defaults) and
    writes the CIML network into the plans this trainer saves with its checkpoints, so that
    ``nnUNetv2_predict`` rebuilds the identical network from the model folder alone. Plans whose
    configuration already names ``CIMLUNet`` (hand-edited widths, ``message_stages``, ...) are used as
    they are.

    Widths (:mod:`nnunetv2_ciml.planning`): every branch and decoder is ``branch_width_factor`` = 0.75 times as
    wide as the plain U-Net's stage, the cheapest point of the measured cost/Dice front within 0.003 mean Dice of
    full width (docs/benchmarks.md); :class:`nnUNetTrainerCIML_fullWidth` and :class:`nnUNetTrainerCIML_MACmatched`
    are the front's other points, and a subclass may set any factor or per-stage profile
    (``encoder_stage_factors``, ``decoder_stage_factors``). Memory: the high-resolution stages are recomputed in
    the backward pass where the plans' activations would exceed 1.3x plain nnU-Net's (``recompute_activations``).
    Branches: one encoder for every modality, the modalities folded into the batch (``shared_branches``,
    :mod:`nnunetv2_ciml.network.shared`): each branch still sees only its own modality, with a scale and shift of
    its own after every normalisation; it matched separate branches' Dice, at 1/M of their encoder weights, with
    dense convolutions that ran faster (docs/benchmarks.md). :class:`nnUNetTrainerCIML_groupedBranches` keeps one
    weight set per modality.
    beta follows ``kl_schedule`` (:mod:`nnunetv2_ciml.training.kl_schedule`), evaluated at every training
    iteration: :data:`~nnunetv2_ciml.training.kl_schedule.CONSTANT`, ``kl_weight`` from the first iteration (why:
    docs/design.md). Per epoch it logs beta, the mean KL, and each message's KL and RMS magnitude
    (``ciml_progress.png``). :class:`~nnunetv2_ciml.training.guards.GuardedTraining`: these settings are
    validated first, a non-finite loss or KL stops training, checkpoints are atomic and finite, and
    ``--c`` falls back to the newest readable checkpoint.
    """

    kl_weight: float = 1e-3
    kl_schedule: KLSchedule = CONSTANT
    messages: bool = True
    branch_width_factor: Optional[float] = 0.75  # None: the MAC-matching rule of nnunetv2_ciml.planning
    encoder_stage_factors: Tuple[float, ...] = ()  # per-stage width factors, full resolution first
    decoder_stage_factors: Tuple[float, ...] = ()
    recompute_activations: bool = True  # the recomputed-stages rule of nnunetv2_ciml.planning
    fallback_mode: str = "first"  # a missing primary's place: the first present fallback ("mean": their mean)
    fallback_affine: bool = False  # a learnt scale and shift of a fallback's skip features
    shared_branches: bool = True  # one encoder for every modality (False: one weight set per modality)
    modality_conditioning: str = "norm_affine"  # how a shared encoder tells the modalities apart

    def initialize(self):
        # The network must come from CIML plans before nnU-Net builds it from them.
        if not self.was_initialized:
            try:
                validate_ciml_attributes(self)
                self._use_ciml_architecture()
            except CIMLError as e:  # the training log is where users look first; the console gets the line alone
                self.print_to_log_file(f"ERROR: {e}")
                report_without_traceback(e)
                raise
        super().initialize()
        for key in LOG_KEYS:
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    def _use_ciml_architecture(self) -> None:
        plans = self.plans_manager.plans
        architecture = self.configuration_manager.configuration["architecture"]
        if architecture["network_class_name"] == CIML_NETWORK:
            self.print_to_log_file("Plans already describe a CIML network; using them as they are.")
            return
        counts = None
        if self.preprocessed_dataset_folder_base is not None:
            gt_folder = join(self.preprocessed_dataset_folder_base, "gt_segmentations")
            if isdir(gt_folder):
                counts = partial(count_label_voxels, gt_folder, self.dataset_json["file_ending"],
                                 self.plans_manager.image_reader_writer_class())
        decomposition, origin = resolve_decomposition(
            self.dataset_json, determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                            self.dataset_json),
            counts, source=f"dataset.json of {self.plans_manager.dataset_name}")
        ciml = self.network_architecture(architecture, decomposition, self.configuration_manager.patch_size,
                                         self.label_manager.num_segmentation_heads,
                                         self.configuration_manager.batch_size)
        arch_kwargs = ciml["arch_kwargs"]
        plans["configurations"][self.configuration_name]["architecture"] = ciml
        self.plans_manager = PlansManager(plans)
        self.configuration_manager = self.plans_manager.get_configuration(self.configuration_name)
        self.print_to_log_file(f"{decomposition.describe()}\n  (from {origin})\n"
                               f"  branch features per stage {arch_kwargs['features_per_stage']}, decoder features "
                               f"{arch_kwargs['decoder_features_per_stage']} (width factor "
                               f"{ciml['branch_width_factor']}, "
                               f"{'one shared encoder' if arch_kwargs['shared_branches'] else 'grouped branches'}), "
                               f"recomputed stages {arch_kwargs['recomputed_stages']}, "
                               f"messages: {self.messages}, beta {self.kl_weight}", also_print_to_console=True)

    @classmethod
    def network_architecture(cls, architecture: dict, decomposition: Decomposition, patch_size: Sequence[int],
                             num_classes: int, batch_size: int) -> dict:
        """The CIML ``architecture`` plans entry this trainer writes for a plain one: its widths, messages and
        recomputed stages (:func:`~nnunetv2_ciml.planning.ciml_architecture`)."""
        return ciml_architecture(architecture, decomposition, patch_size, num_classes, messages=cls.messages,
                                 width_factor=cls.branch_width_factor, encoder_stage_factors=cls.encoder_stage_factors,
                                 decoder_stage_factors=cls.decoder_stage_factors, recompute=cls.recompute_activations,
                                 batch_size=batch_size, fallback_mode=cls.fallback_mode,
                                 fallback_affine=cls.fallback_affine, shared_branches=cls.shared_branches,
                                 modality_conditioning=cls.modality_conditioning)

    def _build_loss(self):
        return KLRegularizedLoss(super()._build_loss(), lambda: self.kl_term(unwrap(self.network)))

    def kl_term(self, network: nn.Module) -> torch.Tensor:
        """The KL that beta weighs, from the forward pass just run: the mean message KL (nats per voxel)."""
        return network.kl

    def kl_beta(self, iteration: int) -> float:
        """beta at training iteration ``iteration`` (0-based over all epochs), from ``kl_schedule``."""
        return self.kl_weight * self.kl_schedule.factor(iteration, self.num_iterations_per_epoch, self.num_epochs)

    def on_train_epoch_start(self):
        self._training_iteration = self.current_epoch * self.num_iterations_per_epoch
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        # beta of this iteration; message statistics of the step just taken, for the per-epoch log.
        self.loss.beta = self.kl_beta(self._training_iteration)
        self._training_iteration += 1
        result = super().train_step(batch)
        network = unwrap(self.network)
        result["ciml_beta"] = self.loss.beta
        result["ciml_kl"] = network.kl.detach().float().cpu().numpy()
        result["ciml_message_kl"] = network.message_kl.float().cpu().numpy()
        result["ciml_message_magnitude"] = network.message_magnitude.float().cpu().numpy()
        return result

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        epoch = self.current_epoch
        self.logger.log("ciml_beta", float(np.mean([o["ciml_beta"] for o in train_outputs])), epoch)
        self.logger.log("ciml_kl", float(np.mean([o["ciml_kl"] for o in train_outputs])), epoch)
        for key in ("ciml_message_kl", "ciml_message_magnitude"):
            self.logger.log(key, np.mean([o[key] for o in train_outputs], axis=0).tolist(), epoch)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_ciml_progress(self.logger.local_logger.my_fantastic_logging, self.message_pair_names(),
                               join(self.output_folder, "ciml_progress.png"))

    def monitored_values(self) -> Dict[str, float]:
        """The mean message KL of the step just taken, which the guard requires finite with the loss."""
        return {**super().monitored_values(), "mean message KL": float(unwrap(self.network).kl.detach())}

    def message_pair_names(self) -> List[str]:
        return [pair.name for pair in unwrap(self.network).message_pairs]


class nnUNetTrainerCIML_beta1e2(nnUNetTrainerCIML):
    """Stronger bottleneck: only clearly complementary information passes."""

    kl_weight = 1e-2


class nnUNetTrainerCIML_beta1e4(nnUNetTrainerCIML):
    """Weaker bottleneck: messages pass more freely."""

    kl_weight = 1e-4


class nnUNetTrainerCIML_MACmatched(nnUNetTrainerCIML):
    """Branches sized for plain nnU-Net's convolution cost (the MAC-matching rule of :mod:`nnunetv2_ciml.planning`):
    narrower and cheaper than the default, with less capacity (the cost/Dice front: docs/benchmarks.md)."""

    branch_width_factor = None


class nnUNetTrainerCIML_fullWidth(nnUNetTrainerCIML):
    """Every branch and decoder as wide as the plain U-Net's stage: the most capacity, and the most convolution
    arithmetic of the cost/Dice front (docs/benchmarks.md)."""

    branch_width_factor = 1.0


class nnUNetTrainerCIML_noMessages(nnUNetTrainerCIML):
    """Ablation: the same unimodal branches and widths, no messages."""

    messages = False


class nnUNetTrainerCIML_groupedBranches(nnUNetTrainerCIML):
    """One weight set per modality (a grouped encoder, ``groups = M``), as in the paper: each modality's branch has
    filters of its own, M times the shared encoder's weights for the same arithmetic (measured against the default:
    docs/benchmarks.md)."""

    shared_branches = False

"""CIMLUNet: modality branches (one shared encoder, or one grouped encoder), a decoder per subtask, messages."""
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.checkpoint import checkpoint

from nnunetv2_ciml.network.decoder import DecoderSpec, SubtaskDecoder, SubtaskDecoders
from nnunetv2_ciml.network.grouped import check_channelwise_norm, grouped_conv
from nnunetv2_ciml.network.message import MessagePair, StageMessages, pair_name
from nnunetv2_ciml.network.shared import (MODALITY_CONDITIONINGS, EMBEDDING_CHANNELS, ModalityEmbedding,
                                          check_shared_norm, fold_modalities, modality_instance_norm,
                                          unfold_modalities)

IntOrSeq = Union[int, Sequence[int]]

MESSAGE_LATENT_FRACTION = 0.25


def round_channels(channels: float) -> int:
    """Round to the nearest multiple of 8 from 8 channels up (CPU and tensor-core kernels are much faster on
    those), to an integer >= 1 below that (tiny test networks)."""
    return 8 * max(1, round(channels / 8)) if channels >= 8 else max(1, round(channels))


def default_message_stages(n_stages: int) -> List[int]:
    """Every stage below full resolution (why: docs/design.md)."""
    return list(range(1, n_stages))


def _per_stage(value, n: int) -> list:
    """``value`` (one value for all, or one per stage) as a list of ``n``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"expected {n} per-stage values, got {values}")
    return [int(v) if isinstance(v, (int, np.integer)) else v for v in values]


def unwrap(network: nn.Module) -> nn.Module:
    """The module behind DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


class CIMLUNet(nn.Module):
    """CIML network built from nnU-Net's U-Net plans.

    Input ``(B, M, *spatial)``, one channel per modality. The M modality encoders are ONE
    dynamic-network-architectures encoder (``PlainConvEncoder``, or ``ResidualEncoder`` when
    ``n_blocks_per_stage`` is given as in ResEnc plans) with M x ``features_per_stage`` channels whose
    convolutions have M groups (:func:`~nnunetv2_ciml.network.grouped.grouped_conv`): with a per-channel norm,
    channel block ``c`` of every stage is exactly the encoder of modality ``c``, seeing channel ``c`` only.
    ``shared_branches=True`` instead folds the modalities into the batch through ONE encoder of branch width
    (:mod:`nnunetv2_ciml.network.shared`): every branch has the same convolutions, still sees its own modality
    only, and is told which modality it is by ``modality_conditioning``: ``"norm_affine"``, a scale and shift per
    modality after every normalisation, or ``"input_embedding"``, a learnt code per modality as extra input
    channels. The stage outputs have the grouped encoder's layout ``(B, M * C_s, *spatial_s)`` either way.
    (``nnUNetTrainerCIML`` writes ``shared_branches=True`` into its plans; the constructor's default, False, is what
    plans written before the option existed describe.)
    Subtask ``i`` has a :class:`~nnunetv2_ciml.network.decoder.SubtaskDecoder` fed by the block of
    ``subtask_primaries[i]``; at each stage ``s`` of ``message_stages`` every other modality ``j`` adds a message
    to that skip, ``skip_i^s = h_i^s + sum_j m_{j->i}^s`` (``messages[str(s)]``, one :class:`StageMessages` for all
    pairs of the stage; ``message_pairs`` lists the :class:`MessagePair` s, subtask by subtask, senders in channel
    order). The decoders' logits are assembled into nnU-Net's output channels (``subtask_outputs[i]`` lists the
    channels subtask ``i`` owns): ``(B, num_classes, *spatial)``, or with deep supervision a list of
    ``n_stages - 1`` such tensors, highest resolution first. The parameters do not depend on
    ``deep_supervision`` (nnU-Net loads weights strictly).

    After each training-mode forward, ``kl`` holds the mean KL over all messages (a scalar with grad),
    ``stage_kl`` the KL per message stage and pair (``(len(message_stages), len(message_pairs))``, with grad),
    ``message_kl``, ``message_magnitude`` and ``message_gate`` (detached, ``(len(message_pairs),)``) the KL,
    root-mean-square message and mean attention gate per pair, averaged over stages. Eval mode skips these
    statistics (``kl`` is 0).

    Widths (see ``nnunetv2_ciml.planning``): ``features_per_stage`` is each modality branch's width per stage,
    ``decoder_features_per_stage`` each subtask decoder's per stage above the bottleneck (default: the branch
    widths); each latent ``z`` has ``message_latent_fraction`` of the stage's branch channels (rounded as
    :func:`round_channels`). ``messages=False`` builds the unimodal-branch ablation; ``message_stages`` lists the
    encoder stages that receive messages (default :func:`default_message_stages`).

    Memory: ``recomputed_stages`` lists resolution stages whose encoder stage and decoder stages are recomputed
    in the backward pass instead of keeping their activations (non-reentrant activation checkpointing, in
    training with gradients only; the same outputs and gradients); ``checkpoint_messages`` does the same for
    every message module. :meth:`compute_conv_feature_map_size` counts what is kept, as nnU-Net's planners
    expect of a dynamic-network-architectures network.

    Missing modalities: ``forward(x, present)``, or the attribute ``present_modalities`` when ``present`` is not
    given (how nnU-Net's predictor, which calls ``network(x)``, is told; see :func:`modalities_present`), takes a
    mask ``(B, M)`` or ``(M,)``, 1 where a modality exists. Each subtask's decoder then reads, per sample, the
    branch of its primary if present, else of the first present modality of ``subtask_fallbacks[i]``
    (``fallback_mode="first"``) or the mean of the present ones (``"mean"``) (:meth:`reading_weights`); with
    ``fallback_affine``, a fallback's skip features pass a learnt per-(subtask, fallback, stage) channel scale and
    shift first, so the decoder can tell which branch it reads. The messages come from the other present
    modalities. A missing modality is read with weight 0 and sends nothing (exactly zero, :class:`StageMessages`):
    its input channel is ignored, whatever it holds, and its encoder block gets no gradient. A subtask with
    nothing to read decodes from the messages alone, with gates that open (``StageMessages.absent_primary_logit``).
    The mask is multiplied in, no per-sample branching, so torch.compile sees one graph. ``None`` (the default)
    is the full-modality path; an all-ones mask gives the same outputs.
    """

    def __init__(self,
                 input_channels: int,
                 n_stages: int,
                 features_per_stage: IntOrSeq,
                 conv_op: Type[_ConvNd],
                 kernel_sizes: Union[IntOrSeq, Sequence[Sequence[int]]],
                 strides: Union[IntOrSeq, Sequence[Sequence[int]]],
                 num_classes: int,
                 n_conv_per_stage_decoder: IntOrSeq,
                 subtask_primaries: Sequence[int],
                 subtask_outputs: Sequence[Sequence[int]],
                 n_conv_per_stage: Optional[IntOrSeq] = None,
                 n_blocks_per_stage: Optional[IntOrSeq] = None,
                 conv_bias: bool = False,
                 norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None,
                 dropout_op: Optional[Type[_DropoutNd]] = None,
                 dropout_op_kwargs: Optional[dict] = None,
                 nonlin: Optional[Type[nn.Module]] = None,
                 nonlin_kwargs: Optional[dict] = None,
                 deep_supervision: bool = False,
                 block: Type[Union[BasicBlockD, BottleneckD]] = BasicBlockD,
                 bottleneck_channels: Optional[IntOrSeq] = None,
                 stem_channels: Optional[int] = None,
                 decoder_features_per_stage: Optional[IntOrSeq] = None,
                 messages: bool = True,
                 message_stages: Optional[Sequence[int]] = None,
                 message_latent_fraction: float = MESSAGE_LATENT_FRACTION,
                 checkpoint_messages: bool = True,
                 recomputed_stages: Sequence[int] = (),
                 subtask_fallbacks: Optional[Sequence[Sequence[int]]] = None,
                 fallback_mode: str = "first",
                 fallback_affine: bool = False,
                 modality_names: Optional[Sequence[str]] = None,
                 subtask_names: Optional[Sequence[str]] = None,
                 shared_branches: bool = False,
                 modality_conditioning: str = "norm_affine"):
        super().__init__()
        if (n_conv_per_stage is None) == (n_blocks_per_stage is None):
            raise ValueError("CIMLUNet needs exactly one of n_conv_per_stage (PlainConvUNet plans) or "
                             "n_blocks_per_stage (ResidualEncoderUNet plans)")
        owned = sorted(k for outs in subtask_outputs for k in outs)
        if owned != list(range(num_classes)):
            raise ValueError(f"subtask_outputs {list(map(list, subtask_outputs))} must own each of the "
                             f"{num_classes} output channels exactly once")
        if len(subtask_primaries) != len(subtask_outputs) or not all(0 <= p < input_channels for p in subtask_primaries):
            raise ValueError(f"subtask_primaries {list(subtask_primaries)} must give one input channel in "
                             f"[0, {input_channels}) per subtask ({len(subtask_outputs)} subtasks)")
        check_channelwise_norm(norm_op)
        if modality_conditioning not in MODALITY_CONDITIONINGS:
            raise ValueError(f"modality_conditioning must be one of {MODALITY_CONDITIONINGS}, not "
                             f"{modality_conditioning!r}")
        if shared_branches:
            check_shared_norm(norm_op, norm_op_kwargs)
        self.shared_branches, self.modality_conditioning = bool(shared_branches), modality_conditioning
        self.features_per_stage = _per_stage(features_per_stage, n_stages)
        self.decoder_features_per_stage = (self.features_per_stage[:-1] if decoder_features_per_stage is None
                                           else _per_stage(decoder_features_per_stage, n_stages - 1))
        self.recomputed_stages = sorted(set(int(s) for s in recomputed_stages))
        if any(not 0 <= s < n_stages for s in self.recomputed_stages):
            raise ValueError(f"recomputed_stages {list(recomputed_stages)} must lie in [0, {n_stages})")
        self.modality_names = (list(modality_names) if modality_names
                               else [f"channel{c}" for c in range(input_channels)])
        self.subtask_names = (list(subtask_names) if subtask_names
                              else [f"subtask{i}" for i in range(len(subtask_outputs))])
        self.subtask_primaries = [int(p) for p in subtask_primaries]
        self.subtask_outputs = [[int(k) for k in outs] for outs in subtask_outputs]
        self.subtask_fallbacks = self._checked_fallbacks(subtask_fallbacks, fallback_mode)
        self.fallback_mode = fallback_mode
        self.checkpoint_messages = checkpoint_messages
        dim = convert_conv_op_to_dim(conv_op)
        kernel_sizes = [[k] * dim if isinstance(k, int) else list(k) for k in _per_stage(kernel_sizes, n_stages)]
        convolutions = dict(conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
                            dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)

        self.modality_embedding = (ModalityEmbedding(self.num_modalities) if self.shared_branches
                                   and modality_conditioning == "input_embedding" else None)
        self.encoder = self._build_encoder(conv_op, kernel_sizes, strides, n_conv_per_stage, n_blocks_per_stage, block,
                                           bottleneck_channels, stem_channels, convolutions)
        self.decoder = self._build_decoders(conv_op, kernel_sizes, n_conv_per_stage_decoder, deep_supervision,
                                            convolutions)
        self.message_pairs, self.message_stages, self.messages = self._build_messages(
            conv_op, kernel_sizes, messages, message_stages, message_latent_fraction)
        self.fallback_scale, self.fallback_shift = self._build_fallback_affines(fallback_affine)

        order = [k for outs in self.subtask_outputs for k in outs]
        self.register_buffer("_output_order", torch.tensor([order.index(k) for k in range(num_classes)]),
                             persistent=False)
        self._identity_order = order == list(range(num_classes))
        self.present_modalities: Optional[torch.Tensor] = None
        self.kl: torch.Tensor = torch.zeros(())
        self.stage_kl = torch.zeros(len(self.message_stages), len(self.message_pairs))
        self.message_kl = torch.zeros(len(self.message_pairs))
        self.message_magnitude = torch.zeros(len(self.message_pairs))
        self.message_gate = torch.zeros(len(self.message_pairs))

    def _build_encoder(self, conv_op, kernel_sizes, strides, n_conv_per_stage, n_blocks_per_stage, block,
                       bottleneck_channels, stem_channels, convolutions: dict) -> nn.Module:
        """The M modality branches as one DNA encoder: with M-grouped convolutions and M times the widths, or shared
        (one branch wide, the modalities folded into the batch; a norm with per-modality affine, or extra input
        channels for the modality embedding)."""
        m, n_stages = self.num_modalities, len(self.features_per_stage)
        if self.shared_branches:
            inputs, copies, conv = 1, 1, conv_op
            if self.modality_embedding is not None:
                inputs += EMBEDDING_CHANNELS
            elif convolutions["norm_op_kwargs"] and convolutions["norm_op_kwargs"].get("affine"):
                convolutions = dict(convolutions, norm_op=modality_instance_norm(convolutions["norm_op"], m))
        else:
            inputs, copies, conv = m, m, grouped_conv(conv_op, m)

        def times_m(v):
            return (None if v is None else [copies * int(c) for c in v] if isinstance(v, (list, tuple))
                    else copies * int(v))

        if n_blocks_per_stage is not None:
            return ResidualEncoder(inputs, n_stages, times_m(self.features_per_stage), conv, kernel_sizes, strides,
                                   n_blocks_per_stage, block=block, bottleneck_channels=times_m(bottleneck_channels),
                                   disable_default_stem=False, stem_channels=times_m(stem_channels), return_skips=True,
                                   **convolutions)
        return PlainConvEncoder(inputs, n_stages, times_m(self.features_per_stage), conv, kernel_sizes, strides,
                                n_conv_per_stage, return_skips=True, **convolutions)

    def _build_decoders(self, conv_op, kernel_sizes, n_conv_per_stage_decoder, deep_supervision: bool,
                        convolutions: dict) -> SubtaskDecoders:
        """One plain (ungrouped) decoder per subtask, on skips one branch wide."""
        spec = DecoderSpec(output_channels=[*self.decoder_features_per_stage, self.features_per_stage[-1]],
                           skip_channels=self.features_per_stage, strides=self.encoder.strides,
                           kernel_sizes=kernel_sizes, conv_op=conv_op, **convolutions)
        return SubtaskDecoders([SubtaskDecoder(spec, len(outs), n_conv_per_stage_decoder, deep_supervision,
                                               self.recomputed_stages)
                                for outs in self.subtask_outputs])

    def _build_messages(self, conv_op, kernel_sizes, messages: bool, message_stages: Optional[Sequence[int]],
                        latent_fraction: float) -> Tuple[List[MessagePair], List[int], nn.ModuleDict]:
        """Every (sender, subtask) pair, subtask by subtask, and one :class:`StageMessages` per message stage."""
        m, n_stages = self.num_modalities, len(self.features_per_stage)
        pairs = [MessagePair(j, i, pair_name(self.modality_names[j], self.subtask_names[i]))
                 for i, p in enumerate(self.subtask_primaries) for j in range(m) if j != p] if messages else []
        stages = default_message_stages(n_stages) if message_stages is None else message_stages
        stages = sorted(set(int(s) for s in stages)) if pairs else []
        if any(not 0 <= s < n_stages for s in stages):
            raise ValueError(f"message_stages {list(stages)} must lie in [0, {n_stages})")
        modules = nn.ModuleDict({
            str(s): StageMessages(conv_op, self.features_per_stage[s],
                                  round_channels(latent_fraction * self.features_per_stage[s]), kernel_sizes[s],
                                  self.subtask_primaries, pairs)
            for s in stages})
        return pairs, stages, modules

    def _checked_fallbacks(self, fallbacks: Optional[Sequence[Sequence[int]]], mode: str) -> List[List[int]]:
        if mode not in ("first", "mean"):
            raise ValueError(f"fallback_mode must be 'first' or 'mean', not {mode!r}")
        if fallbacks is None:
            return [[] for _ in self.subtask_primaries]
        fallbacks = [[int(c) for c in f] for f in fallbacks]
        if len(fallbacks) != len(self.subtask_primaries) or any(
                p in f or len(set(f)) != len(f) or not all(0 <= c < self.num_modalities for c in f)
                for p, f in zip(self.subtask_primaries, fallbacks)):
            raise ValueError(f"subtask_fallbacks {fallbacks} must list, per subtask, distinct channels in "
                             f"[0, {self.num_modalities}) other than its primary {self.subtask_primaries}")
        return fallbacks

    def _build_fallback_affines(self, affine: bool) -> Tuple[nn.ParameterDict, nn.ParameterDict]:
        """Per stage, a scale and shift ``(F, C_s)`` of the skip features for each (subtask, fallback) of
        ``fallback_pairs``, so that a decoder can tell which branch it reads; identity at start."""
        pairs = self.fallback_pairs if affine else []
        scale = nn.ParameterDict({str(s): nn.Parameter(torch.ones(len(pairs), c))
                                  for s, c in enumerate(self.features_per_stage)} if pairs else {})
        shift = nn.ParameterDict({str(s): nn.Parameter(torch.zeros(len(pairs), c))
                                  for s, c in enumerate(self.features_per_stage)} if pairs else {})
        return scale, shift

    @property
    def fallback_pairs(self) -> List[Tuple[int, int]]:
        """``(subtask, channel)`` for every fallback of every subtask, subtask by subtask, in fallback order."""
        return [(i, c) for i, fallbacks in enumerate(self.subtask_fallbacks) for c in fallbacks]

    @property
    def num_modalities(self) -> int:
        return len(self.modality_names)

    def modality_features(self, features: torch.Tensor, stage: int, modality: int) -> torch.Tensor:
        """Modality ``modality``'s block ``(B, C_s, *spatial)`` of the grouped encoder's stage output."""
        c = self.features_per_stage[stage]
        return features[:, modality * c:(modality + 1) * c]

    def _encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The modality branches' stage outputs ``(B, M * C_s, *spatial_s)``, as ``PlainConvEncoder`` and
        ``ResidualEncoder`` compute them, with the stages of ``recomputed_stages`` checkpointed (the stem of a
        residual encoder with stage 0); shared branches run on the modalities folded into the batch."""
        recompute = self.training and torch.is_grad_enabled()
        stem = getattr(self.encoder, "stem", None)
        if self.shared_branches:
            x = fold_modalities(x)
            if self.modality_embedding is not None:
                x = self.modality_embedding(x)
        features = []
        for s, stage in enumerate(self.encoder.stages):
            run = (lambda t, stage=stage: stage(stem(t))) if s == 0 and stem is not None else stage
            x = checkpoint(run, x, use_reentrant=False) if recompute and s in self.recomputed_stages else run(x)
            features.append(x)
        if self.shared_branches:
            return [unfold_modalities(f, self.num_modalities) for f in features]
        return features

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements kept for the backward pass of one sample on a patch ``input_size`` (spatial), in
        the unit dynamic-network-architectures counts for ``PlainConvUNet`` (one per element of every convolution
        output), so that nnU-Net's planners can size patch and batch for CIML: the grouped encoder and every
        subtask decoder. A recomputed stage keeps only its output, which autograd holds once where it holds a
        convolution's output twice (as the input of the normalisation and of the next convolution): half a unit
        per element; a recomputed stage with messages also keeps each decoder's skip (its branch's features plus the
        messages). Message modules keep nothing of their own when recomputed (``checkpoint_messages``), else about
        six latent-sized maps per pair."""
        copies = self.num_modalities if self.shared_branches else 1  # shared: the encoder runs once per modality
        total = copies * self.encoder.compute_conv_feature_map_size(input_size)
        total += sum(d.compute_conv_feature_map_size(input_size) for d in self.decoder)
        size, sizes = list(input_size), []
        for stride in self.encoder.strides:
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        stem = getattr(self.encoder, "stem", None)
        for s in self.recomputed_stages:
            stage = self.encoder.stages[s]
            block = stage[-1] if isinstance(stage, nn.Sequential) else stage
            total -= copies * block.compute_conv_feature_map_size(sizes[s - 1] if s else list(input_size))
            if s == 0 and stem is not None:
                total -= copies * stem.compute_conv_feature_map_size(input_size)
            total += np.prod([self.num_modalities * self.features_per_stage[s], *sizes[s]], dtype=np.int64) // 2
            if s in self.message_stages:  # each decoder's skip with its messages added, kept as a stage input
                total += np.prod([len(self.decoder) * self.features_per_stage[s], *sizes[s]], dtype=np.int64) // 2
        if not self.checkpoint_messages:  # kept: about six latent-sized maps per pair and the summed messages
            for s, module in self.messages.items():
                maps = 6 * len(module.pairs) * module.latent_channels + len(self.decoder) * module.channels
                total += np.prod([maps, *sizes[int(s)]], dtype=np.int64) // 2
        return total

    def _stage_messages(self, stage: int, features: torch.Tensor, *routing: torch.Tensor):
        module = self.messages[str(stage)]
        if self.checkpoint_messages and self.training and torch.is_grad_enabled():
            # Message intermediates (posterior, z, attention) would dominate activation memory; recompute them.
            return checkpoint(module, features, *routing, use_reentrant=False)
        return module(features, *routing)

    def presence_mask(self, present: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``present`` ``(M,)`` or ``(B, M)`` (bool or 0/1) as ``(B, M)`` in ``x``'s dtype and device."""
        if present.shape[-1] != self.num_modalities or present.dim() not in (1, 2):
            raise ValueError(f"present_modalities must have shape (M,) or (B, M) with M = {self.num_modalities} "
                             f"({', '.join(self.modality_names)}); got {tuple(present.shape)}")
        return present.to(device=x.device, dtype=x.dtype).expand(x.shape[0], self.num_modalities)

    def reading_weights(self, present: torch.Tensor) -> torch.Tensor:
        """``(B, S, M)``: how much subtask ``i``'s decoder reads modality ``m``'s branch, from ``present``
        ``(B, M)`` (1 = exists). The primary if present; else, with ``fallback_mode`` ``"first"``, the first
        present fallback, with ``"mean"`` the mean of the present fallbacks; all zero where none is present.
        Computed from the mask alone (no per-sample branching: one graph for torch.compile)."""
        zero = torch.zeros_like(present[:, 0])
        rows = []
        for primary, fallbacks in zip(self.subtask_primaries, self.subtask_fallbacks):
            weights = [zero] * self.num_modalities
            weights[primary] = present[:, primary]
            unread = 1 - present[:, primary]
            if self.fallback_mode == "first":
                for c in fallbacks:
                    weights[c] = unread * present[:, c]
                    unread = unread * (1 - present[:, c])
            elif fallbacks:
                count = present[:, fallbacks].sum(1).clamp_min(1)
                for c in fallbacks:
                    weights[c] = unread * present[:, c] / count
            rows.append(torch.stack(weights, 1))
        return torch.stack(rows, 1)

    def acting_primaries(self, present: Sequence[bool]) -> List[List[str]]:
        """Per subtask, the modalities whose branch its decoder reads when the modalities flagged in ``present``
        ``(M,)`` exist (``[primary]`` when it exists; ``[]`` when nothing it may read does)."""
        weights = self.reading_weights(torch.as_tensor(list(present), dtype=torch.float32)[None])[0]
        return [[self.modality_names[c] for c in range(self.num_modalities) if row[c] > 0] for row in weights]

    def _read(self, features: torch.Tensor, stage: int, weights: torch.Tensor) -> torch.Tensor:
        """Each subtask's skip features ``(B, S * C, *spatial)`` before messages: the branches it reads
        (``weights`` from :meth:`reading_weights`), a fallback's through its scale and shift if the network
        has them."""
        c = self.features_per_stage[stage]
        branches = features.unflatten(1, (self.num_modalities, c))  # (B, M, C, *spatial)
        extra = [1] * (features.dim() - 2)
        weights = weights.to(features.dtype)
        scale, shift = self.fallback_scale.get(str(stage)), self.fallback_shift.get(str(stage))
        affine = {pair: k for k, pair in enumerate(self.fallback_pairs)} if scale is not None else {}
        skips = []
        for i in range(len(self.subtask_primaries)):
            skip = 0
            for m in range(self.num_modalities):
                w = weights[:, i, m].view(-1, 1, *extra)
                if (i, m) in affine:
                    k = affine[(i, m)]
                    skip = skip + w * (scale[k].view(1, c, *extra) * branches[:, m] + shift[k].view(1, c, *extra))
                else:
                    skip = skip + w * branches[:, m]
            skips.append(skip)
        return torch.cat(skips, 1)

    def forward(self, x: torch.Tensor, present: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, List[torch.Tensor]]:
        if x.shape[1] != self.num_modalities:
            raise ValueError(
                f"CIMLUNet expects {self.num_modalities} input channels, one per modality "
                f"({', '.join(self.modality_names)}), got {x.shape[1]}. If a sequence is missing, predict with "
                f"`nnunetv2_ciml predict`, which accepts cases with missing modality files.")
        present = self.present_modalities if present is None else present
        features = self._encode(x)
        n_subtasks = len(self.subtask_primaries)
        if present is None:
            # every modality exists: each subtask reads its primary's block
            skips = [[self.modality_features(f, s, p) for s, f in enumerate(features)] for p in self.subtask_primaries]
            routing = [()] * len(features)
            if len(self.fallback_scale):  # DDP needs every parameter in every step's graph
                unused = sum(v.sum() for v in [*self.fallback_scale.values(), *self.fallback_shift.values()])
                skips[0][-1] = skips[0][-1] + 0 * unused.to(skips[0][-1].dtype)
        else:
            # A missing modality's branch is read with weight 0 and sends nothing: whatever its input channel holds
            # reaches no output, and its encoder block gets no gradient.
            present = self.presence_mask(present, x)
            weights = self.reading_weights(present)  # (B, S, M)
            read = [self._read(f, s, weights) for s, f in enumerate(features)]  # (B, S * C_s, *spatial_s)
            skips = [[self.modality_features(r, s, i) for s, r in enumerate(read)] for i in range(n_subtasks)]
            # a pair sends if its sender exists and is not a branch its subtask reads
            sender_present = (torch.stack([present[:, p.sender] * (weights[:, p.subtask, p.sender] == 0).to(x.dtype)
                                           for p in self.message_pairs], 1) if self.message_pairs else None)
            routing = [(r, sender_present, 1 - weights.sum(-1)) for r in read]
        messages, kls, rms, gates = {}, [], [], []
        for s in self.message_stages:
            messages[s], kl, magnitude, gate = self._stage_messages(s, features[s], *routing[s])
            if self.training:
                kls.append(kl)
                rms.append(magnitude)
                gates.append(gate)
        logits = []
        for i, decoder in enumerate(self.decoder):
            for s, message in messages.items():
                skips[i][s] = skips[i][s] + self.modality_features(message, s, i)
            logits.append(decoder(skips[i]))
        if kls:
            self.stage_kl = torch.stack(kls)  # (stages, P)
            kl = self.stage_kl.mean(0)  # (P,): per pair, mean over stages
            self.kl, self.message_kl = kl.mean(), kl.detach()
            self.message_magnitude, self.message_gate = torch.stack(rms).mean(0), torch.stack(gates).mean(0)
        else:
            self.kl = x.new_zeros((), dtype=torch.float32)
        if isinstance(logits[0], torch.Tensor):
            return self._assemble(logits)
        return [self._assemble(scale) for scale in zip(*logits)]

    def _assemble(self, per_subtask: Sequence[torch.Tensor]) -> torch.Tensor:
        out = torch.cat(per_subtask, 1)
        return out if self._identity_order else out.index_select(1, self._output_order)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's He init (as ``PlainConvUNet``/``ResidualEncoderUNet``); messages start at zero with
        their gates nearly closed (:meth:`StageMessages.reset_parameters`).

        Meant for ``network.apply(CIMLUNet.initialize)``, which visits children before parents.
        """
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)
        if isinstance(module, StageMessages):
            module.reset_parameters()


@contextmanager
def modalities_present(network: nn.Module, present: Optional[torch.Tensor]) -> Iterator[nn.Module]:
    """Within the block, ``network(x)`` (a :class:`CIMLUNet`, also behind DDP or torch.compile) treats only the
    modalities flagged in ``present`` (``(M,)`` or ``(B, M)``, see :class:`CIMLUNet`) as existing; ``None``: all."""
    module = unwrap(network)
    if not isinstance(module, CIMLUNet):
        raise TypeError(f"only a CIMLUNet takes a modality mask; got {type(module).__name__}")
    previous, module.present_modalities = module.present_modalities, present
    try:
        yield network
    finally:
        module.present_modalities = previous

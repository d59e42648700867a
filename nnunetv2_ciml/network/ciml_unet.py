"""CIMLUNet: unimodal encoders, one decoder per subtask, complementary messages on the skips."""
from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple, Type, Union

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual import BasicBlockD, BottleneckD
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He, init_last_bn_before_add_to_0
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.checkpoint import checkpoint

from nnunetv2_ciml.network.message import ComplementaryMessages

IntOrSeq = Union[int, Sequence[int]]

# What a UNetDecoder reads from its encoder. Handing it a plain namespace (instead of the encoder
# module) keeps the encoder's weights out of the decoder's state dict.
_DECODER_READS = ("output_channels", "strides", "conv_op", "conv_bias", "norm_op", "norm_op_kwargs",
                  "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "kernel_sizes")


MESSAGE_LATENT_FRACTION = 0.25


def round_channels(channels: float) -> int:
    """Round to a multiple of 8 from 8 channels up (CPU and tensor-core kernels are much faster on
    those), to an integer >= 1 below that (tiny test networks)."""
    return 8 * max(1, round(channels / 8)) if channels >= 8 else max(1, round(channels))


class SubtaskDecoders(nn.ModuleList):
    """One ``UNetDecoder`` per subtask. Setting ``deep_supervision`` sets it on all of them, which is
    what nnU-Net's ``set_deep_supervision_enabled`` does to ``network.decoder``."""

    @property
    def deep_supervision(self) -> bool:
        return all(d.deep_supervision for d in self)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for d in self:
            d.deep_supervision = enabled


class CIMLUNet(nn.Module):
    """CIML network (DESIGN §1) built from nnU-Net's U-Net plans.

    Input ``(B, M, *spatial)`` with one channel per modality; modality ``c`` has its own encoder
    (``PlainConvEncoder``, or ``ResidualEncoder`` when ``n_blocks_per_stage`` is given as in ResEnc
    plans) that sees channel ``c`` only. Subtask ``i`` has a ``UNetDecoder`` fed by the encoder of
    ``subtask_primaries[i]``; at every encoder stage ``s`` each other modality ``j`` adds a message to
    that skip, ``skip_i^s = h_i^s + sum_j m_{j->i}^s`` (``messages[s][i]``, a :class:`ComplementaryMessages`
    computing all of them; ``message_pairs`` lists the ``(j, i)`` pairs, subtask by subtask, senders in
    channel order). The decoders'
    logits are assembled into nnU-Net's output channels (``subtask_outputs[i]`` lists the channels
    subtask ``i`` owns): a tensor ``(B, num_classes, *spatial)``, or with deep supervision a list of
    ``n_stages - 1`` such tensors, highest resolution first. The parameters do not depend on
    ``deep_supervision`` (nnU-Net loads weights strictly).

    After each training-mode forward, ``kl`` holds the mean KL over all messages (a scalar with grad),
    ``message_kl`` and ``message_magnitude`` (detached, shape ``(len(message_pairs),)``) the KL and
    root-mean-square message per (sender, subtask) pair, averaged over stages. Eval mode skips these
    statistics (``kl`` is 0): inference pays only for the messages themselves.

    ``features_per_stage`` are the widths of each branch (see ``nnunetv2_ciml.planning`` for how
    they are chosen from the plain plans); ``z`` has ``message_latent_fraction`` of the stage's
    channels (rounded as :func:`round_channels`). ``messages=False`` builds the unimodal-branch
    ablation; ``message_stages`` lists the encoder stages that receive messages (default: all).
    ``checkpoint_messages`` recomputes message intermediates in the backward pass instead
    of storing them (less activation memory for a little more compute).
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
                 messages: bool = True,
                 message_stages: Optional[Sequence[int]] = None,
                 message_latent_fraction: float = MESSAGE_LATENT_FRACTION,
                 checkpoint_messages: bool = True,
                 modality_names: Optional[Sequence[str]] = None,
                 subtask_names: Optional[Sequence[str]] = None):
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
        if isinstance(features_per_stage, int):
            features_per_stage = [features_per_stage] * n_stages
        if isinstance(kernel_sizes, int):
            kernel_sizes = [kernel_sizes] * n_stages
        dim = 3 if conv_op is nn.Conv3d else 2
        kernel_sizes = [[k] * dim if isinstance(k, int) else list(k) for k in kernel_sizes]

        self.modality_names = list(modality_names) if modality_names else [f"channel{c}" for c in range(input_channels)]
        self.subtask_names = list(subtask_names) if subtask_names else [f"subtask{i}" for i in range(len(subtask_outputs))]
        self.subtask_primaries = [int(p) for p in subtask_primaries]
        self.subtask_outputs = [[int(k) for k in outs] for outs in subtask_outputs]
        self.checkpoint_messages = checkpoint_messages

        def make_encoder() -> nn.Module:
            common = dict(conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
                          dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
                          return_skips=True)
            if n_blocks_per_stage is not None:
                return ResidualEncoder(1, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                       n_blocks_per_stage, block=block, bottleneck_channels=bottleneck_channels,
                                       disable_default_stem=False, stem_channels=stem_channels, **common)
            return PlainConvEncoder(1, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                    n_conv_per_stage, **common)

        self.encoders = nn.ModuleList([make_encoder() for _ in range(input_channels)])
        spec = SimpleNamespace(**{k: getattr(self.encoders[0], k) for k in _DECODER_READS})
        self.decoder = SubtaskDecoders([UNetDecoder(spec, len(outs), n_conv_per_stage_decoder, deep_supervision)
                                        for outs in self.subtask_outputs])

        # (sender channel, subtask index) for every message, subtask by subtask.
        self.message_pairs: List[Tuple[int, int]] = [
            (j, i) for i, p in enumerate(self.subtask_primaries) for j in range(input_channels) if j != p
        ] if messages and input_channels > 1 else []
        self.message_stages = sorted(range(n_stages) if message_stages is None else set(message_stages))
        # messages[s][i]: stage s, subtask i (an empty list at stages without messages).
        self.messages = nn.ModuleList([
            nn.ModuleList([ComplementaryMessages(conv_op, c, round_channels(message_latent_fraction * c), k,
                                                 input_channels - 1) for _ in self.subtask_outputs]
                          if s in self.message_stages else [])
            for s, (c, k) in enumerate(zip(spec.output_channels, kernel_sizes))
        ]) if self.message_pairs else None

        order = [k for outs in self.subtask_outputs for k in outs]
        self.register_buffer("_output_order", torch.tensor([order.index(k) for k in range(num_classes)]),
                             persistent=False)
        self._identity_order = order == list(range(num_classes))
        self.kl: torch.Tensor = torch.zeros(())
        self.message_kl = torch.zeros(len(self.message_pairs))
        self.message_magnitude = torch.zeros(len(self.message_pairs))

    def senders(self, subtask: int) -> List[int]:
        """Channels that message ``subtask``, in the order of its :class:`ComplementaryMessages`."""
        return [j for j, i in self.message_pairs if i == subtask]

    def _messages_to(self, stage: int, subtask: int, receiver: torch.Tensor, senders: List[torch.Tensor]):
        module = self.messages[stage][subtask]
        if self.checkpoint_messages and self.training and torch.is_grad_enabled():
            # Message intermediates (posterior, z, attention) would dominate activation memory; recompute them.
            return checkpoint(module, receiver, *senders, use_reentrant=False)
        return module(receiver, *senders)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        features = [encoder(x[:, c:c + 1]) for c, encoder in enumerate(self.encoders)]
        kls, rms = [], []
        logits = []
        for i, (primary, decoder) in enumerate(zip(self.subtask_primaries, self.decoder)):
            skips = list(features[primary])
            senders = self.senders(i)
            stage_kls, stage_rms = [], []
            for s in self.message_stages if senders else ():
                message, kl, magnitude = self._messages_to(s, i, skips[s], [features[j][s] for j in senders])
                skips[s] = skips[s] + message
                if self.training:
                    stage_kls.append(kl)
                    stage_rms.append(magnitude)
            if stage_kls:
                kls.append(torch.stack(stage_kls).mean(0))
                rms.append(torch.stack(stage_rms).mean(0))
            logits.append(decoder(skips))
        if kls:
            kl = torch.cat(kls)
            self.kl, self.message_kl, self.message_magnitude = kl.mean(), kl.detach(), torch.cat(rms)
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
        their gates nearly closed (:meth:`ComplementaryMessages.reset_parameters`).

        Meant for ``network.apply(CIMLUNet.initialize)``, which visits children before parents.
        """
        InitWeights_He(1e-2)(module)
        init_last_bn_before_add_to_0(module)
        if isinstance(module, ComplementaryMessages):
            module.reset_parameters()

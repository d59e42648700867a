"""Subtask decoders: dynamic-network-architectures' ``UNetDecoder`` on one modality's skips, at their own widths."""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class DecoderSpec:
    """What a ``UNetDecoder`` reads from the encoder it is built for, for a decoder whose skips come from one
    modality branch of the grouped encoder (whose own convolutions are grouped and M times as wide).

    ``output_channels``: the decoder's width per resolution stage, full resolution first, ending with the
    bottleneck's (the features it starts from); ``skip_channels``: the width of the skip it receives per stage
    (the branch width), same length. The remaining fields are the plans' convolution settings.
    """

    output_channels: List[int]
    skip_channels: List[int]
    strides: List[List[int]]
    kernel_sizes: List[List[int]]
    conv_op: Type[_ConvNd]
    conv_bias: bool
    norm_op: Optional[Type[nn.Module]]
    norm_op_kwargs: Optional[dict]
    dropout_op: Optional[Type[nn.Module]]
    dropout_op_kwargs: Optional[dict]
    nonlin: Optional[Type[nn.Module]]
    nonlin_kwargs: Optional[dict]

    def __post_init__(self):
        if len(self.output_channels) != len(self.skip_channels) or self.output_channels[-1] != self.skip_channels[-1]:
            raise ValueError(f"decoder widths {self.output_channels} and skip widths {self.skip_channels} must have "
                             f"one entry per stage and start from the same bottleneck width")


class SubtaskDecoder(UNetDecoder):
    """``UNetDecoder`` whose stage ``s`` is ``output_channels[s]`` wide while its skip is ``skip_channels[s]``
    wide (DNA's decoder has both equal): the stage's first convolution takes ``output_channels[s] +
    skip_channels[s]`` channels, the rest is DNA's decoder unchanged (same modules, same parameter names).

    ``recomputed_stages`` (resolution stages, 0 = full resolution): in training with gradients, such a stage
    (transposed convolution, concatenation and convolutions) keeps only its inputs for the backward pass and
    recomputes the rest there (non-reentrant activation checkpointing; same outputs and gradients). Forward
    takes the skips ``(B, skip_channels[s], *spatial_s)``, full resolution first, as ``UNetDecoder``.
    """

    def __init__(self, spec: DecoderSpec, num_classes: int, n_conv_per_stage: Sequence[int], deep_supervision: bool,
                 recomputed_stages: Sequence[int] = ()):
        super().__init__(spec, num_classes, n_conv_per_stage, deep_supervision)
        n = len(self.stages)
        for k, stage in enumerate(self.stages):  # k = 0 is the stage above the bottleneck
            s = n - 1 - k
            width, skip = spec.output_channels[s], spec.skip_channels[s]
            if skip != width:
                self.stages[k] = StackedConvBlocks(
                    len(stage.convs), spec.conv_op, width + skip, width, spec.kernel_sizes[s], 1, spec.conv_bias,
                    spec.norm_op, spec.norm_op_kwargs, spec.dropout_op, spec.dropout_op_kwargs, spec.nonlin,
                    spec.nonlin_kwargs)
        self.recomputed_stages = sorted(int(s) for s in recomputed_stages)

    def _stage(self, k: int, below: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.stages[k](torch.cat((self.transpconvs[k](below), skip), 1))

    def forward(self, skips: Sequence[torch.Tensor]):
        recompute = self.training and torch.is_grad_enabled()
        n = len(self.stages)
        x, outputs = skips[-1], []
        for k in range(n):
            if recompute and n - 1 - k in self.recomputed_stages:
                x = checkpoint(self._stage, k, x, skips[-(k + 2)], use_reentrant=False)
            else:
                x = self._stage(k, x, skips[-(k + 2)])
            if self.deep_supervision or k == n - 1:
                outputs.append(self.seg_layers[k](x))
        return outputs[::-1] if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements kept for the backward pass of one sample, in DNA's unit (see
        :meth:`CIMLUNet.compute_conv_feature_map_size`): a recomputed stage keeps its output only, half a unit
        per element, instead of its convolutions' and transposed convolution's outputs."""
        total = super().compute_conv_feature_map_size(input_size)
        size, sizes = list(input_size), []
        for stride in self.encoder.strides[:-1]:
            size = [i // j for i, j in zip(size, stride)]
            sizes.append(size)
        n = len(self.stages)
        for s in self.recomputed_stages:
            output = np.prod([self.encoder.output_channels[s], *sizes[s]], dtype=np.int64)
            total -= self.stages[n - 1 - s].compute_conv_feature_map_size(sizes[s]) + output - output // 2
        return total


class SubtaskDecoders(nn.ModuleList):
    """One :class:`SubtaskDecoder` per subtask. Setting ``deep_supervision`` sets it on all of them, which is
    what nnU-Net's ``set_deep_supervision_enabled`` does to ``network.decoder``."""

    @property
    def deep_supervision(self) -> bool:
        return all(d.deep_supervision for d in self)

    @deep_supervision.setter
    def deep_supervision(self, enabled: bool) -> None:
        for d in self:
            d.deep_supervision = enabled

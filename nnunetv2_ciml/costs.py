"""What a network from the plans costs, counted on the meta device (no memory, no arithmetic, seconds).

The counts do not depend on the machine: convolution arithmetic by ``torch.utils.flop_counter``, the bytes of
the tensors autograd keeps for the backward pass of one training forward (what bounds a training step's
memory besides the weights), and parameters. :mod:`nnunetv2_ciml.planning` sizes CIML's branches and chooses
its recomputed stages with them; ``benchmarks/bench_ciml_vs_plain.py --count`` prints them per variant.
"""
import pydoc
from copy import deepcopy
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["NetworkCost", "build_on_meta", "conv_macs", "saved_activation_bytes", "network_cost"]


def _resolved(arch_kwargs: dict, requires_import: Sequence[str]) -> dict:
    kwargs = deepcopy(arch_kwargs)
    for k in requires_import:
        if isinstance(kwargs.get(k), str):
            kwargs[k] = pydoc.locate(kwargs[k])
    return kwargs


def build_on_meta(architecture: dict, input_channels: int, num_classes: int, deep_supervision: bool) -> nn.Module:
    """The network of a plans ``architecture`` entry, with parameters on the meta device."""
    cls = pydoc.locate(architecture["network_class_name"])
    with torch.device("meta"):
        return cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                   **_resolved(architecture["arch_kwargs"], architecture.get("_kw_requires_import", ())))


def conv_macs(architecture: dict, input_channels: int, num_classes: int, patch_size: Sequence[int]) -> int:
    """Multiply-accumulates of one ``(1, input_channels, *patch_size)`` inference forward pass (convolutions and
    the matrix products of CIML's messages)."""
    network = build_on_meta(architecture, input_channels, num_classes, deep_supervision=False).eval()
    with FlopCounterMode(display=False) as counter:
        network(torch.empty(1, input_channels, *patch_size, device="meta"))
    return counter.get_total_flops() // 2


def saved_activation_bytes(forward, parameters: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the tensors autograd keeps for backward while ``forward()`` runs, each storage counted once,
    leaving out ``parameters`` (convolutions keep their weights, which are in memory anyway). Activation
    checkpointing keeps only its regions' inputs, which this sees."""
    # A storage's identity: its data pointer is 0 on the meta device.
    weights = {p.untyped_storage()._cdata for p in parameters}
    storages = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            storages[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values())


@dataclass(frozen=True)
class NetworkCost:
    """Counted costs of one network on one patch: ``conv_flops`` of a forward pass of one sample (2 per MAC),
    ``activation_bytes`` kept for backward by one training forward of ``batch_size`` samples (float32, deep
    supervision, as nnU-Net trains), ``parameters``."""

    conv_flops: int
    activation_bytes: int
    parameters: int


def network_cost(architecture: dict, input_channels: int, num_classes: int, patch_size: Sequence[int],
                 batch_size: int) -> NetworkCost:
    """:class:`NetworkCost` of a plans ``architecture`` entry (plain U-Net or CIML), on the meta device."""
    network = build_on_meta(architecture, input_channels, num_classes, deep_supervision=True).train()
    x = torch.empty(batch_size, input_channels, *patch_size, device="meta")
    activations = saved_activation_bytes(lambda: network(x), network.parameters())
    return NetworkCost(conv_flops=2 * conv_macs(architecture, input_channels, num_classes, patch_size),
                       activation_bytes=activations, parameters=sum(p.numel() for p in network.parameters()))

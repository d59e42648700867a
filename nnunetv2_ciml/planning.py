"""From nnU-Net's plain U-Net plans to CIML plans.

:func:`ciml_architecture` turns the ``architecture`` entry of a configuration (``PlainConvUNet`` or
``ResidualEncoderUNet``, as written by nnU-Net's default and ResEnc planners) into one for
:class:`~nnunetv2_ciml.network.CIMLUNet`: the same stages, kernels, strides, normalisation and
convolutions per stage, plus the decomposition, with narrower branches.

Branch width rule: every branch (encoder or decoder) gets ``w * features_per_stage`` features, rounded
to the nearest multiple of 8 (``round_channels``: other widths make CPU and tensor-core convolutions
several times slower), where ``w`` is the largest factor for which the branches' convolution MACs on
one patch (counted by ``torch.utils.flop_counter`` on the meta device) do not exceed the plain U-Net's
from the same plans. The messages are not counted: they are a few percent of the arithmetic. The
no-message ablation keeps the widths of the full CIML network so that it isolates the messages. Pass
``width_factor`` to choose ``w`` yourself (trainers: ``branch_width_factor``): ``nnUNetTrainerCIML`` uses
1.0, branches as wide as the plain U-Net's stages, and ``nnUNetTrainerCIML_MACmatched`` this rule.

Messages go to the stages of :func:`~nnunetv2_ciml.network.ciml_unet.default_message_stages` (all but
full resolution); edit ``message_stages`` in the saved plans to change that.
"""
import pydoc
from copy import deepcopy
from typing import Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_ciml.decomposition import Decomposition
from nnunetv2_ciml.network.ciml_unet import ENCODER_LAYOUT, MESSAGE_LATENT_FRACTION, default_message_stages, round_channels

CIML_NETWORK = "nnunetv2_ciml.network.ciml_unet.CIMLUNet"
SUPPORTED = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}


def _resolved(architecture: dict) -> dict:
    kwargs = deepcopy(architecture["arch_kwargs"])
    for k in architecture.get("_kw_requires_import", ()):
        if kwargs.get(k) is not None and isinstance(kwargs[k], str):
            kwargs[k] = pydoc.locate(kwargs[k])
    return kwargs


def conv_macs(architecture: dict, input_channels: int, num_classes: int, patch_size: Sequence[int]) -> int:
    """Multiply-accumulates of all convolutions for one ``(1, input_channels, *patch_size)`` forward pass."""
    cls = pydoc.locate(architecture["network_class_name"])
    with torch.device("meta"):
        network = cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=False,
                      **_resolved(architecture))
        x = torch.empty(1, input_channels, *patch_size)
    network.eval()
    with FlopCounterMode(display=False) as counter:
        network(x)
    return counter.get_total_flops() // 2


def _branch_widths(features: Sequence[int], w: float) -> list:
    return [round_channels(w * f) for f in features]


def ciml_architecture(architecture: dict, decomposition: Decomposition, patch_size: Sequence[int],
                      num_classes: int, messages: bool = True, width_factor: Optional[float] = None) -> dict:
    """The CIML ``architecture`` plans entry for a plain one (see module docstring for the width rule)."""
    name = architecture["network_class_name"]
    if name not in SUPPORTED:
        raise ValueError(f"CIML builds on nnU-Net's PlainConvUNet and ResidualEncoderUNet plans; this "
                         f"configuration uses '{name}'")
    kwargs = deepcopy(architecture["arch_kwargs"])
    features = list(kwargs["features_per_stage"])
    # Every parameter-shaping choice is written out, so that later changes of defaults never change
    # the network that a saved model folder describes.
    ciml = {"network_class_name": CIML_NETWORK, "_kw_requires_import": list(architecture["_kw_requires_import"]),
            "arch_kwargs": {**kwargs, **decomposition.to_arch_kwargs(), "messages": messages,
                            "message_stages": default_message_stages(kwargs["n_stages"]),
                            "message_latent_fraction": MESSAGE_LATENT_FRACTION, "encoder_layout": ENCODER_LAYOUT}}
    m = len(decomposition.modalities)

    def with_factor(w: float) -> dict:
        arch = deepcopy(ciml)
        arch["arch_kwargs"]["features_per_stage"] = _branch_widths(features, w)
        arch["arch_kwargs"]["messages"] = False  # the budget is the branches' (module docstring)
        return arch

    if width_factor is None:
        budget = conv_macs(architecture, m, num_classes, patch_size)
        lo, hi = 0.05, 1.0
        for _ in range(12):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if conv_macs(with_factor(mid), m, num_classes, patch_size) <= budget else (lo, mid)
        width_factor = lo
    ciml["arch_kwargs"]["features_per_stage"] = _branch_widths(features, width_factor)
    ciml["branch_width_factor"] = round(width_factor, 4)  # informative; not a constructor argument
    return ciml

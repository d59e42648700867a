"""Grouped convolution classes that turn one dynamic-network-architectures encoder into M modality encoders."""
from functools import lru_cache
from typing import Optional, Type

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm


@lru_cache(maxsize=None)
def grouped_conv(conv_op: Type[_ConvNd], groups: int) -> Type[_ConvNd]:
    """A subclass of ``conv_op`` (``nn.Conv2d`` / ``nn.Conv3d``) whose instances have ``groups`` groups.

    dynamic-network-architectures builds every convolution as ``conv_op(in, out, kernel, stride, ...)`` and
    finds the dimension with ``issubclass``, so an encoder built with this class and ``groups`` times the
    channels is ``groups`` independent encoders side by side: channel block ``c`` of every feature map sees
    block ``c`` of the input only. The class is registered in this module (``Conv3dGroups4``, ...) so that
    modules holding it pickle.
    """
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")

    def __init__(self, in_channels: int, out_channels: int, *args, groups: int = 1, **kwargs):
        if groups != 1:
            raise ValueError(f"{type(self).__name__} sets its own groups; got groups={groups}")
        conv_op.__init__(self, in_channels, out_channels, *args, groups=type(self).modality_groups, **kwargs)

    name = f"{conv_op.__name__}Groups{groups}"
    cls = type(name, (conv_op,), {"__init__": __init__, "modality_groups": groups, "__module__": __name__,
                                  "__qualname__": name})
    globals()[name] = cls
    return cls


def check_channelwise_norm(norm_op: Optional[Type[nn.Module]]) -> None:
    """Modality encoders share no statistics only if the norm works per channel (instance or batch norm)."""
    if norm_op is not None and not issubclass(norm_op, (_InstanceNorm, _BatchNorm)):
        raise ValueError(f"CIML's grouped encoder keeps modalities apart only with a per-channel norm "
                         f"(InstanceNorm, BatchNorm); the plans' norm_op {norm_op.__name__} mixes channels of "
                         f"different modalities. Use nnU-Net's default InstanceNorm.")

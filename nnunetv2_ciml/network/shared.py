"""Weight-shared modality branches: one dynamic-network-architectures encoder every modality passes through.

The modalities are folded into the batch, ``(B, M, *spatial) -> (B * M, 1, *spatial)``, so that each branch still
sees its own modality only (CIML's branches are unimodal) while all of them use the same, dense convolutions;
the stage outputs are unfolded back into the grouped encoder's layout ``(B, M * C, *spatial)``. What stays each
modality's own: the normalisation statistics (instance norm, per sample and channel, so per modality) and either a
scale and shift after every normalisation (:func:`modality_instance_norm`, ``"norm_affine"``) or a learnt code
concatenated to the input (:class:`ModalityEmbedding`, ``"input_embedding"``).
"""
from functools import lru_cache
from typing import Optional, Type

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["MODALITY_CONDITIONINGS", "modality_instance_norm", "ModalityEmbedding", "fold_modalities",
           "unfold_modalities", "check_shared_norm"]

MODALITY_CONDITIONINGS = ("norm_affine", "input_embedding")
EMBEDDING_CHANNELS = 4


def fold_modalities(x: torch.Tensor) -> torch.Tensor:
    """``(B, M, *spatial) -> (B * M, 1, *spatial)``: sample ``b * M + m`` is modality ``m`` of sample ``b``."""
    return x.reshape(x.shape[0] * x.shape[1], 1, *x.shape[2:])


def unfold_modalities(features: torch.Tensor, modalities: int) -> torch.Tensor:
    """``(B * M, C, *spatial) -> (B, M * C, *spatial)``: channel block ``m`` is modality ``m``'s features."""
    return features.reshape(features.shape[0] // modalities, modalities * features.shape[1], *features.shape[2:])


def check_shared_norm(norm_op: Optional[Type[nn.Module]], norm_op_kwargs: Optional[dict]) -> None:
    """Shared branches keep modalities apart only with a per-sample norm: instance norm without running
    statistics (batch statistics would mix the modalities folded into one batch)."""
    if norm_op is None or not issubclass(norm_op, _InstanceNorm) or (norm_op_kwargs or {}).get("track_running_stats"):
        name = getattr(norm_op, "__name__", norm_op)
        raise ValueError(f"CIML's shared modality branches need a per-sample norm (InstanceNorm without running "
                         f"statistics), as nnU-Net's plans use by default; the plans' norm_op is {name} with "
                         f"{norm_op_kwargs}: the modalities folded into one batch would share its statistics. Plans with "
                         f"such a norm need one weight set per modality (nnUNetTrainerCIML_groupedBranches).")


@lru_cache(maxsize=None)
def modality_instance_norm(norm_op: Type[_InstanceNorm], modalities: int) -> Type[_InstanceNorm]:
    """A subclass of ``norm_op`` (``nn.InstanceNorm2d``/``3d``) for ``(B * M, C, *spatial)`` inputs from
    :func:`fold_modalities` whose affine scale and shift are per modality: ``weight`` and ``bias`` ``(M, C)``, sample
    ``b * M + m`` uses row ``m``. dynamic-network-architectures builds every norm as ``norm_op(channels,
    **norm_op_kwargs)``. The class is registered in this module (``InstanceNorm3dModalities4``, ...) so that
    modules holding it pickle."""
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = False,
                 track_running_stats: bool = False, **kwargs):
        norm_op.__init__(self, num_features, eps, momentum, affine=False, track_running_stats=track_running_stats,
                         **kwargs)
        if affine:
            self.weight = nn.Parameter(torch.ones(modalities, num_features, **kwargs))
            self.bias = nn.Parameter(torch.zeros(modalities, num_features, **kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return F.instance_norm(x, eps=self.eps)
        # What F.instance_norm runs, with the affine of each sample's modality: one fused batch norm over the
        # (sample, channel) rows, so that autograd keeps no more than for nnU-Net's own instance norm.
        copies = x.shape[0] // modalities
        y = F.batch_norm(x.reshape(1, -1, *x.shape[2:]), None, None, self.weight.repeat(copies, 1).flatten(),
                         self.bias.repeat(copies, 1).flatten(), True, 0.0, self.eps)
        return y.view_as(x)

    name = f"{norm_op.__name__}Modalities{modalities}"
    cls = type(name, (norm_op,), {"__init__": __init__, "forward": forward, "modality_count": modalities,
                                  "__module__": __name__, "__qualname__": name})
    globals()[name] = cls
    return cls


class ModalityEmbedding(nn.Module):
    """A learnt code per modality, ``(M, E)``, concatenated as E constant channels to each folded input:
    ``(B * M, 1, *spatial) -> (B * M, 1 + E, *spatial)``."""

    def __init__(self, modalities: int, channels: int = EMBEDDING_CHANNELS):
        super().__init__()
        self.code = nn.Parameter(torch.randn(modalities, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, e = self.code.shape
        code = self.code.to(x.dtype).repeat(x.shape[0] // m, 1).view(x.shape[0], e, *[1] * (x.dim() - 2))
        return torch.cat((x, code.expand(-1, -1, *x.shape[2:])), 1)

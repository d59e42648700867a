"""From nnU-Net's plain U-Net plans to CIML plans.

:func:`ciml_architecture` turns the ``architecture`` entry of a configuration (``PlainConvUNet`` or
``ResidualEncoderUNet``, as written by nnU-Net's default and ResEnc planners) into one for
:class:`~nnunetv2_ciml.network.CIMLUNet`: the same stages, kernels, strides, normalisation and
convolutions per stage, plus the decomposition, the branch and decoder widths, and the stages whose
activations are recomputed in the backward pass.

Widths. Each modality branch (encoder) of stage ``s`` gets ``w * e_s * f_s`` features and each subtask decoder
``w * d_s * f_s``, where ``f_s`` is the plain U-Net's width, ``w`` the width factor, and ``e_s``, ``d_s`` the
per-stage encoder and decoder factors (``encoder_stage_factors``, ``decoder_stage_factors``: full resolution
first, 1 for the stages they do not list), rounded to the nearest multiple of 8 (``round_channels``: other
widths make CPU and tensor-core convolutions several times slower). ``width_factor=None`` chooses ``w`` as the
largest factor for which the branches' convolution MACs on one patch (``nnunetv2_ciml.costs``) do not exceed
the plain U-Net's from the same plans, messages not counted (the MAC-matching rule). The no-message ablation
takes the widths it is given.

Recomputation (:func:`recomputed_stages`): the message modules' intermediates, and the fewest
highest-resolution stages whose encoder and decoder activations must be recomputed in the backward pass
(activation checkpointing) so that one training forward keeps at most :data:`ACTIVATION_RATIO_LIMIT` times the
plain U-Net's activations; nothing where CIML's activations for one batch stay below
:data:`ACTIVATION_FLOOR_BYTES` (there recomputation would cost time for memory nobody needs).

Messages go to the stages of :func:`~nnunetv2_ciml.network.ciml_unet.default_message_stages` (all but
full resolution); edit ``message_stages`` in the saved plans to change that.
"""
from copy import deepcopy
from typing import List, Optional, Sequence, Tuple

from nnunetv2_ciml.costs import conv_macs, network_cost
from nnunetv2_ciml.decomposition import Decomposition
from nnunetv2_ciml.network.ciml_unet import MESSAGE_LATENT_FRACTION, default_message_stages, round_channels

CIML_NETWORK = "nnunetv2_ciml.network.ciml_unet.CIMLUNet"
SUPPORTED = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
# At most this multiple of plain nnU-Net's saved activations (the memory of a training step besides weights).
ACTIVATION_RATIO_LIMIT = 1.3
# Below this, no stage is recomputed: a CIML batch that keeps under 1 GiB of activations fits any GPU nnU-Net
# plans for (its default planner targets 8 GB), and recomputation would cost time for memory nobody needs.
ACTIVATION_FLOOR_BYTES = 2 ** 30


def stage_widths(features: Sequence[int], width_factor: float, stage_factors: Sequence[float] = ()) -> List[int]:
    """``round_channels(width_factor * stage_factors[s] * features[s])`` per stage; stages beyond
    ``stage_factors`` get factor 1."""
    return [round_channels(width_factor * (stage_factors[s] if s < len(stage_factors) else 1.0) * f)
            for s, f in enumerate(features)]


def _with_widths(ciml: dict, features: Sequence[int], width_factor: float, encoder_stage_factors: Sequence[float],
                 decoder_stage_factors: Sequence[float]) -> dict:
    arch = deepcopy(ciml)
    arch["arch_kwargs"]["features_per_stage"] = stage_widths(features, width_factor, encoder_stage_factors)
    arch["arch_kwargs"]["decoder_features_per_stage"] = stage_widths(features[:-1], width_factor,
                                                                     decoder_stage_factors)
    return arch


def recomputed_stages(plain: dict, ciml: dict, input_channels: int, num_classes: int, patch_size: Sequence[int],
                      batch_size: int) -> Tuple[List[int], bool]:
    """What CIML recomputes in its backward pass (see module docstring): ``(stages, messages)``, the stages
    ``[0, ..., k - 1]`` with the smallest ``k >= 0`` whose counted activations (messages recomputed) are at most
    :data:`ACTIVATION_RATIO_LIMIT` x plain's (every stage if none is) and ``messages`` True; ``([], False)`` below
    :data:`ACTIVATION_FLOOR_BYTES`."""
    def activations(stages: List[int], messages: bool = True) -> int:
        arch = deepcopy(ciml)
        arch["arch_kwargs"].update(recomputed_stages=stages, checkpoint_messages=messages)
        return network_cost(arch, input_channels, num_classes, patch_size, batch_size).activation_bytes

    if activations([], messages=False) < ACTIVATION_FLOOR_BYTES:
        return [], False
    limit = ACTIVATION_RATIO_LIMIT * network_cost(plain, input_channels, num_classes, patch_size,
                                                  batch_size).activation_bytes
    n_stages = ciml["arch_kwargs"]["n_stages"]
    for k in range(n_stages):
        if activations(list(range(k))) <= limit:
            return list(range(k)), True
    return list(range(n_stages)), True


def ciml_architecture(architecture: dict, decomposition: Decomposition, patch_size: Sequence[int],
                      num_classes: int, messages: bool = True, width_factor: Optional[float] = None,
                      encoder_stage_factors: Sequence[float] = (), decoder_stage_factors: Sequence[float] = (),
                      recompute: bool = True, batch_size: int = 2, fallback_mode: str = "first",
                      fallback_affine: bool = False, shared_branches: bool = False,
                      modality_conditioning: str = "norm_affine") -> dict:
    """The CIML ``architecture`` plans entry for a plain one (widths and recomputed stages: module docstring;
    ``recompute=False`` recomputes nothing; ``batch_size`` is the plans' training batch; ``fallback_mode`` and
    ``fallback_affine``: how a subtask reads a fallback when its primary is missing; ``shared_branches`` and
    ``modality_conditioning``: one encoder for every modality, see :class:`~nnunetv2_ciml.network.CIMLUNet`)."""
    name = architecture["network_class_name"]
    if name not in SUPPORTED:
        raise ValueError(f"CIML builds on nnU-Net's PlainConvUNet and ResidualEncoderUNet plans; this "
                         f"configuration uses '{name}'")
    kwargs = deepcopy(architecture["arch_kwargs"])
    features = list(kwargs["features_per_stage"])
    m = len(decomposition.modalities)
    # Every parameter-shaping choice is written out, so that later changes of defaults never change
    # the network that a saved model folder describes.
    ciml = {"network_class_name": CIML_NETWORK, "_kw_requires_import": list(architecture["_kw_requires_import"]),
            "arch_kwargs": {**kwargs, **decomposition.to_arch_kwargs(), "messages": messages,
                            "message_stages": default_message_stages(kwargs["n_stages"]),
                            "message_latent_fraction": MESSAGE_LATENT_FRACTION, "recomputed_stages": [],
                            "checkpoint_messages": False, "fallback_mode": fallback_mode,
                            "fallback_affine": fallback_affine, "shared_branches": shared_branches,
                            "modality_conditioning": modality_conditioning}}
    if width_factor is None:
        branches_only = dict(ciml, arch_kwargs=dict(ciml["arch_kwargs"], messages=False))  # the rule's budget
        budget = conv_macs(architecture, m, num_classes, patch_size)
        lo, hi = 0.05, 1.0
        for _ in range(12):
            mid = (lo + hi) / 2
            arch = _with_widths(branches_only, features, mid, encoder_stage_factors, decoder_stage_factors)
            lo, hi = (mid, hi) if conv_macs(arch, m, num_classes, patch_size) <= budget else (lo, mid)
        width_factor = lo
    ciml = _with_widths(ciml, features, width_factor, encoder_stage_factors, decoder_stage_factors)
    if recompute:
        stages, messages = recomputed_stages(architecture, ciml, m, num_classes, patch_size, batch_size)
        ciml["arch_kwargs"].update(recomputed_stages=stages, checkpoint_messages=messages)
    ciml["branch_width_factor"] = round(width_factor, 4)  # informative; not a constructor argument
    return ciml

"""The complementary messages of one stage written out pair by pair, as the method states them.

This is the executable specification that the fused :class:`~nnunetv2_ciml.network.message.StageMessages` is
tested against: one sender and one receiver at a time, convolutions over concatenations, nothing grouped. It
reads the fused module's weights (:meth:`StageMessages.pair_weights`) and is slow; use it to read or check the
method, not to train.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from nnunetv2_ciml.network.message import StageMessages


def messages_per_pair(module: StageMessages, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """What ``module`` computes in eval mode from ``features`` ``(B, M * C, *spatial)``, pair by pair.

    For each pair ``(j, i)``, with receiver ``h_i`` (subtask ``i``'s primary) and sender ``h_j``:
    ``mu, logvar = Conv1x1([h_j, h_i])``; ``z = mu`` (inference); ``a = sigmoid(Conv_k([h_i, z]))``; ``m = a * W z``.
    Returns the messages summed per subtask ``(B, S * C, *spatial)`` (block ``i`` for subtask ``i``) and each
    pair's ``KL(N(mu, sigma^2) || N(0, I))`` summed over latent channels, averaged over batch and voxels ``(P,)``.
    """
    conv = F.conv2d if features.dim() == 4 else F.conv3d
    h = features.split(module.channels, 1)
    messages = [torch.zeros_like(h[0]) for _ in module.subtask_primaries]
    kls = []
    for pair in module.pairs:
        w = module.pair_weights(pair)
        receiver = h[module.subtask_primaries[pair.subtask]]
        mu, logvar = conv(torch.cat((h[pair.sender], receiver), 1), w["posterior"], w["posterior_bias"]).chunk(2, 1)
        logvar = logvar.clamp(-10.0, 10.0)
        padding = [k // 2 for k in w["attention"].shape[2:]]
        attention = torch.sigmoid(conv(torch.cat((receiver, mu), 1), w["attention"], w["attention_bias"],
                                       padding=padding))
        messages[pair.subtask] = messages[pair.subtask] + attention * conv(mu, w["projection"])
        kls.append(kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean())
    return torch.cat(messages, 1), torch.stack(kls)

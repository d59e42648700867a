"""nnU-Net's segmentation loss plus the weighted KL of CIML's messages."""
from typing import Callable

import torch
from torch import nn


class KLRegularizedLoss(nn.Module):
    """``segmentation_loss(output, target) + beta * KL``.

    The KL is the network's mean message KL of the forward pass that produced ``output``, read
    through ``kl_of_last_forward`` (the network keeps it, so the output format stays exactly
    nnU-Net's and ``DeepSupervisionWrapper``, DDP and torch.compile are untouched). ``beta`` is set
    by the trainer at every training iteration (its ``kl_schedule``); with ``beta == 0`` the KL is left out of
    the graph. ``last_terms`` keeps the detached terms of the last call (read when the loss is not finite, to say
    which term was not, and by the KL-schedule study's iteration log).
    """

    def __init__(self, segmentation_loss: nn.Module, kl_of_last_forward: Callable[[], torch.Tensor]):
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self.kl_of_last_forward = kl_of_last_forward
        self.beta = 0.0
        self.last_terms = {}

    def forward(self, output, target) -> torch.Tensor:
        loss = self.segmentation_loss(output, target)
        self.last_terms = {"segmentation loss": loss.detach()}
        if self.beta:
            kl = self.kl_of_last_forward()
            self.last_terms["beta * KL"] = (self.beta * kl).detach()
            loss = loss + self.beta * kl
        return loss

"""The complementary message from one modality's encoder to another subtask's decoder."""
from typing import Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd


class ComplementaryMessage(nn.Module):
    """Variational message ``m = a * W z`` from a sender's features to a receiver's skip.

    ``mu, logvar = Conv1x1([h_sender, h_receiver])``; ``z = mu + exp(logvar / 2) * eps`` in training
    and ``z = mu`` in eval mode; the cross-modal spatial attention ``a = sigmoid(Conv_k([h_receiver, z]))``
    (one channel) says where the receiver needs outside information; ``W`` is a zero-initialised 1x1
    projection, so an untrained message is exactly zero. ``kl`` is ``KL(N(mu, sigma^2) || N(0, I))``
    summed over latent channels and averaged over batch and voxels (nats per voxel), in float32 so that
    it is safe under AMP; it is only computed in training mode (``None`` in eval mode, where nothing
    uses it, so that sliding-window inference pays for the message alone).

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        channels: feature channels of sender and receiver at this level.
        latent_channels: channels of ``z``.
        kernel_size: kernel of the attention convolution (the stage's kernel, e.g. ``(1, 3, 3)``).
    """

    def __init__(self, conv_op: Type[_ConvNd], channels: int, latent_channels: int, kernel_size: Sequence[int]):
        super().__init__()
        padding = [k // 2 for k in kernel_size]
        self.posterior = conv_op(2 * channels, 2 * latent_channels, 1)
        self.attention = conv_op(channels + latent_channels, 1, kernel_size, padding=padding)
        self.project = conv_op(latent_channels, channels, 1, bias=False)
        # A forward hook here sees the message tensor itself (Grad-CAM target for `explain`).
        self.message = nn.Identity()
        self.zero_init()

    def zero_init(self) -> None:
        nn.init.zeros_(self.project.weight)

    def forward(self, sender: torch.Tensor, receiver: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``sender``, ``receiver``: ``(B, C, *spatial)``. Returns the message ``(B, C, *spatial)`` and the KL
        (scalar; ``None`` in eval mode)."""
        mu, logvar = self.posterior(torch.cat((sender, receiver), 1)).chunk(2, dim=1)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        attention = torch.sigmoid(self.attention(torch.cat((receiver, z), 1)))
        message = self.message(attention * self.project(z))
        if not self.training:
            return message, None
        mu32, logvar32 = mu.float(), logvar.float()
        kl = 0.5 * (mu32.square() + logvar32.exp() - 1.0 - logvar32).sum(1).mean()
        return message, kl

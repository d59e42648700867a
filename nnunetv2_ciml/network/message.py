"""The complementary messages from the other modalities' encoders to one subtask's skip."""
from typing import Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd


class ComplementaryMessages(nn.Module):
    """All messages ``sum_j m_{j->i}`` into the skip of subtask ``i`` at one level, one per sender ``j``.

    Per sender (DESIGN §1): ``mu_j, logvar_j = Conv1x1([h_j, h_i])``; ``z_j = mu_j + exp(logvar_j / 2) * eps``
    in training and ``z_j = mu_j`` in eval mode; the cross-modal spatial attention
    ``a_j = sigmoid(Conv_k([h_i, z_j]))`` (one channel) says where the receiver needs outside information;
    the message is ``m_j = a_j * W_j z_j`` with ``W_j`` a zero-initialised 1x1 projection without bias,
    so an untrained message is exactly zero.

    Computed without ever holding a per-sender tensor of the skip's width: the convolutions over a
    concatenation are split into their sender and receiver parts (the receiver's computed once for all
    senders), and ``sum_j a_j * W_j z_j = W [a_1 z_1, ..., a_n z_n]`` is one projection of the stacked
    scaled latents ``u`` ``(B, n * L, *spatial)``. ``message`` (an ``nn.Identity``) sees ``u``: the hook
    point for Grad-CAM, whose map of ``u_j`` equals that of ``m_j = W_j u_j`` (``W_j`` is linear and
    per voxel, so the gradient-weighted sums agree).

    Per sender, in training: the KL ``KL(N(mu_j, sigma_j^2) || N(0, I))`` summed over latent channels and
    averaged over batch and voxels (nats per voxel), and the message's root-mean-square over channels and
    voxels (exact, from the latents' Gram matrix); both in float32 (safe under AMP). Eval mode skips them,
    so that sliding-window inference pays for the messages alone.

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        channels: feature channels ``C`` of senders and receiver at this level.
        latent_channels: channels ``L`` of each ``z_j``.
        kernel_size: kernel of the attention convolution (the stage's kernel, e.g. ``(1, 3, 3)``).
        n_senders: number of sending modalities ``n``.
    """

    def __init__(self, conv_op: Type[_ConvNd], channels: int, latent_channels: int, kernel_size: Sequence[int],
                 n_senders: int):
        super().__init__()
        padding = [k // 2 for k in kernel_size]
        n, latent = n_senders, latent_channels
        self.n_senders, self.latent_channels = n, latent
        self.sender_posterior = nn.ModuleList([conv_op(channels, 2 * latent, 1, bias=False) for _ in range(n)])
        self.receiver_posterior = conv_op(channels, n * 2 * latent, 1)
        self.receiver_attention = conv_op(channels, n, kernel_size, padding=padding)
        # Holds W (n, L, *k) of the latents' part of the attention; applied as one dense convolution with the
        # block-diagonal weight (see ``_latent_attention``).
        self.latent_attention = conv_op(n * latent, n, kernel_size, padding=padding, groups=n, bias=False)
        self._conv = F.conv3d if issubclass(conv_op, nn.Conv3d) else F.conv2d
        self.register_buffer("_eye", torch.eye(n).view(n, n, *[1] * (1 + len(kernel_size))), persistent=False)
        self.project = conv_op(n * latent, channels, 1, bias=False)
        self.message = nn.Identity()
        self.zero_init()

    def zero_init(self) -> None:
        nn.init.zeros_(self.project.weight)

    def projection(self, sender: int) -> torch.Tensor:
        """``W_j`` of the ``sender``-th sender: a view ``(C, L, 1, ...)`` of the projection's weight."""
        return self.project.weight[:, sender * self.latent_channels:(sender + 1) * self.latent_channels]

    def _latent_attention(self, z: torch.Tensor) -> torch.Tensor:
        # The grouped convolution (one output per group) ran 1.8x slower forward and backward than this
        # dense one on CPU (oneDNN, 32^3); the zeros cost n^2 L k MACs per voxel, little next to a branch.
        w = self.latent_attention.weight  # (n, L, *k)
        block_diagonal = (self._eye.to(w.dtype) * w.unsqueeze(0)).flatten(1, 2)  # (n, n * L, *k)
        return self._conv(z, block_diagonal, padding=self.latent_attention.padding)

    def forward(self, receiver: torch.Tensor, *senders: torch.Tensor
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``receiver`` ``h_i`` and the ``n`` ``senders`` ``h_j``: ``(B, C, *spatial)``.

        Returns the summed message ``(B, C, *spatial)``, and per sender the KL and the message RMS
        (``(n,)`` float32 each; ``None`` in eval mode)."""
        n, latent = self.n_senders, self.latent_channels
        spatial = receiver.shape[2:]
        posterior = self.receiver_posterior(receiver).unflatten(1, (n, 2 * latent)) + torch.stack(
            [conv(h) for conv, h in zip(self.sender_posterior, senders)], 1)
        mu, logvar = posterior.chunk(2, dim=2)  # (B, n, L, *spatial)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        attention = torch.sigmoid(self.receiver_attention(receiver) + self._latent_attention(z.flatten(1, 2)))
        u = self.message((attention.unsqueeze(2) * z).flatten(1, 2))
        message = self.project(u)
        if not self.training:
            return message, None, None
        dims = (0, *range(2, 2 + len(spatial)))
        mu32, logvar32 = mu.float(), logvar.float()
        kl = 0.5 * (mu32.square() + logvar32.exp() - 1.0 - logvar32).sum(2).mean(dims)
        with torch.no_grad():
            u32 = u.detach().float().unflatten(1, (n, latent)).flatten(3)  # (B, n, L, voxels)
            gram = torch.einsum("bnlv,bnkv->nlk", u32, u32) / (u32.shape[0] * u32.shape[3])
            w = self.project.weight.detach().float().flatten(1).unflatten(1, (n, latent))  # (C, n, L)
            square = (gram * torch.einsum("cnl,cnk->nlk", w, w)).sum((1, 2))  # mean_x |m_j(x)|^2
            rms = (square.clamp_min(0) / w.shape[0]).sqrt()
        return message, kl, rms

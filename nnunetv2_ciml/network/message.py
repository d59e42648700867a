"""The complementary messages of one encoder stage: every (sender modality -> subtask) pair at once."""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd


GATE_INIT_LOGIT = -3.0  # initial attention logit: gates start nearly closed (see StageMessages)
# Initial logit added to a pair's attention when its subtask's primary modality is absent: the gate starts at
# sigmoid(GATE_INIT_LOGIT + ABSENT_PRIMARY_LOGIT) = 0.95, open (see StageMessages, missing modalities).
ABSENT_PRIMARY_LOGIT = 6.0
# Scale of the posterior means' initial weights in StageMessages.start_posteriors_near_the_prior (a study candidate).
POSTERIOR_MEAN_SCALE = 0.1


def pair_name(sender: str, subtask: str) -> str:
    """The name of the message from modality ``sender`` to ``subtask`` in logs, results and figures."""
    return f"{sender}->{subtask}"


@dataclass(frozen=True)
class MessagePair:
    """One message: modality channel ``sender`` to subtask ``subtask``; ``name`` from :func:`pair_name`
    (``"T2->whole tumor"``)."""

    sender: int
    subtask: int
    name: str


def grouped_pointwise(weight: torch.Tensor, bias: Optional[torch.Tensor], x: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 1x1 convolution as one batched matrix product.

    ``weight`` ``(G * O, I, 1, ...)`` as in a grouped ``nn.Conv3d``, ``x`` ``(B, G * I, *spatial)``; returns
    ``(B, G * O, *spatial)``, the same as ``F.conv3d(x, weight, bias, groups=G)``. On CPU much faster than
    oneDNN's convolution at the messages' narrow widths, which reorders input and output to a blocked layout on
    every call (docs/design.md); on CUDA a strided batched GEMM, as cuDNN runs a 1x1 convolution.
    """
    b, spatial = x.shape[0], x.shape[2:]
    w = weight.flatten(1).unflatten(0, (groups, -1))  # (G, O, I)
    y = torch.matmul(w, x.reshape(b, groups, w.shape[2], -1))  # (B, G, O, N)
    if bias is not None:
        y = y + bias.view(1, groups, -1, 1)
    return y.reshape(b, -1, *spatial)


def _attention_layout(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Inputs of the k^3 attention convolutions in the layout their backend runs fastest.

    On CPU oneDNN runs these few-output convolutions faster on channels-last inputs (docs/design.md); on CUDA
    cuDNN takes them as they are."""
    if not tensors[0].is_cpu:
        return tensors
    layout = torch.channels_last_3d if tensors[0].dim() == 5 else torch.channels_last
    return tuple(t.contiguous(memory_format=layout) for t in tensors)


class StageMessages(nn.Module):
    """All messages of one encoder stage, ``sum_j m_{j->i}`` for every subtask ``i``, as one module.

    Per pair ``(j, i)`` with receiver features ``h_i`` (subtask ``i``'s primary modality) and sender features
    ``h_j``: ``mu, logvar = Conv1x1([h_j, h_i])``; ``z = mu + exp(logvar / 2) * eps`` in training, ``z = mu`` in
    eval mode; the cross-modal spatial attention ``a = sigmoid(Conv_k([h_i, z]))`` (one channel) says where the
    receiver needs outside information; the message is ``m = a * W z`` with ``W`` a zero-initialised 1x1
    projection without bias (an untrained message is exactly zero) and the gates start nearly closed
    (:meth:`reset_parameters`).

    Input is the grouped encoder's stage output ``(B, M * C, *spatial)``: channel block ``c`` is modality ``c``.
    Every (sender, subtask) pair is one group of a grouped operation, so the stage costs a few large kernels
    whatever the number of pairs: the convolutions over a concatenation are split into their sender part (one
    group per pair) and receiver part (one group per subtask, computed once for all its senders), and
    ``sum_j a_j * W_j z_j = W_i [a_1 z_1, ..., a_n z_n]`` is one grouped projection of the gated latents ``u``
    ``(B, P * L, *spatial)``. ``message`` (an ``nn.Identity``) sees ``u``: the hook point for Grad-CAM, whose
    map of ``u_j`` equals that of ``m_j = W_j u_j`` (linear and per voxel); :meth:`latent_slice` says which
    channels of ``u`` belong to a pair.

    ``pairs`` must list, subtask by subtask in subtask order, the senders of each subtask (every modality but
    its primary, in channel order): the order of ``u``, of the KL and of the RMS vectors.

    In training the module also returns per pair the KL ``KL(N(mu, sigma^2) || N(0, I))`` summed over latent
    channels and averaged over batch and voxels (nats per voxel), the message's root-mean-square over
    channels and voxels (exact, from the latents' Gram matrix) and the mean of its attention gate over batch and
    voxels, all float32 (safe under AMP). Eval mode skips them: sliding-window inference pays for the messages
    alone. The KL's gradient reaches the message module's own weights, not the branches' features it is computed
    from (the same posterior evaluated on detached features): the bottleneck decides what a message carries, and
    the modality branches, which also feed their own subtasks, learn from the segmentation loss alone. Letting it
    reach the branches (``kl_reaches_branches = True``, the first version's KL, kept for the KL-schedule study)
    pulls every branch towards features whose posterior is the prior, and at the start of training, when the
    posteriors are far from it, that gradient is tens of times the segmentation's (docs/design.md).

    Missing modalities (:meth:`forward`): the caller says which features each subtask reads (``receivers``: its
    primary's, or a fallback's), which pairs may send (``sender_present``) and which subtasks read nothing
    (``receiver_absent``). Each pair's ``mu``, ``logvar`` and gated latent are multiplied by its sender flag, so
    a silent sender's message is exactly zero, its KL exactly 0 and no gradient flows through it. The attention
    logit of each pair of a subtask that reads nothing gets ``absent_primary_logit`` ``(P,)`` added (a learnt
    bias per pair, initialised to :data:`ABSENT_PRIMARY_LOGIT`): the gates open when the subtask has nothing but
    messages, without guessing absence from zeros, and modality-dropout training can tune how far. Without these
    arguments, the full-modality path, unchanged.

    Args:
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        channels: features ``C`` per modality at this stage.
        latent_channels: channels ``L`` of each ``z``.
        kernel_size: kernel of the attention convolution (the stage's kernel, e.g. ``(1, 3, 3)``).
        subtask_primaries: primary modality of each subtask.
        pairs: the messages, see above.
    """

    def __init__(self, conv_op: Type[_ConvNd], channels: int, latent_channels: int, kernel_size: Sequence[int],
                 subtask_primaries: Sequence[int], pairs: Sequence[MessagePair]):
        super().__init__()
        self.pairs = tuple(pairs)
        self.subtask_primaries = tuple(subtask_primaries)
        self.channels, self.latent_channels = channels, latent_channels
        n_subtasks, n_pairs, latent = len(self.subtask_primaries), len(self.pairs), latent_channels
        if n_pairs % n_subtasks or [p.subtask for p in self.pairs] != sorted(p.subtask for p in self.pairs):
            raise ValueError("StageMessages needs the same number of senders per subtask, listed subtask by subtask")
        self.senders_per_subtask = n_pairs // n_subtasks
        padding = [k // 2 for k in kernel_size]
        self.sender_posterior = conv_op(n_pairs * channels, n_pairs * 2 * latent, 1, groups=n_pairs, bias=False)
        self.receiver_posterior = conv_op(n_subtasks * channels, n_pairs * 2 * latent, 1, groups=n_subtasks)
        self.receiver_attention = conv_op(n_subtasks * channels, n_pairs, kernel_size, padding=padding,
                                          groups=n_subtasks)
        self.latent_attention = conv_op(n_pairs * latent, n_pairs, kernel_size, padding=padding, groups=n_pairs,
                                        bias=False)
        self.project = conv_op(n_pairs * latent, n_subtasks * channels, 1, groups=n_subtasks, bias=False)
        self.absent_primary_logit = nn.Parameter(torch.empty(n_pairs))
        self.message = nn.Identity()
        self.kl_reaches_branches = False
        self.register_buffer("_pair_subtasks", torch.tensor([p.subtask for p in self.pairs]), persistent=False)
        self.register_buffer("_sender_channels", self._channel_index([p.sender for p in self.pairs]), persistent=False)
        self.register_buffer("_receiver_channels", self._channel_index(self.subtask_primaries), persistent=False)
        self.reset_parameters()

    def _channel_index(self, modalities: Sequence[int]) -> torch.Tensor:
        c = self.channels
        return torch.tensor([m * c + k for m in modalities for k in range(c)], dtype=torch.long)

    def reset_parameters(self) -> None:
        """Messages start at exactly zero (zero projection) with their gates nearly closed
        (``sigmoid(GATE_INIT_LOGIT)`` = 0.05): a gate opens where the loss asks for outside information
        instead of passing the latents' baseline everywhere from the start (half-open gates leave a diffuse
        floor of message everywhere; docs/design.md). Gates of a subtask that reads no branch start open
        (:data:`ABSENT_PRIMARY_LOGIT`)."""
        nn.init.zeros_(self.project.weight)
        nn.init.constant_(self.receiver_attention.bias, GATE_INIT_LOGIT)
        nn.init.constant_(self.absent_primary_logit, ABSENT_PRIMARY_LOGIT)

    def start_posteriors_near_the_prior(self, mean_scale: float = POSTERIOR_MEAN_SCALE) -> None:
        """Posteriors that start (nearly) at the prior N(0, I): the log-variance weights and bias zero (sigma = 1)
        and the mean weights scaled by ``mean_scale`` (a faint signal for the messages to grow from), so that
        the KL starts near 0 instead of tens of nats per voxel. A candidate of the KL-schedule study, not the
        default: with it the messages may never form (docs/design.md)."""
        n_pairs, latent = len(self.pairs), self.latent_channels
        with torch.no_grad():
            for conv in (self.sender_posterior, self.receiver_posterior):
                rows = conv.weight.view(n_pairs, 2, latent, -1)  # per pair: mu rows, then logvar rows
                rows[:, 0].mul_(mean_scale)
                rows[:, 1].zero_()
            self.receiver_posterior.bias.zero_()

    def latent_slice(self, pair: MessagePair) -> slice:
        """Channels of ``pair``'s gated latent in ``u`` (what ``message`` sees)."""
        p = self.pairs.index(pair)
        return slice(p * self.latent_channels, (p + 1) * self.latent_channels)

    def projection(self, pair: MessagePair) -> torch.Tensor:
        """``W_j`` of ``pair``: a view ``(C, L, 1, ...)`` of the projection's weight."""
        p, c = self.pairs.index(pair), self.channels
        i, k = divmod(p, self.senders_per_subtask)
        return self.project.weight[i * c:(i + 1) * c, k * self.latent_channels:(k + 1) * self.latent_channels]

    def pair_weights(self, pair: MessagePair) -> Dict[str, torch.Tensor]:
        """``pair``'s weights as the unfused method has them (views of the grouped weights): ``posterior``
        ``(2L, 2C, 1, ...)`` over ``[h_sender, h_receiver]`` (``mu`` rows first) and ``posterior_bias`` ``(2L,)``;
        ``attention`` ``(1, C + L, k, ...)`` over ``[h_receiver, z]`` and ``attention_bias`` ``(1,)``;
        ``projection`` ``(C, L, 1, ...)`` (:meth:`projection`)."""
        p, rows = self.pairs.index(pair), slice(2 * self.latent_channels * self.pairs.index(pair),
                                                2 * self.latent_channels * (self.pairs.index(pair) + 1))
        return {"posterior": torch.cat((self.sender_posterior.weight[rows], self.receiver_posterior.weight[rows]), 1),
                "posterior_bias": self.receiver_posterior.bias[rows],
                "attention": torch.cat((self.receiver_attention.weight[p:p + 1], self.latent_attention.weight[p:p + 1]),
                                       1),
                "attention_bias": self.receiver_attention.bias[p:p + 1],
                "projection": self.projection(pair)}

    def _posterior(self, senders: torch.Tensor, receivers: torch.Tensor, sender_present: Optional[torch.Tensor]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``mu, logvar`` ``(B, P, L, *spatial)`` of every pair; a silent sender's (``sender_present`` 0) is
        N(0, I), whose KL is exactly 0."""
        n_pairs, n_subtasks = len(self.pairs), len(self.subtask_primaries)
        posterior = (grouped_pointwise(self.sender_posterior.weight, None, senders, n_pairs)
                     + grouped_pointwise(self.receiver_posterior.weight, self.receiver_posterior.bias, receivers,
                                         n_subtasks))
        mu, logvar = posterior.unflatten(1, (n_pairs, 2 * self.latent_channels)).chunk(2, dim=2)
        logvar = logvar.clamp(-10.0, 10.0)
        if sender_present is not None:
            mu, logvar = mu * sender_present, logvar * sender_present
        return mu, logvar

    def forward(self, features: torch.Tensor, receivers: Optional[torch.Tensor] = None,
                sender_present: Optional[torch.Tensor] = None, receiver_absent: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``features`` ``(B, M * C, *spatial)``, the grouped encoder's output at this stage. With missing
        modalities (all three given, in ``features``' dtype, or none): ``receivers`` ``(B, S * C, *spatial)`` the
        features each subtask's decoder reads (its primary's block, or a fallback's when the primary is missing),
        ``sender_present`` ``(B, P)`` 1 where a pair's sender may send (it exists and is not the branch its subtask
        reads), ``receiver_absent`` ``(B, S)`` 1 where a subtask has no branch to read. ``None``: every modality
        exists and each subtask reads its primary.

        Returns the summed messages of every subtask ``(B, S * C, *spatial)`` (block ``i`` for subtask ``i``),
        and per pair the KL, the message RMS and the mean gate (``(P,)`` float32 each; ``None`` in eval mode)."""
        n_pairs, n_subtasks, latent = len(self.pairs), len(self.subtask_primaries), self.latent_channels
        b, spatial = features.shape[0], features.shape[2:]
        senders = features.index_select(1, self._sender_channels)  # (B, P * C, *spatial)
        if receivers is None:
            receivers = features.index_select(1, self._receiver_channels)  # (B, S * C, *spatial)
        if sender_present is not None:
            # (B, P, 1, ...) in the features' dtype (a float32 mask would promote half-precision activations)
            sender_present = sender_present.to(features.dtype).view(b, n_pairs, 1, *[1] * len(spatial))
        mu, logvar = self._posterior(senders, receivers, sender_present)
        if self.training:
            std = torch.exp(0.5 * logvar)
            z = torch.addcmul(mu, std, torch.randn_like(mu)).flatten(1, 2)
        else:
            z = mu.flatten(1, 2)
        attention_inputs = _attention_layout(receivers, z)
        # DDP (nnU-Net's, without find_unused_parameters) needs every parameter in every step's graph: the
        # absent-primary bias enters the receiver bias vector times 0 when every modality exists (P numbers).
        receiver = self.receiver_attention
        bias = receiver.bias + 0 * self.absent_primary_logit
        logits = (receiver._conv_forward(attention_inputs[0], receiver.weight, bias)
                  + self.latent_attention(attention_inputs[1]))
        gated = z.unflatten(1, (n_pairs, latent))  # (B, P, L, *spatial)
        if receiver_absent is not None:
            absent = receiver_absent.index_select(1, self._pair_subtasks)  # (B, P)
            bias = (absent * self.absent_primary_logit).to(logits.dtype)
            logits = logits + bias.view(b, n_pairs, *[1] * len(spatial))
        if sender_present is not None:
            gated = gated * sender_present
        attention = torch.sigmoid(logits).contiguous()  # (B, P, *spatial)
        u = self.message((attention.unsqueeze(2) * gated).flatten(1, 2))
        message = grouped_pointwise(self.project.weight, None, u, n_subtasks)
        if not self.training:
            return message, None, None, None
        # KL = (|mu|^2 + |sigma|^2 - sum(log sigma^2)) / 2 per voxel - L / 2, from three float32 reductions
        # (no elementwise intermediates: this runs twice per step with checkpointing).
        if not self.kl_reaches_branches:  # the same posterior, evaluated on the branches' features detached
            mu, logvar = self._posterior(senders.detach(), receivers.detach(), sender_present)
            std = torch.exp(0.5 * logvar)
        dims, voxels = (0, *range(2, 3 + len(spatial))), b * spatial.numel()
        square_sums = [torch.linalg.vector_norm(t, dim=dims, dtype=torch.float32).square() for t in (mu, std)]
        kl = 0.5 * (sum(square_sums) - logvar.sum(dims, dtype=torch.float32)) / voxels - 0.5 * latent
        with torch.no_grad():
            u32 = u.detach().float().reshape(b, n_pairs, latent, -1)
            gram = torch.einsum("bpln,bpkn->plk", u32, u32) / (b * u32.shape[3])  # (P, L, L)
            w = self.project.weight.detach().float().flatten(1)  # (S * C, n * L)
            w = w.unflatten(0, (n_subtasks, -1)).unflatten(2, (self.senders_per_subtask, latent))  # (S, C, n, L)
            w = w.permute(0, 2, 1, 3).flatten(0, 1)  # (P, C, L)
            square = (gram * torch.einsum("pcl,pck->plk", w, w)).sum((1, 2))  # mean_x |m_p(x)|^2
            rms = (square.clamp_min(0) / self.channels).sqrt()
            gate = attention.detach().mean(dim=(0, *range(2, attention.dim())), dtype=torch.float32)  # (P,)
        return message, kl, rms, gate

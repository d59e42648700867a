"""Grad-CAM on CIML's complementary messages, tile by tile over nnU-Net's sliding window.

For a receiving subtask ``i`` the Grad-CAM *target* is the sum of the logits of the output channels
``i`` owns (background excluded for softmax models) over the voxels the model predicts as those
classes or regions (``targets``: nnU-Net's own prediction of the case). Logits rather than
probabilities: gradients of a saturated softmax/sigmoid vanish exactly where the model is most
confident. No predicted voxels, no target: the maps of that subtask are zero.

For the message ``A = m_{j->i}^s`` (``(C_s, *spatial_s)``) at skip level ``s`` and gradient ``G`` of the
target, Grad-CAM is ``ReLU(sum_c w_c A_c)`` with ``w_c`` the mean of ``G_c`` over the tile. It is taken on
the scaled latent ``u_j`` of which the message is a per-voxel linear map (``m_j = W_j u_j``, see
:class:`~nnunetv2_ciml.network.StageMessages`): the same map, without the message's width. Before the
ReLU, its sum over the level's voxels is the first-order contribution of that message to the target,
``sum_c sum_x G_c(x) A_c(x)`` (in logits), with each gradient replaced by its tile mean. Each level's map is upsampled to the patch (linear interpolation) and divided by the
number of patch voxels per level voxel, so that it keeps that mass; the map of a (sender, subtask)
pair is the sum over levels. Levels therefore weigh what their messages contribute (no per-level
or per-sender rescaling), and one sender's mass is comparable with another's: their ratio is a
share of the cross-modal contribution.

Tiles are nnU-Net's (``nnUNetPredictor._internal_get_sliding_window_slicers`` on the padded case)
and are combined with nnU-Net's Gaussian weighting (``compute_gaussian``), as logits are. Test-time
mirroring is not applied to the maps (it does shape ``targets`` when the predictor uses it).
"""
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from tqdm import tqdm

from nnunetv2_ciml.network import CIMLUNet, MessagePair

__all__ = ["MessageGradCAM", "sliding_window_message_cams"]


class MessageGradCAM:
    """Grad-CAM maps of the messages of ``pairs`` (:class:`~nnunetv2_ciml.network.MessagePair` s of
    ``network.message_pairs``) for one tile.

    Use as a context manager: it hooks the ``message`` (``nn.Identity``) of every
    :class:`~nnunetv2_ciml.network.StageMessages` and removes the hooks on exit. Inside, the network is in eval
    mode (``z = mu``, no activation checkpointing, so each hook fires once); its mode is restored on exit.

    Args:
        network: the CIML network.
        pairs: message pairs to map; their receiving subtasks define the Grad-CAM target.
        target_channels: output channels that make up the target of each receiving subtask.
    """

    def __init__(self, network: CIMLUNet, pairs: Sequence[MessagePair], target_channels: Dict[int, Sequence[int]]):
        unknown = [p for p in pairs if p not in network.message_pairs]
        if unknown:
            raise ValueError(f"message pairs {[p.name for p in unknown]} are not among the network's "
                             f"{[p.name for p in network.message_pairs]}")
        self.network = network
        self.pairs = list(pairs)
        receivers = {p.subtask for p in self.pairs}
        self.channels = sorted({k for i in receivers for k in target_channels.get(i, ())})
        self._latents: Dict[int, torch.Tensor] = {}
        self._hooks: List = []
        self._was_training = network.training

    def __enter__(self) -> "MessageGradCAM":
        self._was_training = self.network.training
        self.network.eval()
        for s in self.network.message_stages:
            self._hooks.append(self.network.messages[str(s)].message.register_forward_hook(self._recorder(s)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._latents.clear()
        self.network.train(self._was_training)

    def _recorder(self, stage: int):
        def record(module, inputs, output):
            self._latents[stage] = output
        return record

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Maps ``(len(pairs), *patch)`` (float32) for tile ``x`` ``(1, M, *patch)``.

        ``targets``: ``(K, *patch)``, nonzero where the model predicts output channel ``k``.
        """
        patch = tuple(x.shape[2:])
        cams = torch.zeros((len(self.pairs), *patch), dtype=torch.float32, device=x.device)
        mask = targets[self.channels].to(torch.float32)
        if not self.pairs or not torch.any(mask):
            return cams
        self._latents.clear()
        with torch.enable_grad():
            logits = self.network(x)
            if isinstance(logits, (list, tuple)):  # a network built with deep supervision
                logits = logits[0]
            target = (logits[0, self.channels].float() * mask).sum()
            stages = list(self._latents)
            gradients = dict(zip(stages, torch.autograd.grad(target, [self._latents[s] for s in stages])))
        mode = "bilinear" if len(patch) == 2 else "trilinear"
        with torch.no_grad():
            for n, pair in enumerate(self.pairs):
                for s in stages:
                    channels = self.network.messages[str(s)].latent_slice(pair)
                    a, g = self._latents[s][:, channels], gradients[s][:, channels]
                    weights = g.float().mean(dim=tuple(range(2, g.ndim)), keepdim=True)
                    cam = F.relu((weights * a.float()).sum(1, keepdim=True))
                    voxels_per_level_voxel = cams[0].numel() / cam[0, 0].numel()
                    if tuple(cam.shape[2:]) != patch:
                        cam = F.interpolate(cam, size=patch, mode=mode, align_corners=False)
                    cams[n] += cam[0, 0] / voxels_per_level_voxel
        self._latents.clear()
        return cams


def sliding_window_message_cams(predictor: nnUNetPredictor, gradcam: MessageGradCAM, data: torch.Tensor,
                                targets: torch.Tensor) -> torch.Tensor:
    """Message maps of a preprocessed case: ``(len(gradcam.pairs), *spatial)`` float32 on the CPU.

    ``data``: ``(M, *spatial)``, the case as nnU-Net preprocessed it; ``targets``: ``(K, *spatial)``
    (uint8), the model's prediction per output channel on that grid. Padding, tiles and Gaussian
    weights are nnU-Net's (``predictor``'s patch size, ``tile_step_size`` and ``use_gaussian``).
    """
    patch_size = tuple(predictor.configuration_manager.patch_size)
    data, revert_padding = pad_nd_image(data, patch_size, "constant", {"value": 0}, True, None)
    targets = pad_nd_image(targets, patch_size, "constant", {"value": 0}, False, None)
    # nnU-Net has no public tile function (compute_steps_for_sliding_window gives the steps only); its own
    # helper also makes the 2D tiles of 3D-stored data exactly as its prediction does
    slicers = predictor._internal_get_sliding_window_slicers(data.shape[1:])
    gaussian = compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10, dtype=torch.float32,
                                device=torch.device("cpu")) if predictor.use_gaussian else 1
    cams = torch.zeros((len(gradcam.pairs), *data.shape[1:]), dtype=torch.float32)
    weights = torch.zeros(data.shape[1:], dtype=torch.float32)
    device = predictor.device
    for sl in tqdm(slicers, desc="Grad-CAM tiles", disable=not predictor.allow_tqdm, leave=False):
        tile = data[sl][None].to(device, torch.float32)
        cams[sl] += gradcam(tile, targets[sl].to(device)).cpu() * gaussian
        weights[sl[1:]] += gaussian
    cams /= weights
    return cams[(slice(None), *revert_padding[1:])]

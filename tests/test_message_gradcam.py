"""Message Grad-CAM on untrained tiny networks (the trained-model comparisons are in test_explain.py)."""
import torch
from torch import nn

from helpers import message_slots, set_message_projections
from nnunetv2_ciml.interpretability import MessageGradCAM
from nnunetv2_ciml.interpretability.explain import _predicted_channels, _target_channels
from nnunetv2_ciml.network import CIMLUNet


def test_softmax_targets_exclude_background_3d():
    """Label (softmax) models: the target is a subtask's foreground; background alone gives no map. 3D tiles."""
    network = CIMLUNet(2, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 3, 1, subtask_primaries=[0, 1],
                       subtask_outputs=[[0, 1], [2]], n_conv_per_stage=1, norm_op=nn.InstanceNorm3d,
                       norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, modality_names=["CT", "PET"],
                       subtask_names=["GTVp", "GTVn"]).eval()
    generator = torch.Generator().manual_seed(2)
    set_message_projections(network, message_slots(network), generator)
    x = torch.randn((1, 2, 16, 16, 16), generator=generator)
    channels = _target_channels(network, has_regions=False)
    assert channels == {0: [1], 1: [2]}
    pet_to_gtvp, ct_to_gtvn = network.message_pairs

    def maps(gtvp_bias, gtvn_bias):
        with torch.no_grad():
            for layer in network.decoder[0].seg_layers:
                layer.bias.copy_(torch.tensor(gtvp_bias))
            for layer in network.decoder[1].seg_layers:
                layer.bias.fill_(gtvn_bias)
            targets = _predicted_channels(network(x)[0], has_regions=False)
        with MessageGradCAM(network, network.message_pairs, channels) as gradcam:
            return gradcam(x, targets)

    background = maps([20.0, -20.0], -20.0)
    assert background.shape == (2, 16, 16, 16) and not background.any()
    gtvn = maps([0.0, -20.0], 40.0)
    assert not gtvn[network.message_pairs.index(pet_to_gtvp)].any()
    assert gtvn[network.message_pairs.index(ct_to_gtvn)].min() >= 0
    assert gtvn[network.message_pairs.index(ct_to_gtvn)].max() > 0

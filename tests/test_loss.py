"""CIML's loss: nnU-Net's segmentation loss plus beta times the KL of the same forward pass (unit-sized)."""
import torch

from helpers import REGIONS, build_ciml_network as build, randomize_messages
from nnunetv2_ciml.network import StageMessages
from nnunetv2_ciml.training.loss import KLRegularizedLoss


def test_loss_adds_beta_times_the_kl_and_its_gradient():
    """loss = segmentation loss + beta * KL, with the KL's gradient in the backward pass, and exactly the
    segmentation loss at beta 0. Fails if the KL term is left out (``+ 0.0 * beta * kl``) or detached."""
    kl = torch.tensor(2.0, requires_grad=True)
    logits = torch.tensor([0.3], requires_grad=True)
    loss_fn = KLRegularizedLoss(lambda output, target: (output - target).square().sum(), lambda: kl)
    loss_fn.beta = 0.25
    loss = loss_fn(logits, torch.tensor([1.0]))
    assert torch.isclose(loss, torch.tensor(0.49 + 0.25 * 2.0))
    loss.backward()
    assert kl.grad == 0.25 and logits.grad is not None
    loss_fn.beta = 0.0
    assert torch.isclose(loss_fn(logits, torch.tensor([1.0])), torch.tensor(0.49))


def test_the_network_loss_moves_the_message_posteriors_through_the_kl():
    """With the segmentation loss constant, the KL term alone gives the message posteriors a gradient: the
    network's ``kl`` is the one the loss reads. Fails if the network's KL is detached or not the forward's."""
    net, _ = build(REGIONS, dim=2)
    randomize_messages(net)
    net.train()
    loss_fn = KLRegularizedLoss(lambda output, target: 0.0 * sum(o.sum() for o in output), lambda: net.kl)
    loss_fn.beta = 1.0
    loss_fn(net(torch.randn(2, 3, 16, 16)), None).backward()
    stages = [m for m in net.modules() if isinstance(m, StageMessages)]
    assert stages and all(m.sender_posterior.weight.grad.abs().sum() > 0 for m in stages)


def test_message_gates_start_nearly_closed_after_nnunets_initialisation():
    """After the network is built and initialised as nnU-Net builds it (He init, then the messages' own), every
    gate without input evidence, ``sigmoid(attention bias)``, is below 0.1: messages open where the loss asks for
    them. Fails if the gates start half open (bias 0) or nnU-Net's init overwrites the bias."""
    net, _ = build(REGIONS, dim=2)
    stages = [m for m in net.modules() if isinstance(m, StageMessages)]
    assert stages and all(torch.sigmoid(m.receiver_attention.bias).max() < 0.1 for m in stages)

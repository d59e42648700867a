"""CIMLUNet built the way nnU-Net builds it (plans -> get_network_from_plans), tiny widths."""
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from helpers import LABELS, REGIONS, build_ciml_network as build
from nnunetv2_ciml.decomposition import resolve_decomposition
from nnunetv2_ciml.network import CIMLUNet, ComplementaryMessages
from nnunetv2_ciml.network.message import GATE_INIT_LOGIT
from nnunetv2_ciml.planning import ciml_architecture


def randomize_messages(net: CIMLUNet) -> None:
    for m in net.modules():
        if isinstance(m, ComplementaryMessages):
            torch.nn.init.normal_(m.project.weight, std=0.5)


@pytest.mark.parametrize("dataset_json, dim, residual", [
    (REGIONS, 3, False), (REGIONS, 2, False), (LABELS, 3, False), (LABELS, 2, True), (REGIONS, 3, True)])
def test_output_shapes_and_deep_supervision(dataset_json, dim, residual):
    net, _ = build(dataset_json, dim, residual)
    num_classes = 2 if dataset_json is REGIONS else 3
    x = torch.randn(2, len(dataset_json["channel_names"]), *(16,) * dim)
    out = net(x)
    assert isinstance(out, list) and len(out) == 2  # n_stages - 1, highest resolution first
    assert [tuple(o.shape) for o in out] == [(2, num_classes, *(16,) * dim), (2, num_classes, *(8,) * dim)]
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert tuple(net(x).shape) == (2, num_classes, *(16,) * dim)


def test_outputs_are_assembled_in_nnunet_channel_order():
    dj = dict(LABELS, ciml={"subtasks": {"n": {"primary": "PET", "outputs": ["GTVn"]},
                                         "p": {"primary": "CT", "outputs": ["GTVp", "background"]}}})
    net, _ = build(dj, dim=2, deep_supervision=False)
    net.eval()
    x = torch.randn(1, 2, 16, 16)
    out = net(x)
    features = [e(x[:, c:c + 1]) for c, e in enumerate(net.encoders)]
    per_subtask = [dec(features[p]) for p, dec in zip(net.subtask_primaries, net.decoder)]  # messages are zero
    torch.testing.assert_close(out[:, 2], per_subtask[0][:, 0])
    torch.testing.assert_close(out[:, 1], per_subtask[1][:, 0])
    torch.testing.assert_close(out[:, 0], per_subtask[1][:, 1])


def test_same_parameters_whatever_the_deep_supervision_flag():
    with_ds, _ = build(REGIONS, deep_supervision=True)
    without, _ = build(REGIONS, deep_supervision=False)
    without.load_state_dict(with_ds.state_dict(), strict=True)  # as nnU-Net's predictor does
    assert not any(k.startswith("decoder.0.encoder") for k in with_ds.state_dict())  # no duplicated encoders


@pytest.mark.parametrize("dim", [2, 3])
def test_messages_match_the_per_sender_definition(dim):
    """DESIGN §1 written out sender by sender: posterior and attention on concatenations, m_j = a_j * W_j z_j;
    KL against torch.distributions; RMS against the materialised message."""
    torch.manual_seed(0)
    conv_op, conv = (torch.nn.Conv2d, F.conv2d) if dim == 2 else (torch.nn.Conv3d, F.conv3d)
    module = ComplementaryMessages(conv_op, 4, 3, (3,) * dim, n_senders=2)
    torch.nn.init.normal_(module.project.weight)
    receiver, senders = torch.randn(2, 4, *(5,) * dim), [torch.randn(2, 4, *(5,) * dim) for _ in range(2)]
    module.eval()
    message, kl, rms = module(receiver, *senders)
    assert kl is None and rms is None
    module.train()
    torch.manual_seed(1)
    _, kl, rms = module(receiver, *senders)

    expected_message, expected_kl, expected_rms = 0, [], []
    for j, sender in enumerate(senders):
        both = torch.cat((sender, receiver), 1)
        weight = torch.cat((module.sender_posterior[j].weight,
                            module.receiver_posterior.weight[6 * j:6 * (j + 1)]), 1)
        mu, logvar = conv(both, weight, module.receiver_posterior.bias[6 * j:6 * (j + 1)]
                                                ).chunk(2, 1)
        attention_weight = torch.cat((module.receiver_attention.weight[j:j + 1],
                                      module.latent_attention.weight[j:j + 1]), 1)
        attention = torch.sigmoid(conv(torch.cat((receiver, mu), 1), attention_weight,
                                                             module.receiver_attention.bias[j:j + 1], padding=1))
        m_j = attention * conv(mu, module.projection(j))
        expected_message = expected_message + m_j
        expected_kl.append(kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean())
    torch.testing.assert_close(message, expected_message)
    torch.testing.assert_close(kl, torch.stack(expected_kl))
    # The training-mode RMS is that of the sampled message: check it against the same sample.
    torch.manual_seed(1)
    seen = {}
    hook = module.message.register_forward_hook(lambda mod, i, out: seen.setdefault("u", out))
    module(receiver, *senders)
    hook.remove()
    for j in range(2):
        m_j = conv(seen["u"][:, 3 * j:3 * (j + 1)], module.projection(j))
        torch.testing.assert_close(rms[j], m_j.square().mean().sqrt())


def test_untrained_network_equals_the_no_message_network():
    """Messages start at exactly zero, with their gates nearly closed (nnU-Net's init does not undo either)."""
    net, _ = build(REGIONS)
    modules = [m for m in net.modules() if isinstance(m, ComplementaryMessages)]
    assert modules and all(not m.project.weight.any() for m in modules)
    assert all(torch.all(m.receiver_attention.bias == GATE_INIT_LOGIT) for m in modules)
    ablation, _ = build(REGIONS, messages=False)
    missing, unexpected = ablation.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("messages.") for k in unexpected)
    x = torch.randn(2, 3, 16, 16, 16)
    net.train(), ablation.train()
    for a, b in zip(net(x), ablation(x)):
        torch.testing.assert_close(a, b)
    assert net.kl.requires_grad and net.kl > 0 and float(ablation.kl) == 0.0


def test_gradients_reach_sender_only_encoders_once_messages_are_nonzero():
    net, _ = build(REGIONS)
    t2 = net.modality_names.index("T2")  # T2 is nobody's primary: messages are its only path
    x = torch.randn(2, 3, 16, 16, 16)

    def encoder_grads():
        net.zero_grad()
        sum(o.square().mean() for o in net(x)).backward()
        return [sum(p.grad.abs().sum() for p in e.parameters() if p.grad is not None) for e in net.encoders]

    grads = encoder_grads()
    assert grads[t2] == 0 and all(g > 0 for c, g in enumerate(grads) if c != t2)
    randomize_messages(net)
    assert all(g > 0 for g in encoder_grads())


def test_eval_is_deterministic_and_training_is_stochastic():
    net, _ = build(LABELS, deep_supervision=False)
    randomize_messages(net)
    x = torch.randn(1, 2, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))


def test_unsupported_plans_and_inconsistent_kwargs_are_errors():
    d, _ = resolve_decomposition(REGIONS)
    with pytest.raises(ValueError, match="PlainConvUNet and ResidualEncoderUNet"):
        ciml_architecture({"network_class_name": "x.Primus", "arch_kwargs": {}, "_kw_requires_import": []}, d, (8,), 2)
    with pytest.raises(ValueError, match="exactly once"):
        CIMLUNet(3, 2, 4, torch.nn.Conv2d, 3, [1, 2], 2, 1, [0, 1], [[0], [0]], n_conv_per_stage=1)

"""CIMLUNet built the way nnU-Net builds it (plans -> get_network_from_plans), tiny widths."""
import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from helpers import (LABELS, REGIONS, build_ciml_network as build, compare_branches_and_backprop, plain_architecture,
                     randomize_messages)
from nnunetv2_ciml.decomposition import resolve_decomposition
from nnunetv2_ciml.network import CIMLUNet, MessagePair, StageMessages
from nnunetv2_ciml.network.message import GATE_INIT_LOGIT
from nnunetv2_ciml.network.message_reference import messages_per_pair
from nnunetv2_ciml.planning import ciml_architecture

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
    features = net.encoder(x)
    per_subtask = [dec([net.modality_features(f, s, p) for s, f in enumerate(features)])  # messages are zero
                   for p, dec in zip(net.subtask_primaries, net.decoder)]
    torch.testing.assert_close(out[:, 2], per_subtask[0][:, 0])
    torch.testing.assert_close(out[:, 1], per_subtask[1][:, 0])
    torch.testing.assert_close(out[:, 0], per_subtask[1][:, 1])


def test_same_parameters_whatever_the_deep_supervision_flag():
    with_ds, _ = build(REGIONS, deep_supervision=True)
    without, _ = build(REGIONS, deep_supervision=False)
    without.load_state_dict(with_ds.state_dict(), strict=True)  # as nnU-Net's predictor does
    assert not any(k.startswith("decoder.0.encoder") for k in with_ds.state_dict())  # no duplicated encoders
    assert with_ds.message_stages == [1, 2]  # no messages at full resolution by default


@pytest.mark.parametrize("dim", [2, 3])
def test_stage_messages_match_the_per_pair_definition(dim):
    """The fused module against the method written out pair by pair (``messages_per_pair``: posterior and
    attention on concatenations of the two modalities' features, m_j = a_j * W_j z_j, summed per subtask; KL by
    torch.distributions); the training-mode RMS against the materialised message. Fails if a grouped weight is
    sliced into the wrong pair, subtask or modality."""
    torch.manual_seed(0)
    conv_op, conv = (torch.nn.Conv2d, F.conv2d) if dim == 2 else (torch.nn.Conv3d, F.conv3d)
    c, latent, primaries = 4, 3, [2, 0]  # 3 modalities, 2 subtasks
    pairs = [MessagePair(j, i, f"{j}->{i}") for i, p in enumerate(primaries) for j in range(3) if j != p]
    module = StageMessages(conv_op, c, latent, (3,) * dim, primaries, pairs)
    for conv_module in (module.project, module.receiver_posterior, module.receiver_attention):
        torch.nn.init.normal_(conv_module.weight)
    torch.nn.init.normal_(module.receiver_attention.bias)
    features = torch.randn(2, 3 * c, *(5,) * dim)
    module.eval()
    message, kl, rms, gate = module(features)
    assert kl is None and rms is None and gate is None
    expected_message, expected_kl = messages_per_pair(module, features)
    torch.testing.assert_close(message, expected_message)
    module.train()
    torch.manual_seed(1)
    _, kl, rms, gate = module(features)
    torch.testing.assert_close(kl, expected_kl)
    # The training-mode RMS is that of the sampled message: check it against the same sample.
    torch.manual_seed(1)
    seen = {}
    hook = module.message.register_forward_hook(lambda mod, i, out: seen.setdefault("u", out))
    module(features)
    hook.remove()
    for pair, value in zip(pairs, rms):
        m_p = conv(seen["u"][:, module.latent_slice(pair)], module.projection(pair))
        torch.testing.assert_close(value, m_p.square().mean().sqrt())


def _separate_encoder(residual: bool, dim: int, width: list):
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    common = dict(conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, return_skips=True)
    if residual:
        return ResidualEncoder(1, 3, width, conv, 3, [1, 2, 2], [1, 2, 1], **common)
    return PlainConvEncoder(1, 3, width, conv, 3, [1, 2, 2], [1, 2, 1], **common)


@pytest.mark.parametrize("dim, residual", [(2, False), (3, False), (2, True), (3, True)])
def test_grouped_encoder_equals_separate_modality_encoders(dim, residual):
    """M independent DNA encoders (one input channel each) loaded into the grouped encoder give the same
    features block by block and the same gradients (float64). Fails if a group mixes modalities (a norm or
    convolution across channel blocks) or if stem/bottleneck channels are not multiplied by M."""
    torch.manual_seed(0)
    width = [4, 8, 8]
    arch = plain_architecture(dim, residual=residual, base=4)
    arch["arch_kwargs"]["n_conv_per_stage" if not residual else "n_blocks_per_stage"] = [1, 2, 1]
    arch["arch_kwargs"]["features_per_stage"] = width
    d, _ = resolve_decomposition(REGIONS)
    ciml = ciml_architecture(arch, d, (16,) * dim, 2, width_factor=1.0)
    net = get_network_from_plans(ciml["network_class_name"], ciml["arch_kwargs"], ciml["_kw_requires_import"],
                                 3, 2, allow_init=True, deep_supervision=False).double()
    separate = [_separate_encoder(residual, dim, width).double() for _ in range(3)]
    for e in separate:  # nonzero norm affines, so that a mixed-up channel shows
        for m in e.modules():
            if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d)):
                torch.nn.init.normal_(m.weight), torch.nn.init.normal_(m.bias)
    grouped_state = {k: torch.cat([e.state_dict()[k] for e in separate], 0) for k in separate[0].state_dict()}
    net.encoder.load_state_dict(grouped_state, strict=True)

    x = torch.randn(2, 3, *(16,) * dim, dtype=torch.float64)
    grouped_features = net.encoder(x)
    separate_features = [e(x[:, c:c + 1]) for c, e in enumerate(separate)]
    compare_branches_and_backprop(net, grouped_features, separate_features)
    grads = dict(net.encoder.named_parameters())
    for name, _ in separate[0].named_parameters():
        torch.testing.assert_close(grads[name].grad, torch.cat([dict(e.named_parameters())[name].grad
                                                                for e in separate], 0))


def test_channel_count_mismatch_names_the_modalities():
    net, _ = build(REGIONS, deep_supervision=False)
    with pytest.raises(ValueError, match=r"expects 3 input channels.*T1ce, T2, FLAIR.*got 2.*nnunetv2_ciml predict"):
        net(torch.randn(1, 2, 16, 16, 16))


def test_group_norm_is_refused():
    d, _ = resolve_decomposition(REGIONS)
    arch = plain_architecture(3)
    arch["arch_kwargs"]["norm_op"] = "torch.nn.GroupNorm"
    ciml = ciml_architecture(plain_architecture(3), d, (16,) * 3, 2, width_factor=1.0)
    kwargs = dict(ciml["arch_kwargs"], norm_op="torch.nn.GroupNorm")
    with pytest.raises(ValueError, match="per-channel norm.*GroupNorm"):
        get_network_from_plans(ciml["network_class_name"], kwargs, ciml["_kw_requires_import"], 3, 2)


def test_message_pairs_are_named_and_kl_follows_their_order():
    """Per-pair statistics are in ``message_pairs`` order: a message made to carry KL only for one pair shows
    up at that pair's name, not at a list position of another layout."""
    net, _ = build(REGIONS, deep_supervision=False)
    names = [p.name for p in net.message_pairs]
    assert names == ["T2->whole tumor", "FLAIR->whole tumor", "T1ce->tumor core", "T2->tumor core"] or \
        len(names) == len(set(names))
    target = net.message_pairs[-1]
    for module in net.messages.values():
        with torch.no_grad():
            rows = module.sender_posterior.weight
            rows.zero_()
            p = module.pairs.index(target)
            rows[2 * module.latent_channels * p:2 * module.latent_channels * (p + 1)].normal_(std=3.0)
            module.receiver_posterior.weight.zero_(), module.receiver_posterior.bias.zero_()
    net.train()
    net(torch.randn(2, 3, 16, 16, 16))
    assert int(net.message_kl.argmax()) == net.message_pairs.index(target)
    assert all(float(v) < 1e-6 for k, v in enumerate(net.message_kl) if k != net.message_pairs.index(target))


@pytest.mark.slow  # torch.compile (dynamo tracing)
@pytest.mark.parametrize("training, shared", [(True, False), (False, False), (True, True), (False, True)])
def test_no_graph_breaks_under_torch_compile(training, shared):
    """torch.compile sees the whole network (grouped or shared encoder, stage messages, recomputed stages) as one
    graph."""
    net, arch = build(LABELS, dim=2, deep_supervision=False, shared_branches=shared)
    arch["arch_kwargs"]["recomputed_stages"] = [0, 1]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2, 3,
                                 allow_init=True, deep_supervision=False)
    net.train(training)
    explanation = torch._dynamo.explain(net)(torch.randn(2, 2, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_untrained_network_equals_the_no_message_network():
    """Messages start at exactly zero, with their gates nearly closed (nnU-Net's init does not undo either)."""
    net, _ = build(REGIONS)
    modules = [m for m in net.modules() if isinstance(m, StageMessages)]
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
        grads = [0.0] * 3
        for p in net.encoder.parameters():  # channel block c of every grouped parameter is modality c's
            if p.grad is not None:
                for c, block in enumerate(p.grad.chunk(3, 0)):
                    grads[c] += float(block.abs().sum())
        return grads

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


def test_subtask_decoder_at_the_skip_widths_is_dna_unet_decoder():
    """With decoder widths equal to the skip widths the subtask decoder is dynamic-network-architectures'
    ``UNetDecoder``: the same parameter names and shapes, and the same outputs from the same weights."""
    from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

    net, _ = build(REGIONS, dim=2, width=1.0)
    ours = net.decoder[0]
    spec = ours.encoder
    dna = UNetDecoder(spec, ours.num_classes, [1, 1], deep_supervision=True)
    assert {k: v.shape for k, v in dna.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    dna.load_state_dict(ours.state_dict())
    skips = [torch.randn(2, c, 16 // 2 ** s, 16 // 2 ** s) for s, c in enumerate(spec.skip_channels)]
    ours.eval(), dna.eval()
    for a, b in zip(ours(skips), dna(skips)):
        torch.testing.assert_close(a, b)


def test_encoder_and_decoder_widths_are_separate_profiles():
    """``encoder_stage_factors`` narrow the modality branches of the stages they list and nothing else;
    ``decoder_stage_factors`` the subtask decoders'. The full-resolution decoder stage takes its upsampled
    features (decoder width) and the branch's skip (branch width) and outputs the segmentation from the decoder
    width. Fails if the decoders follow the encoder's widths or a factor reaches other stages."""
    net, arch = build(REGIONS, dim=2, width=1.0, encoder_stage_factors=(0.5,), decoder_stage_factors=(2.0, 0.5))
    kwargs = arch["arch_kwargs"]
    assert kwargs["features_per_stage"] == [2, 8, 16] and kwargs["decoder_features_per_stage"] == [8, 4]
    assert net.encoder.stages[0][0].convs[0].conv.out_channels == 3 * 2  # M = 3 branches of 2
    assert net.encoder.stages[1][0].convs[0].conv.out_channels == 3 * 8
    decoder = net.decoder[0]  # stages from the bottleneck up: [stage 1, stage 0]
    assert decoder.transpconvs[0].out_channels == 4 and decoder.stages[0].convs[0].conv.in_channels == 4 + 8
    assert decoder.transpconvs[1].in_channels == 4 and decoder.transpconvs[1].out_channels == 8
    assert decoder.stages[1].convs[0].conv.in_channels == 8 + 2 and decoder.stages[1].convs[-1].conv.out_channels == 8
    assert decoder.seg_layers[1].in_channels == 8
    out = net(torch.randn(2, 3, 16, 16))
    assert [tuple(o.shape) for o in out] == [(2, 2, 16, 16), (2, 2, 8, 8)]

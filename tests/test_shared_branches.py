"""Shared modality branches: one encoder that every modality passes through (tiny networks, as nnU-Net builds them)."""
import copy

import pytest
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch.nn.modules.instancenorm import _InstanceNorm

from helpers import REGIONS, build_ciml_network as build, compare_branches_and_backprop, randomize_messages
from nnunetv2_ciml.network.shared import EMBEDDING_CHANNELS
from nnunetv2_ciml.training.modality_dropout import nnUNetTrainerCIML_modalityDropout
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML, nnUNetTrainerCIML_groupedBranches

T1CE, T2, FLAIR = 0, 1, 2  # REGIONS: subtask 0 "FLAIR" <- T1ce, T2; subtask 1 "T1ce" <- T2, FLAIR


def reference_encoder(net, modality: int, dim: int, residual: bool) -> torch.nn.Module:
    """The shared encoder as a plain DNA encoder of modality ``modality`` alone: the same convolutions, the norm
    affine of that modality, one input channel (plus the embedding's)."""
    encoder = net.encoder
    conv_op, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    inputs = 1 + (EMBEDDING_CHANNELS if net.modality_embedding is not None else 0)
    common = dict(conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, return_skips=True)
    width, kernels, strides = net.features_per_stage, encoder.kernel_sizes, encoder.strides
    if residual:
        reference = ResidualEncoder(inputs, 3, width, conv_op, kernels, strides, [1, 2, 1], **common)
    else:
        reference = PlainConvEncoder(inputs, 3, width, conv_op, kernels, strides, [1, 2, 1], **common)
    reference = reference.to(next(encoder.parameters()).dtype)
    expected = reference.state_dict()  # per-modality affines (M, C) where the reference has (C,)
    state = {k: (v[modality] if v.dim() == expected[k].dim() + 1 else v) for k, v in encoder.state_dict().items()}
    reference.load_state_dict(state, strict=True)
    return reference


def shared_network(dim: int, residual: bool, conditioning: str):
    net, arch = build(REGIONS, dim=dim, residual=residual, width=1.0, shared_branches=True,
                      modality_conditioning=conditioning)
    arch["arch_kwargs"]["n_conv_per_stage" if not residual else "n_blocks_per_stage"] = [1, 2, 1]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 3, 2,
                                 allow_init=True, deep_supervision=False).double()
    for m in net.encoder.modules():  # distinct affines per modality, so that a mixed-up modality shows
        if isinstance(m, _InstanceNorm) and m.weight is not None:
            torch.nn.init.normal_(m.weight), torch.nn.init.normal_(m.bias)
    return net, arch


@pytest.mark.parametrize("dim, residual, conditioning", [(2, False, "norm_affine"), (3, False, "norm_affine"),
                                                         (3, True, "norm_affine"), (2, False, "input_embedding"),
                                                         (3, True, "input_embedding")])
def test_shared_encoder_equals_the_encoder_run_once_per_modality(dim, residual, conditioning):
    """The folded encoder against the same encoder run on each modality alone (its norm affine, or its code
    concatenated to its input): the same features block by block, and gradients that are the sum over the
    modalities' runs for the shared convolutions and per modality for the affines (float64). Fails if the fold
    mixes samples and modalities (reshape order), if a norm shares statistics across modalities, or if a
    modality gets another modality's affine or code."""
    torch.manual_seed(0)
    net, _ = shared_network(dim, residual, conditioning)
    references = [reference_encoder(net, m, dim, residual) for m in range(3)]
    x = torch.randn(2, 3, *(16,) * dim, dtype=torch.float64)
    features = net._encode(x)
    per_modality = []
    for m, reference in enumerate(references):
        inputs = x[:, m:m + 1]
        if net.modality_embedding is not None:
            code = net.modality_embedding.code[m].view(1, -1, *[1] * dim).expand(2, -1, *(16,) * dim)
            inputs = torch.cat((inputs, code), 1)
        per_modality.append(reference(inputs))
    compare_branches_and_backprop(net, features, per_modality)
    references_grads = [dict(r.named_parameters()) for r in references]
    for name, p in net.encoder.named_parameters():
        expected = [g[name].grad for g in references_grads]
        if p.dim() == 2 and p.shape[0] == 3:  # a per-modality affine (M, C)
            torch.testing.assert_close(p.grad, torch.stack(expected), msg=name)
        else:
            torch.testing.assert_close(p.grad, sum(expected), msg=name)


def test_shared_encoder_has_one_branchs_convolutions():
    """The shared encoder's convolution weights are exactly one branch's, 1/M of the grouped encoder's; with the
    input code, plus the first convolution's weights on its 4 code channels."""
    grouped, _ = build(REGIONS, dim=3)
    affine, _ = build(REGIONS, dim=3, shared_branches=True, modality_conditioning="norm_affine")
    coded, _ = build(REGIONS, dim=3, shared_branches=True, modality_conditioning="input_embedding")

    def conv_parameters(net):
        return sum(m.weight.numel() for m in net.encoder.modules() if isinstance(m, torch.nn.Conv3d))

    assert 3 * conv_parameters(affine) == conv_parameters(grouped)
    first = coded.encoder.stages[0][0].convs[0].conv
    assert first.in_channels == 1 + EMBEDDING_CHANNELS
    assert conv_parameters(coded) - conv_parameters(affine) == first.weight[:, 1:].numel()


@pytest.mark.parametrize("conditioning", ["norm_affine", "input_embedding"])
def test_missing_modality_input_reaches_no_output_with_shared_branches(conditioning):
    """Whatever a missing modality's channel holds, the outputs are the same (eval), and in training nothing of
    it reaches the loss (zero input gradient), though it passes the shared encoder with the others. Fails if the
    fold lets one modality's sample influence another's (batch statistics) or if its branch is still read."""
    net, _ = build(REGIONS, shared_branches=True, modality_conditioning=conditioning)
    randomize_messages(net)
    present = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    x = torch.randn(2, 3, 16, 16, 16)
    noise = x.clone()
    noise[0, T2], noise[1, FLAIR] = 1e3 * torch.randn_like(x[0, T2]), torch.randn_like(x[1, FLAIR]) - 5
    net.eval()
    with torch.no_grad():
        for a, b in zip(net(x, present), net(noise, present)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    net.train()
    x.requires_grad_(True)
    sum(o.square().mean() for o in net(x, present)).backward()
    assert x.grad[0, T2].abs().sum() == 0 and x.grad[1, FLAIR].abs().sum() == 0
    assert x.grad[0, FLAIR].abs().sum() > 0 and x.grad[1, T2].abs().sum() > 0


def test_shared_branches_are_refused_with_batch_statistics():
    """Batch norm would normalise each modality with the statistics of all modalities folded into the batch."""
    _, arch = build(REGIONS, shared_branches=True)
    kwargs = copy.deepcopy(arch["arch_kwargs"])
    kwargs["norm_op"] = "torch.nn.BatchNorm3d"
    with pytest.raises(ValueError, match="shared modality branches need a per-sample norm"):
        get_network_from_plans(arch["network_class_name"], kwargs, arch["_kw_requires_import"], 3, 2,
                               allow_init=True, deep_supervision=False)


def test_default_trainers_share_the_encoder_and_write_the_choice_into_the_plans():
    """nnUNetTrainerCIML and its modality-dropout variant share one encoder (per-modality affines), the named
    variant keeps grouped branches; the choice shapes the parameters, so the plans record it (nnU-Net's predictor
    rebuilds from them), and plans without the key describe grouped branches."""
    for cls in (nnUNetTrainerCIML, nnUNetTrainerCIML_modalityDropout):
        assert cls.shared_branches is True and cls.modality_conditioning == "norm_affine"
    assert nnUNetTrainerCIML_groupedBranches.shared_branches is False
    _, arch = build(REGIONS, shared_branches=True)
    assert arch["arch_kwargs"]["shared_branches"] is True
    assert arch["arch_kwargs"]["modality_conditioning"] == "norm_affine"
    _, grouped = build(REGIONS)
    assert grouped["arch_kwargs"]["shared_branches"] is False
    kwargs = dict(grouped["arch_kwargs"])
    del kwargs["shared_branches"], kwargs["modality_conditioning"]
    old = get_network_from_plans(grouped["network_class_name"], kwargs, grouped["_kw_requires_import"], 3, 2,
                                 allow_init=True, deep_supervision=False)
    assert old.shared_branches is False

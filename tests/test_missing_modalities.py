"""CIMLUNet with a modality mask, and modality-dropout sampling (tiny networks built as nnU-Net builds them)."""
import itertools

import pytest
import torch

from nnunetv2_ciml.network import StageMessages, modalities_present
from nnunetv2_ciml.network.message import ABSENT_PRIMARY_LOGIT
from nnunetv2_ciml.training.modality_dropout import sample_present_modalities
from helpers import LABELS, REGIONS, build_ciml_network as build, randomize_messages

T1CE, T2, FLAIR = 0, 1, 2  # REGIONS: subtask 0 "FLAIR" <- T1ce, T2; subtask 1 "T1ce" <- T2, FLAIR


def encoder_block_grads(net, modalities: int):
    grads = [0.0] * modalities
    for p in net.encoder.parameters():  # channel block c of every grouped parameter is modality c's
        if p.grad is not None:
            for c, block in enumerate(p.grad.chunk(modalities, 0)):
                grads[c] += float(block.abs().sum())
    return grads


def test_missing_sender_sends_exactly_zero_and_its_encoder_reaches_nothing():
    """Fails if only the features are masked (the posterior's receiver part and bias still make a message), if
    the latent is gated but the KL still counts the pair, or if the encoder block still gets gradient."""
    net, _ = build(REGIONS)
    randomize_messages(net)
    net.train()
    latents = []
    hooks = [m.message.register_forward_hook(lambda mod, i, o: latents.append((mod, o)))
             for m in net.modules() if isinstance(m, StageMessages)]
    stage_of = {m.message: m for m in net.modules() if isinstance(m, StageMessages)}
    x = torch.randn(2, 3, 16, 16, 16)
    present = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    net.zero_grad()
    outputs = net(x, present)
    sum(o.square().mean() for o in outputs).backward()
    for h in hooks:
        h.remove()
    assert latents
    for identity, u in latents:
        stage = stage_of[identity]
        for pair in stage.pairs:
            block = u[:, stage.latent_slice(pair)]
            if pair.sender == T2:
                assert torch.count_nonzero(block) == 0, pair.name
            else:
                assert block.abs().sum() > 0, pair.name
    grads = encoder_block_grads(net, 3)
    assert grads[T2] == 0 and grads[T1CE] > 0 and grads[FLAIR] > 0
    t2_pairs = [k for k, p in enumerate(net.message_pairs) if p.sender == T2]
    # KL(N(0, I) || N(0, I)) = 0 up to float32 rounding of the reductions; the others are O(0.1 .. 10)
    assert all(abs(float(net.message_kl[k])) < 1e-5 for k in t2_pairs)
    assert all(float(v) > 1e-3 for k, v in enumerate(net.message_kl) if k not in t2_pairs)

    # Whatever the missing channel holds, the outputs are the same (eval: no sampling noise).
    net.eval()
    with torch.no_grad():
        noise = x.clone()
        noise[:, T2] = torch.randn_like(noise[:, T2]) * 10
        for a, b in zip(net(x, present), net(noise, present)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_missing_primary_keeps_nnunet_output_format_and_learns_its_gates():
    """A subtask without its primary still decodes (messages only): deep-supervision outputs of the full
    shapes, finite, not the full-modality outputs; the absent-primary bias gets gradient only then. Fails if
    the mask is ignored, or if the receiver side has no learnable term for an absent primary."""
    net, _ = build(REGIONS)
    randomize_messages(net)
    net.train()
    x = torch.randn(2, 3, 16, 16, 16)
    full = net(x)
    net.zero_grad()
    missing = net(x, torch.tensor([1.0, 1.0, 0.0]))  # FLAIR, the primary of subtask 0, is missing
    assert [o.shape for o in missing] == [o.shape for o in full] and len(missing) == 2
    assert all(torch.isfinite(o).all() for o in missing)
    assert not torch.allclose(missing[0], full[0])
    sum(o.square().mean() for o in missing).backward()
    stages = [m for m in net.modules() if isinstance(m, StageMessages)]
    for stage in stages:
        grad = stage.absent_primary_logit.grad
        for k, pair in enumerate(stage.pairs):
            # subtask 1's primary (T1ce) is present: its pairs' absent-primary bias is not used
            assert (grad[k] != 0) == (pair.subtask == 0), pair.name
        assert torch.all(stage.absent_primary_logit == ABSENT_PRIMARY_LOGIT)  # init: gates open when absent


def test_mask_by_argument_attribute_or_context_and_per_sample():
    """The attribute (what nnU-Net's predictor reaches), the argument and the context manager agree; an
    all-ones mask is the full-modality path; each sample of a batch follows its own mask (fails if the mask is
    reduced over the batch or broadcast the wrong way)."""
    net, _ = build(LABELS, dim=2, deep_supervision=False)
    randomize_messages(net)
    net.eval()
    x = torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x, torch.ones(2)), net(x))
        ct_only = torch.tensor([1.0, 0.0])
        by_argument = net(x, ct_only)
        with modalities_present(net, ct_only):
            by_context = net(x)
        assert net.present_modalities is None
        torch.testing.assert_close(by_argument, by_context)
        mixed = net(x, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        torch.testing.assert_close(mixed[:1], net(x[:1], torch.tensor([1.0, 0.0])))
        torch.testing.assert_close(mixed[1:], net(x[1:], torch.tensor([0.0, 1.0])))
    with pytest.raises(ValueError, match="present_modalities must have shape"):
        net(x, torch.ones(3))
    with pytest.raises(TypeError, match="only a CIMLUNet"):
        with modalities_present(torch.nn.Conv2d(2, 2, 1), ct_only):
            pass


@pytest.mark.slow  # torch.compile (dynamo tracing)
def test_no_graph_breaks_with_a_mask_under_torch_compile():
    """The masked path (training, per-sample mask, a missing primary in one sample) is one graph for
    torch.compile; fails on per-sample Python branching (e.g. ``if present[b, j]``) or a data-dependent skip."""
    net, _ = build(LABELS, dim=2, deep_supervision=False)
    net.train()
    explanation = torch._dynamo.explain(net)(torch.randn(2, 2, 16, 16), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_dropout_never_removes_every_modality_and_keeps_what_must_stay():
    """Over many draws: no sample loses everything, ``kept`` modalities are never removed, the dropped
    samples' subsets are the 6 non-empty proper subsets of 3 modalities, each about equally often, and about
    ``rate`` of the samples lose something. Fails on independent per-modality dropping (which can remove all)
    or on a subset draw that ignores ``kept``."""
    g = torch.Generator().manual_seed(0)
    present = sample_present_modalities(6000, 3, 0.5, generator=g)
    assert present.any(1).all()
    dropped = present[~present.all(1)]
    assert abs(len(dropped) / 6000 - 0.5) < 0.03
    counts = {s: int((dropped == torch.tensor(s)).all(1).sum()) for s in itertools.product((False, True), repeat=3)}
    assert counts[(False, False, False)] == 0 and counts[(True, True, True)] == 0
    assert all(abs(n / len(dropped) - 1 / 6) < 0.03 for s, n in counts.items() if any(s) and not all(s))
    kept = sample_present_modalities(2000, 3, 1.0, kept=(0, 2), generator=g)
    assert kept[:, [0, 2]].all() and not kept[:, 1].any()  # the only proper subset containing 0 and 2
    assert sample_present_modalities(50, 3, 0.0, generator=g).all()
    assert sample_present_modalities(50, 1, 1.0, generator=g).all()  # one modality: nothing removable

"""CIMLUNet with a modality mask, and modality-dropout sampling (tiny networks built as nnU-Net builds them)."""
import itertools

import pytest
import torch

from nnunetv2_ciml.decomposition import default_subtasks
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


def without_fallbacks(dataset_json: dict) -> dict:
    """``dataset_json`` with its default decomposition written out and no fallback for any subtask."""
    subtasks, _ = default_subtasks(dataset_json)
    return dict(dataset_json, ciml={"subtasks": {n: dict(s, fallbacks=[]) for n, s in subtasks.items()}})


def test_subtask_without_a_branch_to_read_decodes_from_messages_and_learns_its_gates():
    """A subtask whose primary is missing and which lists no fallback still decodes (messages only):
    deep-supervision outputs of the full shapes, finite, not the full-modality outputs; the absent-primary bias
    gets gradient only then. Fails if the mask is ignored, or if the receiver side has no learnable term for a
    subtask that reads nothing."""
    net, _ = build(without_fallbacks(REGIONS))
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
    # whatever the missing primary's channel holds, the outputs are the same (eval: no sampling noise)
    net.eval()
    with torch.no_grad():
        garbage = x.clone()
        garbage[:, FLAIR] = torch.randn_like(x[:, FLAIR]) * 100
        for a, b in zip(net(x, torch.tensor([1.0, 1.0, 0.0])), net(garbage, torch.tensor([1.0, 1.0, 0.0]))):
            assert torch.equal(a, b)


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


def _fallback_network(mode: str = "first", affine: bool = False, messages: bool = True, dim: int = 2):
    """REGIONS (T1ce, T2, FLAIR): subtask 0 "FLAIR" reads FLAIR, else T2, else T1ce; subtask 1 "T1ce" reads T1ce,
    else FLAIR, else T2 (an order of our own, so that a default order cannot pass for it)."""
    block = {"subtasks": {"FLAIR": {"primary": "FLAIR", "outputs": ["whole tumor"], "fallbacks": ["T2", "T1ce"]},
                          "T1ce": {"primary": "T1ce", "outputs": ["tumor core"], "fallbacks": ["FLAIR", "T2"]}}}
    net, arch = build(dict(REGIONS, ciml=block), dim=dim, messages=messages, deep_supervision=False,
                      fallback_mode=mode, fallback_affine=affine)
    randomize_messages(net)
    return net, arch


def _decoder_skips(net, x, present):
    """The skips each subtask decoder receives ``[subtask][stage]`` in one eval forward."""
    seen = {}
    hooks = [d.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, [t.clone() for t in args[0]]))
             for i, d in enumerate(net.decoder)]
    with torch.no_grad():
        net(x, present)
    for h in hooks:
        h.remove()
    return [seen[i] for i in range(len(net.decoder))]


@pytest.mark.parametrize("present, reads", [
    ([1, 1, 1], [FLAIR, T1CE]), ([1, 1, 0], [T2, T1CE]), ([1, 0, 0], [T1CE, T1CE]), ([0, 1, 0], [T2, T2]),
    ([0, 1, 1], [FLAIR, FLAIR]), ([0, 0, 1], [FLAIR, FLAIR])])
def test_missing_primary_is_replaced_by_its_first_present_fallback(present, reads):
    """Without messages the skips a decoder receives are exactly the branch it reads: the primary if present,
    else the first present fallback in the subtask's order. Fails if a missing primary is decoded from messages
    only (zero skips), if the mask selects another branch (e.g. channel order instead of fallback order), or if
    a fallback is read while missing."""
    net, _ = _fallback_network(messages=False)
    net.eval()
    x = torch.randn(1, 3, 16, 16)
    skips = _decoder_skips(net, x, torch.tensor([float(p) for p in present]))
    with torch.no_grad():
        features = net.encoder(x)
    for subtask, modality in enumerate(reads):
        for s, skip in enumerate(skips[subtask]):
            assert torch.equal(skip, net.modality_features(features[s], s, modality)), (subtask, s)
    assert net.acting_primaries(present) == [[net.modality_names[m]] for m in reads]


def test_fallback_reads_per_sample_and_sends_nothing_to_the_subtask_it_serves():
    """A batch whose samples miss different modalities gives each sample the outputs it gets alone; the acting
    fallback sends no message to the subtask it serves, the other present modality still does; the content of
    every missing channel (primary or fallback) changes nothing. Fails on batch-level selection, on a fallback
    that also messages its own subtask, or on a mask that lets a missing channel reach the outputs."""
    net, _ = _fallback_network()
    net.eval()
    x = torch.randn(3, 3, 16, 16)
    present = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    with torch.no_grad():
        together = net(x, present)
        for b in range(3):
            torch.testing.assert_close(together[b:b + 1], net(x[b:b + 1], present[b]))
        garbage = x.clone()
        garbage[1, FLAIR] = torch.randn_like(x[1, FLAIR]) * 100
        garbage[2, T1CE] = torch.randn_like(x[2, T1CE]) * 100
        assert torch.equal(net(garbage, present), together)
    latents = {}
    hooks = [m.message.register_forward_hook(lambda mod, i, o, s=s: latents.__setitem__(s, o))
             for s, m in net.messages.items()]
    with torch.no_grad():
        net(x[1:2], present[1])  # FLAIR missing: subtask "FLAIR" reads T2, T1ce still sends to it
    for h in hooks:
        h.remove()
    for s, u in latents.items():
        module = net.messages[s]
        for pair in module.pairs:
            block = u[:, module.latent_slice(pair)]
            silent = pair.sender == FLAIR or (pair.subtask == 0 and pair.sender == T2)
            assert (torch.count_nonzero(block) == 0) == silent, pair.name


@pytest.mark.parametrize("mode, affine", [("first", True), ("mean", False)])
def test_with_every_modality_present_fallbacks_change_nothing(mode, affine):
    """All modalities present: outputs bit-identical to the same weights in a network without fallbacks, with
    the mask given as all ones or not given, in eval and in training (same noise)."""
    net, arch = _fallback_network(mode, affine)
    if affine:
        for p in [*net.fallback_scale.values(), *net.fallback_shift.values()]:
            torch.nn.init.normal_(p)
    plain_kwargs = dict(arch["arch_kwargs"], subtask_fallbacks=None, fallback_affine=False, fallback_mode="first")
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    plain = get_network_from_plans(arch["network_class_name"], plain_kwargs, arch["_kw_requires_import"], 3, 2,
                                   allow_init=False, deep_supervision=False)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert not missing and all(k.startswith("fallback_") for k in unexpected) and (bool(unexpected) == affine)
    x = torch.randn(2, 3, 16, 16)
    for training in (False, True):
        net.train(training), plain.train(training)
        outputs = []
        for network, mask in ((plain, None), (net, None), (net, torch.ones(3))):
            torch.manual_seed(3)
            with torch.no_grad():
                outputs.append(network(x, mask))
        assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


def test_mean_fallback_reads_the_mean_of_the_present_fallbacks():
    net, _ = _fallback_network(mode="mean", messages=False)
    net.eval()
    x = torch.randn(1, 3, 16, 16)
    skips = _decoder_skips(net, x, torch.tensor([1.0, 1.0, 0.0]))  # FLAIR missing: mean of T2 and T1ce
    with torch.no_grad():
        features = net.encoder(x)
    for s, skip in enumerate(skips[0]):
        expected = (net.modality_features(features[s], s, T2) + net.modality_features(features[s], s, T1CE)) / 2
        torch.testing.assert_close(skip, expected)
    torch.testing.assert_close(skips[1][0], net.modality_features(features[0], 0, T1CE))


def test_fallback_affine_learns_only_where_its_fallback_acts():
    """The scale and shift of (subtask, fallback) get gradient exactly when that fallback is read, start as the
    identity, and are in every step's graph (DDP), also without a mask."""
    net, _ = _fallback_network(affine=True)
    assert all(torch.all(p == 1) for p in net.fallback_scale.values())
    assert all(torch.all(p == 0) for p in net.fallback_shift.values())
    net.train()
    x = torch.randn(2, 3, 16, 16)
    net.zero_grad()
    net(x, torch.tensor([1.0, 1.0, 0.0])).square().mean().backward()  # subtask 0 reads T2
    acting = net.fallback_pairs.index((0, T2))
    for s, p in net.fallback_shift.items():
        assert [bool(g.abs().sum() > 0) for g in p.grad] == [k == acting for k in range(len(net.fallback_pairs))], s
    net.zero_grad()
    net(x).square().mean().backward()
    assert all(p.grad is not None for p in [*net.fallback_scale.values(), *net.fallback_shift.values()])


def test_modality_dropout_makes_every_fallback_act():
    """With the dropout trainer's sampling (rate 0.5, primaries droppable) each fallback takes its subtask's
    place on a fair share of the samples: the first fallback whenever the primary is gone and it exists, the
    second when both are gone. Fails if the sampler keeps the primaries, or the reading ignores the order."""
    net, _ = _fallback_network()
    present = sample_present_modalities(6000, 3, 0.5, generator=torch.Generator().manual_seed(0))
    read = net.reading_weights(present.float())  # (B, S, M)
    # subtask 0 "FLAIR": FLAIR, else T2, else T1ce; of the 6 proper subsets drawn for half the samples, FLAIR is
    # missing from 3: {T1ce, T2} and {T2} read T2, {T1ce} reads T1ce
    shares = read[:, 0].mean(0)
    assert abs(float(shares[FLAIR]) - (0.5 + 0.5 * 3 / 6)) < 0.03
    assert abs(float(shares[T2]) - 0.5 * 2 / 6) < 0.03 and abs(float(shares[T1CE]) - 0.5 / 6) < 0.03

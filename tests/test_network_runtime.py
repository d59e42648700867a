"""How the CIML network runs in training: activation checkpointing of the messages, ``torch.compile`` on CPU."""
import copy

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from helpers import LABELS, REGIONS, build_ciml_network, message_modules, message_slots, set_message_projections


def _with_messages(network, seed: int = 0) -> None:
    """Non-zero messages everywhere (untrained ones are exactly zero and would hide any difference)."""
    set_message_projections(network, message_slots(network), torch.Generator().manual_seed(seed))


def _rebuilt(arch: dict, **changes):
    arch = copy.deepcopy(arch)
    arch["arch_kwargs"].update(changes)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  3, 2, allow_init=True, deep_supervision=True)


def test_message_checkpointing_gives_the_same_loss_and_gradients():
    """Training step (sampled latents, KL in the loss) with message activations recomputed in the backward pass
    vs stored: same loss and the same gradient for every parameter, and the recomputation really happens
    (each message module runs twice). Fails if the recomputation draws new latent noise (RNG state not
    preserved) or recomputes with other inputs."""
    _, arch = build_ciml_network(REGIONS, dim=2)
    checkpointed, stored = _rebuilt(arch, checkpoint_messages=True), _rebuilt(arch, checkpoint_messages=False)
    _with_messages(checkpointed)
    stored.load_state_dict(checkpointed.state_dict())
    x = torch.randn(2, 3, 32, 32)
    results = []
    for network in (checkpointed, stored):
        network.train()
        calls = [0]
        for module in message_modules(network):  # forward hooks do not fire in checkpoint's recomputation
            def counted(*args, _forward=module.forward, **kwargs):
                calls[0] += 1
                return _forward(*args, **kwargs)
            module.forward = counted
        torch.manual_seed(1)
        loss = sum(o.square().mean() for o in network(x)) + 0.1 * network.kl
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in network.named_parameters()}, calls[0]))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    modules = len(message_modules(checkpointed))
    assert modules > 0 and calls_a == 2 * calls_b == 2 * modules
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(grads_a[n].abs().sum() > 0 for n in grads_a if "message" in n)


@pytest.mark.slow
def test_torch_compile_traces_the_network_for_inference_and_training():
    """``torch.compile`` (what nnU-Net does with ``nnUNet_compile=t``) of a tiny 2D CIML network on the CPU, with
    the ``aot_eager`` backend: dynamo's graph capture and AOT autograd's forward/backward graphs, without
    inductor's C++ code generation (minutes on a shared 2-core CPU; the GPU check compiles with inductor).
    Eval output equals eager; a training step (sampled latents, KL, checkpointed messages) gives finite loss
    and gradients. Fails on code that dynamo or AOT autograd cannot trace."""
    torch._dynamo.reset()
    network, _ = build_ciml_network(LABELS, dim=2, deep_supervision=False)
    _with_messages(network)
    x = torch.randn(2, 2, 16, 16)
    compiled = torch.compile(network, backend="aot_eager")
    network.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), network(x), rtol=1e-4, atol=1e-5)
    network.train()
    loss = compiled(x).square().mean() + 0.1 * network.kl
    loss.backward()
    assert torch.isfinite(loss) and network.kl > 0
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())


@pytest.mark.parametrize("residual, shared", [(False, False), (True, False), (False, True)])
def test_recomputed_stages_give_the_same_loss_and_gradients_and_keep_less(residual, shared):
    """A training step with the encoder and decoder stages 0 and 1 recomputed in the backward pass vs kept: the
    same loss and gradients for every parameter, the stage-0 encoder convolution really runs twice, and
    autograd keeps fewer bytes. Fails if recomputation is ignored (bytes), runs other inputs or draws other
    latent noise (gradients), or if a recomputed decoder stage skips its transposed convolution or skip."""
    from nnunetv2_ciml.costs import saved_activation_bytes

    kept, arch = build_ciml_network(REGIONS, dim=3, residual=residual, shared_branches=shared)
    recomputed = _rebuilt(arch, recomputed_stages=[0, 1])
    assert recomputed.recomputed_stages == [0, 1] and all(d.recomputed_stages == [0, 1] for d in recomputed.decoder)
    _with_messages(kept)
    recomputed.load_state_dict(kept.state_dict())
    kept.train(), recomputed.train()
    x = torch.randn(2, 3, 16, 16, 16)
    results = []
    for network in (kept, recomputed):
        first = network.encoder.stem if residual else network.encoder.stages[0][0].convs[0]
        calls = []
        hook = first.register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        loss = sum(o.square().mean() for o in network(x)) + 0.1 * network.kl
        loss.backward()
        hook.remove()
        torch.manual_seed(1)
        stored = saved_activation_bytes(lambda: network(x), network.parameters())
        results.append((loss.detach(), {n: p.grad.clone() for n, p in network.named_parameters()}, len(calls), stored))
    (loss_a, grads_a, calls_a, bytes_a), (loss_b, grads_b, calls_b, bytes_b) = results
    assert (calls_a, calls_b) == (1, 2)
    assert bytes_b < 0.8 * bytes_a
    torch.testing.assert_close(loss_a, loss_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)

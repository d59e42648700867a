"""The branch width rule of ``nnunetv2_ciml.planning`` against an independent count of convolution MACs."""
import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from helpers import REGIONS, conv_macs_by_hooks, message_modules, plain_architecture
from nnunetv2_ciml.decomposition import resolve_decomposition
from nnunetv2_ciml.planning import ciml_architecture

PATCH = (32, 32, 32)


def _network(arch: dict, input_channels: int, num_classes: int):
    with torch.device("meta"):
        return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                      input_channels, num_classes, allow_init=False, deep_supervision=False).eval()


def branch_macs(arch: dict, input_channels: int, num_classes: int) -> int:
    """Convolution MACs of one patch, message modules left out (the branches' own cost)."""
    network = _network(arch, input_channels, num_classes)
    return conv_macs_by_hooks(network, torch.empty(1, input_channels, *PATCH, device="meta"),
                              exclude=message_modules(network))


def next_rounding_step(features, widths) -> list:
    """The widths one rounding step wider: those of the smallest factor at which some stage's width (``factor x
    feature`` rounded to the nearest multiple of 8) grows by 8, starting from ``widths``."""
    step = min(8 * (w // 8 + 0.5) / f for w, f in zip(widths, features)) + 1e-9
    return [8 * round(step * f / 8) for f in features]


@pytest.mark.parametrize("residual, base", [(False, 24), pytest.param(True, 40, marks=pytest.mark.slow)])
def test_branch_width_is_the_largest_within_the_plain_convolution_budget(residual, base):
    """Branches (M encoders, one decoder per subtask, messages not counted) cost at most the plain U-Net's
    convolution MACs on one patch, and one more rounding step of 8 channels would exceed that budget; widths
    are one factor x the plain widths, rounded to the nearest multiple of 8. MACs counted by forward hooks from
    the shapes each convolution sees, not by the package's ``torch.utils.flop_counter`` count. Fails on a
    budget with slack above the plain cost (the old 0.85-1.1 bounds), on widths chosen with the messages
    counted into the budget (base 24 and ResEnc base 40: a step too narrow), on rounding down or up."""
    d, _ = resolve_decomposition(REGIONS)
    plain = plain_architecture(3, n_stages=4, residual=residual, base=base)
    features = plain["arch_kwargs"]["features_per_stage"]
    budget = conv_macs_by_hooks(_network(plain, 3, 2), torch.empty(1, 3, *PATCH, device="meta"))
    arch = ciml_architecture(plain, d, PATCH, 2)
    widths = arch["arch_kwargs"]["features_per_stage"]
    assert all(w % 8 == 0 for w in widths)
    lowest = max(8 * (w // 8 - 0.5) / f for w, f in zip(widths, features))
    highest = min(8 * (w // 8 + 0.5) / f for w, f in zip(widths, features))
    assert lowest <= arch["branch_width_factor"] <= highest  # one factor, rounded to the nearest multiple of 8
    assert branch_macs(arch, 3, 2) <= budget
    wider = dict(arch, arch_kwargs=dict(arch["arch_kwargs"], features_per_stage=next_rounding_step(features, widths)))
    assert branch_macs(wider, 3, 2) > budget
    ablation = ciml_architecture(plain, d, PATCH, 2, messages=False)
    assert ablation["arch_kwargs"]["features_per_stage"] == widths

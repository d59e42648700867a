"""The branch width rule of ``nnunetv2_ciml.planning`` against an independent count of convolution MACs."""
import copy

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from helpers import REGIONS, conv_macs_by_hooks, message_modules, nnunet_brats_architecture, plain_architecture
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


def _brats_costs(arch: dict, plain: dict):
    from nnunetv2_ciml.costs import network_cost

    ciml, base = (network_cost(a, 4, 3, (128,) * 3, 2) for a in (arch, plain))
    return ciml.activation_bytes / base.activation_bytes


def _brats_decomposition():
    dataset_json = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                               "enhancing tumor": [3]}, "regions_class_order": [1, 2, 3]}
    return resolve_decomposition(dataset_json, 4)[0]


def test_recomputed_stages_are_the_fewest_that_bound_the_activations():
    """nnU-Net's BraTS plan (4 modalities, 128^3, batch 2), counted on the meta device: full-width CIML keeps
    more than 1.3x plain nnU-Net's activations; the rule recomputes the fewest highest-resolution stages that
    bring it to <= 1.3x (one stage fewer would not), records them in the plans, and ``recompute=False``
    recomputes none. A small 2D plan far below any GPU's memory is left as it is. Fails on a rule that
    recomputes every stage, none, or the lowest-resolution ones."""
    from nnunetv2_ciml.planning import ACTIVATION_RATIO_LIMIT

    d, plain = _brats_decomposition(), nnunet_brats_architecture()
    arch = ciml_architecture(plain, d, (128,) * 3, 3, width_factor=1.0, batch_size=2)
    stages = arch["arch_kwargs"]["recomputed_stages"]
    assert stages and stages == list(range(len(stages))) and len(stages) < 6
    assert _brats_costs(arch, plain) <= ACTIVATION_RATIO_LIMIT
    fewer = copy.deepcopy(arch)
    fewer["arch_kwargs"]["recomputed_stages"] = stages[:-1]
    assert _brats_costs(fewer, plain) > ACTIVATION_RATIO_LIMIT
    assert ciml_architecture(plain, d, (128,) * 3, 3, width_factor=1.0, recompute=False)["arch_kwargs"][
        "recomputed_stages"] == []
    small = ciml_architecture(plain_architecture(2, n_stages=4, base=32), resolve_decomposition(REGIONS)[0],
                              (48, 48), 2, width_factor=1.0, batch_size=5)
    assert small["arch_kwargs"]["recomputed_stages"] == []


@pytest.mark.parametrize("residual, width, recompute, shared", [
    (False, 1.0, True, False), (False, 1.0, False, False), (False, None, False, False), (True, 1.0, True, False),
    (False, 1.0, True, True), (False, 0.75, False, True)])
def test_feature_map_size_ratio_agrees_with_saved_activations(residual, width, recompute, shared):
    """``CIMLUNet.compute_conv_feature_map_size`` (what nnU-Net's planners size patch and batch by) relative to
    the plain U-Net's agrees within 15 % with the ratio of bytes autograd keeps, on nnU-Net's BraTS plan, with
    and without recomputed stages. Fails if recomputed stages are counted as kept, or the branches are not
    counted M times (shared branches: the one encoder once per modality)."""
    from nnunetv2_ciml.costs import build_on_meta

    d, plain = _brats_decomposition(), nnunet_brats_architecture(residual)
    arch = ciml_architecture(plain, d, (128,) * 3, 3, width_factor=width, recompute=recompute, batch_size=2,
                             shared_branches=shared)
    sizes = [build_on_meta(a, 4, 3, True).compute_conv_feature_map_size((128,) * 3) for a in (arch, plain)]
    assert abs((sizes[0] / sizes[1]) / _brats_costs(arch, plain) - 1) <= 0.15


def test_nnunet_planner_estimates_the_memory_of_a_ciml_network(monkeypatch):
    """nnU-Net's own ``static_estimate_VRAM_usage`` builds the CIML network from its plans entry and reads
    ``compute_conv_feature_map_size``; recomputing stage 0 lowers the estimate."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # the planner sets that many torch threads while it counts
    d, _ = resolve_decomposition(REGIONS)
    arch = ciml_architecture(plain_architecture(3, base=8), d, PATCH, 2, width_factor=1.0)
    estimates = []
    for stages in ([], [0]):
        kwargs = dict(arch["arch_kwargs"], recomputed_stages=stages)
        estimates.append(ExperimentPlanner.static_estimate_VRAM_usage(PATCH, 3, 2, arch["network_class_name"], kwargs,
                                                                      tuple(arch["_kw_requires_import"])))
    assert estimates[1] < estimates[0]
    assert estimates[0] == _network(arch, 3, 2).compute_conv_feature_map_size(PATCH)

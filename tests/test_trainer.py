"""The CIML trainers on plans written by nnU-Net's own planner (tiny 2D region dataset): the plans rewrite,
the loss (nnU-Net's + beta x KL), the KL warm-up, the named variants, edited plans, the background owner."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from helpers import (make_dataset, message_latent_layers, nnunet_environment, nnunet_variables, plan_and_preprocess,
                     read_array, write_image)
from nnunetv2_ciml.decomposition import resolve_decomposition
from nnunetv2_ciml.planning import CIML_NETWORK, ciml_architecture, stage_widths
from nnunetv2_ciml.training.kl_schedule import KLSchedule
from nnunetv2_ciml.training.trainers import (nnUNetTrainerCIML, nnUNetTrainerCIML_beta1e2, nnUNetTrainerCIML_beta1e4,
                                             nnUNetTrainerCIML_fullWidth, nnUNetTrainerCIML_MACmatched,
                                             nnUNetTrainerCIML_noMessages)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # plans from nnU-Net's planner (planned_regions_2d)


class nnUNetTrainerCIML_halfWidth(nnUNetTrainerCIML):
    branch_width_factor = 0.5


class nnUNetTrainerCIML_halfWarmup(nnUNetTrainerCIML):
    kl_schedule = KLSchedule(warmup_fraction=0.5, per_epoch=True)


def load_plans(env: dict, raw: Path) -> dict:
    return json.loads((Path(env["nnUNet_preprocessed"]) / raw.name / "nnUNetPlans.json").read_text())


def make_trainer(cls, env: dict, raw: Path, plans: dict = None, configuration: str = "2d"):
    """A trainer as ``nnUNetv2_train`` makes it (plans and dataset.json of the preprocessed dataset), on the CPU."""
    preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
    plans = load_plans(env, raw) if plans is None else plans
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    plans["continue_training"] = False  # as nnU-Net's run_training sets it
    with nnunet_variables(env):
        return cls(plans, configuration, 0, dataset_json, torch.device("cpu")), plans


@pytest.fixture(scope="module")
def ciml_plans(planned_regions_2d) -> dict:
    """The planned plans as the CIML trainers rewrite them (half-width branches: no width search, fast)."""
    env, raw = planned_regions_2d
    trainer, plans = make_trainer(nnUNetTrainerCIML_halfWidth, env, raw)
    trainer._use_ciml_architecture()
    return plans


def initialized(cls, env, raw, plans=None):
    """An initialised trainer (network, optimizer, loss) of class ``cls`` on a copy of ``plans``."""
    trainer, plans = make_trainer(cls, env, raw, json.loads(json.dumps(plans)) if plans is not None else None)
    with nnunet_variables(env):
        trainer.initialize()
    return trainer, plans


@pytest.mark.parametrize("cls, width_divisor, messages", [
    (nnUNetTrainerCIML_halfWidth, 2, True),
    (nnUNetTrainerCIML_noMessages, None, False),
])
def test_planned_plans_get_the_ciml_architecture(planned_regions_2d, cls, width_divisor, messages):
    env, raw = planned_regions_2d
    plain_features = load_plans(env, raw)["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]
    trainer, plans = make_trainer(cls, env, raw)
    trainer._use_ciml_architecture()
    arch = plans["configurations"]["2d"]["architecture"]  # what on_train_start saves as plans.json
    assert arch["network_class_name"] == CIML_NETWORK
    assert trainer.configuration_manager.network_arch_class_name == CIML_NETWORK
    assert arch["arch_kwargs"]["messages"] is messages
    assert arch["arch_kwargs"]["subtask_primaries"] == [2, 0]  # whole tumor <- FLAIR, tumor core <- T1ce
    if width_divisor:  # shrink_plans gives 8 * 2**s: halves are 4 (below 8: exact) and multiples of 8
        assert arch["arch_kwargs"]["features_per_stage"] == [f // width_divisor for f in plain_features]


def test_default_full_width_and_MACmatched_widths_follow_their_rules(planned_regions_2d):
    """``nnUNetTrainerCIML``: every branch 0.75 times the plain U-Net's stage (the width rule's choice), rounded as
    the planning rounds; ``nnUNetTrainerCIML_fullWidth``: as wide as the plain stages; ``nnUNetTrainerCIML_MACmatched``:
    the widths of the MAC-matching rule, narrower still. Fails if the default fell back to full width or the rule,
    or a variant took the default's widths."""
    env, raw = planned_regions_2d
    plain = load_plans(env, raw)["configurations"]["2d"]["architecture"]
    widths = {}
    for cls in (nnUNetTrainerCIML, nnUNetTrainerCIML_fullWidth, nnUNetTrainerCIML_MACmatched):
        trainer, plans = make_trainer(cls, env, raw)
        trainer._use_ciml_architecture()
        widths[cls] = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"]
    assert widths[nnUNetTrainerCIML] == stage_widths(plain["arch_kwargs"]["features_per_stage"], 0.75)
    assert widths[nnUNetTrainerCIML_fullWidth] == plain["arch_kwargs"]["features_per_stage"]
    decomposition, _ = resolve_decomposition(trainer.dataset_json, 3)
    rule = ciml_architecture(plain, decomposition, trainer.configuration_manager.patch_size,
                             trainer.label_manager.num_segmentation_heads)
    assert widths[nnUNetTrainerCIML_MACmatched] == rule["arch_kwargs"]["features_per_stage"]
    assert sum(widths[nnUNetTrainerCIML_MACmatched]) < sum(widths[nnUNetTrainerCIML]) < \
        sum(widths[nnUNetTrainerCIML_fullWidth])


def test_hand_edited_ciml_plans_are_kept(planned_regions_2d):
    """Fails if the trainer re-derives the architecture from plans that already describe a CIML network."""
    env, raw = planned_regions_2d
    trainer, plans = make_trainer(nnUNetTrainerCIML_halfWidth, env, raw)
    trainer._use_ciml_architecture()
    n_stages = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["n_stages"]
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4] * n_stages
    again, _ = make_trainer(nnUNetTrainerCIML, env, raw, plans)
    again._use_ciml_architecture()
    assert again.configuration_manager.network_arch_init_kwargs["features_per_stage"] == [4] * n_stages


def test_edited_message_stages_and_latent_fraction_build_that_network(planned_regions_2d):
    """Messages only at the stages the plans list, with latents of the edited fraction of the stage's width.
    Fails if the trainer or the network ignores ``message_stages`` / ``message_latent_fraction`` from the plans."""
    env, raw = planned_regions_2d
    trainer, plans = make_trainer(nnUNetTrainerCIML_halfWidth, env, raw)
    trainer._use_ciml_architecture()
    kwargs = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    kwargs.update(features_per_stage=[16 * 2 ** s for s in range(kwargs["n_stages"])], message_stages=[0, 2],
                  message_latent_fraction=0.5)
    trainer, _ = initialized(nnUNetTrainerCIML, env, raw, plans)
    network = trainer.network
    latents = message_latent_layers(network)
    assert sorted(latents) == [0, 2]  # the default has no full-resolution messages and has stage 3
    # Latent width per pair: half of the stage's 16 and 64 channels.
    assert {s: {c.stop - c.start for c in pairs.values()} for s, (_, pairs) in latents.items()} == {0: {8}, 2: {32}}
    network.train()
    outputs = network(torch.randn(2, 3, *trainer.configuration_manager.patch_size))
    assert outputs[0].shape[1] == 2 and network.kl > 0


def _deep_supervision_target(outputs, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(o.shape, generator=generator) > 0.5).float() for o in outputs]


@pytest.mark.parametrize("cls, beta", [(nnUNetTrainerCIML, 1e-3), (nnUNetTrainerCIML_beta1e2, 1e-2),
                                       (nnUNetTrainerCIML_beta1e4, 1e-4)])
def test_loss_is_nnunet_loss_plus_beta_times_the_kl_of_the_same_forward(planned_regions_2d, ciml_plans, cls, beta):
    """The training loss is nnU-Net's own deep-supervision loss (built by ``nnUNetTrainer``'s ``_build_loss``) plus
    ``kl_weight`` x the network's KL of that forward pass. Fails if the KL is left out, unweighted or weighted by
    another beta (e.g. a variant's ``kl_weight`` not used)."""
    env, raw = planned_regions_2d
    trainer, _ = initialized(cls, env, raw, ciml_plans)
    trainer.loss.beta = trainer.kl_beta(trainer.num_epochs * trainer.num_iterations_per_epoch - 1)
    assert trainer.loss.beta == beta
    nnunet_loss = nnUNetTrainer._build_loss(trainer)
    network = trainer.network
    x = torch.randn(2, 3, *trainer.configuration_manager.patch_size)
    outputs = network(x)
    kl = network.kl
    assert kl.requires_grad and kl > 0
    target = _deep_supervision_target(outputs)
    loss = trainer.loss(outputs, target)
    torch.testing.assert_close(loss, nnunet_loss(outputs, target) + beta * kl)
    assert not torch.isclose(loss, nnunet_loss(outputs, target))


@pytest.mark.parametrize("cls, weight", [(nnUNetTrainerCIML, 1e-3), (nnUNetTrainerCIML_beta1e2, 1e-2),
                                         (nnUNetTrainerCIML_beta1e4, 1e-4), (nnUNetTrainerCIML_halfWarmup, 1e-3)])
def test_beta_per_iteration_over_nnunets_budget(planned_regions_2d, ciml_plans, cls, weight):
    """beta at training iteration i of nnU-Net's 1000 epochs x 250 iterations: kl_weight throughout for the shipped
    trainers; for a half-training warm-up stepped per epoch, kl_weight x min(1, epoch / 500). Fails on a schedule
    that ignores ``kl_schedule``, counts iterations within the epoch, or ends at another weight."""
    env, raw = planned_regions_2d
    trainer, _ = initialized(cls, env, raw, ciml_plans)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (1000, 250)
    epochs = (0, 1, 250, 499, 500, 999)
    betas = {e: trainer.kl_beta(e * 250 + 249) for e in epochs}
    if cls is nnUNetTrainerCIML_halfWarmup:
        expected = {e: weight * min(1.0, e / 500) for e in epochs}
    else:
        expected = {e: weight for e in epochs}
    assert betas == pytest.approx(expected, rel=1e-12, abs=0)


def test_loss_without_beta_is_exactly_nnunets(planned_regions_2d, ciml_plans):
    """beta 0 (a warm-up's first epoch): the loss is nnU-Net's, bit for bit."""
    env, raw = planned_regions_2d
    trainer, _ = initialized(nnUNetTrainerCIML_halfWarmup, env, raw, ciml_plans)
    trainer.loss.beta = trainer.kl_beta(0)
    assert trainer.loss.beta == 0
    outputs = trainer.network(torch.randn(2, 3, *trainer.configuration_manager.patch_size))
    target = _deep_supervision_target(outputs)
    assert torch.equal(trainer.loss(outputs, target), nnUNetTrainer._build_loss(trainer)(outputs, target))


def test_background_goes_to_the_subtask_of_the_class_with_most_voxels(tmp_path):
    """Labels dataset (CT, PET; GTVp <- CT, GTVn <- PET) whose GTVn has more voxels than GTVp: the background
    goes to the PET subtask, counted from nnU-Net's preprocessed ground truth. Fails if the voxel counts are
    ignored (background to the first subtask, CT) or counted per label name rather than value."""
    env = nnunet_environment(tmp_path)
    raw = make_dataset(tmp_path / "raw", 962, regions=False, shape=(24, 24), num_cases=2, num_test=0)
    for label in (raw / "labelsTr").iterdir():  # swap labels: the large blob becomes GTVn
        seg = read_array(label)
        write_image(label, np.choose(seg, [0, 2, 1]).astype(np.uint8))
    counts = np.bincount(np.concatenate([read_array(f).ravel() for f in (raw / "labelsTr").iterdir()]), minlength=3)
    assert counts[2] > counts[1] > 0
    plan_and_preprocess(env, 962, "2d")
    trainer, plans = make_trainer(nnUNetTrainerCIML, env, raw)
    trainer._use_ciml_architecture()
    kwargs = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    subtasks = dict(zip(kwargs["subtask_names"], kwargs["subtask_outputs"]))
    assert subtasks == {"CT": [1], "PET": [0, 2]}


def test_decomposition_errors_stop_before_training(planned_regions_2d):
    env, raw = planned_regions_2d
    trainer, _ = make_trainer(nnUNetTrainerCIML, env, raw)
    trainer.dataset_json = dict(trainer.dataset_json,
                                ciml={"subtasks": {"x": {"primary": "DWI", "outputs": ["whole tumor", "tumor core"]}}})
    with pytest.raises(ValueError, match="unknown primary modality 'DWI'"):
        trainer.initialize()
    assert not trainer.was_initialized

"""The KL weight schedule: beta per training iteration, as the trainers users train and the demo's trainers set
it, and as ``train_step`` really applies it (a hand-made trainer, no planner: fast)."""
from pathlib import Path

import pytest
import torch

from helpers import REGIONS, build_ciml_network, hand_made_trainer, randomize_messages
from nnunetv2_ciml.demo.trainers import (nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo,
                                         nnUNetTrainerCIML_ShapeCompositionDemo,
                                         nnUNetTrainerCIML_ShapeCompositionDemoQuick,
                                         nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo)
from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.training.kl_schedule import (CONSTANT, EPOCH_WARMUP, FLOOR_WARMUP, ITERATION_WARMUP, KLSchedule)
from nnunetv2_ciml.training.modality_dropout import nnUNetTrainerCIML_modalityDropout
from nnunetv2_ciml.training.trainers import (nnUNetTrainerCIML, nnUNetTrainerCIML_beta1e2, nnUNetTrainerCIML_beta1e4,
                                             validate_ciml_attributes)


def test_schedules_by_hand():
    """15 epochs of 40 iterations (the demo's budget). Fails for a ramp off by one epoch or iteration, a floor
    ignored, or an epoch ramp that moves within an epoch."""
    def betas(schedule, iterations):
        return [schedule.factor(i, 40, 15) for i in iterations]

    assert betas(CONSTANT, [0, 1, 599]) == [1.0, 1.0, 1.0]
    # beta 0 through epoch 0; 1/1.5 through epoch 1; full from epoch 2 (10 % of 15 epochs = 1.5 epochs)
    assert betas(EPOCH_WARMUP, [0, 39, 40, 79, 80, 599]) == pytest.approx([0, 0, 2 / 3, 2 / 3, 1, 1])
    # every iteration: 60 iterations of ramp
    assert betas(ITERATION_WARMUP, [0, 1, 30, 59, 60, 599]) == pytest.approx([0, 1 / 60, 0.5, 59 / 60, 1, 1])
    assert betas(FLOOR_WARMUP, [0, 39, 40, 80]) == pytest.approx([0.1, 0.1, 0.1 + 0.9 * 2 / 3, 1])
    assert KLSchedule(warmup_fraction=1.0).factor(500, 10, 100) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, message", [({"warmup_fraction": 1.5}, "warmup_fraction = 1.5"),
                                             ({"warmup_fraction": float("nan")}, "warmup_fraction = nan"),
                                             ({"start": -0.1}, "start = -0.1")])
def test_invalid_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KLSchedule(**kwargs)


def test_a_trainer_without_a_schedule_object_is_refused():
    class Bad:
        kl_weight, kl_schedule, messages = 1e-3, 0.1, True  # the first version's kl_warmup_fraction, misplaced
    with pytest.raises(CIMLError, match=r"Bad\.kl_schedule = 0\.1: must be a nnunetv2_ciml\.training\.kl_schedule"):
        validate_ciml_attributes(Bad())


@pytest.mark.parametrize("cls, weight", [
    (nnUNetTrainerCIML, 1e-3), (nnUNetTrainerCIML_beta1e2, 1e-2), (nnUNetTrainerCIML_beta1e4, 1e-4),
    (nnUNetTrainerCIML_modalityDropout, 1e-3), (nnUNetTrainerCIML_ShapeCompositionDemo, 0.1),
    (nnUNetTrainerCIML_modalityDropout_ShapeCompositionDemo, 0.1), (nnUNetTrainerCIML_ShapeCompositionDemoQuick, 0.1)])
def test_the_shipped_trainers_weigh_the_kl_fully_from_the_first_iteration(nnunet_env, cls, weight):
    """beta = kl_weight at every iteration of the trainer's own budget (nnU-Net's 1000 x 250, the demo's 15 x 40):
    no warm-up, whose unweighted first epoch let the KL grow and then shocked training (docs/design.md). Fails on
    the first version's schedule (beta 0 in epoch 0, rising per epoch over 10 % of the epochs)."""
    trainer, _ = hand_made_trainer(cls, nnunet_env)
    total = trainer.num_epochs * trainer.num_iterations_per_epoch
    iterations = [0, 1, trainer.num_iterations_per_epoch - 1, trainer.num_iterations_per_epoch, total // 20,
                  total // 10, total - 1]
    assert [trainer.kl_beta(i) for i in iterations] == [weight] * len(iterations)


class nnUNetTrainerCIML_iterationWarmupTest(nnUNetTrainerCIML):
    """A ramp that moves every iteration, over 2 epochs of 3 iterations (of a 4-epoch budget set by the test)."""

    kl_weight = 0.2
    kl_schedule = KLSchedule(warmup_fraction=0.5)


@pytest.mark.parametrize("cls", [nnUNetTrainerCIML_iterationWarmupTest])
def test_train_step_applies_the_beta_of_its_iteration(nnunet_env, cls):
    """The real ``train_step`` path (on_train_epoch_start, train_step, on_train_epoch_end) on a hand-made tiny 3D
    network: the loss's beta of each step is the schedule's at the step's global iteration, also after a restart
    at epoch 3 (``--c``), and the epoch's logged beta is the mean of its steps'. Fails on a beta set once per
    epoch, an iteration counter that restarts with every epoch, or one that ignores ``current_epoch``."""
    torch.manual_seed(0)
    trainer, _ = hand_made_trainer(cls, nnunet_env)
    preprocessed = Path(trainer.preprocessed_dataset_folder)  # nnU-Net's initialize reads its files' format
    preprocessed.mkdir(parents=True)
    (preprocessed / "case.b2nd").touch()
    trainer.initialize()
    trainer.num_epochs, trainer.num_iterations_per_epoch = 4, 3
    batch = {"data": torch.randn(2, 3, 16, 16, 16),
             "target": [torch.randint(0, 2, (2, 2, *(16 // 2 ** s,) * 3)).float() for s in range(3)]}
    seen = {}
    for epoch in (0, 1, 3):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        outputs = []
        for _ in range(3):
            outputs.append(trainer.train_step(batch))
            seen[len(seen) if epoch < 3 else 9 + len(outputs) - 1] = trainer.loss.beta
        trainer.on_train_epoch_end(outputs)
    expected = {i: 0.2 * min(1.0, i / 6) for i in (0, 1, 2, 3, 4, 5, 9, 10, 11)}
    assert seen == pytest.approx(expected, abs=1e-12)
    logged = trainer.logger.local_logger.my_fantastic_logging["ciml_beta"]
    assert logged[0] == pytest.approx(0.2 * (0 + 1 + 2) / 18) and logged[1] == pytest.approx(0.2 * (3 + 4 + 5) / 18)


def test_the_study_keeps_the_first_versions_schedule():
    """The KL-schedule study's baseline is the first version's warm-up, not the default under another name."""
    assert nnUNetTrainerCIML_epochWarmup_ShapeCompositionDemo.kl_schedule == EPOCH_WARMUP != CONSTANT


def test_the_kl_gradient_reaches_the_messages_not_the_branches():
    """The KL weighs on the message modules' weights only: its gradient on every modality branch parameter is
    exactly 0, on the posterior weights it is not, and its value is the first version's (the same posterior,
    computed from the branches' features). Fails on the first version's KL, whose gradient also reached the
    branches (tens of times the segmentation's at the start of training), and on a KL detached as a whole."""
    net, _ = build_ciml_network(REGIONS, dim=3)
    randomize_messages(net)
    net.train()
    x = torch.randn(2, 3, 16, 16, 16)
    values, branch_grads, posterior_grads = [], [], []
    for first_version in (False, True):  # the network as built, then with the first version's KL
        if first_version:
            for module in net.messages.values():
                module.kl_reaches_branches = True
        net.zero_grad()
        torch.manual_seed(0)
        net(x)
        net.kl.backward()
        values.append(net.kl.detach())
        branch_grads.append(sum(float(p.grad.abs().sum()) for p in net.encoder.parameters() if p.grad is not None))
        posterior_grads.append(sum(float(m.sender_posterior.weight.grad.abs().sum()) for m in net.messages.values()))
    torch.testing.assert_close(values[0], values[1])
    assert branch_grads[0] == 0 and branch_grads[1] > 0
    assert posterior_grads[0] > 0
    # the segmentation loss still trains the branches through the messages
    net.zero_grad()
    sum(o.square().mean() for o in net(x)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters() if p.dim() > 1)

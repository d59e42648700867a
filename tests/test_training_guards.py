"""Training is never silently wrong: validated settings, the beta schedule, non-finite training stops,
checkpoints are atomic and finite, and ``--c`` falls back from a torn checkpoint.

The training tests run nnU-Net's real pipeline in this process (fingerprint, plans, preprocessing, the
trainer's ``run_training`` after nnU-Net's own ``maybe_load_checkpoint``, as ``nnUNetv2_train`` does) on a
tiny 2D dataset on the CPU, with test trainers derived from ``nnUNetTrainerCIML_CPUtest`` and, for the plain
trainers the package ships, from ``nnUNetTrainer_ShapeCompositionDemoQuick``.
"""
import hashlib
import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.planning import CIML_NETWORK
from nnunetv2_ciml.cpu_test_trainers import nnUNetTrainerCIML_CPUtest
from nnunetv2_ciml.demo.trainers import nnUNetTrainer_ShapeCompositionDemoQuick
from nnunetv2_ciml.training.guards import CheckpointError, GuardedTraining, TrainingStoppedError, save_atomically
from nnunetv2_ciml.training.kl_schedule import CONSTANT
from nnunetv2_ciml.training.trainers import nnUNetTrainerCIML, validate_ciml_attributes
from helpers import REGIONS, TRAINER_MODULES, hand_made_trainer, make_dataset, shrink_plans

DATASET_ID = 963
CONFIGURATION = "2d"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ settings, no training


@pytest.mark.parametrize("attribute, value, message", [
    ("kl_weight", float("inf"), r"kl_weight = inf: must be a finite number"),
    ("kl_weight", float("nan"), r"kl_weight = nan: must be a finite number"),
    ("kl_weight", -1e-3, r"kl_weight = -0.001: the KL weight \(beta\) must be >= 0"),
    ("kl_weight", "1e-3", r"kl_weight = '1e-3': must be a finite number"),
    ("kl_schedule", 0.1, r"kl_schedule = 0.1: must be a nnunetv2_ciml.training.kl_schedule.KLSchedule"),
    ("branch_width_factor", 0.0, r"branch_width_factor = 0.0: must be > 0"),
    ("branch_width_factor", float("inf"), r"branch_width_factor = inf: must be a finite number"),
    ("messages", "yes", r"messages = 'yes': must be True or False"),
])
def test_invalid_trainer_settings_stop_before_anything_is_written(nnunet_env, tmp_path, attribute, value, message):
    """kl_weight = inf used to train NaN losses for every epoch and exit 0. Fails if any bad value passes
    or if validation happens after the plans are rewritten."""
    variant = type(f"nnUNetTrainerCIML_bad_{attribute}", (nnUNetTrainerCIML,), {attribute: value})
    trainer, _ = hand_made_trainer(variant, nnunet_env)
    with pytest.raises(CIMLError, match=rf"nnUNetTrainerCIML_bad_{attribute}\.{message}"):
        trainer.initialize()
    assert not trainer.was_initialized
    assert trainer.configuration_manager.network_arch_class_name != CIML_NETWORK  # plans not rewritten
    # the training log (nnU-Net's __init__ wrote its citation there) says why; nothing else was written
    assert [p.suffix for p in (tmp_path / "nnUNet_results").rglob("*") if p.is_file()] == [".txt"]
    assert f"ERROR: nnUNetTrainerCIML_bad_{attribute}." in Path(trainer.log_file).read_text()


def test_a_bad_ciml_block_is_written_to_the_training_log(nnunet_env):
    """The decomposition error of a bad ``ciml`` block stops training before the plans change and is in the
    training log, where users look first (it used to reach the console only)."""
    block = {"subtasks": {"x": {"primary": "DWI", "outputs": ["whole tumor", "tumor core"]}}}
    trainer, _ = hand_made_trainer(nnUNetTrainerCIML, nnunet_env, dict(REGIONS, ciml=block))
    with pytest.raises(CIMLError, match="unknown primary modality 'DWI'"):
        trainer.initialize()
    assert not trainer.was_initialized
    assert "ERROR: dataset.json of Dataset999_Test: ciml subtask 'x': unknown primary modality 'DWI'" in \
        Path(trainer.log_file).read_text()


def exported_trainers():
    """Every trainer class in the ``__all__`` of the trainer modules."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    classes = {}
    for module in map(importlib.import_module, TRAINER_MODULES):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, nnUNetTrainer):
                classes[name] = value
    return classes


def test_every_exported_trainer_is_guarded():
    """The plain trainers we ship (demo, modality dropout, epoch timing) used to train unguarded: no atomic
    checkpoints, no non-finite stop, no --c fallback. Fails if any exported trainer class lacks GuardedTraining,
    or if the guard's hooks are shadowed by a class before it in the MRO that does not call them."""
    trainers = exported_trainers()
    assert {"nnUNetTrainer_ShapeCompositionDemo", "nnUNetTrainer_ShapeCompositionDemoQuick",
            "nnUNetTrainer_modalityDropout", "nnUNetTrainer_EpochTime", "nnUNetTrainerCIML"} <= set(trainers)
    unguarded = sorted(name for name, cls in trainers.items() if not issubclass(cls, GuardedTraining))
    assert unguarded == []
    for name, cls in trainers.items():
        for hook in ("save_checkpoint", "load_checkpoint"):  # nothing between the class and the guard replaces them
            owner = next(k for k in cls.__mro__ if hook in vars(k))
            assert owner is GuardedTraining, (name, hook, owner.__name__)


def test_valid_settings_pass():
    class Fine:
        kl_weight, kl_schedule, messages, branch_width_factor = 0, CONSTANT, False, 0.5
    validate_ciml_attributes(Fine())
    validate_ciml_attributes(nnUNetTrainerCIML_CPUtest)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    """A writer that dies half-way (disk full, exception in pickling) leaves the previous file as it was and
    no temporary file. Fails for a plain torch.save onto the target."""
    target = tmp_path / "checkpoint_latest.pth"
    torch.save({"epoch": 1}, target)
    before = sha256(target)

    def dies_half_way(path: str) -> None:
        with open(path, "wb") as f:
            f.write(target.read_bytes()[:10])
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_atomically(dies_half_way, str(target))
    assert sha256(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]
    assert save_atomically(lambda path: None, str(target)) is False  # nothing written: target untouched
    assert sha256(target) == before
    assert save_atomically(lambda path: torch.save({"epoch": 2}, path), str(target)) is True
    assert torch.load(target)["epoch"] == 2


_WRITER = textwrap.dedent("""
    import sys, torch
    from nnunetv2_ciml.training.guards import save_atomically
    target = sys.argv[1]
    weights = torch.randn(8_000_000)  # 32 MB: the write is most of each loop
    epoch = 0
    while True:
        epoch += 1
        save_atomically(lambda path: torch.save({"epoch": epoch, "w": weights}, path), target)
        print(epoch, flush=True)
""")


@pytest.mark.slow  # fresh processes killed while writing
def test_sigkill_while_writing_checkpoints_never_leaves_a_torn_file(tmp_path):
    """Kill a process that keeps rewriting a 32 MB checkpoint at 3 moments; every time the checkpoint loads.
    With a plain torch.save onto the target, most kills land mid-write and leave a truncated zip."""
    target = tmp_path / "checkpoint_latest.pth"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    for delay in (0.05, 0.13, 0.29):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "1"  # one complete checkpoint exists
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        checkpoint = torch.load(target)
        assert checkpoint["epoch"] >= 1 and checkpoint["w"].shape == (8_000_000,)


# --------------------------------------------------------------------------------- real nnU-Net training


class nnUNetTrainerCIML_guardTest(nnUNetTrainerCIML_CPUtest):
    """CPU-test budget, beta 1e-2 from the first iteration."""

    kl_weight = 1e-2


class nnUNetTrainerCIML_nanDataTest(nnUNetTrainerCIML_guardTest):
    """From epoch 1, iteration 3, one voxel of the batch is NaN, as preprocessed data with NaN would give."""

    def train_step(self, batch: dict) -> dict:
        if self.current_epoch == 1 and self._iteration == 2:
            batch["data"][0, 0, 0, 0] = float("nan")
        return super().train_step(batch)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """nnU-Net folders with a planned and preprocessed tiny 2D region dataset; yields (root, env)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    root = tmp_path_factory.mktemp("guards")
    env = dict(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_compile="f", nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1")
    raw = make_dataset(root / "raw", DATASET_ID, regions=True, shape=(32, 32), num_cases=5, num_test=0)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        extract_fingerprints([DATASET_ID], num_processes=1)
        plan_experiments([DATASET_ID])
        preprocess([DATASET_ID], configurations=(CONFIGURATION,), num_processes=(1,))
        shrink_plans(root / "preprocessed", raw.name, CONFIGURATION)
        mp.setenv("nnUNet_n_proc_DA", "0")
        torch.set_num_threads(1)
        try:
            yield root, raw.name
        finally:
            torch.set_num_threads(threads)


def make_trainer(prepared, cls, continue_training: bool = False):
    """The trainer as nnU-Net's get_trainer_from_args builds it (plans with continue_training)."""
    root, name = prepared
    plans = json.loads((root / "preprocessed" / name / "nnUNetPlans.json").read_text())
    plans["continue_training"] = continue_training
    dataset_json = json.loads((root / "preprocessed" / name / "dataset.json").read_text())
    return cls(plans=plans, configuration=CONFIGURATION, fold=0, dataset_json=dataset_json,
               device=torch.device("cpu"))


def train(prepared, cls, continue_training: bool = False, validation_only: bool = False):
    """What nnUNetv2_train does after finding the trainer class: load a checkpoint (--c/--val), train."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    trainer = make_trainer(prepared, cls, continue_training)
    maybe_load_checkpoint(trainer, continue_training, validation_only)
    if not validation_only:
        trainer.run_training()
    return trainer


def log_text(fold: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))


@pytest.fixture(scope="module")
def trained(prepared):
    trainer = train(prepared, nnUNetTrainerCIML_guardTest)
    return Path(trainer.output_folder)


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net trains a model for the module
def test_the_constant_schedule_gives_full_beta_from_epoch_0(trained):
    """The logged beta of every epoch of a real training is kl_weight (a warm-up would log 0 for epoch 0)."""
    logging = torch.load(trained / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert logging["ciml_beta"] == [1e-2, 1e-2]
    assert not list(trained.glob(".*.partial"))  # atomic writes leave no temporary file


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net trains a model for the module
def test_torn_latest_checkpoint_then_continue_falls_back_with_a_warning(prepared, trained, tmp_path):
    """Fault injection: the run was killed before its end (no checkpoint_final) while checkpoint_latest.pth was
    half written. ``--c`` used to die in PytorchStreamReader; now it continues from the newest readable
    checkpoint (checkpoint_best.pth), says so in the log, and finishes."""
    (trained / "checkpoint_final.pth").unlink()
    best = (trained / "checkpoint_best.pth").read_bytes()
    best_epoch = torch.load(trained / "checkpoint_best.pth", map_location="cpu", weights_only=False)["current_epoch"]
    (trained / "checkpoint_latest.pth").write_bytes(best[:len(best) // 2])
    trainer = train(prepared, nnUNetTrainerCIML_guardTest, continue_training=True)
    log = log_text(trained)
    assert ("WARNING: checkpoint_latest.pth cannot be read (RuntimeError: PytorchStreamReader failed reading zip "
            "archive: failed finding central directory); continuing from checkpoint_best.pth (epoch "
            f"{best_epoch}), the newest readable checkpoint") in log
    final = torch.load(trained / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and trainer.current_epoch == 2
    assert not (trained / "checkpoint_latest.pth").exists()  # nnU-Net removes it at the end, as always


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net trains a model for the module
def test_no_readable_checkpoint_is_a_clear_error_and_touches_nothing(prepared, trained):
    """Torn latest and best, no final: a CheckpointError naming each file and why; nothing is written."""
    (trained / "checkpoint_final.pth").unlink(missing_ok=True)
    best = (trained / "checkpoint_best.pth").read_bytes()
    (trained / "checkpoint_latest.pth").write_bytes(best[:len(best) // 2])
    (trained / "checkpoint_best.pth").write_bytes(b"not a checkpoint")
    before = {p.name: sha256(p) for p in trained.glob("checkpoint_*.pth")}
    with pytest.raises(CheckpointError, match=r"cannot continue the training in .*fold_0: no readable checkpoint: "
                                              r"checkpoint_latest\.pth \(RuntimeError: .*\); checkpoint_best\.pth"):
        train(prepared, nnUNetTrainerCIML_guardTest, continue_training=True)
    assert {p.name: sha256(p) for p in trained.glob("checkpoint_*.pth")} == before
    # Without --c (nnUNetv2_train --val) there is no fallback: validating other weights would be silently wrong.
    (trained / "checkpoint_final.pth").write_bytes(best[:100])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*checkpoint_final\.pth' cannot be used: RuntimeError"):
        train(prepared, nnUNetTrainerCIML_guardTest, validation_only=True)


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net trains a model for the module
def test_nan_loss_stops_training_and_keeps_the_last_finite_checkpoint(prepared):
    """NaN data in epoch 1, iteration 3: training stops there naming epoch, iteration and term; the
    checkpoint written after epoch 0 stays finite and no final checkpoint is written. Before, training went on
    with NaN losses, exited 0 and saved NaN weights."""
    with pytest.raises(TrainingStoppedError, match=r"non-finite training loss in epoch 1, iteration 3 of 4: "
                                                   r"segmentation loss and beta \* KL and mean message KL not finite"):
        train(prepared, nnUNetTrainerCIML_nanDataTest)
    fold = Path(make_trainer(prepared, nnUNetTrainerCIML_nanDataTest).output_folder)
    assert not (fold / "checkpoint_final.pth").exists()
    best = torch.load(fold / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    assert best["current_epoch"] == 1
    assert all(torch.isfinite(w).all() for w in best["network_weights"].values() if w.is_floating_point())
    assert "training stopped: non-finite training loss in epoch 1, iteration 3 of 4" in log_text(fold)


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net trains a model for the module
def test_non_finite_weights_are_never_saved(prepared, tmp_path):
    """The last line of defence (weights gone NaN after the last loss check): save_checkpoint refuses and the
    existing checkpoint keeps its bytes."""
    trainer = make_trainer(prepared, nnUNetTrainerCIML_guardTest)
    trainer.initialize()
    target = tmp_path / "checkpoint_best.pth"
    trainer.save_checkpoint(str(target))
    before = sha256(target)
    with torch.no_grad():
        next(trainer.network.parameters())[0].fill_(float("inf"))
    with pytest.raises(TrainingStoppedError, match=r"weights hold NaN/Inf .*checkpoint_best\.pth was not written"):
        trainer.save_checkpoint(str(target))
    assert sha256(target) == before


# ------------------------------------------------------------------------------- a plain (non-CIML) trainer


class nnUNetTrainer_plainNanTest(nnUNetTrainer_ShapeCompositionDemoQuick):
    """The plain demo trainer with one NaN voxel in the batch of epoch 0, iteration 2."""

    def train_step(self, batch: dict) -> dict:
        if self.current_epoch == 0 and self._iteration == 1:
            batch["data"][0, 0, 0, 0] = float("nan")
        return super().train_step(batch)


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net runs two training iterations of a plain trainer
def test_a_plain_trainer_stops_on_nan_and_continues_from_a_readable_checkpoint(prepared):
    """A plain nnU-Net trainer we ship (nnUNetTrainer_ShapeCompositionDemoQuick) has the same guards as CIML:
    a NaN loss stops the run in the iteration it occurs, naming epoch and iteration, without writing a
    checkpoint; and ``--c`` with a torn checkpoint_latest.pth continues from checkpoint_best.pth with a warning.
    Fails for the plain nnUNetTrainer behaviour: training on through NaN losses (exit 0), and a
    PytorchStreamReader traceback on the torn checkpoint."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    with pytest.raises(TrainingStoppedError, match=r"non-finite training loss in epoch 0, iteration 2 of 5: loss not "
                                                   r"finite \(loss nan\)"):
        train(prepared, nnUNetTrainer_plainNanTest)
    fold = Path(make_trainer(prepared, nnUNetTrainer_plainNanTest).output_folder)
    assert not list(fold.glob("checkpoint_*.pth")) and not list(fold.glob(".*.partial"))
    assert "training stopped: non-finite training loss in epoch 0, iteration 2 of 5" in log_text(fold)

    trainer = make_trainer(prepared, nnUNetTrainer_ShapeCompositionDemoQuick)
    trainer.initialize()
    fold = Path(trainer.output_folder)
    trainer.save_checkpoint(str(fold / "checkpoint_best.pth"))
    assert not list(fold.glob(".*.partial"))  # written through the atomic path
    best = (fold / "checkpoint_best.pth").read_bytes()
    (fold / "checkpoint_latest.pth").write_bytes(best[:len(best) // 2])
    resumed = make_trainer(prepared, nnUNetTrainer_ShapeCompositionDemoQuick, continue_training=True)
    maybe_load_checkpoint(resumed, continue_training=True, validation_only=False)
    assert resumed.was_initialized and resumed.current_epoch == 1  # nnU-Net stores the epoch to continue with
    assert ("WARNING: checkpoint_latest.pth cannot be read (RuntimeError: PytorchStreamReader failed reading zip "
            "archive: failed finding central directory); continuing from checkpoint_best.pth (epoch 1), the newest "
            "readable checkpoint") in log_text(fold)
    assert (fold / "checkpoint_best.pth").read_bytes() == best

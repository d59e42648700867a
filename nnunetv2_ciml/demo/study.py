"""Studies on the demonstration's data: one folder per data seed, each model trained once, then predicted.

The benchmark scripts that compare trainers on the demo's data (``benchmarks/kl_schedule_study.py``,
``demo_width_study.py``, ``missing_modalities.py``, ``modality_robustness.py``) share this layout, so that a
model one study trained is reused by the next one pointed at the same folder::

    OUT/seed_<k>/nnUNet_raw, nnUNet_preprocessed, nnUNet_results   the demo's dataset and plans for data seed k
    OUT/seed_<k>/logs/train_<model>.log                           nnU-Net's output
    OUT/seed_<k>/predictions/<model>, evaluation/<model>           held-out predictions and their evaluation

A ``nnunetv2_ciml demo`` run folder has the same layout, so a study may also read the models of
``benchmarks/demo_seeds.py``'s runs. Training is not seeded: nnU-Net's sampling and augmentation differ per run.
"""
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict

from nnunetv2_ciml.demo.dataset import (CONFIGURATION, DATASET_ID, DEFAULT_SETTINGS, FOLD, PLANS, QUICK_SETTINGS,
                                        DemoData, model_folder, nnunet_environment, prepare_dataset)
from nnunetv2_ciml.demo import epoch_log

__all__ = ["SeedRun", "prepare_seed", "train_model", "learning_curves"]


@dataclass(frozen=True)
class SeedRun:
    """The demo's data and plans of one data seed: its folder, nnU-Net environment and :class:`DemoData`."""

    seed: int
    run_dir: Path
    env: Dict[str, str]
    data: DemoData

    def model_folder(self, trainer: str) -> Path:
        return model_folder(self.run_dir, trainer)

    def fold_folder(self, trainer: str) -> Path:
        return self.model_folder(trainer) / f"fold_{FOLD}"


def prepare_seed(out: Path, seed: int, quick: bool = False) -> SeedRun:
    """Data and plans of data seed ``seed`` in ``out/seed_<seed>`` (what is there is kept)."""
    run_dir = out / f"seed_{seed}"
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    env = nnunet_environment(run_dir, "cpu")
    settings = replace(QUICK_SETTINGS if quick else DEFAULT_SETTINGS, seed=seed)
    return SeedRun(seed, run_dir, env, prepare_dataset(run_dir, settings, env, run_dir / "logs", verbose=False))


def train_model(run: SeedRun, trainer: str, model: str) -> float:
    """``nnUNetv2_train`` fold 0 of ``trainer`` on one torch thread, unless a final checkpoint is there; returns
    the seconds it took (0 when kept)."""
    from nnunetv2_ciml.demo import nnunet_steps

    if (run.fold_folder(trainer) / "checkpoint_final.pth").is_file():
        return 0.0
    start = time.perf_counter()
    nnunet_steps.train(DATASET_ID, CONFIGURATION, FOLD, trainer, PLANS, "cpu", 1, run.env,
                       run.run_dir / "logs" / f"train_{model}.log", f"seed {run.seed}: train {model}",
                       show_progress=False)
    return round(time.perf_counter() - start, 1)


def learning_curves(run: SeedRun, trainer: str) -> Dict[str, list]:
    """The trained model's train loss, validation loss and pseudo Dice per epoch
    (:func:`nnunetv2_ciml.demo.epoch_log.learning_curves`)."""
    return epoch_log.learning_curves(str(run.fold_folder(trainer) / epoch_log.EPOCH_LOG_NAME))

"""The demonstration's dataset and plans: settings, nnU-Net folders, generation, planning and narrower plans.

:func:`prepare_dataset` is the first two stages of ``nnunetv2_ciml demo`` and of the studies run on the demo's
data (``benchmarks/demo_width_study.py``, ``benchmarks/missing_modalities.py``): a ShapeComposition dataset
(:mod:`nnunetv2_ciml.demo.shape_composition`) as ``DIR/nnUNet_raw/Dataset990_ShapeComposition`` with held-out
cases in ``imagesTs``/``labelsTs`` and their complementary masks; ``nnUNetv2_plan_and_preprocess -c 2d``; then
narrower plans next to nnU-Net's, as a user may edit plans (:func:`narrow_plans`): nnU-Net plans 48x48 images as
a 4-stage U-Net up to 256 features with batch size 2, sized for a GPU; the demo keeps the topology, caps the
features (``DemoSettings.base_features``, ``max_features``) and sets the batch size, so that three models train
on a 2-core CPU in minutes. CIML derives its branch widths from these plans as always.

The nnU-Net folders are ``DIR/nnUNet_raw``, ``DIR/nnUNet_preprocessed`` and ``DIR/nnUNet_results`` whatever the
environment says: the demo never reads or writes the user's own nnU-Net folders.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

__all__ = ["DATASET_ID", "DATASET_NAME", "CONFIGURATION", "FOLD", "PLANS", "MODELS", "DemoSettings",
           "DEFAULT_SETTINGS", "QUICK_SETTINGS", "DemoData", "nnunet_environment", "narrow_plans", "generate_dataset",
           "plan_dataset", "load_dataset", "prepare_dataset", "model_folder"]

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_ShapeComposition"
CONFIGURATION = "2d"
FOLD = "0"
PLANS = "nnUNetPlansShapeCompositionDemo"
MODELS = ("nnUNet", "CIML", "CIML_noMessages")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and how much it trains (stored in ``results.json["settings"]``).

    Data: ``num_train`` training cases (nnU-Net's fold 0 trains on 80 %), ``num_test`` held-out cases,
    ``size`` x ``size`` pixels, object radii ``radius``, ``num_modalities`` (3: modality C carries the
    complementary information alone, see the generator), data ``seed``. Plans: features per stage
    ``min(base_features * 2**s, max_features)``, ``batch_size``. ``trainers``: model -> trainer class name.
    ``figure_cases``: complementary held-out cases shown in the example grid.
    """

    num_train: int = 60
    num_test: int = 40
    size: int = 48
    radius: Tuple[int, int] = (4, 8)
    num_modalities: int = 3
    seed: int = 0  # of the data: training itself is not seeded
    # the plans: narrower than nnU-Net's, for a CPU run of minutes
    base_features: int = 32
    max_features: int = 128
    batch_size: int = 5
    trainers: Dict[str, str] = field(default_factory=lambda: {
        "nnUNet": "nnUNetTrainer_ShapeCompositionDemo",
        "CIML": "nnUNetTrainerCIML_ShapeCompositionDemo",
        "CIML_noMessages": "nnUNetTrainerCIML_noMessages_ShapeCompositionDemo"})
    figure_cases: int = 3


DEFAULT_SETTINGS = DemoSettings()
QUICK_SETTINGS = DemoSettings(
    num_train=10, num_test=4, size=48, radius=(4, 7), base_features=8, max_features=32, batch_size=4,
    trainers={"nnUNet": "nnUNetTrainer_ShapeCompositionDemoQuick",
              "CIML": "nnUNetTrainerCIML_ShapeCompositionDemoQuick",
              "CIML_noMessages": "nnUNetTrainerCIML_noMessages_ShapeCompositionDemoQuick"},
    figure_cases=2)


@dataclass(frozen=True)
class DemoData:
    """A prepared demo dataset: the raw dataset folder, its ``dataset.json``, per held-out case its channel files
    (``cases``) and objects, the held-out information structure (``structure``, with ``complementary_cases``) and
    how the plans were narrowed (``plans_edit``, see :func:`narrow_plans`)."""

    raw: Path
    dataset_json: dict
    cases: Dict[str, List[str]]
    objects: dict
    structure: dict
    plans_edit: dict

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def complementary_cases(self) -> List[str]:
        return list(self.structure["complementary_cases"])


def nnunet_environment(out_dir: Path, device: str) -> Dict[str, str]:
    """The environment of the nnU-Net subprocesses: nnU-Net folders inside ``out_dir``, the trainer shim
    registered, compile off, and on CPU one augmentation and one export worker, unless the environment sets them."""
    from nnunetv2_ciml.registration import register_ext_trainer_dir

    env = dict(os.environ)
    env.update(nnUNet_raw=str(out_dir / "nnUNet_raw"), nnUNet_preprocessed=str(out_dir / "nnUNet_preprocessed"),
               nnUNet_results=str(out_dir / "nnUNet_results"))
    env.setdefault("nnUNet_compile", "f")
    if device == "cpu":
        env.setdefault("nnUNet_n_proc_DA", "1")
        # nnU-Net's final validation and its predictor export through a pool of spawned workers, each of which
        # imports torch and nnU-Net first: on a small CPU that costs more than the demo's export work itself
        env.setdefault("nnUNet_def_n_proc", "1")
    register_ext_trainer_dir(env)
    return env


def narrow_plans(preprocessed_dataset: Path, configuration: str, base_features: int, max_features: int,
                 batch_size: int, plans_name: str = PLANS) -> dict:
    """Write ``plans_name.json`` next to nnU-Net's ``nnUNetPlans.json``: the same plans with features per
    stage ``min(base_features * 2**s, max_features)`` and ``batch_size`` for ``configuration``.

    Returns ``{"features_per_stage": [before, after], "batch_size": [before, after]}``.
    """
    source = preprocessed_dataset / "nnUNetPlans.json"
    plans = json.loads(source.read_text())
    config = plans["configurations"][configuration]
    kwargs = config["architecture"]["arch_kwargs"]
    before = {"features_per_stage": list(kwargs["features_per_stage"]), "batch_size": config["batch_size"]}
    kwargs["features_per_stage"] = [min(base_features * 2 ** s, max_features) for s in range(kwargs["n_stages"])]
    config["batch_size"] = batch_size
    plans["plans_name"] = plans_name
    (preprocessed_dataset / f"{plans_name}.json").write_text(json.dumps(plans, indent=4))
    return {"features_per_stage": [before["features_per_stage"], kwargs["features_per_stage"]],
            "batch_size": [before["batch_size"], batch_size]}


def _test_cases(raw: Path, file_ending: str, num_modalities: int) -> Dict[str, List[str]]:
    labels = sorted(p.name[:-len(file_ending)] for p in (raw / "labelsTs").iterdir() if p.name.endswith(file_ending))
    return {c: [str(raw / "imagesTs" / f"{c}_{m:04d}{file_ending}") for m in range(num_modalities)] for c in labels}


def generate_dataset(out_dir: Path, settings: DemoSettings) -> Path:
    """The ShapeComposition dataset of ``settings`` in ``out_dir/nnUNet_raw`` (kept when already there); returns
    its folder."""
    from nnunetv2_ciml.demo.shape_composition import generate_shape_composition

    raw = out_dir / "nnUNet_raw" / DATASET_NAME
    if not (raw / "dataset.json").is_file():
        generate_shape_composition(raw, num_train=settings.num_train, num_test=settings.num_test, size=settings.size,
                                   radius=settings.radius, num_modalities=settings.num_modalities, seed=settings.seed)
    return raw


def plan_dataset(out_dir: Path, settings: DemoSettings, env: Dict[str, str], logs: Path, verbose: bool = True,
                 stream: Optional[TextIO] = None) -> dict:
    """nnU-Net's planning and preprocessing (kept when already done), then the narrower plans; returns
    :func:`narrow_plans`' record. ``env``: :func:`nnunet_environment`; nnU-Net's log in ``logs``; progress lines
    to ``stream`` (default stdout) when ``verbose``."""
    from nnunetv2_ciml.demo import nnunet_steps

    preprocessed = out_dir / "nnUNet_preprocessed" / DATASET_NAME
    if not (preprocessed / "nnUNetPlans.json").is_file():
        nnunet_steps.plan_and_preprocess(DATASET_ID, CONFIGURATION, env, logs / "plan_and_preprocess.log", verbose,
                                         stream)
    return narrow_plans(preprocessed, CONFIGURATION, settings.base_features, settings.max_features,
                        settings.batch_size)


def load_dataset(raw: Path, settings: DemoSettings, plans_edit: dict) -> DemoData:
    """The :class:`DemoData` of a generated dataset."""
    from nnunetv2_ciml.demo.shape_composition import information_structure

    dataset_json = json.loads((raw / "dataset.json").read_text())
    return DemoData(raw=raw, dataset_json=dataset_json,
                    cases=_test_cases(raw, dataset_json["file_ending"], settings.num_modalities),
                    objects=json.loads((raw / "objects.json").read_text()),
                    structure=information_structure(raw)["Ts"], plans_edit=plans_edit)


def prepare_dataset(out_dir: Path, settings: DemoSettings, env: Dict[str, str], logs: Path,
                    verbose: bool = True) -> DemoData:
    """:func:`generate_dataset`, :func:`plan_dataset` and :func:`load_dataset` in one (an interrupted study
    resumes: what is there is kept)."""
    raw = generate_dataset(out_dir, settings)
    return load_dataset(raw, settings, plan_dataset(out_dir, settings, env, logs, verbose))


def model_folder(out_dir: Path, trainer: str) -> Path:
    """Where ``nnUNetv2_train`` puts a demo model of ``trainer`` (fold folders inside)."""
    return out_dir / "nnUNet_results" / DATASET_NAME / f"{trainer}__{PLANS}__{CONFIGURATION}"

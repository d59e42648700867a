"""``nnunetv2_ciml demo``: ShapeComposition through the real nnU-Net pipeline, three models, one report.

Stages (each timed; ``results.json["seconds"]``):

1. ``generate``: a ShapeComposition dataset (:mod:`nnunetv2_ciml.demo.shape_composition`) as
   ``DIR/nnUNet_raw/Dataset990_ShapeComposition``: held-out cases in ``imagesTs``/``labelsTs`` with their
   complementary masks.
2. ``plan_and_preprocess``: ``nnUNetv2_plan_and_preprocess -c 2d``; then the demo writes narrower plans
   next to nnU-Net's, as a user may edit plans (:func:`narrow_plans`): nnU-Net plans 64x64 images as a
   5-stage U-Net up to 512 features with batch size 3, sized for a GPU; the demo keeps the topology and
   caps the features (``DemoSettings.base_features``, ``max_features``) and sets the batch size, so
   that three models train on a 2-core CPU in minutes. CIML derives its branch widths from these plans
   as always (each branch as wide as the plain U-Net's stage, ``nnUNetTrainerCIML``'s default).
3. ``train``: ``nnUNetv2_train 990 2d 0`` for nnU-Net (``nnUNetTrainer``), CIML and CIML without
   messages, all with the same budget (``nnunetv2_ciml.training.demo_trainers``), fold 0 of nnU-Net's
   5-fold split, side by side on CPU (see below).
4. ``predict_<model>``: nnU-Net's predictor (``nnUNetPredictor``, the Python API of ``nnUNetv2_predict``)
   on the held-out cases.
5. ``evaluate``: :func:`nnunetv2_ciml.evaluation.evaluate_folder` (``nnunet`` mode: Dice and HD95 per
   label, empty-case rules of BraTS) on all held-out cases, and on the complementary ones (those with
   decoy/twin pairs) Dice, Dice inside the complementary masks and pair accuracy
   (:mod:`nnunetv2_ciml.demo.complementary`).
6. ``explain``: Grad-CAM on CIML's messages (:mod:`nnunetv2_ciml.interpretability`) for every
   held-out case (maps and overlays of the ``figure_cases`` written to ``explain/``);
   ``complementary_share`` is the mean over complementary cases of the share of the message-map mass
   (all senders, all subtasks) inside the complementary mask, ``complementary_area_share`` the mean of
   the mask's share of the image over the same cases.
7. ``report``: ``results.json``, ``report.md`` and figures (:mod:`nnunetv2_ciml.demo.report`).

On the console (unless ``verbose=False``): where the logs are, each stage with its time, one line per
training epoch and a line whenever a step was silent for 25 s (:mod:`nnunetv2_ciml.demo.nnunet_steps`).

The nnU-Net folders are ``DIR/nnUNet_raw``, ``DIR/nnUNet_preprocessed`` and ``DIR/nnUNet_results``
whatever the environment says: the demo never reads or writes the user's own nnU-Net folders. To use
nnU-Net's commands on the demo's models, export those three paths (``report.md`` lists the commands).

Devices and processes: ``device="auto"`` uses CUDA when torch sees it. On CPU the three trainings run
side by side, one per core up to three (:func:`training_layout`), each with ``cores // parallel`` torch
threads and one augmentation worker (``nnUNet_n_proc_DA=1``, unless the environment sets it): on 2 cores
two trainings of one thread each finish in about the time one training with two threads takes (a
2-thread step is only 1.7x faster than a 1-thread one, and the augmentation worker and nnU-Net's Python
overhead fill the gaps): on an idle 2-core machine the three trainings took 4 min 26 s together, their own
times summing to 8 min 15 s. On CUDA they
train one after another on the one device, as ``nnUNetv2_train`` would. Prediction and Grad-CAM use
one torch thread per core. ``torch.compile`` is off (``nnUNet_compile=f``) unless the environment sets
``nnUNet_compile``: for a run of minutes, compiling costs more than it saves.

What the demonstration claims, and how ``report.md`` decides whether each held (:func:`claims`):

- CIML's mean Dice on all held-out cases is at least nnU-Net's (no tolerance);
- on the complementary cases CIML's mean Dice exceeds the no-message ablation's by at least
  ``CLEAR_MARGIN`` (0.05);
- ``complementary_share`` is at least ``SHARE_FACTOR`` (2) times ``complementary_area_share``.

The numbers are what was measured. The demo's choices that differ from the defaults (CIML's beta 0.1
instead of 1e-3, the budget; see ``nnunetv2_ciml.training.demo_trainers``) were made on earlier runs,
with the numbers recorded there; the thresholds above were fixed before them.
"""
import concurrent.futures
import contextlib
import datetime
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from nnunetv2_ciml.progress import format_duration
from nnunetv2_ciml.errors import CIMLError

__all__ = ["DemoSettings", "DEFAULT_SETTINGS", "QUICK_SETTINGS", "DemoError", "run_demo", "narrow_plans",
           "nnunet_environment", "claims", "DATASET_ID", "DATASET_NAME", "CONFIGURATION", "FOLD", "PLANS",
           "MODELS", "CLEAR_MARGIN", "SHARE_FACTOR", "training_layout"]

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_ShapeComposition"
CONFIGURATION = "2d"
FOLD = "0"
PLANS = "nnUNetPlansShapeCompositionDemo"
MODELS = ("nnUNet", "CIML", "CIML_noMessages")
CLEAR_MARGIN = 0.05
SHARE_FACTOR = 2.0
MARKER = "nnunetv2_ciml_demo.json"  # written first; marks a folder as the demo's (for overwrite)


class DemoError(CIMLError, RuntimeError):
    """The demonstration cannot run (output folder, device) or one of its stages failed."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo generates and how much it trains (stored in ``results.json["settings"]``).

    Data: ``num_train`` training cases (nnU-Net's fold 0 trains on 80 %), ``num_test`` held-out cases,
    ``size`` x ``size`` pixels, object radii ``radius``, ``num_modalities`` (3: modality C carries the
    complementary information alone, see the generator). Plans: features per stage
    ``min(base_features * 2**s, max_features)``, ``batch_size``. ``trainers``: model -> trainer class name.
    ``figure_cases``: complementary held-out cases shown in the example grid.
    """

    num_train: int = 60
    num_test: int = 40
    size: int = 48
    radius: Tuple[int, int] = (4, 8)
    num_modalities: int = 3
    seed: int = 0
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


def _training_record(trainer: str, model_folder: Path) -> dict:
    from nnunetv2_ciml.registration import trainer_class

    cls = trainer_class(trainer)
    record = {"trainer": trainer, "epochs": cls.budget_epochs, "iterations_per_epoch": cls.budget_iterations,
              "model_folder": str(model_folder)}
    if hasattr(cls, "kl_weight"):  # without messages there is no KL, so no beta to record
        record.update(messages=cls.messages, beta=cls.kl_weight if cls.messages else None,
                      beta_warmup_fraction=cls.kl_warmup_fraction if cls.messages else None)
    return record


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
        # imports torch and nnU-Net: 8 of them cost about 40 s per model on 2 cores, 1 does the same work
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


def training_layout(device: str, cores: int) -> Tuple[int, int]:
    """(trainings at a time, torch threads per training): on CPU one training per core up to ``len(MODELS)``,
    the cores shared among them; on CUDA one at a time (nnU-Net's threads)."""
    if device != "cpu":
        return 1, 1
    parallel = max(1, min(len(MODELS), cores))
    return parallel, max(1, cores // parallel)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda was asked for, but torch sees no CUDA device (torch "
                        f"{torch.__version__}, built with CUDA {torch.version.cuda})")
    if device not in ("cpu", "cuda"):
        raise DemoError(f"device must be auto, cpu or cuda, not {device!r}")
    return device


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that is not empty unless it holds an earlier demo run and ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DemoError(f"output folder {str(out_dir)!r} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).is_file():
            raise DemoError(f"output folder {str(out_dir)!r} is not empty and holds no earlier demo run "
                            f"(no {MARKER}); choose an empty or new folder")
        if not overwrite:
            raise DemoError(f"output folder {str(out_dir)!r} holds an earlier demo run; pass --overwrite to "
                            f"replace it, or choose another folder")


def _clear_out_dir(out_dir: Path) -> None:
    """Empty an earlier demo run's folder (checked by :func:`_check_out_dir`: everything in it is the demo's)."""
    if out_dir.is_dir():
        for child in out_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


class _Stages:
    """Stage timer and terminal narration."""

    def __init__(self, verbose: bool):
        self.seconds: Dict[str, float] = {}
        self.verbose = verbose
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str, what: str):
        if self.verbose:
            print(f"\n==> {name}: {what}", flush=True)
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        if self.verbose:
            print(f"    {name} done in {format_duration(self.seconds[name])} "
                  f"(total {format_duration(time.perf_counter() - self.start)})", flush=True)


def _test_cases(raw: Path, file_ending: str, num_modalities: int) -> Dict[str, List[str]]:
    labels = sorted(p.name[:-len(file_ending)] for p in (raw / "labelsTs").iterdir() if p.name.endswith(file_ending))
    return {c: [str(raw / "imagesTs" / f"{c}_{m:04d}{file_ending}") for m in range(num_modalities)] for c in labels}


def _read(path: Path):
    from nnunetv2_ciml.image_io import read_image_array
    return read_image_array(path)


def _predict(model_folder: Path, cases: Dict[str, List[str]], out_dir: Path, device: str, log_file: Path,
             description: str, verbose: bool):
    """Predict the cases with nnU-Net's predictor (no test-time mirroring: the demo trainers allow none);
    returns the predictor."""
    import torch

    from nnunetv2_ciml.progress import progress

    out_dir.mkdir(parents=True, exist_ok=True)
    console = sys.stdout  # nnU-Net's own prints go to the log file
    with open(log_file, "w") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecations raised by nnU-Net's imports
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=device == "cuda", device=torch.device(device),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(FOLD,),
                                                       checkpoint_name="checkpoint_final.pth")
        # one predictor, one call per case: a progress line per case, and an error that names its case
        for case, files in progress(cases.items(), len(cases), f"    {description}", enabled=verbose,
                                    stream=console):
            _predict_case(predictor, case, files, out_dir)
    return predictor


def _predict_case(predictor, case: str, files: List[str], out_dir: Path) -> None:
    """One case through nnU-Net's predictor, its files checked first; any failure names the case and its files."""
    from nnunetv2_ciml.image_io import verify_image_file

    for c, f in enumerate(files):
        verify_image_file(f, case, f"channel {c}")
    try:
        predictor.predict_from_files_sequential([files], [str(out_dir / case)], save_probabilities=False,
                                                overwrite=True)
    except Exception as e:
        raise DemoError(f"case '{case}' ({', '.join(files)}): nnU-Net's prediction failed: "
                        f"{type(e).__name__}: {e}") from e


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(sum(values) / len(values)) if values else None


def _evaluate_model(raw: Path, pred_dir: Path, out_dir: Path, objects: dict, complementary_cases: List[str],
                    file_ending: str) -> dict:
    from nnunetv2_ciml.demo.complementary import mask_dice, pair_accuracy, pair_decisions
    from nnunetv2_ciml.demo.shape_composition import LABELS
    from nnunetv2_ciml.evaluation import evaluate_folder

    summary = evaluate_folder("nnunet", raw / "labelsTs", pred_dir, out_dir, num_processes=1, verbose=False,
                              dataset_json=str(raw / "dataset.json"))
    names = [n for n in LABELS if n != "background"]
    per_case = summary["per_case"]
    result = {"mean_dice": summary["foreground_mean"]["Dice"],
              "dice": {n: summary["mean"][n]["Dice"] for n in names},
              "hd95": {n: summary["mean"][n]["HD95"] for n in names},
              "mean_hd95": summary["foreground_mean"]["HD95"]}

    decisions, arrays = [], []
    for case in complementary_cases:
        ref = _read(raw / "labelsTs" / f"{case}{file_ending}")
        pred = _read(pred_dir / f"{case}{file_ending}")
        mask = _read(raw / "complementaryTs" / f"{case}{file_ending}")
        decisions += pair_decisions(objects[case]["objects"], pred)
        arrays.append((ref, pred, mask))
    in_mask = mask_dice(arrays, [LABELS[n] for n in names])
    comp_dice = {n: _mean(per_case[c][n]["Dice"] for c in complementary_cases) for n in names}
    others = [c for c in per_case if c not in complementary_cases]
    result["complementary_cases"] = {
        "num_cases": len(complementary_cases),
        "mean_dice": _mean(comp_dice.values()),
        "dice": comp_dice,
        "mask_dice": {n: in_mask[LABELS[n]] for n in names},
        "mean_mask_dice": _mean(in_mask.values()),
        "pair_accuracy": pair_accuracy(decisions),
        "num_pair_objects": len(decisions),
    }
    other_dice = {n: _mean(per_case[c][n]["Dice"] for c in others) for n in names}
    result["other_cases"] = {"num_cases": len(others), "mean_dice": _mean(other_dice.values()), "dice": other_dice}
    return result


def _explain(predictor, cases: Dict[str, List[str]], raw: Path, complementary_cases: List[str], figure_cases: List[str],
             out_dir: Path, file_ending: str, verbose: bool) -> Tuple[dict, Dict[str, object]]:
    """complementary_share and its parts; returns (results, explanations of the figure cases)."""
    from nnunetv2_ciml.demo.complementary import complementary_share, mass_breakdown
    from nnunetv2_ciml.demo.shape_composition import LABELS
    from batchgenerators.utilities.file_and_folder_operations import save_json

    from nnunetv2_ciml.interpretability import explain_case, write_case_explanation
    from nnunetv2_ciml.interpretability.folder import SUMMARY_FILE
    from nnunetv2_ciml.network import pair_name
    from nnunetv2_ciml.progress import progress

    predictor.allow_tqdm = False
    shares, areas, breakdowns = [], [], []
    pair_shares: Dict[str, List[float]] = {}
    all_shares, all_areas = [], []
    kept, written = {}, {}
    for case, files in progress(cases.items(), len(cases), "    explain CIML", enabled=verbose, stream=sys.stdout):
        explanation = explain_case(predictor, files, case=case)
        mask = _read(raw / "complementaryTs" / f"{case}{file_ending}")
        share, area = complementary_share(explanation.maps.values(), mask > 0)
        if case in complementary_cases:
            if share is not None:
                shares.append(share)
                areas.append(area)
                label = _read(raw / "labelsTs" / f"{case}{file_ending}")
                breakdowns.append(mass_breakdown(explanation.maps.values(), mask, label))
            for (sender, subtask), m in explanation.maps.items():
                s, _ = complementary_share([m], mask == LABELS[subtask])
                if s is not None:
                    pair_shares.setdefault(pair_name(sender, subtask), []).append(s)
        if share is not None:
            all_shares.append(share)
            all_areas.append(area)
        if case in figure_cases:
            kept[case] = explanation
            written[case] = write_case_explanation(explanation, out_dir)
    # the per-case part of what ``nnunetv2_ciml explain`` writes, for the cases whose maps are kept
    save_json({"cases": written}, str(out_dir / SUMMARY_FILE), sort_keys=False)
    result = {
        "complementary_share": _mean(shares),
        "complementary_area_share": _mean(areas),
        "num_cases": len(shares),
        "cases_share_above_area_share": sum(s > a for s, a in zip(shares, areas)),
        "mass_breakdown": {k: _mean(b[k] for b in breakdowns) for k in breakdowns[0]} if breakdowns else None,
        "complementary_share_by_pair": {k: _mean(v) for k, v in pair_shares.items()},
        "all_cases": {"complementary_share": _mean(all_shares), "complementary_area_share": _mean(all_areas),
                      "num_cases": len(all_shares)},
    }
    return result, kept


def claims(results: dict) -> List[dict]:
    """The demonstration's three claims with the measured numbers and whether each held."""
    models = results["models"]
    ciml, plain, ablation = models["CIML"], models["nnUNet"], models["CIML_noMessages"]
    comp_ciml = ciml["complementary_cases"]["mean_dice"]
    comp_ablation = ablation["complementary_cases"]["mean_dice"]
    share, area = results["complementary_share"], results["complementary_area_share"]
    return [
        {"claim": "CIML's mean Dice on all held-out cases is at least nnU-Net's",
         "measured": f"CIML {ciml['mean_dice']:.4f} vs nnU-Net {plain['mean_dice']:.4f} "
                     f"(difference {ciml['mean_dice'] - plain['mean_dice']:+.4f})",
         "held": bool(ciml["mean_dice"] >= plain["mean_dice"])},
        {"claim": f"on cases that need complementary information, CIML's mean Dice exceeds the no-message "
                  f"ablation's by at least {CLEAR_MARGIN}",
         "measured": f"CIML {comp_ciml:.4f} vs CIML_noMessages {comp_ablation:.4f} "
                     f"(difference {comp_ciml - comp_ablation:+.4f})",
         "held": bool(comp_ciml - comp_ablation >= CLEAR_MARGIN)},
        {"claim": f"complementary_share is at least {SHARE_FACTOR:g}x complementary_area_share",
         "measured": (f"{share:.4f} vs {area:.4f} ({share / area:.2f}x)" if share is not None and area
                      else f"{share} vs {area}"),
         "held": bool(share is not None and area and share >= SHARE_FACTOR * area)},
    ]


def run_demo(out_dir: Union[str, Path], device: str = "auto", quick: bool = False, overwrite: bool = False,
             settings: Optional[DemoSettings] = None, verbose: bool = True) -> dict:
    """Run the demonstration into ``out_dir``; returns what it writes to ``results.json``.

    ``settings`` default: :data:`QUICK_SETTINGS` with ``quick``, else :data:`DEFAULT_SETTINGS`. Refuses a
    non-empty ``out_dir`` unless it holds an earlier demo run and ``overwrite`` is set.
    """
    import numpy as np

    from nnunetv2_ciml.demo import nnunet_steps
    from nnunetv2_ciml.demo.report import write_figures, write_report
    from nnunetv2_ciml.demo.shape_composition import generate_shape_composition, information_structure
    from nnunetv2_ciml.registration import trainer_class
    from nnunetv2_ciml.training.epoch_log import EPOCH_LOG_NAME

    settings = settings or (QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir, overwrite)
    device = _resolve_device(device)
    _clear_out_dir(out_dir)
    (out_dir / MARKER).write_text(json.dumps({"settings": asdict(settings), "device": device}, indent=2) + "\n")
    env = nnunet_environment(out_dir, device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores)
    parallel, training_threads = training_layout(device, cores)
    logs = out_dir / "logs"
    stages = _Stages(verbose)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    if verbose:
        print(f"nnunetv2_ciml demo -> {out_dir} (device {device}"
              f"{f', {parallel} training(s) at a time with {training_threads} torch thread(s) each' if device == 'cpu' else ''}"
              f"{', quick' if quick else ''})\n"
              f"  logs: one per nnU-Net step in {logs} (follow one with: tail -f {logs}/train_CIML.log)\n"
              f"  nnU-Net folders: {out_dir}/nnUNet_raw, nnUNet_preprocessed, nnUNet_results", flush=True)

    raw = out_dir / "nnUNet_raw" / DATASET_NAME
    with stages("generate", f"ShapeComposition, {settings.num_train} training + {settings.num_test} held-out "
                            f"cases of {settings.size}x{settings.size}, {settings.num_modalities} modalities"):
        generate_shape_composition(raw, num_train=settings.num_train, num_test=settings.num_test, size=settings.size,
                                   radius=settings.radius, num_modalities=settings.num_modalities, seed=settings.seed)
        structure = information_structure(raw)["Ts"]
    dataset_json = json.loads((raw / "dataset.json").read_text())
    file_ending = dataset_json["file_ending"]
    objects = json.loads((raw / "objects.json").read_text())
    complementary_cases = list(structure["complementary_cases"])

    preprocessed = out_dir / "nnUNet_preprocessed" / DATASET_NAME
    with stages("plan_and_preprocess", f"nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c {CONFIGURATION}, "
                                       f"then narrower plans {PLANS}"):
        nnunet_steps.plan_and_preprocess(DATASET_ID, CONFIGURATION, env, logs / "plan_and_preprocess.log", verbose)
        plans_edit = narrow_plans(preprocessed, CONFIGURATION, settings.base_features, settings.max_features,
                                  settings.batch_size)

    model_folders = {m: out_dir / "nnUNet_results" / DATASET_NAME / f"{settings.trainers[m]}__{PLANS}__{CONFIGURATION}"
                     for m in MODELS}
    budgets = {m: trainer_class(settings.trainers[m]) for m in MODELS}
    training_seconds: Dict[str, float] = {}

    def train(model: str) -> None:
        t0 = time.perf_counter()
        nnunet_steps.train(DATASET_ID, CONFIGURATION, FOLD, settings.trainers[model], PLANS, device, training_threads,
                           env, logs / f"train_{model}.log", f"train {model}",
                           epoch_log=model_folders[model] / f"fold_{FOLD}" / EPOCH_LOG_NAME, show_progress=verbose)
        training_seconds[model] = round(time.perf_counter() - t0, 2)

    with stages("train", f"nnUNetv2_train {DATASET_ID} {CONFIGURATION} {FOLD} -p {PLANS} -tr TRAINER, "
                         f"{len(MODELS)} models, {parallel} at a time"):
        if verbose:
            for m in MODELS:
                print(f"    {m}: -tr {settings.trainers[m]} ({budgets[m].budget_epochs} epochs x "
                      f"{budgets[m].budget_iterations} iterations)", flush=True)
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            futures = [pool.submit(train, m) for m in MODELS]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                future.cancel()  # after a failure, the trainings not yet started do not start
            for future in futures:
                if not future.cancelled():
                    future.result()  # raises the first failure once the running trainings have ended

    import torch
    previous_threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        cases = _test_cases(raw, file_ending, settings.num_modalities)
        predictors = {}
        for model in MODELS:
            with stages(f"predict_{model}", f"nnU-Net's predictor on {len(cases)} held-out cases"):
                predictors[model] = _predict(model_folders[model], cases, out_dir / "predictions" / model, device,
                                             logs / f"predict_{model}.log", f"predict {model}", verbose)

        with stages("evaluate", "Dice/HD95 per label; complementary cases: Dice, Dice in masks, pair accuracy"):
            models = {m: _evaluate_model(raw, out_dir / "predictions" / m, out_dir / "evaluation" / m, objects,
                                         complementary_cases, file_ending) for m in MODELS}

        figure_cases = complementary_cases[:settings.figure_cases]
        with stages("explain", f"Grad-CAM on CIML's messages for the {len(cases)} held-out cases (maps of "
                               f"{len(figure_cases)} written to explain/)"):
            from nnunetv2_ciml.interpretability import ciml_network
            explained, explanations = _explain(predictors["CIML"], cases, raw, complementary_cases, figure_cases,
                                               out_dir / "explain", file_ending, verbose)
            network = ciml_network(predictors["CIML"])
            pair_names = [pair.name for pair in network.message_pairs]
    finally:
        torch.set_num_threads(previous_threads)

    with stages("report", "results.json, report.md, figures"):
        logging = torch.load(model_folders["CIML"] / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu",
                             weights_only=False)["logging"]
        results = {
            "models": models,
            "complementary_share": explained["complementary_share"],
            "complementary_area_share": explained["complementary_area_share"],
            "explain": explained,
            "data": {"dataset": DATASET_NAME, "dataset_id": DATASET_ID, "num_train": settings.num_train,
                     "num_test": settings.num_test,
                     "held_out_information_structure": structure, "dataset_json_spec":
                         dataset_json["shape_composition"]},
            "training": {model: {**_training_record(settings.trainers[model], model_folders[model]),
                                 "seconds": training_seconds[model]} for model in MODELS},
            "plans": {"name": PLANS, "configuration": CONFIGURATION, "fold": FOLD, "edits": plans_edit},
            "ciml_message_log": {"pairs": pair_names, "kl": np.asarray(logging["ciml_message_kl"]).tolist(),
                                 "magnitude": np.asarray(logging["ciml_message_magnitude"]).tolist(),
                                 "beta": list(map(float, logging["ciml_beta"]))},
            "started": started, "device": device, "threads": threads if device == "cpu" else None,
            "parallel_trainings": parallel, "training_threads": training_threads if device == "cpu" else None,
            "quick": quick,
            "settings": asdict(settings),
            "seconds": stages.seconds,
        }
        results["claims"] = claims(results)
        results["figures"] = write_figures(results, raw, out_dir, explanations, figure_cases, file_ending)
        results["seconds"]["total"] = round(time.perf_counter() - stages.start, 2)
        write_report(results, out_dir)  # its timings end here; results.json's include the report stage
    results["seconds"]["total"] = round(time.perf_counter() - stages.start, 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if verbose:
        print(f"\nwritten: {out_dir / 'report.md'}, {out_dir / 'results.json'}, figures in {out_dir}")
        if quick:
            print("claims (quick run: a few iterations to check every stage; these numbers say nothing about CIML):")
        for c in results["claims"]:
            print(f"  [{'held' if c['held'] else 'NOT held'}] {c['claim']}: {c['measured']}")
        print(f"total {format_duration(results['seconds']['total'])}")
    return results

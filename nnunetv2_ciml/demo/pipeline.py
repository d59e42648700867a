"""``nnunetv2_ciml demo``: ShapeComposition through the real nnU-Net pipeline, three models, one report.

:func:`run_demo` runs these stages, each timed (``results.json["seconds"]``):

1. ``generate`` and ``plan_and_preprocess``: the data and nnU-Net's plans, narrowed for a CPU run
   (:mod:`nnunetv2_ciml.demo.dataset`);
2. ``train``: ``nnUNetv2_train 990 2d 0`` for nnU-Net, CIML and CIML without messages, all with the same budget
   (:mod:`nnunetv2_ciml.demo.trainers`), fold 0 of nnU-Net's 5-fold split;
3. ``predict_<model>``: nnU-Net's predictor on the held-out cases (:mod:`nnunetv2_ciml.demo.predict`);
4. ``evaluate``: Dice and HD95 per label; on the complementary cases Dice, Dice inside the masks and pair accuracy
   (:mod:`nnunetv2_ciml.demo.evaluate`);
5. ``explain``: Grad-CAM on CIML's messages for every held-out case (:mod:`nnunetv2_ciml.demo.explain`);
6. ``report``: the claims (:mod:`nnunetv2_ciml.demo.claims`), ``results.json``, ``report.md`` and figures.

On the console (unless ``verbose=False``): where the logs are, each stage with its time, one line per training
epoch with the time left for the whole run, and a line whenever a stage was silent for 25 s.

Devices and processes: ``device="auto"`` uses CUDA when torch sees it (:mod:`nnunetv2_ciml.devices`). On CPU the
trainings run side by side, one per core up to three (:func:`training_layout`), each with ``cores // parallel``
torch threads and one augmentation worker (``nnUNet_n_proc_DA=1``, unless the environment sets it): on 2 cores
two trainings of one thread each finish in about the time one training with two threads takes. On CUDA they train
one after another on the one device, as ``nnUNetv2_train`` would. Prediction and Grad-CAM use one torch thread per
core. ``torch.compile`` is off (``nnUNet_compile=f``) unless the environment sets ``nnUNet_compile``: for a run of
minutes, compiling costs more than it saves.
"""
import concurrent.futures
import contextlib
import datetime
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from nnunetv2_ciml.console_progress import format_duration
from nnunetv2_ciml.demo import DemoError
from nnunetv2_ciml.demo.dataset import (CONFIGURATION, DATASET_ID, DATASET_NAME, DEFAULT_SETTINGS, FOLD, MODELS, PLANS,
                                        QUICK_SETTINGS, DemoData, DemoSettings, generate_dataset, load_dataset,
                                        model_folder, nnunet_environment, plan_dataset)

__all__ = ["run_demo", "training_layout", "HEARTBEAT_SECONDS", "MARKER"]

MARKER = "nnunetv2_ciml_demo.json"  # written first; marks a folder as the demo's (for overwrite)
HEARTBEAT_SECONDS = 28.0
# The stages after training (prediction, evaluation, Grad-CAM, report) take about this many nnU-Net training
# epochs' time on the demo's data (docs/demo.md): the whole-run estimate adds it to the trainings' time left.
STAGES_AFTER_TRAINING_IN_EPOCHS = 2.0


def training_layout(device: str, cores: int) -> Tuple[int, int]:
    """(trainings at a time, torch threads per training): on CPU one training per core up to ``len(MODELS)``,
    the cores shared among them; on CUDA one at a time (nnU-Net's threads)."""
    if device != "cpu":
        return 1, 1
    parallel = max(1, min(len(MODELS), cores))
    return parallel, max(1, cores // parallel)


class _Console:
    """The demo's narration stream: stdout, silent unless ``verbose``, remembering when it last printed."""

    def __init__(self, verbose: bool):
        self.verbose, self.stream, self.last = verbose, sys.stdout, time.monotonic()
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if self.verbose:
            with self._lock:
                self.stream.write(text)
                self.last = time.monotonic()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False  # progress as lines: the heartbeat sees them

    def say(self, text: str) -> None:
        self.write(text + "\n")
        self.flush()


class _Stages:
    """Stage timer and narration: a header per stage, its time at the end, and a "still running" line when the
    console was silent for ``heartbeat`` seconds (a little longer than the heartbeat of nnU-Net's steps, which
    speak for themselves)."""

    def __init__(self, console: _Console, heartbeat: float = HEARTBEAT_SECONDS):
        self.console, self.heartbeat = console, heartbeat
        self.seconds: Dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str, what: str):
        self.console.say(f"\n==> {name}: {what}")
        t0 = time.perf_counter()
        done = threading.Event()

        def watch() -> None:
            while not done.wait(min(1.0, self.heartbeat / 4)):
                if time.monotonic() - self.console.last >= self.heartbeat:
                    self.console.say(f"    {name}: still running ({format_duration(time.perf_counter() - t0)} so "
                                     f"far)")

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.console.say(f"    {name} done in {format_duration(self.seconds[name])} "
                         f"(total {format_duration(time.perf_counter() - self.start)})")


class _TimeLeft:
    """The whole run's time left, from the trainings' epochs so far. Per model: nnU-Net's set-up before its first
    epoch (measured, or the longest measured one), the seconds per epoch (measured, or for a model not started yet
    the slowest one's per counted convolution FLOP, scaled by its own FLOPs) and as long again as the set-up for
    nnU-Net's final validation; the trainings laid out ``parallel`` at a time; plus the stages after training
    (:data:`STAGES_AFTER_TRAINING_IN_EPOCHS`)."""

    def __init__(self, epochs: Dict[str, int], flops: Dict[str, float], parallel: int):
        self.epochs, self.flops, self.parallel = epochs, flops, parallel
        self.per_epoch: Dict[str, float] = {}
        self.setup: Dict[str, float] = {}
        self.launched: Dict[str, float] = {}
        self.done: Dict[str, int] = {m: 0 for m in epochs}
        self._lock = threading.Lock()

    def launch(self, model: str) -> None:
        self.launched[model] = time.time()  # the trainer's epoch records use the wall clock too

    def epoch(self, model: str, line: dict, first_start: float) -> str:
        with self._lock:
            self.done[model] = line["epoch"] + 1
            self.per_epoch[model] = (line["end"] - first_start) / self.done[model]
            self.setup.setdefault(model, max(0.0, first_start - self.launched.get(model, first_start)))
            left = self._seconds_left()
        return f"; whole demo about {format_duration(left)} left"

    def _seconds_left(self) -> float:
        known = max(self.per_epoch, key=lambda m: self.per_epoch[m] / self.flops[m])
        seconds_per_flop = self.per_epoch[known] / self.flops[known]
        setup = max(self.setup.values())
        slots = [0.0] * self.parallel  # greedy layout: running models first, then the queued ones in order
        for m in sorted(self.epochs, key=lambda m: m not in self.launched):
            rate = self.per_epoch.get(m, seconds_per_flop * self.flops[m])
            left = rate * (self.epochs[m] - self.done[m]) + self.setup.get(m, setup)  # validation ~ set-up
            if m not in self.launched:
                left += setup
            k = slots.index(min(slots))
            slots[k] += left
        nnunet = self.per_epoch.get("nnUNet", seconds_per_flop * self.flops.get("nnUNet", self.flops[known]))
        return max(slots) + STAGES_AFTER_TRAINING_IN_EPOCHS * nnunet


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


def _model_flops(out_dir: Path, settings: DemoSettings, data: DemoData) -> Dict[str, float]:
    """Counted convolution FLOPs of each model's network on the demo's plans (for the time-left estimate)."""
    from nnunetv2_ciml.costs import conv_macs
    from nnunetv2_ciml.decomposition import resolve_decomposition
    from nnunetv2_ciml.registration import trainer_class

    plans = json.loads((out_dir / "nnUNet_preprocessed" / DATASET_NAME / f"{PLANS}.json").read_text())
    config = plans["configurations"][CONFIGURATION]
    channels, classes = settings.num_modalities, len(data.dataset_json["labels"])
    decomposition, _ = resolve_decomposition(data.dataset_json, channels)
    flops = {}
    for model, trainer in settings.trainers.items():
        cls = trainer_class(trainer)
        architecture = (cls.network_architecture(config["architecture"], decomposition, config["patch_size"], classes,
                                                 config["batch_size"])
                        if hasattr(cls, "network_architecture") else config["architecture"])
        flops[model] = float(conv_macs(architecture, channels, classes, config["patch_size"]))
    return flops


def _train_models(out_dir: Path, settings: DemoSettings, device: str, parallel: int, threads: int,
                  env: Dict[str, str], logs: Path, console: _Console,
                  time_left: Optional[_TimeLeft]) -> Dict[str, float]:
    """``nnUNetv2_train`` of every model, ``parallel`` at a time; returns each training's seconds."""
    from nnunetv2_ciml.demo import nnunet_steps
    from nnunetv2_ciml.demo.epoch_log import EPOCH_LOG_NAME

    seconds: Dict[str, float] = {}

    def train(model: str) -> None:
        t0 = time.perf_counter()
        if time_left is not None:
            time_left.launch(model)
        on_epoch: Optional[Callable] = (None if time_left is None else
                                        lambda line, first: time_left.epoch(model, line, first))
        folder = model_folder(out_dir, settings.trainers[model])
        nnunet_steps.train(DATASET_ID, CONFIGURATION, FOLD, settings.trainers[model], PLANS, device, threads,
                           env, logs / f"train_{model}.log", f"train {model}",
                           epoch_log=folder / f"fold_{FOLD}" / EPOCH_LOG_NAME, show_progress=console.verbose,
                           stream=console, on_epoch=on_epoch, dice_names=("circle", "square"))
        seconds[model] = round(time.perf_counter() - t0, 2)

    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(train, m) for m in MODELS]
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in futures:
            future.cancel()  # after a failure, the trainings not yet started do not start
        for future in futures:
            if not future.cancelled():
                future.result()  # raises the first failure once the running trainings have ended
    return seconds


def _training_record(trainer: str, folder: Path, seconds: float) -> dict:
    from nnunetv2_ciml.demo.epoch_log import EPOCH_LOG_NAME, learning_curves
    from nnunetv2_ciml.registration import trainer_class

    cls = trainer_class(trainer)
    record = {"trainer": trainer, "epochs": cls.budget_epochs, "iterations_per_epoch": cls.budget_iterations,
              "model_folder": str(folder), "seconds": seconds,
              "curves": learning_curves(str(folder / f"fold_{FOLD}" / EPOCH_LOG_NAME))}
    if hasattr(cls, "kl_weight"):  # without messages there is no KL, so no beta to record
        record.update(messages=cls.messages, beta=cls.kl_weight if cls.messages else None,
                      beta_schedule=cls.kl_schedule.describe() if cls.messages else None)
    return record


class _Run:
    """One run of the demonstration: its folder, settings, device, nnU-Net environment and console, and a method
    per stage (each timed by :class:`_Stages`)."""

    def __init__(self, out_dir: Path, settings: DemoSettings, device: str, quick: bool, verbose: bool):
        self.out_dir, self.settings, self.device, self.quick = out_dir, settings, device, quick
        self.env = nnunet_environment(out_dir, device)
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.parallel, self.training_threads = training_layout(device, self.cores)
        self.logs = out_dir / "logs"
        self.console = _Console(verbose)
        self.stages = _Stages(self.console)
        self.started = datetime.datetime.now().isoformat(timespec="seconds")
        layout = (f", {self.parallel} training(s) at a time with {self.training_threads} torch thread(s) each"
                  if device == "cpu" else "")
        self.console.say(f"nnunetv2_ciml demo -> {out_dir} (device {device}{layout}{', quick' if quick else ''})\n"
                         f"  logs: one per nnU-Net step in {self.logs} (follow one with: tail -f "
                         f"{self.logs}/train_CIML.log)\n"
                         f"  nnU-Net folders: {out_dir}/nnUNet_raw, nnUNet_preprocessed, nnUNet_results")

    def folder(self, model: str) -> Path:
        return model_folder(self.out_dir, self.settings.trainers[model])

    def prepare(self) -> DemoData:
        s = self.settings
        with self.stages("generate", f"ShapeComposition, {s.num_train} training + {s.num_test} held-out cases of "
                                     f"{s.size}x{s.size}, {s.num_modalities} modalities"):
            raw = generate_dataset(self.out_dir, s)
        with self.stages("plan_and_preprocess", f"nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c {CONFIGURATION}, "
                                                f"then narrower plans {PLANS}"):
            return load_dataset(raw, s, plan_dataset(self.out_dir, s, self.env, self.logs, self.console.verbose,
                                                     self.console))

    def train(self, data: DemoData) -> Dict[str, float]:
        from nnunetv2_ciml.registration import trainer_class

        budgets = {m: trainer_class(self.settings.trainers[m]) for m in MODELS}
        time_left = _TimeLeft({m: budgets[m].budget_epochs for m in MODELS},
                              _model_flops(self.out_dir, self.settings, data), self.parallel)
        with self.stages("train", f"nnUNetv2_train {DATASET_ID} {CONFIGURATION} {FOLD} -p {PLANS} -tr TRAINER, "
                                  f"{len(MODELS)} models, {self.parallel} at a time"):
            for m in MODELS:
                self.console.say(f"    {m}: -tr {self.settings.trainers[m]} ({budgets[m].budget_epochs} epochs x "
                                 f"{budgets[m].budget_iterations} iterations)")
            self.console.say("    (CIML's loss is nnU-Net's Dice + CE plus beta x its messages' KL, which can keep it "
                             "above 0 in the first epochs; pseudo Dice: nnU-Net's validation Dice per label)")
            return _train_models(self.out_dir, self.settings, self.device, self.parallel, self.training_threads,
                                 self.env, self.logs, self.console, time_left)

    def infer(self, data: DemoData) -> Tuple[dict, dict, dict, List[str]]:
        """Predict, evaluate and explain: ``(per-model results, explain results, kept explanations, message pair
        names)``."""
        import torch

        from nnunetv2_ciml.demo.evaluate import evaluate_model
        from nnunetv2_ciml.demo.explain import explain_model
        from nnunetv2_ciml.demo.predict import predict_model
        from nnunetv2_ciml.interpretability import ciml_network

        previous_threads = torch.get_num_threads()
        if self.device == "cpu":
            torch.set_num_threads(max(1, self.cores))
        try:
            predictors = {}
            for m in MODELS:
                with self.stages(f"predict_{m}", f"nnU-Net's predictor on {len(data.cases)} held-out cases"):
                    predictors[m] = predict_model(self.folder(m), data.cases, self.out_dir / "predictions" / m,
                                                  self.device, self.logs / f"predict_{m}.log", f"predict {m}",
                                                  self.console.verbose, self.console)
            with self.stages("evaluate", "Dice/HD95 per label; complementary cases: Dice, Dice in masks, pair "
                                         "accuracy"):
                models = {m: evaluate_model(data.raw, self.out_dir / "predictions" / m, self.out_dir / "evaluation" / m,
                                            data.objects, data.complementary_cases, data.file_ending) for m in MODELS}
            figure_cases = data.complementary_cases[:self.settings.figure_cases]
            with self.stages("explain", f"Grad-CAM on CIML's messages for the {len(data.cases)} held-out cases (maps "
                                        f"of {len(figure_cases)} written to explain/)"):
                explained, explanations = explain_model(predictors["CIML"], data.cases, data.raw,
                                                        data.complementary_cases, figure_cases,
                                                        self.out_dir / "explain", data.file_ending,
                                                        self.console.verbose, self.console)
            return models, explained, explanations, [p.name for p in ciml_network(predictors["CIML"]).message_pairs]
        finally:
            torch.set_num_threads(previous_threads)

    def report(self, data: DemoData, training_seconds: Dict[str, float], models: dict, explained: dict,
               explanations: dict, pair_names: List[str]) -> dict:
        """``results.json``, the claims, the figures and ``report.md``; returns the results."""
        import numpy as np
        import torch

        from nnunetv2_ciml.demo.claims import claims
        from nnunetv2_ciml.demo.figures import write_figures
        from nnunetv2_ciml.demo.report import write_report

        with self.stages("report", "results.json, report.md, figures"):
            logging = torch.load(self.folder("CIML") / f"fold_{FOLD}" / "checkpoint_final.pth", map_location="cpu",
                                 weights_only=False)["logging"]
            cpu = self.device == "cpu"
            results = {
                "models": models,
                "complementary_share": explained["complementary_share"],
                "complementary_area_share": explained["complementary_area_share"],
                "explain": explained,
                "data": {"dataset": DATASET_NAME, "dataset_id": DATASET_ID, "num_train": self.settings.num_train,
                         "num_test": self.settings.num_test, "held_out_information_structure": data.structure,
                         "dataset_json_spec": data.dataset_json["shape_composition"]},
                "training": {m: _training_record(self.settings.trainers[m], self.folder(m), training_seconds[m])
                             for m in MODELS},
                "plans": {"name": PLANS, "configuration": CONFIGURATION, "fold": FOLD, "edits": data.plans_edit},
                "ciml_message_log": {"pairs": pair_names, "kl": np.asarray(logging["ciml_message_kl"]).tolist(),
                                     "magnitude": np.asarray(logging["ciml_message_magnitude"]).tolist(),
                                     "beta": list(map(float, logging["ciml_beta"]))},
                "started": self.started, "device": self.device, "threads": self.cores if cpu else None,
                "parallel_trainings": self.parallel, "training_threads": self.training_threads if cpu else None,
                "quick": self.quick, "settings": asdict(self.settings), "seconds": self.stages.seconds,
            }
            results["claims"] = claims(results)
            figure_cases = data.complementary_cases[:self.settings.figure_cases]
            results["figures"] = write_figures(results, data.raw, self.out_dir, explanations, figure_cases,
                                               data.file_ending)
            results["seconds"]["total"] = round(time.perf_counter() - self.stages.start, 2)
            write_report(results, self.out_dir)  # its timings end here; results.json's include the report stage
        results["seconds"]["total"] = round(time.perf_counter() - self.stages.start, 2)
        (self.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    def summarize(self, results: dict) -> None:
        say = self.console.say
        say(f"\nwritten: {self.out_dir / 'report.md'}, {self.out_dir / 'results.json'}, figures in {self.out_dir}")
        if self.quick:
            say("claims (quick run: a few iterations to check every stage; these numbers say nothing about CIML):")
        for c in results["claims"]:
            say(f"  [{c['outcome']}] {c['claim']}: {c['measured']} ({c['spread']})")
        say(f"total {format_duration(results['seconds']['total'])}")


def run_demo(out_dir: Union[str, Path], device: str = "auto", quick: bool = False, overwrite: bool = False,
             settings: Optional[DemoSettings] = None, verbose: bool = True) -> dict:
    """Run the demonstration into ``out_dir``; returns what it writes to ``results.json``.

    ``settings`` default: :data:`QUICK_SETTINGS` with ``quick``, else :data:`DEFAULT_SETTINGS`. Refuses a
    non-empty ``out_dir`` unless it holds an earlier demo run and ``overwrite`` is set.
    """
    from nnunetv2_ciml.devices import resolve_device

    settings = settings or (QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    out_dir = Path(out_dir).resolve()
    _check_out_dir(out_dir, overwrite)
    try:
        device = resolve_device(device).type
    except ValueError as e:
        raise DemoError(str(e)) from None
    _clear_out_dir(out_dir)
    (out_dir / MARKER).write_text(json.dumps({"settings": asdict(settings), "device": device}, indent=2) + "\n")

    run = _Run(out_dir, settings, device, quick, verbose)
    data = run.prepare()
    training_seconds = run.train(data)
    models, explained, explanations, pair_names = run.infer(data)
    results = run.report(data, training_seconds, models, explained, explanations, pair_names)
    run.summarize(results)
    return results

"""Evaluate a folder of predictions against a folder of references in one benchmark's conventions.

- Cases are the files of ``ref_dir`` (not recursive) whose names end with the mode's file ending;
  the case name is the file name without that ending, and the prediction of case ``X`` is
  ``pred_dir/X<file ending>``. A reference case without a prediction is scored as an empty
  prediction (or by the mode's own rule for missing cases, e.g. the official one of the lesion-wise
  BraTS metrics) and listed under ``missing`` in ``summary.json`` (the ``prediction_missing`` column of
  ``per_case.csv``). Predictions without a reference are ignored and listed under
  ``unmatched_predictions``. If no prediction matches any reference, that is an error (most
  likely a wrong folder or file ending), not a set of empty predictions.
- Files are read with SimpleITK. Reference and prediction must share size, spacing, origin and
  direction (tolerances in :mod:`nnunetv2_ciml.evaluation.label_images`), except in modes that resample
  (HECKTOR: nearest neighbour onto the reference grid). Label values outside the mode's
  convention, unreadable files and geometry mismatches stop the evaluation with an
  :class:`~nnunetv2_ciml.evaluation.base.EvaluationError` naming the case and the file.
- Outputs in ``out_dir`` (created if needed; ``per_case.csv`` and ``summary.json`` are replaced,
  nothing else is touched, the input folders are only read; an ``out_dir`` that is a file is refused
  before anything is read). Both outputs are written to temporary files in ``out_dir`` and fsynced, and
  only then renamed, so neither is ever half written nor one from another run than the other; a run that
  fails (reading, computing or writing) renames an earlier run's ``summary.json`` and
  ``per_case.csv`` to ``*.stale`` (and says so; where the folder does not let them be renamed, the message says
  that they are not from this run), so that no result that looks current is left behind:
  ``per_case.csv`` (one row per case,
  nested metrics flattened as ``WT_Dice``), ``summary.json`` (``per_case``, the mode's summary,
  ``missing``, ``unmatched_predictions``, ``mode``, ``label_convention``), and a table on stdout.
"""
import csv
import dataclasses
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from nnunetv2_ciml.evaluation.autopet import make_autopet_mode
from nnunetv2_ciml.evaluation.base import EvaluationError, EvaluationMode
from nnunetv2_ciml.console_progress import Progress
from nnunetv2_ciml.evaluation.brats import make_brats_mode
from nnunetv2_ciml.evaluation.hecktor import make_hecktor_mode
from nnunetv2_ciml.evaluation.nnunet_mode import make_nnunet_mode

__all__ = ["MODES", "make_mode", "find_cases", "evaluate_case_files", "evaluate_folder"]

OUTPUT_FILES = ("per_case.csv", "summary.json")
STALE_SUFFIX = ".stale"

MODES = {"brats": make_brats_mode, "autopet": make_autopet_mode, "hecktor": make_hecktor_mode,
         "nnunet": make_nnunet_mode}


def make_mode(mode: str, **mode_options) -> EvaluationMode:
    """The :class:`EvaluationMode` for ``mode`` (``brats``, ``autopet``, ``hecktor``, ``nnunet``)."""
    if mode not in MODES:
        raise EvaluationError(f"unknown evaluation mode {mode!r}; choose one of {sorted(MODES)}")
    try:
        return MODES[mode](**mode_options)
    except TypeError as e:
        raise EvaluationError(f"invalid options for the {mode} mode: {e}") from None


def find_cases(ref_dir: Path, pred_dir: Path, file_ending: str
               ) -> Tuple[Dict[str, Path], Dict[str, Optional[Path]], List[str]]:
    """``(reference file per case, prediction file or None per case, unmatched prediction names)``."""
    if not file_ending:
        raise EvaluationError("the file ending must not be empty (e.g. '.nii.gz')")
    for what, folder in (("reference", ref_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise EvaluationError(f"{what} folder {str(folder)!r} does not exist or is not a folder")

    def by_case(folder: Path) -> Dict[str, Path]:
        return {p.name[:-len(file_ending)]: p for p in sorted(folder.iterdir())
                if p.name.endswith(file_ending) and len(p.name) > len(file_ending) and not p.is_dir()}

    refs, preds = by_case(ref_dir), by_case(pred_dir)
    if not refs:
        raise EvaluationError(f"reference folder {str(ref_dir)!r} has no files ending in {file_ending!r}")
    matched = {case: preds.get(case) for case in refs}
    if all(p is None for p in matched.values()):
        raise EvaluationError(f"no file in prediction folder {str(pred_dir)!r} matches a reference case "
                              f"(expected names like {next(iter(refs)) + file_ending!r})")
    return refs, matched, sorted(set(preds) - set(refs))


def evaluate_case_files(mode: EvaluationMode, case: str, ref_file: Path, pred_file: Optional[Path]
                        ) -> Tuple[dict, Optional[str]]:
    """Metrics of one case and a warning (or None); a missing ``pred_file`` is scored by the mode's
    ``missing_case_metrics`` if it has one, else as an empty prediction."""
    from nnunetv2_ciml.evaluation.label_images import array_spacing, read_label_image, resample_nearest_to
    from nnunetv2_ciml.image_io import check_label_values, geometry_mismatch

    ref_image, ref = read_label_image(ref_file, case, "reference")
    check_label_values(ref, mode.valid_labels, case, ref_file, "reference", mode.label_convention, EvaluationError)
    warning = None
    if pred_file is None:
        if mode.missing_case_metrics is not None:
            return mode.missing_case_metrics(ref, array_spacing(ref_image)), None
        pred = np.zeros_like(ref)
    else:
        pred_image, pred = read_label_image(pred_file, case, "prediction")
        check_label_values(pred, mode.valid_prediction_labels or mode.valid_labels, case, pred_file, "prediction",
                           mode.label_convention, EvaluationError)
        mismatch = geometry_mismatch(pred_image, ref_image)
        if mismatch is not None:
            if not mode.resample_prediction or pred_image.GetDimension() != ref_image.GetDimension():
                raise EvaluationError(f"case {case!r}: prediction file {str(pred_file)!r} does not match the "
                                      f"reference {str(ref_file)!r} in {mismatch}")
            pred = resample_nearest_to(pred_image, ref_image)
            if pred.dtype.kind == "f":
                pred = np.rint(pred).astype(np.int64)
            warning = f"case {case!r}: prediction resampled (nearest neighbour) onto the reference grid: {mismatch}"
            if not np.allclose(ref_image.GetSpacing(), pred_image.GetSpacing(), rtol=0, atol=1e-6):
                warning += " (the official evaluator rejects a prediction whose spacing differs from the reference)"
    return mode.case_metrics(ref, pred, array_spacing(ref_image)), warning


def _flatten(metrics: dict, prefix: str = "") -> Dict[str, object]:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _replace_outputs(out: Path, writers: Dict[str, Callable[[Path], None]]) -> None:
    """Replace the outputs of ``out`` as a pair: each ``writers[name](temporary_path)`` writes a temporary file in
    ``out`` that is fsynced; only when all are written are they renamed onto their names (then the folder is
    fsynced). If anything fails, no temporary file is left and the caller marks the outputs stale."""
    partials = {name: out / f".{name}.partial" for name in writers}
    try:
        for name, write in writers.items():
            write(partials[name])
            with open(partials[name], "rb") as f:
                os.fsync(f.fileno())
        for name in writers:
            os.replace(partials[name], out / name)
        if hasattr(os, "O_DIRECTORY"):  # make the renames durable (POSIX)
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        for partial in partials.values():
            if partial.is_file():
                partial.unlink()


def _mark_stale(out: Path) -> str:
    """Rename an earlier run's outputs in ``out`` to ``*.stale``; returns what to add to the error message: the new
    names, and the outputs that could not be renamed (a read-only folder), which must not pass for this run's."""
    renamed, failed = [], []
    for name in OUTPUT_FILES:
        if (out / name).is_file():
            try:
                os.replace(out / name, out / (name + STALE_SUFFIX))
                renamed.append(name + STALE_SUFFIX)
            except OSError as e:  # the error being reported is the run's, not this one
                failed.append(f"{name} ({e.strerror or e})")
    notes = []
    if renamed:
        notes.append(f"the earlier results in {str(out)!r} were renamed to {', '.join(renamed)}: they are not from "
                     f"this run")
    if failed:
        notes.append(f"the earlier results {', '.join(failed)} in {str(out)!r} could not be renamed to "
                     f"*{STALE_SUFFIX}: they are not from this run")
    return "; ".join(notes)


def _write_per_case_csv(path: Path, per_case: Dict[str, dict], missing: List[str], resampled: List[str]) -> None:
    rows = [{"case": case, "prediction_missing": case in missing,
             **({"resampled": case in resampled} if resampled else {}),
             **_flatten(metrics)} for case, metrics in per_case.items()]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def evaluate_folder(mode: str, ref_dir: Union[str, Path], pred_dir: Union[str, Path], out_dir: Union[str, Path],
                    num_processes: int = 1, verbose: bool = True, **mode_options) -> dict:
    """Evaluate ``pred_dir`` against ``ref_dir`` in ``mode``'s conventions; writes ``out_dir`` and returns the summary.

    Args:
        mode: ``"brats"``, ``"autopet"``, ``"hecktor"`` or ``"nnunet"``.
        ref_dir, pred_dir: folders of label images, one file per case, same names in both.
        out_dir: where ``per_case.csv`` and ``summary.json`` go (created if needed).
        num_processes: worker processes (1: evaluate in this process).
        verbose: print the table (and warnings) to stdout, and progress to stderr (a bar on a terminal).
        **mode_options: ``labels`` (brats: ``"brats2020"``, ``"brats2023"``, ``"brats2024"``, ``"nnunet"``; default:
            read from the references by :func:`~nnunetv2_ciml.evaluation.brats.detect_brats_labels`), ``dataset_json``
            (nnunet: path or dict), ``file_ending`` (default ``".nii.gz"``; nnunet: from ``dataset.json``).
    Returns:
        The summary written to ``summary.json`` (layout per mode in the mode's module docstring).

    With ``num_processes > 1`` the workers are started with ``spawn`` (as nnU-Net does), so a script
    that calls this needs the usual ``if __name__ == "__main__":`` guard.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvaluationError(f"output folder {str(out)!r} is a file; -o takes a folder for per_case.csv and "
                              "summary.json")
    try:
        if num_processes < 1:
            raise EvaluationError(f"num_processes must be at least 1, got {num_processes}")
        detected = None
        if mode == "brats" and mode_options.get("labels") is None:
            # the regions differ by convention, and BraTS 2020/2023/2024 and nnU-Net labels share values: the
            # convention is read from the references, or refused, never assumed
            from nnunetv2_ciml.evaluation.brats import detect_brats_labels
            ending = mode_options.get("file_ending", ".nii.gz")
            references = list(find_cases(Path(ref_dir), Path(pred_dir), ending)[0].values())
            labels, detected = detect_brats_labels(references, lesionwise=bool(mode_options.get("lesionwise")))
            mode_options = dict(mode_options, labels=labels)
        evaluation_mode = make_mode(mode, **mode_options)
        if detected is not None:
            evaluation_mode = dataclasses.replace(
                evaluation_mode, label_convention=f"{evaluation_mode.label_convention}; detected: {detected}")
        refs, preds, unmatched = find_cases(Path(ref_dir), Path(pred_dir), evaluation_mode.file_ending)
        jobs = [(evaluation_mode, case, refs[case], preds[case]) for case in refs]
        with Progress(len(jobs), f"evaluate {mode}", enabled=verbose) as bar:
            if num_processes == 1 or len(jobs) == 1:
                results = []
                for job in jobs:
                    results.append(evaluate_case_files(*job))
                    bar.update()
            else:
                with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
                    pending = [pool.apply_async(evaluate_case_files, job) for job in jobs]
                    results = []
                    for result in pending:  # in case order, as the per-case table is
                        results.append(result.get())
                        bar.update()
        per_case = {case: metrics for case, (metrics, _) in zip(refs, results)}
        warnings = [w for _, w in results if w is not None]
        missing = [case for case, p in preds.items() if p is None]
        resampled = [case for case, (_, w) in zip(refs, results) if w is not None]
        summary = {"mode": mode, "label_convention": evaluation_mode.label_convention,
                   **evaluation_mode.summarize(per_case), "per_case": per_case,
                   "missing": missing, "unmatched_predictions": unmatched}
        if evaluation_mode.resample_prediction:
            summary["resampled"] = resampled
        try:
            out.mkdir(parents=True, exist_ok=True)
            _replace_outputs(out, {"per_case.csv": lambda p: _write_per_case_csv(p, per_case, missing, resampled),
                                   "summary.json": lambda p: p.write_text(json.dumps(summary, indent=2) + "\n")})
        except OSError as e:  # disk full, permissions: the message names the file
            raise EvaluationError(f"cannot write the results into {str(out)!r}: {e}") from None
    except BaseException as e:
        stale = _mark_stale(out) if out.is_dir() else ""
        if stale and isinstance(e, (EvaluationError, OSError)):
            raise EvaluationError(f"{e}\n({stale})") from None
        raise

    if verbose:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        if missing:
            print(f"warning: {len(missing)} case(s) without prediction, {evaluation_mode.missing_case_rule}: "
                  f"{', '.join(missing)}",
                  file=sys.stderr)
        if unmatched:
            print(f"warning: {len(unmatched)} prediction(s) without reference, ignored: {', '.join(unmatched)}",
                  file=sys.stderr)
        print(f"{mode} evaluation of {len(per_case)} case(s) ({evaluation_mode.label_convention}), "
              f"{pred_dir} vs {ref_dir}")
        print(evaluation_mode.format_table(summary))
        print(f"written: {out / 'per_case.csv'}, {out / 'summary.json'}")
    return summary

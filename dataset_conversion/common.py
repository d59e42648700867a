"""Machinery shared by the converters: errors, discovered cases, the output dataset folder and the worker pool.

Conventions every converter follows (documented once, here):

- The source folders are only read. The dataset is written to ``$nnUNet_raw/.DatasetXXX_NAME.partial``
  and renamed to ``DatasetXXX_NAME`` when complete, so an interrupted run leaves no half dataset
  (its leftovers are removed by the next run), and ``--overwrite`` replaces an existing dataset
  only once the new one is complete.
- A source folder whose cases have no label files at all (e.g. a challenge's validation set) goes
  to ``imagesTs``; in a folder where some cases have labels, a missing label is an error.
- Any problem with a case (missing, unreadable or inconsistent file) stops the conversion with an
  error naming the case and the file; with ``skip_incomplete`` that case is skipped, the others are
  converted, and the report lists what was skipped and why.
- Output is deterministic: a re-run on the same source gives byte-identical files.
- Exports (:func:`export_predictions`) follow the same rule: cases are written into a temporary folder and moved
  into the output folder only when every case succeeded (and the ``--zip`` archive was written), so a bad prediction
  or an archive that cannot be written writes and replaces nothing. The output folder follows ``predict``'s policy
  (:mod:`nnunetv2_ciml.output_folder`): ``.export.json`` lists what an export wrote, and ``--overwrite`` replaces
  that as a whole, never a file no export recorded.
- When some patient has several cases (autoPET studies, BraTS 2023 timepoints), the dataset gets a
  ``splits_final.json`` with nnU-Net's 5-fold split done over patients (nnU-Net copies it to
  ``nnUNet_preprocessed`` at planning), so no patient is in both training and validation.
"""
from __future__ import annotations

import multiprocessing
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.console_progress import Progress

from nnunetv2_ciml.errors import CIMLError
from nnunetv2_ciml.image_io import geometry_mismatch
from nnunetv2_ciml.output_folder import (OutputFolderError, recorded_files, refuse_foreign, replace_outputs,
                                         staging_folder)

FILE_ENDING = ".nii.gz"
EXPORT_RECORD = ".export.json"  # what an export wrote (nnunetv2_ciml.output_folder); hidden: not for upload
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConversionError(CIMLError, RuntimeError):
    """Bad input or refused output. The message names the case, the file and what is wrong."""


@dataclass(frozen=True)
class SourceCase:
    """One case found in the source: files per input channel (channel order), label or None, patient."""

    case_id: str
    images: Tuple[Path, ...]
    label: Optional[Path]
    patient: str
    convention: str = ""  # converter-specific, e.g. the BraTS label convention


@dataclass
class CaseCandidate:
    """A case as discovered, possibly incomplete; :func:`resolve_candidates` turns it into a SourceCase."""

    case_id: str
    patient: str
    group: Path  # the folder deciding labelled vs unlabelled (see module docstring)
    images: List[Optional[Path]]
    image_descriptions: List[str]  # what a missing image should be, for the error message
    label: Optional[Path]
    label_description: str
    convention: str = ""


@dataclass
class ConversionReport:
    """What a conversion wrote, skipped and warned about."""

    dataset_folder: Path
    training_cases: List[str] = field(default_factory=list)
    test_cases: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Wrote {self.dataset_folder}: {len(self.training_cases)} training cases (imagesTr/labelsTr)"
                 + (f", {len(self.test_cases)} unlabelled cases (imagesTs)" if self.test_cases else "")]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} cases:")
            lines += [f"  {case}: {why}" for case, why in self.skipped]
        return "\n".join(lines)


@dataclass
class ExportReport:
    """What an export wrote and warned about."""

    output_folder: Path
    written: List[Path] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([f"Wrote {len(self.written)} files to {self.output_folder}"]
                         + [f"warning: {w}" for w in self.warnings])


# ----------------------------------------------------------------------------------------------- files


def read_image(path: Path, case_id: str, role: str = "image") -> sitk.Image:
    """Read a 3D image through :mod:`nnunetv2_ciml.image_io` (complete gzip stream, finite voxels); any
    failure becomes a ConversionError naming the case and the file."""
    from nnunetv2_ciml.image_io import ImageFileError, read_image as read_checked

    try:
        image = read_checked(path, case_id, role)
    except ImageFileError as e:
        raise ConversionError(str(e)) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"case '{case_id}': '{path}' is not a 3D single-channel image "
                              f"({image.GetDimension()}D, {image.GetNumberOfComponentsPerPixel()} components)")
    return image


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK puts the useful sentence last, after file/line information
    return lines[-1] if lines else type(e).__name__


def check_same_grid(case_id: str, files: Sequence[Path], images: Sequence[sitk.Image]) -> None:
    """All images of a case must share one voxel grid (nnU-Net stacks them as channels).

    The error names a file off the grid most files share (the first file's grid on a tie).
    """
    def mismatch(i: int, j: int) -> Optional[str]:
        return geometry_mismatch(images[i], images[j])

    votes = [sum(mismatch(i, j) is None for j in range(len(images))) for i in range(len(images))]
    ref = max(range(len(images)), key=lambda i: (votes[i], -i))
    for i, path in enumerate(files):
        problem = mismatch(i, ref)
        if problem:
            raise ConversionError(f"case '{case_id}': '{path}' is not on the voxel grid of '{files[ref]}' "
                                  f"({problem}); the channels of a case must be co-registered and resampled to one "
                                  "grid")


def copy_image(src: Path, image: sitk.Image, dst: Path) -> None:
    """Copy a ``.nii.gz`` byte for byte; write anything else as compressed NIfTI."""
    if src.name.endswith(FILE_ENDING):
        shutil.copyfile(src, dst)
    else:
        sitk.WriteImage(image, str(dst), True)


def write_image(image: sitk.Image, dst: Path) -> None:
    sitk.WriteImage(image, str(dst), True)


def image_file(folder: Path, case_id: str, channel: int) -> Path:
    return folder / f"{case_id}_{channel:04d}{FILE_ENDING}"


def sanitize_identifier(text: str) -> str:
    """A case identifier safe for file names: runs of other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-")


# ------------------------------------------------------------------------------------------- discovery


def resolve_candidates(candidates: Sequence[CaseCandidate]) -> Tuple[List[SourceCase], List[Tuple[str, str]]]:
    """Complete cases, and ``(case_id, why)`` for incomplete ones. Raises on duplicate case identifiers."""
    by_id: Dict[str, CaseCandidate] = {}
    for c in candidates:
        if c.case_id in by_id:
            raise ConversionError(f"case '{c.case_id}' was found twice in the source ('{_where(by_id[c.case_id])}' "
                                  f"and '{_where(c)}'); case identifiers must be unique")
        by_id[c.case_id] = c
    labelled_groups = {c.group for c in candidates if c.label is not None}
    cases, incomplete = [], []
    for c in sorted(candidates, key=lambda c: c.case_id):
        missing = [d for p, d in zip(c.images, c.image_descriptions) if p is None]
        labelled = c.group in labelled_groups
        if labelled and c.label is None:
            missing.append(c.label_description)
        if missing:
            incomplete.append((c.case_id, "missing " + ", ".join(missing)))
        else:
            cases.append(SourceCase(c.case_id, tuple(c.images), c.label if labelled else None, c.patient,
                                    c.convention))
    return cases, incomplete


def _where(c: CaseCandidate) -> Path:
    return next(p for p in [*c.images, c.label, c.group] if p is not None)


def check_sources(sources: Sequence[Path]) -> List[Path]:
    resolved = []
    for s in sources:
        s = Path(s)
        if not s.is_dir():
            raise ConversionError(f"source folder '{s}' does not exist or is not a folder")
        resolved.append(s.resolve())
    return resolved


def rglob_files(sources: Sequence[Path], pattern: str) -> List[Path]:
    """Files matching ``pattern`` anywhere below the sources (hidden folders skipped), sorted."""
    found = set()
    for s in sources:
        for p in s.rglob(pattern):
            rel = p.relative_to(s).parts
            if p.is_file() and not any(part.startswith(".") for part in rel):
                found.add(p)
    return sorted(found)


# ---------------------------------------------------------------------------------------- output folder


def _env_folder(var: str, required: bool) -> Optional[Path]:
    """nnU-Net's folder ``var`` (``nnUNet_raw``, ...) as ``nnunetv2.paths`` reads it, or None if unset."""
    import nnunetv2.paths

    value = getattr(nnunetv2.paths, var).get()
    if not value:
        if required:
            raise ConversionError(f"the environment variable {var} is not set; set it to your nnU-Net {var} folder "
                                  "(see nnU-Net's documentation/set_environment_variables.md)")
        return None
    return Path(value)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset ID must be an integer from 1 to 999 (nnU-Net uses three digits), got {dataset_id!r}")
    if not _NAME_PATTERN.match(name):
        raise ConversionError(f"dataset name '{name}' may only contain letters, digits, '_', '.' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def _check_dataset_id_free(dataset_id: int, folder_name: str) -> None:
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    others = [str(name) for name in find_candidate_datasets(dataset_id) if name != folder_name]
    if others:
        raise ConversionError(f"dataset ID {dataset_id} is already used by '{others[0]}' (in nnUNet_raw, "
                              "nnUNet_preprocessed or nnUNet_results); nnU-Net needs one name per ID: choose another "
                              "-d, or remove that dataset")


def _check_not_inside(target: Path, sources: Sequence[Path], what: str, nor_around: bool = True) -> None:
    """Refuse a ``target`` inside a source (or, with ``nor_around``, one that contains a source)."""
    t = target.resolve()
    for s in sources:
        s = s.resolve()
        if t.is_relative_to(s) or (nor_around and s.is_relative_to(t)):
            raise ConversionError(f"{what} '{target}' overlaps the source folder '{s}'; the source is never written to: "
                                  "choose an output outside it")


# --------------------------------------------------------------------------------------------- workers


def _run_case(job: Tuple[Callable, SourceCase, Path, int]) -> Tuple[str, Optional[str], List[str]]:
    fn, case, out, num_channels = job
    try:
        warnings = fn(case, out)
        return case.case_id, None, list(warnings or [])
    except Exception as e:  # the pool must survive one bad case; the message still names it
        for sub in ("imagesTr", "imagesTs"):
            for c in range(num_channels):
                image_file(out / sub, case.case_id, c).unlink(missing_ok=True)
        (out / "labelsTr" / f"{case.case_id}{FILE_ENDING}").unlink(missing_ok=True)
        if isinstance(e, ConversionError):
            return case.case_id, str(e), []
        return case.case_id, f"case '{case.case_id}': {type(e).__name__}: {_first_line(e)}", []


def _run_export(job: Tuple[Callable, object, Path]) -> Tuple[str, Optional[str], List[str]]:
    fn, item, dst = job
    try:
        return str(item), None, list(fn(item, dst) or [])
    except ConversionError as e:
        return str(item), str(e), []
    except Exception as e:
        return str(item), f"{item}: {type(e).__name__}: {_first_line(e)}", []


def run_jobs(worker: Callable, jobs: Sequence, num_processes: Optional[int], desc: str,
             stop_on_error: bool) -> List[Tuple[str, Optional[str], List[str]]]:
    """Run ``worker`` over ``jobs`` with a progress bar; in-process for one process, else a spawn pool.

    With ``stop_on_error`` the first error stops the run (remaining work is cancelled) and is the last result.
    """
    if num_processes is None:
        from nnunetv2.configuration import default_num_processes
        num_processes = default_num_processes
    num_processes = max(1, min(int(num_processes), len(jobs)))
    results = []
    with Progress(len(jobs), desc, unit="case") as bar:
        if num_processes == 1:
            for job in jobs:
                results.append(worker(job))
                bar.update()
                if stop_on_error and results[-1][1] is not None:
                    break
        else:
            with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                for result in pool.imap_unordered(worker, jobs):
                    results.append(result)
                    bar.update()
                    if stop_on_error and result[1] is not None:
                        pool.terminate()
                        break
    return results


# ----------------------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class DatasetSpec:
    """What the converter puts into dataset.json (passed to nnU-Net's ``generate_dataset_json``)."""

    channel_names: Mapping[int, str]
    labels: Mapping[str, object]
    ciml: Mapping
    regions_class_order: Optional[Tuple[int, ...]] = None
    description: str = ""
    reference: str = ""
    license: str = ""


def convert_dataset(kind: str, sources: Sequence[Path], discover: Callable[[Sequence[Path]], Sequence[CaseCandidate]],
                    convert_case: Callable[[SourceCase, Path], Optional[List[str]]], spec: DatasetSpec,
                    dataset_id: int, name: str, num_processes: Optional[int] = None, overwrite: bool = False,
                    skip_incomplete: bool = False) -> ConversionReport:
    """Write ``$nnUNet_raw/DatasetXXX_NAME`` from ``sources`` (see the module docstring for the rules).

    ``discover(sources)`` lists the cases; ``convert_case(case, folder)`` writes one case into
    ``folder/imagesTr|imagesTs|labelsTr`` and returns warnings. It must be a picklable, module-level
    callable (``functools.partial`` is fine) because ``num_processes > 1`` runs it in spawn workers.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    raw = _env_folder("nnUNet_raw", required=True)
    folder_name = dataset_folder_name(dataset_id, name)
    target = raw / folder_name
    if target.exists() and not overwrite:
        raise ConversionError(f"'{target}' already exists; use --overwrite to replace it")
    _check_dataset_id_free(dataset_id, folder_name)
    sources = check_sources(sources)
    _check_not_inside(target, sources, "the dataset folder")

    cases, incomplete = resolve_candidates(discover(sources))
    if not cases and not incomplete:
        raise ConversionError(f"no {kind} cases found under {', '.join(map(str, sources))}")
    if incomplete and not skip_incomplete:
        listing = "\n".join(f"  {case}: {why}" for case, why in incomplete[:20])
        more = f"\n  ... and {len(incomplete) - 20} more" if len(incomplete) > 20 else ""
        raise ConversionError(f"{len(incomplete)} incomplete {kind} cases:\n{listing}{more}\n"
                              "use --skip-incomplete to convert the complete cases and skip these")

    raw.mkdir(parents=True, exist_ok=True)
    partial = raw / f".{folder_name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if any(c.label is None for c in cases) else ()):
        (partial / sub).mkdir(parents=True)

    report = ConversionReport(target, skipped=list(incomplete))
    try:
        jobs = [(convert_case, c, partial, len(spec.channel_names)) for c in cases]
        results = run_jobs(_run_case, jobs, num_processes, f"convert {kind}", stop_on_error=not skip_incomplete)
        errors = {case_id: err for case_id, err, _ in results if err is not None}
        if errors and not skip_incomplete:
            raise ConversionError(f"{next(iter(errors.values()))}\nnothing was written; use --skip-incomplete to "
                                  "convert the other cases and skip this one")
        report.skipped += sorted(errors.items())
        report.skipped.sort()
        report.warnings = [w for _, err, ws in sorted(results) if err is None for w in ws]
        done = [c for c in cases if c.case_id not in errors]
        report.training_cases = [c.case_id for c in done if c.label is not None]
        report.test_cases = [c.case_id for c in done if c.label is None]
        if not done:
            raise ConversionError(f"no {kind} case could be converted:\n" +
                                  "\n".join(f"  {case}: {why}" for case, why in report.skipped))
        generate_dataset_json(str(partial), channel_names=dict(spec.channel_names), labels=dict(spec.labels),
                              num_training_cases=len(report.training_cases), file_ending=FILE_ENDING,
                              regions_class_order=spec.regions_class_order, dataset_name=folder_name,
                              description=spec.description or None, reference=spec.reference or None,
                              license=spec.license or "see the challenge's data terms",
                              converted_by=f"nnunetv2_ciml convert {kind.lower()}", ciml=dict(spec.ciml))
        warning = write_patient_splits(partial, [c for c in done if c.label is not None])
        if warning:
            report.warnings.append(warning)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise

    if target.exists():
        old = raw / f".{folder_name}.old"
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        partial.rename(target)
        shutil.rmtree(old)
        preprocessed = _env_folder("nnUNet_preprocessed", required=False)
        if preprocessed is not None and (preprocessed / folder_name).exists():
            report.warnings.append(f"'{preprocessed / folder_name}' holds data preprocessed from the replaced dataset; "
                                   "re-run nnUNetv2_plan_and_preprocess")
    else:
        partial.rename(target)
    return report


def write_patient_splits(folder: Path, cases: Sequence[SourceCase]) -> Optional[str]:
    """Write nnU-Net's 5-fold split over patients as ``splits_final.json`` if some patient has several cases."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    by_patient: Dict[str, List[str]] = defaultdict(list)
    for c in cases:
        by_patient[c.patient].append(c.case_id)
    if len(by_patient) == len(cases):
        return None  # one case per patient: nnU-Net's own split is already patient-wise
    if len(by_patient) < 5:
        return (f"{len(cases)} training cases from only {len(by_patient)} patients: no patient-grouped 5-fold split "
                "was written; nnU-Net's default split may put one patient's cases into training and validation")
    splits = []
    for fold in generate_crossval_split(sorted(by_patient), seed=12345, n_splits=5):
        splits.append({"train": sorted(c for p in fold["train"] for c in by_patient[p]),
                       "val": sorted(c for p in fold["val"] for c in by_patient[p])})
    save_json(splits, str(folder / "splits_final.json"), sort_keys=False)
    return None


# --------------------------------------------------------------------------------------------- export


def export_predictions(kind: str, pred_dir: Path, out_dir: Path, plan: Callable[[str, Path], Tuple[Path, object]],
                       export_one: Callable, sources: Sequence[Path] = (), num_processes: Optional[int] = None,
                       overwrite: bool = False, archive: Optional[Callable[[List[Path]], Path]] = None
                       ) -> ExportReport:
    """Export every ``*.nii.gz`` of ``pred_dir`` to ``out_dir``.

    ``plan(case_id, pred_file)`` returns the output file (inside ``out_dir``) and a picklable job;
    ``export_one(job, path)`` writes that case's output to ``path``. ``plan`` raises ConversionError for a
    prediction it cannot place. ``archive(files)`` (the ``--zip`` upload archive) is called with the exported files
    before they are moved into place and returns the file it wrote. All output paths are checked before anything is
    written: existing files and an
    earlier export are only replaced with ``overwrite``, and a file no export recorded in ``.export.json`` never is.
    As ``convert`` does with its dataset, every case is written into a temporary folder (``out_dir/.export.partial``)
    first; only when all cases succeeded and the archive is written are the files moved to their places, replacing
    the earlier export's as a whole. A failed export therefore writes and replaces nothing (a folder it created is
    removed).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ConversionError(f"prediction folder '{pred_dir}' does not exist or is not a folder")
    preds = sorted(p for p in pred_dir.iterdir() if p.is_file() and p.name.endswith(FILE_ENDING))
    if not preds:
        raise ConversionError(f"no {FILE_ENDING} predictions in '{pred_dir}'")
    out_dir = Path(out_dir)
    _check_not_inside(out_dir, [pred_dir, *map(Path, sources)], "the output folder", nor_around=False)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"output folder '{out_dir}' is a file")
    plans, outputs = [], []
    for p in preds:
        dst, job = plan(p.name[:-len(FILE_ENDING)], p)
        if dst in outputs:
            raise ConversionError(f"two predictions would be written to '{dst}'")
        outputs.append(dst)
        plans.append(job)
    existing = [d for d in outputs if d.exists()]
    if existing and not overwrite:
        raise ConversionError(f"{len(existing)} output files already exist (first: '{existing[0]}'); "
                              "use --overwrite to replace them")
    earlier = recorded_files(out_dir, EXPORT_RECORD)
    if earlier and not overwrite:
        raise ConversionError(f"'{out_dir}' holds an earlier export ({EXPORT_RECORD} lists {len(earlier) - 1} files); "
                              "use --overwrite to replace it")
    try:
        refuse_foreign(out_dir, [EXPORT_RECORD, *(d.relative_to(out_dir).as_posix() for d in outputs)], earlier,
                       EXPORT_RECORD)
    except OutputFolderError as e:
        raise ConversionError(str(e)) from None

    with staging_folder(out_dir, ".export.partial") as staging:  # removed, with the folders it created, on failure
        staged = [staging / d.relative_to(out_dir) for d in outputs]
        jobs = [(export_one, job, path) for job, path in zip(plans, staged)]
        results = run_jobs(_run_export, jobs, num_processes, f"export {kind}", stop_on_error=True)
        errors = [err for _, err, _ in results if err is not None]
        if errors:
            raise ConversionError(f"{errors[0]}\nnothing was written to '{out_dir}'")
        missing = [d for d, s in zip(outputs, staged) if not s.is_file()]
        if missing:
            raise ConversionError(f"the export wrote no file for '{missing[0]}'; nothing was written to '{out_dir}'")
        try:
            archived = archive(staged) if archive is not None else None
        except ConversionError as e:
            raise ConversionError(f"{e}; nothing was written to '{out_dir}'") from None
        record = {"command": f"nnunetv2_ciml export {kind.lower()}", "predictions": str(pred_dir.resolve()),
                  "source": [str(Path(s).resolve()) for s in sources]}
        try:
            replace_outputs(out_dir, staging, EXPORT_RECORD, record, earlier)
        except BaseException:
            if archived is not None:  # the archive of an export that did not happen
                archived.unlink(missing_ok=True)
            raise
    return ExportReport(out_dir, outputs, [w for _, _, ws in sorted(results) for w in ws])

"""Submission archives: the flat zip of ``CASE.nii.gz`` files a challenge's upload page accepts.

BraTS (Synapse) and HECKTOR (grand-challenge) take one archive whose top level holds one
``CASE.nii.gz`` per case of the evaluated set. :func:`check_complete` refuses an export that would
leave a case of the source without prediction (a missing case scores as empty, the worst value, on
the leaderboard) unless the user allows it; :func:`write_zip` stores the exported files flat.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

from nnunetv2_ciml.output_folder import missing_folders, remove_empty_folders

from .common import FILE_ENDING, ConversionError

__all__ = ["predicted_cases", "check_complete", "check_zip_target", "write_zip", "archive"]


def predicted_cases(pred_dir: Path) -> List[str]:
    """Case identifiers of the ``CASE.nii.gz`` files in ``pred_dir``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise ConversionError(f"prediction folder '{pred_dir}' does not exist or is not a folder")
    return sorted(p.name[:-len(FILE_ENDING)] for p in pred_dir.iterdir()
                  if p.is_file() and p.name.endswith(FILE_ENDING))


def check_complete(source_cases: Optional[Iterable[str]], pred_dir: Path, allow_missing: bool) -> List[str]:
    """Cases of the source without prediction; raises unless ``allow_missing``.

    ``source_cases`` None means the source is unknown (no ``--source``): then completeness cannot be
    checked, which is an error too unless ``allow_missing``.
    """
    if source_cases is None:
        if allow_missing:
            return []
        raise ConversionError("--zip checks that every case of the source has a prediction: give --source "
                              "(or --allow-missing to archive whatever was predicted)")
    missing = sorted(set(source_cases) - set(predicted_cases(pred_dir)))
    if missing and not allow_missing:
        listing = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ConversionError(f"{len(missing)} case(s) of the source have no prediction in '{pred_dir}': {listing}; "
                              "the leaderboard scores a missing case as empty. Predict them, or pass "
                              "--allow-missing to archive anyway")
    return missing


def check_zip_target(zip_path: Path, overwrite: bool = False) -> Path:
    """Raise ConversionError for an archive name that does not end in .zip, names an existing file without
    ``overwrite``, or lies in a folder that cannot be written: a probe file is created there and removed, with any
    folder created for it (checked before the export writes anything)."""
    zip_path = Path(zip_path)
    if zip_path.suffix.lower() != ".zip":
        raise ConversionError(f"the archive name must end in .zip, got '{zip_path}'")
    if zip_path.exists() and not overwrite:
        raise ConversionError(f"'{zip_path}' already exists; use --overwrite to replace it")
    if zip_path.is_dir():
        raise ConversionError(f"'{zip_path}' is a folder, not an archive file")
    created = missing_folders(zip_path.parent)
    try:
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=zip_path.parent, prefix=f".{zip_path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise ConversionError(f"the archive '{zip_path}' cannot be written: {e.strerror or e} "
                              f"({e.filename or zip_path.parent}); nothing was exported") from None
    finally:
        remove_empty_folders(created)
    return zip_path


def write_zip(files: Sequence[Path], zip_path: Path, overwrite: bool = False) -> Path:
    """A flat archive of ``files`` (each stored under its own file name) at ``zip_path``, written atomically: a failed
    write (a full disk) leaves neither the archive, its partial file nor a folder created for it."""
    zip_path = check_zip_target(zip_path, overwrite)
    names = [Path(f).name for f in files]
    if len(set(names)) != len(names):
        raise ConversionError("two exported files share a name; a flat archive needs unique case names")
    created = missing_folders(zip_path.parent)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial = zip_path.with_name(zip_path.name + ".partial")
    try:
        # .nii.gz is already compressed: store, don't deflate again
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
            for f, name in sorted(zip(files, names), key=lambda x: x[1]):
                archive.write(f, arcname=name)
        os.replace(partial, zip_path)
    except BaseException as e:
        partial.unlink(missing_ok=True)
        remove_empty_folders(created)
        if isinstance(e, OSError):
            raise ConversionError(f"the archive '{zip_path}' cannot be written: {e.strerror or e}") from None
        raise
    return zip_path


def archive(zip_path: Optional[Path], overwrite: bool = False) -> Optional[Callable[[Sequence[Path]], Path]]:
    """:func:`write_zip` to ``zip_path`` as the ``archive`` of :func:`~.common.export_predictions` (None: none)."""
    return None if zip_path is None else partial(write_zip, zip_path=zip_path, overwrite=overwrite)

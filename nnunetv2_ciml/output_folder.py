"""The output-folder policy of ``predict``, ``explain`` and ``export``: no earlier result outlives a run, and no file
of yours is deleted or written over.

- A run writes into a staging folder inside the output folder (``OUT/.predict.partial``, ...: :func:`staging_folder`)
  and moves its files into place only when it has finished (:func:`replace_outputs`), so a run that fails changes
  nothing in the folder, and leaves no folder it created.
- A run lists the files it wrote under ``"files"`` (paths relative to the folder) in its record file
  (``modalities.json``, ``explain.json``, ``.export.json``), which it writes last.
- The next run replaces what the earlier one recorded, as a whole: the recorded files it does not write again are
  deleted. Files that no record lists are yours: they stay, and a run that would write over one of them stops before
  it changes anything, naming the file.
- ``predict`` and ``explain`` refuse a folder that is not empty unless ``overwrite``
  (:func:`check_output_folder`); ``export`` refuses existing outputs and an earlier export unless ``overwrite``.
"""
import contextlib
import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, List, Set, Union

from nnunetv2_ciml.errors import CIMLError

__all__ = ["OutputFolderError", "RECORD_KEY", "check_output_folder", "recorded_files", "refuse_foreign",
           "staging_folder", "replace_outputs", "missing_folders", "remove_empty_folders"]

RECORD_KEY = "files"
PathLike = Union[str, Path]


class OutputFolderError(CIMLError, ValueError):
    """An output folder that cannot be written as asked (not empty, a file, holding files of yours)."""


def check_output_folder(out: PathLike, inputs: Iterable[PathLike], overwrite: bool, staging_name: str) -> None:
    """Refuse an output folder that is one of ``inputs``, is a file, or, without ``overwrite``, is not empty (a staging
    folder ``staging_name`` left by an interrupted run aside)."""
    out = Path(out)
    for folder in inputs:
        if out.resolve() == Path(folder).resolve():
            raise OutputFolderError(f"the output folder must differ from the input folder {str(folder)!r}")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"the output folder {str(out)!r} is a file")
    entries = sorted(p.name for p in out.iterdir() if p.name != staging_name) if out.is_dir() else []
    if entries and not overwrite:
        raise OutputFolderError(f"the output folder {str(out)!r} is not empty ({len(entries)} entries, first "
                                f"{entries[0]!r}); pass --overwrite to replace an earlier run's results in it, or "
                                f"choose an empty folder")


def _relative(name: object) -> bool:
    path = PurePosixPath(str(name))
    return bool(str(name)) and not path.is_absolute() and ".." not in path.parts


def recorded_files(out: PathLike, record_name: str) -> Set[str]:
    """The files (relative paths) that the record ``out/record_name`` of an earlier run lists, the record included;
    empty when there is none. A record that cannot be read lists nothing: its files count as the user's."""
    record = Path(out) / record_name
    try:
        files = json.loads(record.read_text()).get(RECORD_KEY)
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(files, list):
        return set()
    return {str(f) for f in files if _relative(f)} | {record_name}


def refuse_foreign(out: PathLike, names: Iterable[str], earlier: Set[str], record_name: str) -> None:
    """Raise :class:`OutputFolderError` when one of ``names`` (relative paths a run writes) exists in ``out`` and is
    not in ``earlier``: a file of the user's, which a run never replaces."""
    out = Path(out)
    foreign = [name for name in names if name not in earlier and os.path.lexists(out / name)]
    if record_name in foreign:  # a record of an older version, or of another program: its files cannot be told
        raise OutputFolderError(f"the output folder {str(out)!r} holds a {record_name} that lists no files of an "
                                f"earlier run (an older version's, or another program's): the earlier results "
                                f"cannot be told from your files, so this run changes nothing. Move them, or choose "
                                f"another output folder")
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputFolderError(f"the output folder {str(out)!r} holds {foreign[0]!r}{more}, which no earlier run "
                                f"recorded as its own (in {record_name}); this run replaces nothing and changes nothing: "
                                f"move it, or choose another output folder")


@contextlib.contextmanager
def staging_folder(out: PathLike, staging_name: str) -> Iterator[Path]:
    """An empty staging folder ``out/staging_name`` for the block (one left by an interrupted run is removed first),
    removed after it; when the block fails, the folders created for it (``out`` included) go too."""
    staging = Path(out) / staging_name
    created = missing_folders(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)
        raise
    shutil.rmtree(staging, ignore_errors=True)


def missing_folders(path: PathLike) -> List[Path]:
    """``path`` and those of its parents that do not exist, innermost first: what creating ``path`` creates, to be
    removed again (:func:`remove_empty_folders`) when the run fails."""
    path = Path(path)
    return [folder for folder in (path, *path.parents) if not folder.exists()]


def remove_empty_folders(folders: Iterable[Path]) -> None:
    """Remove ``folders``, innermost first, up to the first that is not empty (it holds something else)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def replace_outputs(out: PathLike, staging: Path, record_name: str, record: dict, earlier: Set[str]) -> List[str]:
    """Move the files of ``staging`` into ``out`` and write ``record`` (with their list under ``"files"``) as
    ``out/record_name``; the files of ``earlier`` (:func:`recorded_files`) that this run did not write are deleted.
    Raises :class:`OutputFolderError` before any change when a file would replace one that ``earlier`` does not list.
    Returns the files written (relative paths)."""
    out = Path(out)
    written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    written.append(record_name)
    refuse_foreign(out, written, earlier, record_name)
    (staging / record_name).write_text(json.dumps({**record, RECORD_KEY: written}, indent=2) + "\n")
    for name in sorted(earlier - set(written)):
        stale = out / name
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
            remove_empty_folders(p for p in stale.parents if out in p.parents)
    for name in written:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    return written

"""``export hecktor``: the flat upload archive (``--zip``, refused while a source case lacks a prediction unless
``--allow-missing``, and checked writable before the first write), the output folder's earlier export, and
predictions off their CT."""
import errno
import json
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.cli import main as cli

CASES = ("CHUM-001", "CHUP-002")


def write(array_zyx: np.ndarray, path: Path, origin=(-20.0, -22.5, -24.0)) -> None:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((1.0, 1.25, 2.0))
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def cases(tmp_path: Path) -> list:
    """Both cases' CTs in ``tmp_path/hecktor`` and a prediction of each on its CT grid in ``tmp_path/preds``: the
    ``export hecktor`` arguments less the output folder."""
    for i, case in enumerate(CASES):
        write(np.zeros((6, 8, 10), np.float32), tmp_path / "hecktor" / "imagesTs" / f"{case}__CT.nii.gz")
        pred = np.zeros((6, 8, 10), np.uint8)
        pred[2:4, 2:5, 3:6] = i + 1
        write(pred, tmp_path / "preds" / f"{case}.nii.gz")
    return ["export", "hecktor", str(tmp_path / "preds"), "--source", str(tmp_path / "hecktor")]


def test_hecktor_zip_holds_every_case_flat(tmp_path, capsys):
    """Predictions on each case's CT grid: the archive holds CASE.nii.gz at its top level, byte-identical to the
    export; with one prediction missing the command fails naming the case and writes nothing (no archive,
    no output folder)."""
    preds = tmp_path / "preds"
    args = cases(tmp_path)
    args[3:3] = [str(tmp_path / "out")]
    args += ["--zip", str(tmp_path / "hecktor.zip")]
    assert cli(args) == 0
    with zipfile.ZipFile(tmp_path / "hecktor.zip") as z:
        assert sorted(z.namelist()) == [f"{c}.nii.gz" for c in CASES]
        assert all(z.read(f"{c}.nii.gz") == (tmp_path / "out" / f"{c}.nii.gz").read_bytes() for c in CASES)

    (preds / f"{CASES[1]}.nii.gz").unlink()
    capsys.readouterr()
    args[3], args[-1] = str(tmp_path / "out2"), str(tmp_path / "partial.zip")
    assert cli(args) == 1
    assert CASES[1] in capsys.readouterr().err
    assert not (tmp_path / "partial.zip").exists() and not (tmp_path / "out2").exists()


def test_hecktor_zip_allow_missing_archives_the_present_cases(tmp_path, capsys):
    """``--allow-missing``: exit 0, the archive holds exactly the predicted cases as flat CASE.nii.gz names
    (byte-identical to the export), and a warning on stderr names the case left out."""
    source, preds = tmp_path / "hecktor" / "imagesTs", tmp_path / "preds"
    for case in CASES:
        write(np.zeros((6, 8, 10), np.float32), source / f"{case}__CT.nii.gz")
    pred = np.zeros((6, 8, 10), np.uint8)
    pred[2:4, 2:5, 3:6] = 1
    write(pred, preds / f"{CASES[0]}.nii.gz")          # CASES[1] has no prediction
    archive = tmp_path / "upload" / "hecktor.zip"
    capsys.readouterr()
    assert cli(["export", "hecktor", str(preds), str(tmp_path / "out"), "--source", str(tmp_path / "hecktor"),
                "--zip", str(archive), "--allow-missing"]) == 0
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == [f"{CASES[0]}.nii.gz"]
        assert z.read(f"{CASES[0]}.nii.gz") == (tmp_path / "out" / f"{CASES[0]}.nii.gz").read_bytes()
    err = capsys.readouterr().err
    assert "warning" in err and CASES[1] in err and CASES[0] not in err


def test_an_existing_archive_stops_the_export_before_it_writes(tmp_path, capsys):
    """The --zip target exists (no --overwrite): the command fails naming it, and neither the output folder nor the
    archive is touched. Fails if the archive is checked only after the cases were exported."""
    source, preds = tmp_path / "hecktor" / "imagesTs", tmp_path / "preds"
    for case in CASES:
        write(np.zeros((6, 8, 10), np.float32), source / f"{case}__CT.nii.gz")
        write(np.ones((6, 8, 10), np.uint8), preds / f"{case}.nii.gz")
    archive = tmp_path / "hecktor.zip"
    archive.write_bytes(b"an earlier upload")
    capsys.readouterr()
    assert cli(["export", "hecktor", str(preds), str(tmp_path / "out"), "--source", str(tmp_path / "hecktor"),
                "--zip", str(archive)]) == 1
    assert "hecktor.zip' already exists; use --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and archive.read_bytes() == b"an earlier upload"


def test_an_archive_that_cannot_be_written_stops_the_export_before_it_writes(tmp_path, capsys):
    """The --zip target lies in a folder that cannot be created (its parent is a file). Before, every case was
    exported, then the archive failed, and a rerun was refused because the files existed. Now a probe file is
    created and removed next to the archive first: the command fails naming the archive and writes nothing."""
    (tmp_path / "a_file").write_text("")
    assert cli([*cases(tmp_path), str(tmp_path / "out"), "--zip", str(tmp_path / "a_file" / "hecktor.zip")]) == 1
    err = capsys.readouterr().err
    assert f"the archive '{tmp_path / 'a_file' / 'hecktor.zip'}' cannot be written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "hecktor", "preds"]
    assert (tmp_path / "a_file").read_text() == ""


def test_a_full_disk_while_archiving_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    """The disk fills up while the archive is written. Before, the case files were already in place (the rerun was
    refused) and a 0-byte .zip.partial stayed. Now the command fails naming the archive, leaves neither the output
    folder, the archive nor its partial file, and the rerun succeeds."""
    args = [*cases(tmp_path), str(tmp_path / "out"), "--zip", str(tmp_path / "upload" / "hecktor.zip")]

    def full_disk(archive, filename, arcname=None, *rest, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "write", full_disk)
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert f"the archive '{tmp_path / 'upload' / 'hecktor.zip'}' cannot be written: No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hecktor", "preds"]
    monkeypatch.undo()
    assert cli(args) == 0 and zipfile.ZipFile(tmp_path / "upload" / "hecktor.zip").namelist() == [
        f"{c}.nii.gz" for c in CASES]


def test_overwrite_replaces_the_earlier_export_as_a_whole(tmp_path, capsys):
    """Export both cases, then (--overwrite) one: before, the earlier export's second case stayed without a word.
    Now the earlier export is replaced as a whole (its .export.json listed what it wrote) and a file of the user's
    stays; a folder holding a file of the user's named like an output is refused even with --overwrite."""
    args = [*cases(tmp_path), str(tmp_path / "out")]
    out = tmp_path / "out"
    assert cli(args) == 0
    (out / "notes.txt").write_text("mine")
    (tmp_path / "preds" / f"{CASES[1]}.nii.gz").unlink()
    assert cli(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".export.json", f"{CASES[0]}.nii.gz", "notes.txt"]
    assert json.loads((out / ".export.json").read_text())["files"] == [f"{CASES[0]}.nii.gz", ".export.json"]

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / f"{CASES[0]}.nii.gz").write_bytes(b"the user's")
    capsys.readouterr()
    assert cli([*args[:-1], str(theirs), "--overwrite"]) == 1
    assert "which no earlier run recorded as its own" in capsys.readouterr().err
    assert [p.read_bytes() for p in theirs.iterdir()] == [b"the user's"]


def test_a_prediction_outside_its_ct_is_refused(tmp_path, capsys):
    """A prediction whose grid lies 100 mm beside its CT (another case's, or another conversion's): before, an
    all-zero mask was written with a warning. Now the case is refused, naming it and both grids, and nothing is
    written."""
    args = [*cases(tmp_path), str(tmp_path / "out")]
    pred = np.zeros((6, 8, 10), np.uint8)
    pred[2:4, 2:5, 3:6] = 1
    write(pred, tmp_path / "preds" / f"{CASES[0]}.nii.gz", origin=(80.0, -22.5, -24.0))
    assert cli(args) == 1
    err = capsys.readouterr().err
    assert f"case '{CASES[0]}': 18 predicted voxels of" in err and "lie outside its CT (grid size (x, y, z)" in err
    assert "prediction grid size (x, y, z) (10, 8, 6), spacing (1, 1.25, 2) mm, origin (80, -22.5, -24) mm" in err
    assert not (tmp_path / "out").exists()

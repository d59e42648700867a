"""``export hecktor --zip``: the flat upload archive, refused while a source case lacks a prediction unless
``--allow-missing``."""
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunetv2_ciml.cli import main as cli

CASES = ("CHUM-001", "CHUP-002")


def write(array_zyx: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((1.0, 1.25, 2.0))
    image.SetOrigin((-20.0, -22.5, -24.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def test_hecktor_zip_holds_every_case_flat(tmp_path, capsys):
    """Predictions on each case's CT grid: the archive holds CASE.nii.gz at its top level, byte-identical to the
    export; with one prediction missing the command fails naming the case and writes nothing (no archive,
    no output folder)."""
    source, preds = tmp_path / "hecktor" / "imagesTs", tmp_path / "preds"
    for i, case in enumerate(CASES):
        write(np.zeros((6, 8, 10), np.float32), source / f"{case}__CT.nii.gz")
        pred = np.zeros((6, 8, 10), np.uint8)
        pred[2:4, 2:5, 3:6] = i + 1
        write(pred, preds / f"{case}.nii.gz")
    args = ["export", "hecktor", str(preds), str(tmp_path / "out"), "--source", str(tmp_path / "hecktor"), "--zip",
            str(tmp_path / "hecktor.zip")]
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

"""Bad input through the ``nnunetv2_ciml`` command: one clear message naming case and file, exit status 1,
nothing written or overwritten. One test per kind of fault (truncated or corrupt ``.nii.gz``, NaN/Inf
voxels, a bad second case in ``export``, ``evaluate -o`` misuse and failed writes, empty input folders),
plus the reading path itself, the CLI's error reporting and errors crossing process boundaries. Explain's
rows (NaN channel, missing channel, a bad second case) are in ``test_explain.py``, predict's in
``test_predict_missing.py``, the output folders of both and a full disk in ``test_predict_explain_outputs.py``,
the training rows in ``test_training_guards.py``, the autoPET container's ``.mha`` inputs in
``test_submission_autopet.py``.
"""
import gzip
import importlib
import json
import pickle
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_ciml import cli
from nnunetv2_ciml.image_io import ImageFileError, read_image, verify_image_file
from helpers import brats_labels, make_brats_case, make_hecktor_case, tree_digest, write_image


def run(capsys, *argv: str):
    """``nnunetv2_ciml ARGV`` in this process: (exit status, stdout, stderr without progress lines)."""
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    progress = re.compile(r"^\S.*: \d+/\d+ cases")
    return code, out.out, "".join(line for line in out.err.splitlines(True) if not progress.match(line))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 3 // 4])


def corrupt(path: Path) -> None:
    """Flip one byte in the middle of the deflate stream: the gzip CRC no longer matches."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))


def write_float(path: Path, array: np.ndarray) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.float32)), str(path))


# ------------------------------------------------------------------------------------- the reading path


def test_sitk_alone_reads_nan_as_zero_and_we_refuse_it(tmp_path):
    """Why the reading path exists: SimpleITK 2.5 turns NaN/Inf of a float NIfTI into 0. Fails if read_image
    just wraps sitk.ReadImage."""
    array = np.ones((4, 5, 6), np.float32)
    array[1, 2, 3], array[0, 0, 1] = np.nan, -np.inf
    f = tmp_path / "x.nii.gz"
    write_float(f, array)
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(f)))).all()  # the silent zeros
    with pytest.raises(ImageFileError, match=r"case 'c7': prediction file '.*x\.nii\.gz' holds non-finite voxel "
                                             r"values \(1 NaN, 1 infinite of 120 voxels; the first at index "
                                             r"\(x, y, z\) \(1, 0, 0\)\)"):
        read_image(f, "c7", "prediction")
    with pytest.raises(ImageFileError, match="non-finite"):
        verify_image_file(f)


def test_checked_read_equals_simpleitk_on_good_files(tmp_path):
    """Voxels, pixel type, geometry and meta-data as sitk.ReadImage gives them: uncompressed .nii, 2D, an
    oblique direction, scaled data (left to SimpleITK) and a 4D file."""
    rng = np.random.default_rng(0)
    cases = {}
    img = sitk.GetImageFromArray(rng.normal(size=(5, 6, 7)).astype(np.float32))
    img.SetSpacing((0.5, 1.5, 3.0))
    img.SetOrigin((10.0, -4.0, 2.5))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    cases["oblique.nii.gz"] = img
    cases["plain.nii"] = sitk.GetImageFromArray(rng.integers(0, 9, (3, 4, 5)).astype(np.uint8))
    cases["flat.nii.gz"] = sitk.GetImageFromArray(rng.integers(-5, 5, (6, 7)).astype(np.int16))
    cases["series.nii.gz"] = sitk.GetImageFromArray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
    for name, image in cases.items():
        sitk.WriteImage(image, str(tmp_path / name))
    import nibabel
    nib = nibabel.Nifti1Image(rng.integers(0, 100, (5, 4, 3)).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.header.set_slope_inter(0.5, 3.0)
    nibabel.save(nib, str(tmp_path / "scaled.nii.gz"))
    # nibabel writes scl_slope = scl_inter = NaN for "no scaling": not a non-finite scaling
    nibabel.save(nibabel.Nifti1Image(rng.normal(size=(3, 4, 5)).astype(np.float32), np.eye(4)),
                 str(tmp_path / "nibabel_unscaled.nii.gz"))
    assert np.isnan(nibabel.load(str(tmp_path / "nibabel_unscaled.nii.gz")).header["scl_slope"])
    for f in sorted(tmp_path.iterdir()):
        ours, theirs = read_image(f), sitk.ReadImage(str(f))
        assert ours.GetPixelID() == theirs.GetPixelID(), f.name
        assert ours.GetSize() == theirs.GetSize() and ours.GetSpacing() == theirs.GetSpacing(), f.name
        assert ours.GetOrigin() == theirs.GetOrigin() and ours.GetDirection() == theirs.GetDirection(), f.name
        assert {k: ours.GetMetaData(k) for k in ours.GetMetaDataKeys()}.items() <= \
            {k: theirs.GetMetaData(k) for k in theirs.GetMetaDataKeys()}.items(), f.name
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs), err_msg=f.name)
        assert verify_image_file(f).size == theirs.GetSize()


def test_truncated_corrupt_and_short_files_are_named(tmp_path):
    """Each way a file can be incomplete gets its own reason. A short .nii (voxel data cut off without gzip)
    and a gzip stream whose data is complete but shorter than the header says are caught by the size check."""
    write_float(tmp_path / "a.nii.gz", np.arange(4000, dtype=np.float32).reshape(10, 20, 20))
    truncate(tmp_path / "a.nii.gz")
    with pytest.raises(ImageFileError, match=r"case 'k': image file '.*a\.nii\.gz' cannot be read: the file is "
                                             r"truncated \(its gzip stream ends"):
        read_image(tmp_path / "a.nii.gz", "k")
    write_float(tmp_path / "b.nii.gz", np.random.default_rng(1).normal(size=(10, 20, 20)))
    corrupt(tmp_path / "b.nii.gz")
    with pytest.raises(ImageFileError, match=r"image file '.*b\.nii\.gz' cannot be read: the file is corrupt"):
        read_image(tmp_path / "b.nii.gz")
    write_float(tmp_path / "c.nii", np.ones((10, 20, 20)))
    data = (tmp_path / "c.nii").read_bytes()
    (tmp_path / "c.nii").write_bytes(data[:-100])
    (tmp_path / "d.nii.gz").write_bytes(gzip.compress(data[:-100]))
    for name in ("c.nii", "d.nii.gz"):
        with pytest.raises(ImageFileError, match=rf"{name}' cannot be read: the file is truncated \(15900 of "
                                                 r"16000 bytes of voxel data for shape \(20, 20, 10\), float32\)"):
            read_image(tmp_path / name)
    with pytest.raises(ImageFileError, match=r"'.*nothere\.nii\.gz' does not exist"):
        read_image(tmp_path / "nothere.nii.gz")


# ------------------------------------------------------------------------------------------ convert


@pytest.fixture
def brats_source(tmp_path) -> Path:
    root = tmp_path / "BraTS2020_TrainingData"
    for i in (1, 2):
        make_brats_case(root, f"BraTS20_Training_00{i}", i)
    return root


@pytest.fixture
def hecktor_source(tmp_path) -> Path:
    root = tmp_path / "hecktor2022"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    make_hecktor_case(root / "imagesTr", root / "labelsTr", "CHUM-001", 0)
    make_hecktor_case(root / "imagesTr", root / "labelsTr", "CHUS-002", 1)
    return root


def _bad_file(dataset: str, source: Path) -> tuple:
    if dataset == "brats":
        return "BraTS20_Training_002", source / "BraTS20_Training_002" / "BraTS20_Training_002_flair.nii.gz"
    return "CHUS-002", source / "imagesTr" / "CHUS-002__PT.nii.gz"


@pytest.mark.parametrize("dataset", ["brats", "hecktor"])
@pytest.mark.parametrize("fault, reason", [(truncate, "the file is truncated"), (corrupt, "the file is corrupt")])
def test_convert_refuses_a_truncated_or_corrupt_file(dataset, fault, reason, brats_source, hecktor_source, nnunet_env,
                                                      capsys):
    """Before: exit 0, the broken file copied (BraTS, 25 % of voxels zero) or resampled (HECKTOR PET)."""
    source = brats_source if dataset == "brats" else hecktor_source
    case, bad = _bad_file(dataset, source)
    fault(bad)
    digest = tree_digest(source)
    code, _, err = run(capsys, "convert", dataset, source, "-d", 31, "-np", 1)
    assert code == 1
    assert err.startswith(f"nnunetv2_ciml convert {dataset}: error: case '{case}': image file '{bad}' cannot be read: "
                          f"{reason}")
    assert err.count("\n") <= 3 and "Traceback" not in err
    assert tree_digest(source) == digest
    assert not nnunet_env.exists() or not [p for p in nnunet_env.rglob("*") if p.is_file()]


@pytest.mark.parametrize("dataset", ["brats", "hecktor"])
def test_convert_refuses_nan_or_inf_voxels(dataset, brats_source, hecktor_source, nnunet_env, capsys):
    """Before: SimpleITK read NaN/Inf as 0 and the conversion wrote (or resampled) zeros, exit 0."""
    source = brats_source if dataset == "brats" else hecktor_source
    case, bad = _bad_file(dataset, source)
    image = sitk.Cast(sitk.ReadImage(str(bad)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[1, 2, 3] = np.nan if dataset == "brats" else np.inf
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(bad))
    digest = tree_digest(source)
    code, _, err = run(capsys, "convert", dataset, source, "-d", 32, "-np", 1)
    assert code == 1
    assert f"error: case '{case}': image file '{bad}' holds non-finite voxel values" in err
    assert tree_digest(source) == digest
    assert not nnunet_env.exists() or not [p for p in nnunet_env.rglob("*") if p.is_file()]


# -------------------------------------------------------------------------------------------- export


def write_nan(path: Path) -> None:
    """Rewrite ``path`` as float32 with one NaN voxel (same geometry)."""
    image = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[1, 2, 3] = np.nan
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def _export_inputs(dataset: str, tmp_path: Path, hecktor_source: Path) -> tuple:
    """(prediction folder of two cases, extra export arguments, the second case's name)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    if dataset == "brats":
        labels = brats_labels()
        labels[labels == 4] = 3  # nnU-Net's BraTS labels 1 edema, 2 NCR, 3 ET
        for case in ("c1", "c2"):
            sitk.WriteImage(sitk.GetImageFromArray(labels), str(pred / f"{case}.nii.gz"))
        return pred, ["--labels", "brats2020"], "c2"
    for case in ("CHUM-001", "CHUS-002"):  # the reference labels are valid predictions on the CT grid
        (pred / f"{case}.nii.gz").write_bytes((hecktor_source / "labelsTr" / f"{case}.nii.gz").read_bytes())
    return pred, ["--source", hecktor_source], "CHUS-002"


@pytest.mark.parametrize("dataset", ["brats", "hecktor"])
@pytest.mark.parametrize("fault, reason", [(write_nan, "holds non-finite voxel values (1 NaN"),
                                           (truncate, "cannot be read: the file is truncated")])
def test_a_bad_second_prediction_makes_export_write_nothing(dataset, fault, reason, tmp_path, hecktor_source, capsys):
    """The second case's prediction is NaN or truncated. Before, export wrote case by case: the first case's
    output stayed (and, with --overwrite, replaced the earlier export's file) while the run failed. Now
    nothing is written or replaced, and no temporary folder is left. Fails for a case-by-case export."""
    pred, extra, second = _export_inputs(dataset, tmp_path, hecktor_source)
    fault(pred / f"{second}.nii.gz")
    inputs = tree_digest(pred) + tree_digest(hecktor_source)
    out = tmp_path / "out"
    code, _, err = run(capsys, "export", dataset, pred, out, "-np", 1, *extra)
    assert code == 1
    assert err.startswith(f"nnunetv2_ciml export {dataset}: error: case '{second}': prediction file "
                          f"'{pred / (second + '.nii.gz')}' {reason}")
    assert f"nothing was written to '{out}'" in err and "Traceback" not in err
    assert not out.exists()  # the folder the export created is gone again

    out.mkdir()  # an earlier export (its record lists its files): they must survive a failed --overwrite run
    for p in pred.iterdir():
        (out / p.name).write_bytes(b"earlier export of " + p.name.encode())
    (out / ".export.json").write_text(json.dumps({"files": sorted(p.name for p in pred.iterdir()) + [".export.json"]}))
    before = tree_digest(out)
    code, _, err = run(capsys, "export", dataset, pred, out, "-np", 1, "--overwrite", *extra)
    assert code == 1 and f"case '{second}': prediction file" in err
    assert tree_digest(out) == before and not (out / ".export.partial").exists()
    assert tree_digest(pred) + tree_digest(hecktor_source) == inputs


# ------------------------------------------------------------------------------------------ evaluate


@pytest.fixture
def eval_folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for case in ("c1", "c2"):
        sitk.WriteImage(sitk.GetImageFromArray(brats_labels()), str(ref / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(brats_labels()), str(pred / f"{case}.nii.gz"))
    return ref, pred


def test_evaluate_treats_a_nan_prediction_as_invalid(eval_folders, tmp_path, capsys):
    """Before: the NaN voxel read as 0 and a perfect prediction with one NaN voxel scored Dice 1.0."""
    ref, pred = eval_folders
    array = brats_labels().astype(np.float32)
    array[5, 6, 6] = np.nan  # inside the enhancing tumour: as 0, Dice would drop a little, not stop
    write_float(pred / "c2.nii.gz", array)
    digest = tree_digest(tmp_path)
    code, _, err = run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", tmp_path / "out")
    assert code == 1
    assert err.startswith(f"nnunetv2_ciml evaluate: error: case 'c2': prediction file '{pred / 'c2.nii.gz'}' holds "
                          "non-finite voxel values (1 NaN")
    assert tree_digest(tmp_path) == digest and not (tmp_path / "out").exists()


def test_evaluate_refuses_an_output_that_is_a_file(eval_folders, tmp_path, capsys):
    """Before: a FileExistsError traceback (after the whole evaluation)."""
    ref, pred = eval_folders
    target = tmp_path / "results.json"
    target.write_text("{}")
    digest = tree_digest(tmp_path)
    code, _, err = run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", target)
    assert code == 1
    assert err == (f"nnunetv2_ciml evaluate: error: output folder '{target}' is a file; -o takes a folder for "
                   "per_case.csv and summary.json\n")
    assert tree_digest(tmp_path) == digest


def test_a_failed_evaluation_leaves_no_current_looking_summary(eval_folders, tmp_path, capsys):
    """Before: the earlier summary.json stayed and looked like this run's. Now it is renamed to *.stale (its
    bytes kept), the message says so, and a later good run writes fresh outputs atomically."""
    ref, pred = eval_folders
    out = tmp_path / "out"
    assert run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)[0] == 0
    old = {name: (out / name).read_bytes() for name in ("summary.json", "per_case.csv")}
    truncate(pred / "c1.nii.gz")
    inputs = tree_digest(ref) + tree_digest(pred)
    code, _, err = run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)
    assert code == 1
    assert f"case 'c1': prediction file '{pred / 'c1.nii.gz'}' cannot be read: the file is truncated" in err
    assert "were renamed to per_case.csv.stale, summary.json.stale: they are not from this run" in err
    assert sorted(p.name for p in out.iterdir()) == ["per_case.csv.stale", "summary.json.stale"]
    assert {name: (out / f"{name}.stale").read_bytes() for name in old} == old
    assert tree_digest(ref) + tree_digest(pred) == inputs
    sitk.WriteImage(sitk.GetImageFromArray(brats_labels()), str(pred / "c1.nii.gz"))
    assert run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)[0] == 0
    assert json.loads((out / "summary.json").read_text())["per_case"]["c1"]["WT"]["Dice"] == 1.0
    assert not list(out.glob(".*.partial"))


def test_a_failed_write_replaces_neither_output(eval_folders, tmp_path, capsys):
    """Writing summary.json fails (here: its temporary path is taken by a folder, as a full disk or a permission
    problem would fail it). Before, per_case.csv was already replaced by then and the earlier summary.json
    stayed, so the pair looked current but came from two runs. Now neither is replaced: both earlier files are
    renamed to *.stale (bytes kept), no temporary file is left and the message says so. Fails for outputs
    replaced one after the other."""
    ref, pred = eval_folders
    out = tmp_path / "out"
    assert run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)[0] == 0
    old = {name: (out / name).read_bytes() for name in ("summary.json", "per_case.csv")}
    (out / ".summary.json.partial").mkdir()
    code, _, err = run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)
    assert code == 1
    assert err.startswith(f"nnunetv2_ciml evaluate: error: cannot write the results into '{out}': ")
    assert str(out / ".summary.json.partial") in err
    assert "were renamed to per_case.csv.stale, summary.json.stale: they are not from this run" in err
    assert sorted(p.name for p in out.iterdir()) == [".summary.json.partial", "per_case.csv.stale",
                                                     "summary.json.stale"]
    assert {name: (out / f"{name}.stale").read_bytes() for name in old} == old


def test_earlier_results_that_cannot_be_marked_stale_are_named_with_the_real_error(eval_folders, tmp_path, capsys):
    """The results cannot be written and the earlier ones cannot be renamed either (as in a read-only folder; here
    a folder holds each name). Before, the message reported the failed rename of the earlier results instead of the
    real error, and said nothing about those results. Now it reports the failed write and says that the earlier
    results, left as they were, are not from this run."""
    ref, pred = eval_folders
    out = tmp_path / "out"
    assert run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)[0] == 0
    for name in (".summary.json.partial", "summary.json.stale/x", "per_case.csv.stale/x"):
        (out / name).mkdir(parents=True)
    before = tree_digest(out)
    code, _, err = run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", out)
    assert code == 1 and err.startswith(f"nnunetv2_ciml evaluate: error: cannot write the results into '{out}': ")
    assert "the earlier results per_case.csv (" in err and ", summary.json (" in err
    assert f"in '{out}' could not be renamed to *.stale: they are not from this run" in err
    assert tree_digest(out) == before


# ------------------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("argv, message", [
    (["convert", "brats", "{empty}", "-d", "41"], "error: no BraTS cases found under {empty}"),
    (["convert", "autopet", "{empty}", "-d", "42"], "error: no autoPET cases found under {empty}"),
    (["convert", "hecktor", "{empty}", "-d", "43"], "error: no HECKTOR cases found under {empty}"),
    (["export", "brats", "{empty}", "{out}", "--labels", "brats2020"], "error: no .nii.gz predictions in '{empty}'"),
    (["export", "hecktor", "{empty}", "{out}", "--source", "{empty}"], "error: no .nii.gz predictions in '{empty}'"),
    (["export", "autopet", "{empty}", "{out}", "--source", "{empty}"], "error: no .nii.gz predictions in '{empty}'"),
    (["evaluate", "brats", "-ref", "{empty}", "-pred", "{empty}", "-o", "{out}"],
     "error: reference folder '{empty}' has no files ending in '.nii.gz'"),
])
def test_an_empty_input_folder_is_an_error(argv, message, tmp_path, nnunet_env, capsys):
    """nnUNetv2_predict exits 0 on an empty folder, writing nothing; our commands refuse it."""
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    code, _, err = run(capsys, *[a.format(empty=empty, out=out) for a in argv])
    assert code == 1
    assert message.format(empty=empty) in err
    assert not out.exists() and not list(empty.iterdir())
    assert not nnunet_env.exists() or not [p for p in nnunet_env.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------ error reporting


def test_errors_are_one_message_and_tracebacks_on_request(eval_folders, tmp_path, capsys, monkeypatch):
    """One line without traceback by default; the exception itself with --debug or NNUNETV2_CIML_DEBUG=1;
    an unexpected exception (a bug) is named as an internal error with how to get its traceback."""
    from nnunetv2_ciml.evaluation import EvaluationError

    ref, pred = eval_folders
    (tmp_path / "file").write_text("")
    argv = ["evaluate", "brats", "-ref", ref, "-pred", pred, "-o", tmp_path / "file"]
    code, _, err = run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(EvaluationError, match="is a file"):
        cli.main(["--debug", *map(str, argv)])
    monkeypatch.setenv("NNUNETV2_CIML_DEBUG", "1")
    with pytest.raises(EvaluationError, match="is a file"):
        cli.main([str(a) for a in argv])
    monkeypatch.delenv("NNUNETV2_CIML_DEBUG")

    import nnunetv2_ciml.evaluation as evaluation

    def bug(*args, **kwargs):
        return {}["missing key"]

    monkeypatch.setattr(evaluation, "evaluate_folder", bug)
    code, _, err = run(capsys, "evaluate", "brats", "-ref", ref, "-pred", pred, "-o", tmp_path / "out")
    assert code == 1
    assert err == ("nnunetv2_ciml evaluate: internal error: KeyError: 'missing key'\nrun again with "
                   "'nnunetv2_ciml --debug evaluate ...' for the traceback, and please report it\n")


# ------------------------------------------------------------------------------- errors across processes


def package_errors():
    """Every CIMLError subclass of the package (all its modules imported)."""
    import nnunetv2_ciml
    from nnunetv2_ciml.errors import CIMLError

    for module in pkgutil.walk_packages(nnunetv2_ciml.__path__, "nnunetv2_ciml."):
        if "_nnunet_ext" not in module.name:  # nnU-Net imports that shim as a top-level module
            importlib.import_module(module.name)
    importlib.import_module("nnunetv2_ciml.dataset_conversion.common")
    found, todo = set(), [CIMLError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += [c for c in cls.__subclasses__() if c.__module__.startswith("nnunetv2_ciml")]
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def test_every_error_survives_pickling():
    """Errors cross process boundaries (worker pools, multiprocessing results). ImageFileError could not be
    unpickled (its constructor requires the path). Fails for any error class that needs more than its message
    to be rebuilt, or that loses its attributes."""
    from nnunetv2_ciml.image_io import ImageFileError

    errors = package_errors()
    for cls in errors:
        error = (cls("case 'c1': image file '/x/c1.nii.gz' holds NaN", "/x/c1.nii.gz", "c1") if cls is ImageFileError
                 else cls(f"{cls.__name__}: what is wrong"))
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error) and copy.args == error.args, cls.__name__
        assert vars(copy) == vars(error), cls.__name__
    copy = pickle.loads(pickle.dumps(ImageFileError("m", "/x/c1.nii.gz", "c1")))
    assert copy.path == Path("/x/c1.nii.gz") and copy.case == "c1"
    assert {"CIMLError", "ImageFileError", "ConversionError", "EvaluationError", "CaseError", "CheckpointError",
            "TrainingStoppedError", "SubmissionError"} <= {c.__name__ for c in errors}


NAMES = ["T1ce", "T2", "FLAIR"]


def write_cases(folder: Path, cases: str, scale: dict = None) -> np.ndarray:
    """The three channel files of each case (one letter each: ``case_a``, ...), the same cube in each (times
    ``scale[file name]``); returns the cube."""
    cube = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    for case in cases:
        for c in range(3):
            name = f"case_{case}_{c:04d}.nii.gz"
            write_image(folder / name, cube * (scale or {}).get(name, 1))
    return cube


def read_cases(folder: Path) -> tuple:
    """Each case of ``folder`` as predict reads it (find_case_files, then the checked read_case for a 3-modality
    .nii.gz model): ({case: (image, present)}, {case: error message})."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunetv2_ciml.missing_modalities import CaseError, find_case_files, read_case

    read, errors = {}, {}
    for case, files in find_case_files(folder, ".nii.gz", 3, modality_names=NAMES).items():
        try:
            image, _, present = read_case(SimpleITKIO(), case, files, 3, NAMES, ".nii.gz", dimension=3)
            read[case] = image, present
        except CaseError as e:
            errors[case] = str(e)
    return read, errors


def test_a_case_with_a_wrong_file_is_refused_by_name_and_the_others_are_read(tmp_path):
    """An input folder of ``.nii.gz`` cases: case_a has its T2 as ``.nii`` (another image type), case_b a channel
    beyond the model's (_0007), case_c a 4D FLAIR, case_d is complete. Each bad case is refused by the checked
    reader naming its file (and the 4D image's size), per case; case_d reads. Fails if the ``.nii`` file counts as
    a missing modality, if _0007 ends the whole run, or if the 4D file gets past the reader (nnU-Net's preprocessor
    then fails with an IndexError) or the error blames a healthy file."""
    cube = write_cases(tmp_path, "abcd")
    (tmp_path / "case_a_0001.nii.gz").unlink()
    write_image(tmp_path / "case_a_0001.nii", cube)
    write_image(tmp_path / "case_b_0007.nii.gz", cube)
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(cube)] * 2)
    sitk.WriteImage(four_d, str(tmp_path / "case_c_0002.nii.gz"))

    read, errors = read_cases(tmp_path)
    assert set(errors) == {"case_a", "case_b", "case_c"} and set(read) == {"case_d"}
    assert read["case_d"][0].shape == (3, 4, 5, 6) and read["case_d"][1].all()
    assert "case_a_0001.nii'" in errors["case_a"] and "ends in '.nii'" in errors["case_a"]
    assert "case_b_0007.nii.gz" in errors["case_b"] and "channel 7, but the model has 3 modalities" in errors["case_b"]
    assert "case_c_0002.nii.gz" in errors["case_c"] and "4D image of size 6x5x4x2" in errors["case_c"]
    assert "case_c_0000" not in errors["case_c"] and "case_c_0001" not in errors["case_c"]


def test_a_channel_name_that_is_not_a_readable_file_is_an_error_not_a_missing_modality(tmp_path):
    """case_a's FLAIR is a broken symbolic link, case_b's a folder, both named like channel files. Before, both read
    as a missing FLAIR (predict and explain exit 0: "without FLAIR (FLAIR reads T2)"). Now each case is refused
    naming the name and what it is, in predict's reading and in explain's check of the folder; case_c, without a
    FLAIR file at all, is read with FLAIR missing."""
    from nnunetv2_ciml.interpretability import ExplainError, find_cases

    write_cases(tmp_path, "abc")
    for case in "abc":
        (tmp_path / f"case_{case}_0002.nii.gz").unlink()
    (tmp_path / "case_a_0002.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (tmp_path / "case_b_0002.nii.gz").mkdir()
    read, errors = read_cases(tmp_path)
    assert set(errors) == {"case_a", "case_b"} and read["case_c"][1].tolist() == [True, True, False]
    assert (f"case 'case_a': '{tmp_path / 'case_a_0002.nii.gz'}' (FLAIR) is a broken symbolic link (to "
            f"'{tmp_path / 'gone.nii.gz'}')") in errors["case_a"]
    assert f"case 'case_b': '{tmp_path / 'case_b_0002.nii.gz'}' (FLAIR) is a folder" in errors["case_b"]
    with pytest.raises(ExplainError, match=r"case 'case_a': .*case_a_0002\.nii\.gz' \(FLAIR\) is a broken symbolic"):
        find_cases(tmp_path, ".nii.gz", NAMES)


def test_values_too_large_to_normalise_are_refused_by_name(tmp_path):
    """case_a's T2 times 1e30: finite, but nnU-Net's z-score in float32 overflows and turns the channel into zeros
    that the network is told are a present modality. Now the case is refused naming the file; case_b's T2 times 1e6
    (large, and normalisable) is read. Fails for a check of NaN/Inf or of the float32 range alone."""
    write_cases(tmp_path, "ab", {"case_a_0001.nii.gz": 1e30, "case_b_0001.nii.gz": 1e6})
    read, errors = read_cases(tmp_path)
    assert set(errors) == {"case_a"} and read["case_b"][1].all()
    assert errors["case_a"].startswith(f"case 'case_a': channel 1 (T2) file '{tmp_path / 'case_a_0001.nii.gz'}' holds "
                                       "values too large to normalise (largest magnitude 9.")


def test_a_file_ending_in_other_letter_case_is_named_as_such(tmp_path):
    """``CASE_0001.NII.GZ`` for a model of ``.nii.gz`` files: the message said "ends in '.nii.gz', but this model
    reads '.nii.gz' files". Now it says that the letter case matters and the name to give the file."""
    write_cases(tmp_path, "a")
    (tmp_path / "case_a_0001.nii.gz").rename(tmp_path / "case_a_0001.NII.GZ")
    errors = read_cases(tmp_path)[1]
    assert errors["case_a"] == (f"case 'case_a': file '{tmp_path / 'case_a_0001.NII.GZ'}' (T2) ends in '.NII.GZ', and "
                                "file endings are case-sensitive: this model reads '.nii.gz' files; rename it to "
                                "'case_a_0001.nii.gz'")


@pytest.mark.parametrize("argv", [
    ["predict", "-i", "in", "-o", "out", "-m", "model"],
    ["explain", "-i", "in", "-o", "out", "-m", "model"],
    ["submission", "autopet", "-o", "out", "-m", "model"],
])
def test_every_command_parses_a_fold_one_way(argv, capsys):
    """``-f x`` was an internal error in predict (ValueError: invalid literal for int()), a message in explain. One
    parser now refuses it in every command before anything runs, with explain's message."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["-f", "0", "x"] if argv[0] != "explain" else argv + ["-f", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument -f: fold must be an integer or 'all', not 'x'" in err

"""``submission autopet``: the container folder and its entry point, run without Docker on a tiny trained model.

The model is trained here with the real nnU-Net pipeline (plan and preprocess, nnUNetTrainerCIML_CPUtest) on
a synthetic two-channel dataset named like ``convert autopet``'s (channels CT, PET). The entry point is run
as the container runs it (``python -m nnunetv2_ciml.submission.autopet_process``) with the copied package
on PYTHONPATH and a fake ``/input`` laid out as the challenge's (``images/ct/<uuid>.mha``,
``images/pet/<other uuid>.mha``).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import make_dataset, nnunet_environment, plan_and_preprocess, shrink_plans, train_in_process

from nnunetv2_ciml.cli import main as cli
from nnunetv2_ciml.submission.autopet import build_autopet_submission
from nnunetv2_ciml.submission.autopet_process import (OUTPUT_SLUG, SubmissionError, ct_on_pet_grid, main as entry_point,
                                                      pair_inputs, read_input)

TRAINER = "nnUNetTrainerCIML_CPUtest"
CT_UID, PET_UID = "af3b6605-c2b9-4067-8af5-8b85aafb2ae3", "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5"
# a patient-like grid: anisotropic, shifted, x axis flipped
SPACING, ORIGIN, DIRECTION = (2.0, 2.5, 3.0), (-120.0, 40.5, 17.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def run(env, *args, timeout=900):
    out = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("autopet_model")
    env = nnunet_environment(root)
    raw = make_dataset(root / "raw", 903, regions=False, shape=(20, 20, 20))  # channels 0 CT, 1 PET
    plan_and_preprocess(env, 903, "3d_fullres")
    shrink_plans(root / "preprocessed", raw.name, "3d_fullres")
    train_in_process(env, 903, "3d_fullres", TRAINER)
    return env, raw, root / "results" / raw.name / f"{TRAINER}__nnUNetPlans__3d_fullres"


def write_like_patient(src: Path, dst: Path) -> sitk.Image:
    """``src``'s voxels, compressed, on the patient grid (spacing, origin, flipped direction); format from the suffix."""
    return write_mha(dst, sitk.GetArrayFromImage(sitk.ReadImage(str(src))), compress=True)


@pytest.mark.integration
@pytest.mark.slow  # nnU-Net plans and trains a 3D model
def test_container_folder_and_entry_point_match_nnunet_predict(trained_model, tmp_path):
    """The folder holds a Dockerfile on an official PyTorch image with our entry point, pinned nnU-Net, the chosen
    fold's checkpoint and a copy of the package; the entry point, run from that copy, writes one uint8 0/1 mask
    named after the CT file on the PET grid (spacing, origin, flipped direction kept) and the category json.
    Its mask equals nnUNetv2_predict's own prediction of the same images (foreground -> 1), so the channel order
    and the grid are right; it fails if CT and PET were swapped (checked: the swapped prediction differs) or if
    the mask were written on a default grid."""
    env, raw, model = trained_model
    sub = tmp_path / "container"
    assert cli(["submission", "autopet", "-m", str(model), "-f", "0", "-o", str(sub)]) == 0
    dockerfile = (sub / "Dockerfile").read_text()
    assert "FROM pytorch/pytorch:" in dockerfile and "-cuda" in dockerfile
    assert '"-m", "nnunetv2_ciml.submission.autopet_process"' in dockerfile and '"--folds", "0"]' in dockerfile
    from importlib.metadata import version
    assert f"nnunetv2=={version('nnunetv2')}" in (sub / "requirements.txt").read_text().splitlines()
    assert sorted(p.relative_to(sub / "model").as_posix() for p in (sub / "model").rglob("*") if p.is_file()) == [
        "dataset.json", "dataset_fingerprint.json", "fold_0/checkpoint_final.pth", "plans.json"]
    assert (sub / "package" / "nnunetv2_ciml" / "dataset_conversion" / "brats.py").is_file()

    challenge_in, challenge_out = tmp_path / "input", tmp_path / "output"
    write_like_patient(raw / "imagesTs" / "case_006_0000.nii.gz", challenge_in / "images" / "ct" / f"{CT_UID}.mha")
    pet = write_like_patient(raw / "imagesTs" / "case_006_0001.nii.gz",
                             challenge_in / "images" / "pet" / f"{PET_UID}.mha")
    container_env = dict(env, PYTHONPATH=str(sub / "package"))
    where = run(container_env, sys.executable, "-c", "import nnunetv2_ciml; print(nnunetv2_ciml.__file__)")
    assert Path(where.strip()).is_relative_to(sub / "package")
    run(container_env, sys.executable, "-m", "nnunetv2_ciml.submission.autopet_process", "--input", str(challenge_in),
        "--output", str(challenge_out), "--model", str(sub / "model"), "--folds", "0", "--device", "cpu")

    assert sorted(p.name for p in (challenge_out / OUTPUT_SLUG).iterdir()) == [f"{CT_UID}.mha"]
    mask = sitk.ReadImage(str(challenge_out / OUTPUT_SLUG / f"{CT_UID}.mha"))
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetSize() == pet.GetSize()
    assert np.allclose(mask.GetSpacing(), SPACING) and np.allclose(mask.GetOrigin(), ORIGIN)
    assert np.allclose(mask.GetDirection(), DIRECTION)
    assert json.loads((challenge_out / "data-centric-model.json").read_text()) is False

    # nnU-Net's own CLI on the same images (same geometry), and on the channels swapped
    for name, order in (("same", (0, 1)), ("swapped", (1, 0))):
        folder = tmp_path / f"nnunet_in_{name}"
        for channel, src in enumerate(order):
            write_like_patient(raw / "imagesTs" / f"case_006_{src:04d}.nii.gz", folder / f"case_{channel:04d}.nii.gz")
        run(env, "nnUNetv2_predict", "-i", str(folder), "-o", str(tmp_path / f"pred_{name}"), "-d", "903", "-c",
            "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_tta")
    ours = sitk.GetArrayFromImage(mask)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred_same" / "case.nii.gz")))
    swapped = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred_swapped" / "case.nii.gz")))
    np.testing.assert_array_equal(ours, (reference > 0).astype(np.uint8))
    assert set(np.unique(ours)) <= {0, 1}
    assert not np.array_equal(reference > 0, swapped > 0), "the swap check is void: the model ignores its inputs"


def test_inputs_pairing_and_ct_resampling(tmp_path):
    """One file per folder pairs whatever the names; several pair by name, and an unpaired one is refused by
    name; a CT on another grid is resampled onto the PET grid (a constant 5 HU image stays 5 inside)."""
    ct_dir, pet_dir = tmp_path / "images" / "ct", tmp_path / "images" / "pet"
    ct_dir.mkdir(parents=True)
    pet_dir.mkdir(parents=True)
    (ct_dir / "a.mha").touch()
    (pet_dir / "b.mha").touch()
    assert pair_inputs(tmp_path) == [("a", ct_dir / "a.mha", pet_dir / "b.mha")]
    (ct_dir / "c.mha").touch()
    with pytest.raises(SubmissionError, match="cannot pair.*'a.mha'"):
        pair_inputs(tmp_path)
    with pytest.raises(SubmissionError, match="images/ct"):
        pair_inputs(tmp_path / "nowhere")

    pet = sitk.Image(10, 12, 8, sitk.sitkFloat32)
    pet.SetSpacing((4.0, 4.0, 3.0))
    pet.SetOrigin((-10.0, 0.0, 5.0))
    ct = sitk.Image(40, 48, 24, sitk.sitkFloat32) + 5.0
    ct.SetSpacing((1.0, 1.0, 1.0))
    ct.SetOrigin((-12.0, -2.0, 3.0))
    on_grid = ct_on_pet_grid(ct, pet)
    assert on_grid.GetSize() == pet.GetSize() and on_grid.GetOrigin() == pet.GetOrigin()
    assert np.allclose(sitk.GetArrayFromImage(on_grid)[:4, :4, :4], 5.0)


def test_builder_refuses_an_untrained_fold_and_a_model_without_ct_pet(tmp_path):
    """Errors name the missing checkpoint, and the channel names, before anything is written."""
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}}))
    with pytest.raises(SubmissionError, match=r"fold_1.*checkpoint_final\.pth"):
        build_autopet_submission(model, [1], tmp_path / "out")
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "FLAIR"}}))
    with pytest.raises(SubmissionError, match="CT and one PET"):
        build_autopet_submission(model, [0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_mha(path: Path, array: np.ndarray, compress: bool) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return image


@pytest.mark.parametrize("compress", [False, True])
def test_container_inputs_are_read_checked(tmp_path, compress):
    """The entry point read the challenge's .mha files with sitk.ReadImage: SimpleITK keeps NaN/Inf in a
    MetaImage (unlike NIfTI), so they went into the network; a truncated file gave ITK's "No such file or
    directory". read_input names case and file and says what is wrong; a good file reads exactly as SimpleITK
    reads it. Fails if read_input wraps sitk.ReadImage alone."""
    rng = np.random.default_rng(0)
    suv = rng.gamma(2.0, 1.0, (6, 7, 8)).astype(np.float32)
    good = tmp_path / "good.mha"
    written = write_mha(good, suv, compress)
    image = read_input(good, "u1", "PET")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), suv)
    assert image.GetSpacing() == written.GetSpacing() and image.GetDirection() == written.GetDirection()

    for value, count in ((np.nan, "1 NaN, 0 infinite"), (np.inf, "0 NaN, 1 infinite")):
        bad = suv.copy()
        bad[2, 3, 4] = value
        path = tmp_path / "bad.mha"
        write_mha(path, bad, compress)
        assert not np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # SimpleITK keeps them
        with pytest.raises(SubmissionError, match=rf"^case 'u1': PET file '{path}' holds non-finite voxel values "
                                                  rf"\({count} of 336 voxels; the first at index \(x, y, z\) "
                                                  r"\(4, 3, 2\)\)"):
            read_input(path, "u1", "PET")

    big = tmp_path / "cut.mha"
    write_mha(big, rng.normal(size=(20, 30, 40)).astype(np.float32), compress)
    data = big.read_bytes()
    big.write_bytes(data[:len(data) * 3 // 4])
    with pytest.raises(SubmissionError, match=rf"^case 'u1': CT file '{big}' cannot be read: the file is truncated "
                                              r"\(\d+ of \d+ bytes of (compressed )?voxel data\)"):
        read_input(big, "u1", "CT")
    (tmp_path / "junk.mha").write_text("not an image")
    with pytest.raises(SubmissionError, match=rf"^case 'u1': CT file '{tmp_path / 'junk.mha'}' cannot be read"):
        read_input(tmp_path / "junk.mha", "u1", "CT")


def test_entry_point_refuses_a_nan_input_before_loading_the_model(tmp_path, capsys):
    """A NaN in the PET stops the container run with exit status 1 and one message naming case and file, before
    the model is loaded (the model folder here has only its dataset.json) and before anything is written."""
    rng = np.random.default_rng(1)
    pet = rng.gamma(2.0, 1.0, (6, 7, 8)).astype(np.float32)
    pet[0, 0, 0] = np.nan
    inp, out, model = tmp_path / "input", tmp_path / "output", tmp_path / "model"
    write_mha(inp / "images" / "ct" / f"{CT_UID}.mha", rng.normal(size=(6, 7, 8)).astype(np.float32), True)
    write_mha(inp / "images" / "pet" / f"{PET_UID}.mha", pet, True)
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}}))
    code = entry_point(["--input", str(inp), "--output", str(out), "--model", str(model), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"autoPET entry point: error: case '{CT_UID}': PET file "
                          f"'{inp / 'images' / 'pet' / (PET_UID + '.mha')}' holds non-finite voxel values (1 NaN")
    assert not out.exists()

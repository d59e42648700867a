"""``nnunetv2_ciml explain``: message Grad-CAM maps of a real (tiny) CIML model trained with nnU-Net's CLI.

One 2D region-based model (channels T1ce, T2, FLAIR; subtasks "FLAIR" <- T1ce, T2 and "T1ce" <- T2, FLAIR)
is planned, preprocessed and trained by nnU-Net (``nnUNetTrainerCIML_CPUtest``) once for the module.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import (assert_same_geometry, message_latent_layers, message_projection, set_message_projections,
                     nnunet_variables, set_output_bias, tree_digest, write_image)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a model trained by nnU-Net (trained_regions_2d)


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(trained_regions_2d):
    """(env, raw dataset folder, model folder) of the CIML model nnU-Net trained on the tiny 2D region dataset."""
    return trained_regions_2d


@pytest.fixture(scope="module")
def predictor(trained):
    """The model loaded for the Python API. Tests edit its weights; each sets those it relies on."""
    from nnunetv2_ciml.interpretability import load_predictor
    return load_predictor(trained[2], 0, device="cpu", use_mirroring=False, allow_tqdm=False)


def write_case(folder: Path, case: str, channels, spacing, origin, direction) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c, array in enumerate(channels):
        write_image(folder / f"{case}_{c:04d}.nii.gz", array.astype(np.float32), spacing, origin, direction)


def test_folder_maps_in_the_input_geometry_with_shares(trained, tmp_path):
    """Anisotropic spacing (resampled by nnU-Net), flipped axes, origin, 3 slices for the 2D model and a
    zero border (cropped by nnU-Net): maps come back on the input's grid, zero outside the crop."""
    from nnunetv2_ciml.interpretability import explain_folder, map_file_name

    _, raw, model = trained
    rng = np.random.default_rng(1)
    shape = (3, 40, 36)
    grid = np.indices(shape[1:])
    blob = ((grid[0] - 18) ** 2 + (grid[1] - 16) ** 2 <= 64)[None].repeat(3, 0)
    core = blob & (grid[1] < 16)[None]
    channels = [core + rng.normal(0, 0.3, shape), 0.3 * blob + rng.normal(0, 0.3, shape),
                blob + 0.2 * core + rng.normal(0, 0.3, shape)]
    for c in channels:
        c[:, :2], c[:, -2:], c[:, :, :2], c[:, :, -2:] = 0, 0, 0, 0
    inputs = tmp_path / "in"
    write_case(inputs, "tilted", channels, (0.8, 1.25, 2.5), (12.5, -30.0, 7.0),
               (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))

    summary = explain_folder(model, 0, inputs, tmp_path / "out", device="cpu", use_mirroring=False)

    written = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert summary["subtasks"] == {"FLAIR": {"primary": "FLAIR", "senders": ["T1ce", "T2"]},
                                   "T1ce": {"primary": "T1ce", "senders": ["T2", "FLAIR"]}}
    reference = inputs / "tilted_0000.nii.gz"
    case = summary["cases"]["tilted"]
    assert_same_geometry(tmp_path / "out" / case["prediction"], reference)
    for subtask, info in summary["subtasks"].items():
        entry = case["subtasks"][subtask]
        assert entry["primary"] == info["primary"]
        assert set(entry["senders"]) == set(info["senders"])
        for sender, values in entry["senders"].items():
            path = tmp_path / "out" / values["map"]
            assert path.name == map_file_name(sender, subtask)
            assert_same_geometry(path, reference)
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            assert array.dtype == np.float32 and array.min() >= 0
            assert not array[:, :2].any() and not array[:, -2:].any() and not array[:, :, -2:].any()
            assert values["mass"] == pytest.approx(float(array.sum(dtype=np.float64)), rel=1e-4, abs=1e-12)
        shares = [v["share"] for v in entry["senders"].values()]
        if entry["target_voxels"]:
            assert sum(shares) == pytest.approx(1.0)
        else:
            assert shares == [None, None]
        overlay = matplotlib.image.imread(tmp_path / "out" / entry["overlay"])  # decodes: a real PNG
        assert overlay.ndim == 3 and min(overlay.shape[:2]) >= 100
        rgb = overlay[..., :3]  # a figure of images with coloured maps or outlines, not blank or all grey
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50 and (rgb.max(-1) - rgb.min(-1)).max() > 0.2
        assert all(0 <= z < shape[0] for z in entry["slices"])


def _case_files(raw: Path, case: str = "case_005"):
    return [raw / "imagesTs" / f"{case}_{c:04d}.nii.gz" for c in range(3)]


def test_only_the_sender_with_messages_has_a_map(trained, predictor):
    """Zero T2's messages to subtask "FLAIR" (and give T1ce's clearly non-zero ones): T2's map is exactly zero,
    T1ce's is not and holds the whole share. Filtering senders changes what is returned, not the numbers."""
    from nnunetv2_ciml.interpretability import ciml_network, explain_case

    _, raw, _ = trained
    network = ciml_network(predictor)
    flair = network.subtask_names.index("FLAIR")
    t1ce, t2 = network.modality_names.index("T1ce"), network.modality_names.index("T2")
    pair = {p.sender: p for p in network.message_pairs if p.subtask == flair}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for stage in network.message_stages:
            w = message_projection(network, stage, pair[t1ce])
            w.copy_(torch.randn(w.shape, generator=generator))
            message_projection(network, stage, pair[t2]).zero_()
        set_output_bias(network, 10.0, flair)  # predict the subtask everywhere: a target on every voxel

    result = explain_case(predictor, _case_files(raw), subtasks=["flair"])
    assert set(result.maps) == {("T1ce", "FLAIR"), ("T2", "FLAIR")}
    assert result.target_voxels["FLAIR"] == 32 * 32
    assert result.maps[("T1ce", "FLAIR")].shape == (1, 32, 32)
    assert result.maps[("T1ce", "FLAIR")].max() > 0
    assert not result.maps[("T2", "FLAIR")].any()
    assert result.shares["FLAIR"] == {"T1ce": 1.0, "T2": 0.0}
    assert result.predicted["FLAIR"].all()

    only = explain_case(predictor, _case_files(raw), subtasks=["FLAIR"], senders=["t1ce"])
    assert set(only.maps) == {("T1ce", "FLAIR")}
    np.testing.assert_allclose(only.maps[("T1ce", "FLAIR")], result.maps[("T1ce", "FLAIR")], rtol=1e-6)
    assert only.shares == result.shares

    with torch.no_grad():
        set_output_bias(network, -10.0, flair)  # nothing predicted: nothing to explain
    empty = explain_case(predictor, _case_files(raw), subtasks=["FLAIR"])
    assert empty.target_voxels["FLAIR"] == 0
    assert not any(m.any() for m in empty.maps.values())
    assert empty.shares["FLAIR"] == {"T1ce": None, "T2": None}


def _raw_grad_cams(network, x, target, layers):
    """pytorch-grad-cam's Grad-CAM of each layer before its min-max scaling: ``ReLU(sum_c w_c A_c)`` with its own
    hooks, backward pass, channel weights (``get_cam_weights``) and weighted sum (``get_cam_image``)."""
    from pytorch_grad_cam import GradCAM

    with GradCAM(model=network, target_layers=list(layers)) as cam:
        cam(input_tensor=x, targets=[target])
        activations = cam.activations_and_grads.activations
        gradients = cam.activations_and_grads.gradients
        return [(cam, a.cpu().numpy(), g.cpu().numpy()) for a, g in zip(activations, gradients)]


def test_tile_maps_match_pytorch_grad_cam_in_absolute_scale_summed_over_stages(trained, predictor):
    """Two senders to subtask "T1ce", one with messages at the first two message stages, the other at the first
    only. Our map of each pair equals the sum over stages of pytorch-grad-cam's unscaled Grad-CAM of that pair's
    latent channels, each upsampled to the patch (linear) and divided by the patch pixels per stage pixel (mass
    kept). Fails on a per-stage or per-sender rescaling (e.g. min-max, pytorch-grad-cam's default output), on a
    sum without the mass factor, on one stage's map alone, or on mixing the pairs' channels."""
    import torch.nn.functional as F

    from nnunetv2_ciml.interpretability import MessageGradCAM, ciml_network

    network = ciml_network(predictor)
    subtask = network.subtask_names.index("T1ce")
    pairs = [p for p in network.message_pairs if p.subtask == subtask]
    assert len(pairs) == 2 and len(network.message_stages) >= 2
    first, second = network.message_stages[:2]
    generator = torch.Generator().manual_seed(1)
    set_message_projections(network, [(first, pairs[0]), (second, pairs[0]), (first, pairs[1])], generator)
    x = torch.randn((1, 3, 32, 32), generator=generator)
    mask = torch.zeros((2, 32, 32), dtype=torch.uint8)
    mask[:, 8:20, 10:26] = 1
    channels = network.subtask_outputs[subtask]

    with MessageGradCAM(network, pairs, {subtask: channels}) as gradcam:
        ours = gradcam(x, mask).numpy()

    def target(output):
        return (output[channels] * mask[channels]).sum()

    layers = message_latent_layers(network)
    network.eval()
    recorded = dict(zip((first, second), _raw_grad_cams(network, x, target, [layers[first][0], layers[second][0]])))

    def raw_map(stage, pair):
        cam, activation, gradient = recorded[stage]
        part = layers[stage][1][pair]
        return np.maximum(cam.get_cam_image(x, None, [target], activation[:, part], gradient[:, part], False), 0)

    expected = np.zeros((2, 32, 32), np.float32)
    for stage in (first, second):
        for n, pair in enumerate(pairs):
            level = torch.from_numpy(raw_map(stage, pair)[:, None].astype(np.float32))
            per_pixel = 32 * 32 / level[0, 0].numel()
            expected[n] += (F.interpolate(level, size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
                            / per_pixel).numpy()
    assert all(ours[n].max() > 0 for n in range(2))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    # Pair 0's second-stage part is not negligible: its first-stage map alone would fail the comparison above.
    assert raw_map(second, pairs[0]).sum() > 0.01 * ours[0].sum()


def test_cli_round_trip(trained, tmp_path):
    env, raw, model = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    for f in _case_files(raw, "case_006"):
        shutil.copy(f, inputs / f.name)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in inputs.iterdir())
    out = run(env, sys.executable, "-m", "nnunetv2_ciml.cli", "explain", "-m", str(model), "-f", "0",
              "-i", str(inputs), "-o", str(tmp_path / "out"), "--subtask", "T1ce", "--sender", "FLAIR",
              "-device", "cpu", "--disable_tta")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "T1ce: T2" in out.stdout and "FLAIR" in out.stdout
    summary = json.loads((tmp_path / "out" / "explain.json").read_text())
    assert list(summary["subtasks"]) == ["T1ce"] and list(summary["cases"]) == ["case_006"]
    senders = summary["cases"]["case_006"]["subtasks"]["T1ce"]["senders"]
    assert set(senders) == {"T2", "FLAIR"} and "map" in senders["FLAIR"] and "map" not in senders["T2"]
    assert sorted(p.name for p in (tmp_path / "out" / "case_006").iterdir()) == \
        ["FLAIR_to_T1ce.nii.gz", "messages_to_T1ce.png", "prediction.nii.gz"]
    assert_same_geometry(tmp_path / "out" / senders["FLAIR"]["map"], inputs / "case_006_0000.nii.gz")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in inputs.iterdir()) == before


def _plain_model_folder(trained, results: Path) -> Path:
    """A plain nnU-Net model folder whose checkpoint nnU-Net's own ``nnUNetTrainer`` wrote (initialised on the
    dataset's plans, not trained: explain must refuse it before it reads weights)."""
    from nnunetv2.run.run_training import get_trainer_from_args

    env, raw, _ = trained
    preprocessed = Path(env["nnUNet_preprocessed"]) / raw.name
    with nnunet_variables(dict(env, nnUNet_results=str(results))):
        trainer = get_trainer_from_args(raw.name, "2d", 0, "nnUNetTrainer", device=torch.device("cpu"))
        trainer.initialize()
        trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    folder = Path(trainer.output_folder_base)
    shutil.copy(preprocessed / "nnUNetPlans.json", folder / "plans.json")  # as nnU-Net's on_train_start does
    shutil.copy(preprocessed / "dataset.json", folder / "dataset.json")
    return folder


def test_unknown_subtask_or_sender_names_the_choices(trained, predictor):
    from nnunetv2_ciml.interpretability import ExplainError, explain_case

    _, raw, _ = trained
    files = _case_files(raw)
    with pytest.raises(ExplainError, match=r"unknown subtask 'whole tumor'.*'FLAIR', 'T1ce'"):
        explain_case(predictor, files, subtasks=["whole tumor"])
    with pytest.raises(ExplainError, match=r"unknown sender modality 'PET'.*'T1ce', 'T2', 'FLAIR'"):
        explain_case(predictor, files, senders=["PET"])
    with pytest.raises(ExplainError, match=r"\['FLAIR'\] send no messages to subtask\(s\) \['FLAIR'\].*'T1ce', 'T2'"):
        explain_case(predictor, files, subtasks=["FLAIR"], senders=["FLAIR"])


def test_input_folder_without_complete_cases_names_the_missing_channel(trained, tmp_path, capsys):
    from nnunetv2_ciml import cli
    from nnunetv2_ciml.interpretability import ExplainError, find_cases

    _, raw, model = trained
    files = _case_files(raw)
    modalities = ["T1ce", "T2", "FLAIR"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExplainError, match=r"no cases in .*empty.*CASE_XXXX\.nii\.gz.*_0002: FLAIR"):
        find_cases(tmp_path / "empty", ".nii.gz", modalities)
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in files[:2]:
        shutil.copy(f, partial / f.name)
    # a missing modality file is allowed (explained without that modality)
    assert find_cases(partial, ".nii.gz", modalities) == {"case_005": [str(partial / f.name) for f in files[:2]] + [None]}
    (partial / "notes.nii.gz").write_bytes(b"")
    with pytest.raises(ExplainError, match=r"\['notes\.nii\.gz'\] lack the channel suffix"):
        find_cases(partial, ".nii.gz", modalities)

    code = cli.main(["explain", "-m", str(model), "-f", "0", "-i", str(partial), "-o", str(tmp_path / "out"),
                     "-device", "cpu"])
    assert code == 1
    assert "nnunetv2_ciml explain: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_folder_without_the_fold_plans_or_ciml_network_is_refused(trained, tmp_path):
    from nnunetv2_ciml.interpretability import ExplainError, explain_folder

    _, raw, model = trained
    with pytest.raises(ExplainError, match=r"missing checkpoint .*fold_3.*folds with a checkpoint_final\.pth: fold_0"):
        explain_folder(model, 3, raw / "imagesTs", tmp_path / "out")
    with pytest.raises(ExplainError, match=r"not an nnU-Net model folder: it has no plans\.json"):
        explain_folder(model.parent, 0, raw / "imagesTs", tmp_path / "out")
    plain = _plain_model_folder(trained, tmp_path / "plain")
    with pytest.raises(ExplainError, match=r"holds a PlainConvUNet \(trainer nnUNetTrainer\), not a CIML network"):
        explain_folder(plain, 0, raw / "imagesTs", tmp_path / "out", device="cpu")


def test_default_mirroring_targets_are_nnunets_mirrored_prediction(trained, tmp_path):
    """The default test-time augmentation path: a model that allows mirroring (as ``nnUNetTrainerCIML`` trains
    them; the CPU-test trainer does not mirror, so its checkpoint's axes are set to (0, 1) in a copy), loaded with
    ``use_mirroring=True``. The explained segmentation is nnU-Net's own mirrored prediction of the case, which for
    this case differs from the unmirrored one. Fails if explain's targets skip (or break) the mirroring."""
    from nnunetv2_ciml.interpretability import explain_case, load_predictor

    _, raw, model = trained
    copy = tmp_path / model.name
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("validation", "*.png", "*.txt", "checkpoint_best.pth"))
    checkpoint = torch.load(copy / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["inference_allowed_mirroring_axes"] is None
    checkpoint["inference_allowed_mirroring_axes"] = (0, 1)
    torch.save(checkpoint, copy / "fold_0" / "checkpoint_final.pth")

    mirrored = load_predictor(copy, 0, device="cpu", allow_tqdm=False)
    assert mirrored.use_mirroring and tuple(mirrored.allowed_mirroring_axes) == (0, 1)
    plain = load_predictor(copy, 0, device="cpu", use_mirroring=False, allow_tqdm=False)
    files = _case_files(raw, "case_006")
    image, properties = mirrored.plans_manager.image_reader_writer_class().read_images([str(f) for f in files])
    nnunet_mirrored = mirrored.predict_single_npy_array(image, dict(properties))
    nnunet_plain = plain.predict_single_npy_array(image, dict(properties))
    assert not np.array_equal(nnunet_mirrored, nnunet_plain)

    result = explain_case(mirrored, files)
    np.testing.assert_array_equal(result.segmentation, nnunet_mirrored)
    for subtask, shares in result.shares.items():
        if result.target_voxels[subtask]:
            assert sum(shares.values()) == pytest.approx(1.0)
    assert all(np.isfinite(m).all() and m.min() >= 0 for m in result.maps.values())


def test_a_missing_modality_file_sends_nothing(trained, predictor):
    """Subtask "T1ce" receives random non-zero messages from T2 and FLAIR. With both files FLAIR has a map;
    without the FLAIR file (``None``) the case is explained with FLAIR told missing: it has no map, its share is
    None (it sent nothing: not "present, contributed nothing"), T2 holds the whole share, the case records FLAIR
    as missing, and subtask "FLAIR" (whose primary is missing) is still predicted, reading T2. Fails if a missing
    file is an error, or if it is read as a zero image that still sends messages."""
    from nnunetv2_ciml.interpretability import ciml_network, explain_case

    _, raw, _ = trained
    network = ciml_network(predictor)
    t1ce = network.subtask_names.index("T1ce")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for stage in network.messages.values():
            for pair in network.message_pairs:
                w = stage.projection(pair)
                w.copy_(torch.randn(w.shape, generator=generator))
        set_output_bias(network, 10.0, t1ce)  # predict the subtask everywhere: a target on every voxel
    files = _case_files(raw)
    full = explain_case(predictor, files, subtasks=["T1ce"])
    assert full.maps[("FLAIR", "T1ce")].max() > 0 and full.maps[("T2", "T1ce")].max() > 0

    result = explain_case(predictor, [files[0], files[1], None], case="case_005")
    assert ("FLAIR", "T1ce") not in result.maps and result.maps[("T2", "T1ce")].max() > 0
    assert result.shares["T1ce"] == {"T2": 1.0, "FLAIR": None}
    assert (result.present, result.missing) == (["T1ce", "T2"], ["FLAIR"])
    assert result.reads == {"FLAIR": ["T2"], "T1ce": ["T1ce"]}
    assert result.shares["FLAIR"]["T2"] is None  # read in FLAIR's place, so it sends FLAIR's subtask nothing
    assert set(result.predicted) == {"FLAIR", "T1ce"} and result.segmentation.shape == (1, 32, 32)


def _bad_second_case(folder: Path, files, fault: str) -> Path:
    """Copy case_005 as case_a (good) and case_b with one fault in its T2 channel (or without FLAIR)."""
    folder.mkdir()
    for case in ("case_a", "case_b"):
        for c, f in enumerate(files):
            shutil.copy(f, folder / f"{case}_{c:04d}.nii.gz")
    bad = folder / "case_b_0001.nii.gz"
    if fault == "missing":
        (folder / "case_b_0002.nii.gz").unlink()
        return folder / "case_b_0002.nii.gz"
    image = sitk.ReadImage(str(bad))
    array = sitk.GetArrayFromImage(image)
    if fault == "shape":
        array = array[:, :-2]
    elif fault == "nan":
        array[0, 3, 4] = np.nan
    out = sitk.GetImageFromArray(array)
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    sitk.WriteImage(out, str(bad))
    if fault == "truncated":
        bad.write_bytes(bad.read_bytes()[:-40])
    return bad


@pytest.mark.parametrize("fault, problem", [
    ("shape", r"\(T2\) has another geometry than '.*case_b_0000\.nii\.gz': shape \(x, y, z\) \(32, 30, 1\) vs "
              r"reference \(32, 32, 1\)"),
    ("nan", r"channel 1 \(T2\) file '.*case_b_0001\.nii\.gz' holds non-finite voxel values \(1 NaN"),
    ("truncated", r"channel 1 \(T2\) file '.*case_b_0001\.nii\.gz' cannot be read: the file is truncated"),
])
def test_a_bad_second_case_stops_explain_before_anything_is_computed(trained, tmp_path, capsys, fault, problem):
    """Before: case_a's maps were written, then a shape mismatch in case_b stopped explain with an empty
    reason and no explain.json; a NaN channel was explained as zeros. (A missing channel file is a missing
    modality, explained without it: test_a_missing_modality_file_sends_nothing.) Now every case is checked first: exit 1, one message naming case_b and the file, nothing written."""
    from nnunetv2_ciml import cli

    _, raw, model = trained
    inputs = tmp_path / "in"
    bad = _bad_second_case(inputs, _case_files(raw), fault)
    digest = tree_digest(inputs)
    code = cli.main(["explain", "-m", str(model), "-f", "0", "-i", str(inputs), "-o", str(tmp_path / "out"),
                     "-device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert re.match(rf"nnunetv2_ciml explain: error: case 'case_b'.*{problem}", err), err
    assert bad.name in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert tree_digest(inputs) == digest


def test_an_empty_input_folder_stops_explain(trained, tmp_path, capsys):
    from nnunetv2_ciml import cli

    _, _, model = trained
    (tmp_path / "empty").mkdir()
    code = cli.main(["explain", "-m", str(model), "-f", "0", "-i", str(tmp_path / "empty"), "-o",
                     str(tmp_path / "out"), "-device", "cpu"])
    assert code == 1
    assert f"error: no cases in '{tmp_path / 'empty'}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_demo_prediction_names_case_and_files(trained, predictor, tmp_path):
    """Our own prediction path (the demo's): a case with one channel file too few reaches nnU-Net's predictor
    and the network; the error names the case and its files instead of a bare convolution traceback. A NaN
    channel is refused before nnU-Net reads it (nnU-Net's SimpleITK reader would see zeros)."""
    from nnunetv2_ciml.demo import DemoError
    from nnunetv2_ciml.demo.predict import predict_case
    from nnunetv2_ciml.image_io import ImageFileError

    _, raw, _ = trained
    files = [str(f) for f in _case_files(raw)]
    with pytest.raises(DemoError, match=rf"case 'case_005' \({re.escape(files[0])}, {re.escape(files[1])}\): "
                                        r"nnU-Net's prediction failed"):
        predict_case(predictor, "case_005", files[:2], tmp_path)
    inputs = tmp_path / "in"
    bad = _bad_second_case(inputs, _case_files(raw), "nan")
    with pytest.raises(ImageFileError, match=rf"case 'case_b': channel 1 file '{re.escape(str(bad))}' holds non-finite"):
        predict_case(predictor, "case_b", [str(inputs / f"case_b_{c:04d}.nii.gz") for c in range(3)], tmp_path)
    assert not list(tmp_path.glob("case_*.nii.gz"))


def test_explain_json_records_missing_modalities_and_counts_absent_senders_as_sending_nothing(trained, tmp_path):
    """A folder with case_005 complete and case_006 without its FLAIR file: explain.json says per case which
    modalities were present, which missing and which branch each subtask read (FLAIR's subtask reads T2, its
    fallback); FLAIR's share in case_006 is None (it sent nothing: not "present, contributed nothing"), and in the
    mean shares over the cases it counts 0 there, so that they add up to 1. Fails if an absent sender is given a
    share of its own, or left out of the means (they then add up to more than 1)."""
    from nnunetv2_ciml.interpretability import explain_folder

    _, raw, model = trained
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("case_005", "case_006"):
        for path in _case_files(raw, case):
            shutil.copy(path, inputs / path.name)
    (inputs / "case_006_0002.nii.gz").unlink()
    summary = explain_folder(model, 0, inputs, tmp_path / "out", device="cpu", use_mirroring=False)
    complete, missing = summary["cases"]["case_005"], summary["cases"]["case_006"]
    assert (complete["present"], complete["missing"]) == (["T1ce", "T2", "FLAIR"], [])
    assert (missing["present"], missing["missing"]) == (["T1ce", "T2"], ["FLAIR"])
    assert missing["subtasks"]["FLAIR"]["reads"] == ["T2"] and missing["subtasks"]["T1ce"]["reads"] == ["T1ce"]
    assert missing["subtasks"]["T1ce"]["senders"]["FLAIR"]["share"] is None
    senders = [case["subtasks"]["T1ce"]["senders"] for case in (complete, missing)]
    predicted = [e for e in senders if any(v["share"] is not None for v in e.values())]  # the cases with a target
    assert predicted and summary["mean_share"]["T1ce"]["FLAIR"] == pytest.approx(
        np.mean([e["FLAIR"]["share"] or 0.0 for e in predicted]))
    assert sum(summary["mean_share"]["T1ce"].values()) == pytest.approx(1.0)

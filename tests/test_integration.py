"""The real nnU-Net pipeline through its own CLI: plan and preprocess, train with a CIML trainer, predict.

Two synthetic datasets: 3D region-based (BraTS-like) and 2D label-based (HECKTOR-like). CPU, tiny.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import (assert_same_geometry, make_dataset, nnunet_environment, read_array, run_nnunet as nnunet,
                     shrink_plans)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TRAINER = "nnUNetTrainerCIML_CPUtest"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    return root, nnunet_environment(root)


def prepare(workspace, dataset_id: int, regions: bool, configuration: str, shape) -> Path:
    root, env = workspace
    raw = make_dataset(root / "raw", dataset_id, regions, shape=shape)
    nnunet(env, "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1",
           "--verify_dataset_integrity")
    shrink_plans(root / "preprocessed", raw.name, configuration)
    return raw


def train(workspace, dataset_id: int, configuration: str, *extra: str, trainer: str = TRAINER) -> str:
    _, env = workspace
    return nnunet(dict(env, nnUNet_n_proc_DA="0"), "nnUNetv2_train", str(dataset_id), configuration, "0",
                  "-tr", trainer, "-device", "cpu", *extra)


def predict(workspace, raw: Path, dataset_id: int, configuration: str, out: Path, trainer: str = TRAINER) -> None:
    _, env = workspace
    nnunet(env, "nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c",
           configuration, "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0")


def interrupt_after_first_epoch(fold: Path) -> dict:
    """Turn the finished 2-epoch run into one interrupted after epoch 0: ``checkpoint_latest.pth`` as nnU-Net
    writes it mid-run (``current_epoch`` = next epoch, one entry per logged list), no final checkpoint."""
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 1
    checkpoint["logging"] = {k: v[:1] for k, v in checkpoint["logging"].items()}
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    return checkpoint["logging"]


def test_regions_3d_train_predict_resume_validate_best_configuration(workspace, tmp_path):
    root, env = workspace
    raw = prepare(workspace, 901, True, "3d_fullres", (20, 20, 20))
    log = train(workspace, 901, "3d_fullres", "--npz")
    assert "CIML decomposition" in log and "subtask 'FLAIR': primary FLAIR" in log

    model = root / "results" / raw.name / f"{TRAINER}__nnUNetPlans__3d_fullres"
    plans = json.loads((model / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "nnunetv2_ciml.network.ciml_unet.CIMLUNet"
    assert arch["arch_kwargs"]["subtask_primaries"] == [2, 0]
    fold = model / "fold_0"
    assert (fold / "ciml_progress.png").is_file() and (fold / "validation" / "summary.json").is_file()
    assert list((fold / "validation").glob("*.npz"))
    logging = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logging["ciml_kl"]) == 2 and len(logging["ciml_message_kl"][0]) == 4  # 2 senders x 2 subtasks
    assert logging["ciml_beta"] == [1e-3, 1e-3]  # nnUNetTrainerCIML's beta from the first iteration

    predict(workspace, raw, 901, "3d_fullres", tmp_path / "pred")
    for case in ("case_006", "case_007"):
        assert_same_geometry(tmp_path / "pred" / f"{case}.nii.gz", raw / "imagesTs" / f"{case}_0000.nii.gz", {0, 1, 2})

    # --c continues an interrupted run: only epoch 1 is trained, epoch 0's log (ours included) is kept.
    # Fails if --c started afresh (epoch 0 again, a new first loss) or if the CIML log were not restored.
    before = interrupt_after_first_epoch(fold)
    log = train(workspace, 901, "3d_fullres", "--c")
    assert "Epoch 1" in log and "Epoch 0" not in log
    resumed = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 2 and not (fold / "checkpoint_latest.pth").exists()
    after = resumed["logging"]
    assert after["train_losses"][0] == before["train_losses"][0] and len(after["train_losses"]) == 2
    assert after["ciml_beta"] == [1e-3, 1e-3] and after["ciml_kl"][0] == before["ciml_kl"][0]
    assert len(after["ciml_message_kl"]) == len(after["ciml_message_magnitude"]) == 2

    # --val --npz recomputes the validation from the final checkpoint: one segmentation and one npz of
    # probabilities per validation case of fold 0, the segmentation being the regions' probabilities > 0.5
    # painted in regions_class_order (how nnU-Net turns region probabilities into labels).
    for f in (fold / "validation").iterdir():
        f.unlink()
    train(workspace, 901, "3d_fullres", "--val", "--npz")
    val_cases = json.loads((root / "preprocessed" / raw.name / "splits_final.json").read_text())[0]["val"]
    assert sorted(p.name[:-len(".nii.gz")] for p in (fold / "validation").glob("*.nii.gz")) == sorted(val_cases)
    assert sorted(p.stem for p in (fold / "validation").glob("*.npz")) == sorted(val_cases)
    for case in val_cases:
        probabilities = np.load(fold / "validation" / f"{case}.npz")["probabilities"]
        segmentation = read_array(fold / "validation" / f"{case}.nii.gz")
        assert probabilities.shape == (2, *segmentation.shape) == (2, 20, 20, 20)
        assert probabilities.min() >= 0 and probabilities.max() <= 1
        expected = np.zeros(segmentation.shape, np.uint8)
        for channel, label in enumerate((1, 2)):
            expected[probabilities[channel] > 0.5] = label
        np.testing.assert_array_equal(segmentation, expected)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert sorted(Path(c["prediction_file"]).name for c in summary["metric_per_case"]) == \
        sorted(f"{c}.nii.gz" for c in val_cases)

    nnunet(env, "nnUNetv2_find_best_configuration", "901", "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-np", "1",
           "--disable_ensembling")
    info = json.loads((root / "results" / raw.name / "inference_information.json").read_text())
    best = info["best_model_or_ensemble"]
    assert best["selected_model_or_models"] == [{"configuration": "3d_fullres", "trainer": TRAINER,
                                                 "plans_identifier": "nnUNetPlans"}]
    assert best["result_on_crossval_pre_pp"] == pytest.approx(summary["foreground_mean"]["Dice"])
    instructions = (root / "results" / raw.name / "inference_instructions.txt").read_text()
    assert f"-tr {TRAINER}" in instructions and "-c 3d_fullres" in instructions


def test_labels_2d_train_and_predict_cli_and_python_api(workspace, tmp_path):
    root, _ = workspace
    raw = prepare(workspace, 902, False, "2d", (32, 32))
    log = train(workspace, 902, "2d")
    assert "primary CT (channel 0) -> outputs" in log
    predict(workspace, raw, 902, "2d", tmp_path / "pred")
    for case in ("case_006", "case_007"):
        assert_same_geometry(tmp_path / "pred" / f"{case}.nii.gz", raw / "imagesTs" / f"{case}_0000.nii.gz", {0, 1, 2})

    # The Python API rebuilds the identical network from the model folder (strict weight loading).
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"))
    predictor.initialize_from_trained_model_folder(
        str(root / "results" / raw.name / f"{TRAINER}__nnUNetPlans__2d"), use_folds=(0,))
    assert type(predictor.network).__name__ == "CIMLUNet"
    image, props = predictor.plans_manager.image_reader_writer_class().read_images(
        [str(raw / "imagesTs" / f"case_006_{c:04d}.nii.gz") for c in range(2)])
    seg = predictor.predict_single_npy_array(image, props)
    cli = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "case_006.nii.gz")))
    np.testing.assert_array_equal(seg, cli)


@pytest.mark.parametrize("trainer, shared", [("nnUNetTrainerCIML_groupedBranches_CPUtest", False),
                                             ("nnUNetTrainerCIML_modalityDropout_CPUtest", True)])
def test_branch_variants_train_and_predict_through_the_stock_commands(workspace, tmp_path, trainer, shared):
    """``nnUNetv2_train`` and ``nnUNetv2_predict`` (fresh processes) with the grouped-branch and modality-dropout
    trainers: the plans saved with the model record which encoder it has, the predictor rebuilds it from them,
    every case is predicted."""
    root, _ = workspace
    raw = root / "raw" / "Dataset903_Labels"
    if not raw.is_dir():
        raw = prepare(workspace, 903, False, "2d", (32, 32))
    train(workspace, 903, "2d", trainer=trainer)
    predict(workspace, raw, 903, "2d", tmp_path / "pred", trainer=trainer)
    for case in ("case_006", "case_007"):
        assert_same_geometry(tmp_path / "pred" / f"{case}.nii.gz", raw / "imagesTs" / f"{case}_0000.nii.gz", {0, 1, 2})
    model = root / "results" / raw.name / f"{trainer}__nnUNetPlans__2d"
    kwargs = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert kwargs["shared_branches"] is shared and kwargs["modality_conditioning"] == "norm_affine"

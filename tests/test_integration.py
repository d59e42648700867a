"""The real nnU-Net pipeline through its own CLI: plan and preprocess, train with a CIML trainer, predict.

Two synthetic datasets: 3D region-based (BraTS-like) and 2D label-based (HECKTOR-like). CPU, tiny.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from synthetic import make_dataset, shrink_plans

pytestmark = pytest.mark.integration
TRAINER = "nnUNetTrainerCIML_CPUtest"


def nnunet(env: dict, *args: str, timeout: int = 900) -> str:
    out = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_compile="f", nnUNet_def_n_proc="1",
               nnUNet_n_proc_DA="1")
    return root, env


def prepare(workspace, dataset_id: int, regions: bool, configuration: str, shape) -> Path:
    root, env = workspace
    raw = make_dataset(root / "raw", dataset_id, regions, shape=shape)
    nnunet(env, "nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1",
           "--verify_dataset_integrity")
    shrink_plans(root / "preprocessed", raw.name, configuration)
    return raw


def train(workspace, dataset_id: int, configuration: str, *extra: str) -> str:
    _, env = workspace
    return nnunet(dict(env, nnUNet_n_proc_DA="0"), "nnUNetv2_train", str(dataset_id), configuration, "0",
                  "-tr", TRAINER, "-device", "cpu", *extra)


def predict(workspace, raw: Path, dataset_id: int, configuration: str, out: Path) -> None:
    _, env = workspace
    nnunet(env, "nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c",
           configuration, "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0")


def assert_same_geometry(prediction: Path, image: Path, allowed_labels) -> None:
    p, i = sitk.ReadImage(str(prediction)), sitk.ReadImage(str(image))
    assert p.GetSize() == i.GetSize() and p.GetSpacing() == i.GetSpacing()
    assert p.GetOrigin() == i.GetOrigin() and p.GetDirection() == i.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(p))) <= set(allowed_labels)


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
    assert logging["ciml_beta"][0] == 0.0 < logging["ciml_beta"][1]

    predict(workspace, raw, 901, "3d_fullres", tmp_path / "pred")
    for case in ("case_006", "case_007"):
        assert_same_geometry(tmp_path / "pred" / f"{case}.nii.gz", raw / "imagesTs" / f"{case}_0000.nii.gz", {0, 1, 2})

    assert "Training done" in train(workspace, 901, "3d_fullres", "--c")  # resume from the final checkpoint
    train(workspace, 901, "3d_fullres", "--val", "--npz")
    nnunet(env, "nnUNetv2_find_best_configuration", "901", "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-np", "1",
           "--disable_ensembling")
    assert TRAINER in (root / "results" / raw.name / "inference_information.json").read_text()


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

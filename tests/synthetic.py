"""Tiny synthetic multimodal nnU-Net raw datasets for the integration tests (seeded, CPU-sized)."""
import json
from pathlib import Path
from typing import Tuple

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json


def _write(array: np.ndarray, path: Path, spacing: Tuple[float, ...]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def _blob(shape, rng, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array([rng.uniform(radius + 1, s - radius - 1) for s in shape]).reshape(-1, *[1] * len(shape))
    return np.sqrt(((grid - centre) ** 2).sum(0)) <= radius


def make_dataset(raw: Path, dataset_id: int, regions: bool, num_cases: int = 6, shape=(20, 20, 20),
                 num_test: int = 2, seed: int = 0) -> Path:
    """Write ``Dataset{id}_...``: whole lesion bright in channel "FLAIR"/"CT", its core in "T1ce"/"PET".

    Regions: channels (T1ce, T2, FLAIR), labels 1 = edema, 2 = core, regions whole tumor (1, 2) and
    tumor core (2). Labels: channels (CT, PET), labels 1 = GTVp (the large blob), 2 = GTVn.
    2D datasets (``len(shape) == 2``) are stored with a singleton z.
    """
    rng = np.random.default_rng(seed)
    name = f"Dataset{dataset_id:03d}_{'Regions' if regions else 'Labels'}"
    root = raw / name
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    spacing = (1.0,) * 3
    for i in range(num_cases + num_test):
        r = min(shape) / 4
        whole = _blob(shape, rng, r)
        core = whole & _blob(shape, rng, r) if regions else _blob(shape, rng, r / 2) & ~whole
        core |= whole & (np.add.reduce(np.indices(shape), 0) % 7 == 0) if regions else core
        seg = np.zeros(shape, np.uint8)
        seg[whole] = 1
        seg[core] = 2
        noise = lambda: rng.normal(0, 0.3, shape)  # noqa: E731
        channels = ([core + noise(), 0.3 * whole + noise(), whole + 0.2 * core + noise()] if regions
                    else [whole + 0.2 * core + noise(), core + 0.3 * whole + noise()])
        case = f"case_{i:03d}"
        folder, is_train = ("imagesTr", True) if i < num_cases else ("imagesTs", False)
        for c, img in enumerate(channels):
            arr = img.astype(np.float32)
            _write(arr[None] if len(shape) == 2 else arr, root / folder / f"{case}_{c:04d}.nii.gz", spacing)
        if is_train:
            _write(seg[None] if len(shape) == 2 else seg, root / "labelsTr" / f"{case}.nii.gz", spacing)
    if regions:
        generate_dataset_json(str(root), {0: "T1ce", 1: "T2", 2: "FLAIR"},
                              {"background": 0, "whole tumor": (1, 2), "tumor core": (2,)},
                              num_cases, ".nii.gz", regions_class_order=(1, 2), dataset_name=name)
    else:
        generate_dataset_json(str(root), {0: "CT", 1: "PET"}, {"background": 0, "GTVp": 1, "GTVn": 2},
                              num_cases, ".nii.gz", dataset_name=name)
    return root


def shrink_plans(preprocessed: Path, dataset_name: str, configuration: str, base_features: int = 8) -> None:
    """Narrow the planned U-Net (as a user may edit plans) so that CPU tests stay fast."""
    plans_file = preprocessed / dataset_name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    kwargs = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [base_features * 2 ** s for s in range(kwargs["n_stages"])]
    plans["configurations"][configuration]["batch_size"] = 2
    plans_file.write_text(json.dumps(plans, indent=2))

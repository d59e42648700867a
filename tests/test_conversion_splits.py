"""Cross-validation splits of converted datasets: a patient's cases (BraTS 2023 timepoints) share a fold."""
import json
from pathlib import Path

import numpy as np

from helpers import write_image
from nnunetv2_ciml.dataset_conversion.brats import convert_brats

# patient -> timepoints; 6 patients, 2 of them with follow-ups: 9 cases
TIMEPOINTS = {"00001": 3, "00002": 1, "00003": 2, "00004": 1, "00005": 1, "00006": 1}


def make_brats2023_case(root: Path, case_id: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder = root / case_id
    folder.mkdir(parents=True)
    for modality in ("t1n", "t1c", "t2w", "t2f"):
        write_image(folder / f"{case_id}-{modality}.nii.gz", rng.integers(0, 500, (6, 7, 8)).astype(np.int16))
    seg = np.zeros((6, 7, 8), np.uint8)
    seg[2:4, 2:5, 3:6] = 2
    seg[3, 3, 4] = 3
    seg[2, 2, 3] = 1
    write_image(folder / f"{case_id}-seg.nii.gz", seg)


def test_brats2023_timepoints_of_a_patient_share_a_fold(tmp_path, nnunet_env):
    """``splits_final.json``: five folds whose validation sets partition the cases, each patient's timepoints
    (``BraTS-GLI-PPPPP-TTT``) all in validation or all in training of every fold. Fails on a split over cases
    (a patient's follow-up in training while its baseline is validated) or on timepoints taken as patients."""
    source = tmp_path / "BraTS2023"
    seed = 0
    for patient, n in TIMEPOINTS.items():
        for t in range(n):
            make_brats2023_case(source, f"BraTS-GLI-{patient}-{t:03d}", seed)
            seed += 1
    report = convert_brats([source], 23, num_processes=1)
    cases = sorted(report.training_cases)
    assert len(cases) == 9
    splits = json.loads((nnunet_env / "Dataset023_BraTS2023" / "splits_final.json").read_text())
    assert len(splits) == 5
    validated = []
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == cases and not set(fold["train"]) & set(fold["val"])
        validated += fold["val"]
        for patient in TIMEPOINTS:
            own = {c for c in cases if c.startswith(f"BraTS-GLI-{patient}-")}
            assert own <= set(fold["val"]) or own <= set(fold["train"]), (patient, fold)
    assert sorted(validated) == cases

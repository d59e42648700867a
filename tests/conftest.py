"""Shared test settings: deterministic, CPU, few processes (nnU-Net reads some of these at import)."""
import os
import sys
from pathlib import Path

os.environ.setdefault("nnUNet_compile", "f")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")

sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's three folders inside the test's tmp_path; returns nnUNet_raw."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    return tmp_path / "nnUNet_raw"

"""Shared test settings (deterministic, CPU, few processes; nnU-Net reads some at import) and fixtures."""
import os
import sys
from pathlib import Path

os.environ.setdefault("nnUNet_compile", "f")
os.environ.setdefault("nnUNet_def_n_proc", "1")
os.environ.setdefault("nnUNet_n_proc_DA", "0")

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import make_dataset, nnunet_environment, plan_and_preprocess, shrink_plans, train_in_process  # noqa: E402

# pytest-xdist (.ci/run: -n auto) runs one test process per core: one torch thread each.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

REGIONS_2D_ID = 961
CPU_TEST_TRAINER = "nnUNetTrainerCIML_CPUtest"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's three folders inside the test's tmp_path; returns nnUNet_raw."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(tmp_path / var))
    return tmp_path / "nnUNet_raw"


@pytest.fixture(scope="session")
def planned_regions_2d(tmp_path_factory):
    """(env, raw dataset folder): a tiny 2D region dataset (channels T1ce, T2, FLAIR; regions whole tumor,
    tumor core) planned and preprocessed by nnU-Net's own planner, plans narrowed as a user may. Read-only."""
    root = tmp_path_factory.mktemp("regions_2d")
    env = nnunet_environment(root)
    raw = make_dataset(root / "raw", REGIONS_2D_ID, regions=True, shape=(32, 32), num_cases=5, num_test=2)
    plan_and_preprocess(env, REGIONS_2D_ID, "2d")
    shrink_plans(root / "preprocessed", raw.name, "2d")
    return env, raw


@pytest.fixture(scope="session")
def trained_regions_2d(planned_regions_2d):
    """(env, raw dataset folder, model folder): ``nnUNetTrainerCIML_CPUtest`` trained by nnU-Net on
    ``planned_regions_2d`` (fold 0). Tests must not write into the model folder."""
    env, raw = planned_regions_2d
    train_in_process(env, REGIONS_2D_ID, "2d", CPU_TEST_TRAINER)
    model = Path(env["nnUNet_results"]) / raw.name / f"{CPU_TEST_TRAINER}__nnUNetPlans__2d"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    return env, raw, model


SHARED_DATASET_FIXTURES = {"planned_regions_2d", "trained_regions_2d"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Work units for pytest-xdist (``.ci/run``: ``-n auto --dist loadgroup --no-loadscope-reorder``): a test
    module goes to one worker as a whole, so that its module fixtures (a trained model, the demo) are built
    once; the modules that use the session's planned dataset go together, so that nnU-Net plans it once.
    Modules with slow tests come first, so that the workers finish at about the same time."""
    def group(item) -> str:
        return "regions_2d" if SHARED_DATASET_FIXTURES & set(item.fixturenames) else item.module.__name__

    slow = {group(item) for item in items if item.get_closest_marker("slow")}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    items.sort(key=lambda item: group(item) not in slow)  # stable: file order within each part

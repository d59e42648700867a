"""After install, a fresh interpreter with no exports finds our trainers through nnU-Net's own lookup."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from pathlib import Path

from helpers import TRAINER_MODULES
from nnunetv2_ciml.registration import ENV_VAR, EXT_TRAINER_DIR, register_ext_trainer_dir

LOOKUP = f"""
import importlib, inspect, json, os, pickle
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
modules = [importlib.import_module(m) for m in {list(TRAINER_MODULES)!r}]
ours = {{n: getattr(m, n) for m in modules for n in m.__all__
         if inspect.isclass(getattr(m, n)) and issubclass(getattr(m, n), nnUNetTrainer)}}
found = {{n: find(n) for n in ours}}
print(json.dumps({{"env": os.environ.get("nnUNet_extTrainer"), "names": sorted(ours),
                   "same_class": all(c is ours[n] for n, c in found.items()),
                   "picklable": all(pickle.loads(pickle.dumps(c)) is c for c in found.values())}}))
"""


def clean_env(**extra):
    keep = ("PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(nnUNet_compile="f", **extra)
    return env


def run_lookup(tmp_path, **extra) -> dict:
    out = subprocess.run([sys.executable, "-c", LOOKUP], env=clean_env(**extra), cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh Python process that imports torch and nnU-Net
def test_fresh_process_finds_every_trainer_without_exports(tmp_path):
    """Every trainer class of every trainer module (method, demo and study, benchmark, CPU-test trainers) is found
    by name through nnU-Net's lookup in a fresh interpreter, as the identical, picklable class."""
    result = run_lookup(tmp_path)
    assert result["env"] == EXT_TRAINER_DIR
    assert {"nnUNetTrainerCIML", "nnUNetTrainerCIML_modalityDropout", "nnUNetTrainerCIML_ShapeCompositionDemo",
            "nnUNetTrainerCIMLBenchmark_5epochs", "nnUNetTrainerCIML_CPUtest"} <= set(result["names"])
    assert result["same_class"] and result["picklable"]


@pytest.mark.slow  # a fresh Python process that imports torch and nnU-Net
def test_user_value_is_kept_and_ours_is_added(tmp_path):
    user_dir = tmp_path / "my_trainers"
    user_dir.mkdir()
    result = run_lookup(tmp_path, nnUNet_extTrainer=str(user_dir))
    assert result["env"].split(os.pathsep) == [str(user_dir), EXT_TRAINER_DIR]


@pytest.mark.slow  # a fresh Python process that imports torch and nnU-Net
def test_opt_out_leaves_the_environment_alone(tmp_path):
    """``NNUNETV2_CIML_NO_STARTUP=1``: the start-up hook registers nothing (fails if the .pth ignores it)."""
    code = "import os; print(os.environ.get('nnUNet_extTrainer'))"
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(NNUNETV2_CIML_NO_STARTUP="1"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "None", out.stderr[-2000:]


def test_register_is_idempotent():
    env = {ENV_VAR: os.pathsep.join(["/a", EXT_TRAINER_DIR])}
    assert register_ext_trainer_dir(env) == os.pathsep.join(["/a", EXT_TRAINER_DIR])
    assert register_ext_trainer_dir({}) == EXT_TRAINER_DIR


def test_shim_folder_holds_only_the_shim():
    # nnU-Net imports every module there as a top-level module (it skips __init__): nothing else may live in it.
    modules = sorted(f for f in os.listdir(EXT_TRAINER_DIR) if f.endswith(".py"))
    assert modules == ["__init__.py", "nnunetv2_ciml_trainers.py"]


@pytest.mark.slow  # builds a wheel
def test_regular_install_ships_the_pth_the_shim_and_the_converters(tmp_path):
    # Build from a copy: setuptools leaves a build/ folder next to the sources.
    source = tmp_path / "source"
    shutil.copytree(Path(__file__).resolve().parents[1], source, ignore=shutil.ignore_patterns(
        ".git", ".whl", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("nnunetv2_ciml-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"nnunetv2_ciml.pth", "nnunetv2_ciml/_nnunet_ext/nnunetv2_ciml_trainers.py",
            "nnunetv2_ciml/dataset_conversion/brats.py", "nnunetv2_ciml/training/trainers.py"} <= names
    pth = zipfile.ZipFile(wheel).read("nnunetv2_ciml.pth").decode()
    assert pth.startswith("import ") and "nnunetv2_ciml.registration" in pth


def console_script(name: str) -> list:
    """The installed console script of this interpreter's environment (whatever PATH says), else ``-m``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nnunetv2_ciml.cli"]


@pytest.mark.slow  # a fresh Python process that imports torch and nnU-Net
def test_info_command_reports_found_trainers(tmp_path):
    out = subprocess.run([*console_script("nnunetv2_ciml"), "info"], env=clean_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nnUNetTrainerCIML " in out.stdout and "NOT FOUND" not in out.stdout
    assert "CUDA available" in out.stdout

"""After install, a fresh interpreter with no exports finds our trainers through nnU-Net's own lookup."""
import json
import os
import subprocess
import sys

from nnunetv2_ciml.registration import ENV_VAR, EXT_TRAINER_DIR, register_ext_trainer_dir

LOOKUP = """
import json, os, pickle
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find
import nnunetv2_ciml.training.trainers as t
found = {n: find(n) for n in t.__all__}
print(json.dumps({"env": os.environ.get("nnUNet_extTrainer"),
                  "same_class": all(c is getattr(t, n) for n, c in found.items()),
                  "picklable": all(pickle.loads(pickle.dumps(c)) is c for c in found.values())}))
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


def test_fresh_process_finds_every_trainer_without_exports(tmp_path):
    result = run_lookup(tmp_path)
    assert result["env"] == EXT_TRAINER_DIR
    assert result["same_class"] and result["picklable"]


def test_user_value_is_kept_and_ours_is_added(tmp_path):
    user_dir = tmp_path / "my_trainers"
    user_dir.mkdir()
    result = run_lookup(tmp_path, nnUNet_extTrainer=str(user_dir))
    assert result["env"].split(os.pathsep) == [str(user_dir), EXT_TRAINER_DIR]


def test_register_is_idempotent():
    env = {ENV_VAR: os.pathsep.join(["/a", EXT_TRAINER_DIR])}
    assert register_ext_trainer_dir(env) == os.pathsep.join(["/a", EXT_TRAINER_DIR])
    assert register_ext_trainer_dir({}) == EXT_TRAINER_DIR


def test_shim_folder_holds_only_the_shim():
    # nnU-Net imports every module there as a top-level module: nothing else may live in it.
    assert sorted(f for f in os.listdir(EXT_TRAINER_DIR) if f.endswith(".py")) == ["nnunetv2_ciml_trainers.py"]


def test_info_command_reports_found_trainers(tmp_path):
    out = subprocess.run(["nnunetv2_ciml", "info"], env=clean_env(), cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nnUNetTrainerCIML " in out.stdout and "NOT FOUND" not in out.stdout
    assert "CUDA available" in out.stdout

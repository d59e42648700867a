"""``nnunetv2_ciml info``: what it shows, read from the sources without importing nnU-Net's trainers."""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnunetv2_ciml.commands import info
from nnunetv2_ciml.registration import ENV_VAR, EXT_TRAINER_DIR


def test_shim_names_are_the_trainers_modules_export():
    """Read statically from the shim's ``from M import *`` lines; must equal the classes importing gives
    (catches a parser that misses a module, lists names that are not exported, or lists an exported helper
    function as a trainer, which ``info --check`` then reports as NOT FOUND)."""
    import inspect

    import importlib

    from helpers import TRAINER_MODULES
    from nnunetv2_ciml.training import modality_dropout

    expected = {}
    for module in map(importlib.import_module, TRAINER_MODULES):
        expected.update({n: module.__name__ for n in module.__all__ if inspect.isclass(getattr(module, n))})
    assert "sample_present_modalities" in modality_dropout.__all__ and "sample_present_modalities" not in expected
    assert info.shim_trainer_names(EXT_TRAINER_DIR) == expected


def test_table_shows_nnunet_folders_and_aligns_long_names(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.delenv("nnUNet_results", raising=False)
    assert info.main(argparse.Namespace(check=False)) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [re.match(r"^(\S.*?\S)\s{2,}(\S.*)$", line) for line in lines[:lines.index(next(
        line for line in lines if line.startswith("trainers")))]]
    rows = {m.group(1): m.group(2) for m in table}
    assert rows["nnUNet_raw"] == str(tmp_path / "raw")
    assert "(unset" in rows["nnUNet_results"] and "nnUNet_preprocessed" in rows and "CUDA available" in rows
    assert len({m.start(2) for m in table}) == 1  # values start in one column, however long the name
    trainer_lines = [line for line in lines if line.startswith("  ")]
    assert len(trainer_lines) == len(info.shim_trainer_names(EXT_TRAINER_DIR))
    assert len({line.index("registered") for line in trainer_lines}) == 1


def test_unregistered_shim_is_an_error(monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, os.path.join(os.sep, "somewhere", "else"))
    assert info.main(argparse.Namespace(check=False)) == 1
    assert "NOT REGISTERED" in capsys.readouterr().out


@pytest.mark.slow  # a fresh Python process that imports torch and nnU-Net
def test_check_finds_every_listed_trainer_without_warnings_in_a_fresh_process():
    """A fresh interpreter imports torch and nnU-Net's trainers here: their deprecation warnings must not land
    in the table, and nnU-Net's own lookup must find every name listed (fails if a listed name is not a
    trainer class nnU-Net can find, e.g. an exported helper function)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-m", "nnunetv2_ciml.cli", "info", "--check"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Warning" not in out.stdout + out.stderr and "nnUNetTrainerCIML " in out.stdout
    trainer_lines = [line for line in out.stdout.splitlines() if line.startswith("  ")]
    assert len(trainer_lines) == len(info.shim_trainer_names(EXT_TRAINER_DIR))
    assert all("found by nnU-Net" in line for line in trainer_lines), out.stdout


def test_one_flag_style_with_the_earlier_spellings_as_aliases():
    """nnU-Net's spelling for options nnU-Net has, ``--kebab-case`` for ours, the earlier spellings still parsed
    to the same value. Fails if an alias is dropped or lands in another destination."""
    from nnunetv2_ciml.cli import build_parser

    parser = build_parser()
    common = ["-i", "I", "-o", "O", "-m", "M", "-f", "0"]
    pairs = [  # (nnU-Net or kebab spelling, earlier spelling, {destination: value})
        (["demo", "-o", "X", "-device", "cpu"], ["demo", "--out", "X", "--device", "cpu"],
         {"out": "X", "device": "cpu"}),
        (["predict", *common, "-device", "cpu"], ["predict", *common, "--device", "cpu"], {"device": "cpu"}),
        (["explain", *common, "-device", "cpu"], ["explain", *common, "--device", "cpu"], {"device": "cpu"}),
        (["submission", "autopet", "-m", "M", "-f", "0", "-o", "O", "-chk", "c.pth"],
         ["submission", "autopet", "-m", "M", "-f", "0", "-o", "O", "--checkpoint", "c.pth"], {"checkpoint": "c.pth"}),
        (["evaluate", "nnunet", "-ref", "R", "-pred", "P", "-o", "O", "--file-ending", ".mha"],
         ["evaluate", "nnunet", "-ref", "R", "-pred", "P", "-o", "O", "--file_ending", ".mha"], {"file_ending": ".mha"}),
    ]
    for new, old, expected in pairs:
        for argv in (new, old):
            parsed = vars(parser.parse_args(argv))
            assert {key: parsed[key] for key in expected} == expected, argv

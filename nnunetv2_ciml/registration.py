"""Make nnU-Net's own trainer lookup find our trainers.

nnU-Net 2.8 searches its built-in trainer folder and then each folder listed in the environment
variable ``nnUNet_extTrainer`` (``os.pathsep``-separated). Every module in such a folder is
imported as a *top-level* module and purged afterwards, so the folder we list holds a single shim
module that re-exports our trainers by absolute import (their identity and pickling stay intact).

:func:`register_at_startup` runs at interpreter start-up through ``nnunetv2_ciml.pth`` (installed into
site-packages with the package); it only edits one environment variable and must stay that cheap. To opt
out, set ``NNUNETV2_CIML_NO_STARTUP=1``: nothing is registered, and nnU-Net finds our trainers only where
you list ``nnunetv2_ciml/_nnunet_ext`` in ``nnUNet_extTrainer`` yourself (``nnunetv2_ciml info`` prints it).
"""
import os
from typing import MutableMapping

EXT_TRAINER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_nnunet_ext")
ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNETV2_CIML_NO_STARTUP"


def register_ext_trainer_dir(environ: MutableMapping[str, str] = os.environ) -> str:
    """Append our shim folder to ``nnUNet_extTrainer``, keeping the user's folders first.

    Returns the new value. Idempotent.
    """
    parts = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if EXT_TRAINER_DIR not in parts:
        parts.append(EXT_TRAINER_DIR)
    environ[ENV_VAR] = os.pathsep.join(parts)
    return environ[ENV_VAR]


def register_at_startup() -> None:
    """What ``nnunetv2_ciml.pth`` runs: :func:`register_ext_trainer_dir` unless ``NNUNETV2_CIML_NO_STARTUP=1``."""
    if os.environ.get(OPT_OUT_VAR, "") not in ("1", "true", "yes"):
        register_ext_trainer_dir()


def trainer_class(name: str) -> type:
    """The package's trainer class called ``name``: one of those the shim exports, which nnU-Net's lookup finds."""
    from nnunetv2_ciml._nnunet_ext import nnunetv2_ciml_trainers

    cls = getattr(nnunetv2_ciml_trainers, name, None)
    if not isinstance(cls, type):
        raise KeyError(f"nnunetv2_ciml has no trainer {name!r} (`nnunetv2_ciml info` lists them)")
    return cls

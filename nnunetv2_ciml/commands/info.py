"""``nnunetv2_ciml info``: versions, registration and devices, for bug reports and set-up checks."""
import argparse

HELP = "Show versions, where the trainer shim is, whether nnU-Net finds the CIML trainers, and CUDA."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def main(args: argparse.Namespace) -> int:
    import contextlib
    import io
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunetv2_ciml.registration import ENV_VAR, EXT_TRAINER_DIR
    from nnunetv2_ciml.training import demo_trainers, trainers

    def v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    print(f"python                         {platform.python_version()}")
    for dist in ("nnunetv2-ciml", "nnunetv2", "torch", "dynamic-network-architectures", "batchgenerators",
                 "SimpleITK", "numpy", "grad-cam"):
        print(f"{dist:30s} {v(dist)}")
    print(f"trainer shim folder            {EXT_TRAINER_DIR}")
    print(f"{ENV_VAR:30s} {os.environ.get(ENV_VAR, '(unset)')}")
    ok = True
    for name in trainers.__all__ + demo_trainers.__all__:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the lookup narrates its search
                cls = recursive_find_trainer_class_by_name(name)
            found = f"found ({cls.__module__})"
        except Exception as e:  # the lookup raises RuntimeError, or an import error of the shim
            found, ok = f"NOT FOUND: {e}", False
        print(f"  {name:40s} {found}")
    cuda = torch.cuda.is_available()
    print(f"CUDA available                 {cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
    return 0 if ok else 1

"""``nnunetv2_ciml info [--check]``: versions, nnU-Net folders, trainer registration and CUDA, for bug reports
and set-up checks.

Fast by default (a few seconds: versions from package metadata, the trainer list read from the shim's
source without importing nnU-Net's trainers); ``--check`` also runs nnU-Net's own trainer lookup for each
trainer, which imports all of nnU-Net's trainers (tens of seconds on a small CPU).
"""
import argparse

HELP = ("Show versions, the nnU-Net folders, whether nnU-Net finds the CIML trainers, and CUDA "
        "(--check: run nnU-Net's own trainer lookup).")

DISTRIBUTIONS = ("nnunetv2-ciml", "nnunetv2", "torch", "dynamic-network-architectures", "batchgenerators",
                 "SimpleITK", "numpy")
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="also look every trainer up with nnU-Net's own function (what nnUNetv2_train does; "
                             "slow, it imports all of nnU-Net's trainers)")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def shim_trainer_names(shim_dir: str) -> dict:
    """``{trainer name: module}`` that the shim in ``shim_dir`` re-exports, read from the sources (``from M
    import *`` lines and each module's ``__all__``) without importing them: the classes of ``__all__`` (a
    module may also export helper functions)."""
    import ast
    import importlib.util
    import os

    names = {}
    for file_name in sorted(os.listdir(shim_dir)):
        if not file_name.endswith(".py") or file_name == "__init__.py":
            continue
        with open(os.path.join(shim_dir, file_name)) as f:
            shim = ast.parse(f.read())
        for node in shim.body:
            if not (isinstance(node, ast.ImportFrom) and node.module and any(a.name == "*" for a in node.names)):
                continue
            spec = importlib.util.find_spec(node.module)
            with open(spec.origin) as f:
                module = ast.parse(f.read())
            classes = {statement.name for statement in module.body if isinstance(statement, ast.ClassDef)}
            for statement in module.body:
                if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                        and getattr(statement.targets[0], "id", None) == "__all__"):
                    names.update({name: node.module for name in ast.literal_eval(statement.value) if name in classes})
    return names


def main(args: argparse.Namespace) -> int:
    import contextlib
    import io
    import os
    import platform
    import warnings

    from nnunetv2_ciml.registration import ENV_VAR, EXT_TRAINER_DIR

    trainers = shim_trainer_names(EXT_TRAINER_DIR)
    registered = EXT_TRAINER_DIR in os.environ.get(ENV_VAR, "").split(os.pathsep)
    found = {name: ("registered (nnU-Net looks in the shim folder)" if registered else
                    f"NOT REGISTERED: {ENV_VAR} does not list the shim folder") for name in trainers}
    ok = registered
    # the slow work first, with the deprecation warnings of nnU-Net's imports kept out of the table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        cuda = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if cuda else ""
        if args.check:
            from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
            for name in trainers:
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # the lookup narrates its search
                        cls = recursive_find_trainer_class_by_name(name)
                    found[name] = f"found by nnU-Net ({cls.__module__})"
                except Exception as e:  # the lookup raises RuntimeError, or an import error of the shim
                    found[name], ok = f"NOT FOUND: {e}", False

    rows = [("python", platform.python_version())]
    rows += [(dist, _version(dist)) for dist in DISTRIBUTIONS]
    rows += [(var, os.environ.get(var) or "(unset: nnU-Net cannot plan, train or predict)") for var in NNUNET_FOLDERS]
    rows += [("trainer shim folder", EXT_TRAINER_DIR), (ENV_VAR, os.environ.get(ENV_VAR, "(unset)")),
             ("CUDA available", f"{cuda}" + (f" ({device})" if cuda else "")),
             ("torch threads", str(torch.get_num_threads()))]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:{width}s}  {value}")
    print("trainers" + ("" if args.check else " (nnunetv2_ciml info --check runs nnU-Net's own lookup)") + ":")
    width = max(len(n) for n in trainers)
    for name, status in found.items():
        print(f"  {name:{width}s}  {status}")
    return 0 if ok else 1

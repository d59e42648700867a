"""The one device rule of every command (``demo``, ``predict``, ``explain``) and Python entry point.

``auto`` (the default everywhere) is CUDA when torch sees a CUDA device, else the CPU; ``cuda`` without a device
is an error that says so before anything runs (nnU-Net's own commands default to ``cuda`` and fail later).
"""
from typing import Union

from nnunetv2_ciml.errors import CIMLError

__all__ = ["DEVICE_CHOICES", "DeviceError", "resolve_device"]

DEVICE_CHOICES = ("auto", "cuda", "cpu", "mps")


class DeviceError(CIMLError, ValueError):
    """The device asked for does not exist on this machine."""


def resolve_device(device: Union[str, "torch.device", None] = "auto") -> "torch.device":
    """``auto`` or ``None``: CUDA when available, else CPU; ``cuda``/``mps`` only where torch sees one."""
    import torch  # here, not at import: the command line's --help stays fast

    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICE_CHOICES)}, not {name!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for, but torch sees no CUDA device (torch {torch.__version__}, "
                          f"built with CUDA {torch.version.cuda}); use -device cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} was asked for, but torch sees no MPS device; use -device cpu or auto")
    return torch.device(name)

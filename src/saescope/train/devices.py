"""Checking a ``--device`` at the edge, before a run creates anything: a clear error instead of a traceback
from deep inside torch once the model is loading."""

from __future__ import annotations

import torch

#: Device types saescope runs on.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(name: str) -> None:
    """Refuse a device string torch cannot parse, of a type saescope does not run on, or absent on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"--device {name!r} is not a device: use cpu, cuda, cuda:<index> (e.g. cuda:0) or mps"
        ) from None
    if device.type not in DEVICE_TYPES:
        raise ValueError(
            f"--device {name!r}: saescope runs on {', '.join(DEVICE_TYPES)}; got device type {device.type!r}"
        )
    if device.type == "cuda":
        _check_cuda(name, device.index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name!r}: MPS is not available on this machine; use --device cpu")


def _check_cuda(name: str, index: int | None) -> None:
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(
            f"--device {name!r}: CUDA is not available on this machine (torch {torch.__version__}, {build}); "
            "use --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ValueError(f"--device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")

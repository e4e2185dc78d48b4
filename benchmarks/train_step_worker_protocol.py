"""The line protocol between benchmarks/train_step.py and its peer workers (SAELens, sparsify).

A peer lives in its own virtual environment, so ``train_step.py`` starts a worker script with that
environment's interpreter and drives it one JSON object per line on stdin/stdout; the worker imports
this module (it sits next to the worker script, so it is importable without installing anything) and
nothing from saescope. Requests::

    {"cmd": "build", "width": 4096, "weights": "w.npz"}  -> {"built": 4096}
    {"cmd": "step", "width": 4096}                       -> {"seconds": 1.23, "l0": 49.8, "peak_mb": ...}
    {"cmd": "drop", "width": 4096}                       -> {"dropped": 4096}
    {"cmd": "quit"}

On start a worker answers ``{"ready": true, "package": ..., "version": ..., "torch": ..., "threads": ...}``.
``weights`` is an ``.npz`` with the shared initial parameters (``W_enc`` (d, W), ``b_enc``, ``W_dec``
(W, d), ``b_dec``, ``threshold``), so that every system starts from the same dictionary.

Peak memory: a build records the resident set size and resets the kernel's high-water mark
(``/proc/self/clear_refs``); every step answers ``peak_mb``, the high-water mark minus that size: the
memory the dictionary, its optimiser state and its steps have needed so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: A built stepper: run one training step, return (seconds, L0 of that step).
Stepper = Callable[[], tuple[float, float]]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak resident memory since :meth:`start`, in MB (Linux; NaN elsewhere)."""

    def __init__(self) -> None:
        self._base_kb: int | None = None

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self._base_kb = _status_kb("VmRSS")
        except (OSError, RuntimeError):
            self._base_kb = None

    def peak_mb(self) -> float:
        if self._base_kb is None:
            return float("nan")
        return (_status_kb("VmHWM") - self._base_kb) / 1024


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """The shared initial parameters written by train_step.py (float32 tensors)."""
    with np.load(path) as data:
        return {name: torch.from_numpy(np.array(data[name], dtype=np.float32)) for name in data.files}


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def worker_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--acts", required=True, help=".npy file of (batch, d_in) float32 activations")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's)")
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--l0-coefficient", type=float, default=6e-4)
    parser.add_argument("--l0-warmup-steps", type=int, default=10_000)
    parser.add_argument("--bandwidth", type=float, default=0.001)
    parser.add_argument("--k", type=int, default=50, help="active latents per token (TopK peers)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def serve(
    package: str,
    version: str,
    x_BD: torch.Tensor,
    build: Callable[[int, dict[str, torch.Tensor]], Stepper],
) -> None:
    """Answer requests on stdin until "quit" or end of input; ``build(width, weights)`` makes a stepper."""
    steppers: dict[int, Stepper] = {}
    memory = PeakMemory()
    reply({"ready": True, "package": package, "version": version, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch": int(x_BD.shape[0])})  # fmt: skip
    for line in sys.stdin:
        request = json.loads(line)
        command = request.get("cmd")
        if command == "quit":
            break
        try:
            width = int(request["width"])
            if command == "build":
                steppers.pop(width, None)
                memory.start()
                steppers[width] = build(width, load_weights(request["weights"]))
                reply({"built": width})
            elif command == "step":
                seconds, l0 = steppers[width]()
                reply({"seconds": seconds, "l0": l0, "peak_mb": memory.peak_mb()})
            elif command == "drop":
                steppers.pop(width, None)
                reply({"dropped": width})
            else:
                reply({"error": f"unknown command {command!r}"})
        except Exception as error:  # report to the driver instead of dying silently
            reply({"error": f"{type(error).__name__}: {error}"})

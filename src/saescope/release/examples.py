"""Gemma Scope 2's ``examples.safetensors``: the top activating contexts of every latent of one dictionary, shipped
next to its ``params.safetensors``.

The tensors, as Google's Gemma Scope 2 folders hold them (F latents, K examples per latent, S token sequences of
L tokens; Google's files have K = 1000 and sequences of 512 tokens):

==========================================  =========  ======================================================
tensor                                      shape      meaning
==========================================  =========  ======================================================
``tokens``                                  (S, L)     the token sequences the examples point into
``seq_ids``                                 (F, K)     row of ``tokens`` of each example (-1: an empty slot)
``positions``                               (F, K)     the example's position in that row
``activations``                             (F, K)     the latent's activation there
``feature_frequencies``                     (F,)       fraction of tokens the latent fires on
``top_tokens`` / ``top_logits``             (F, n)     the tokens its decoder direction promotes most
``bottom_tokens`` / ``bottom_logits``       (F, n)     ... and suppresses most
==========================================  =========  ======================================================

saescope writes the file from a feature index (its top examples per latent, by decreasing activation) and reads
one back for the explorer; readers must not assume an order within a latent's row, nor that every slot is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from saescope.atomic import atomic_write_checksummed, verify_checksum
from saescope.release.common import ReleaseFormatError

EXAMPLES_FILE = "examples.safetensors"
_WRITE_AGAIN = (
    "If saescope wrote it, export the release again from the run with its feature index (`saescope export`); "
    "otherwise download or copy the folder again."
)
#: Tensors a readable examples file must have; the logit tables and frequencies are optional.
REQUIRED = ("tokens", "seq_ids", "positions", "activations")


@dataclass(frozen=True)
class ReleaseExamples:
    """The contents of one ``examples.safetensors`` (see the module docstring); empty slots have seq id -1."""

    tokens_SL: np.ndarray
    seq_ids_FK: np.ndarray
    positions_FK: np.ndarray
    activations_FK: np.ndarray
    feature_frequencies_F: np.ndarray | None = None
    top_tokens_Fn: np.ndarray | None = None
    top_logits_Fn: np.ndarray | None = None
    bottom_tokens_Fn: np.ndarray | None = None
    bottom_logits_Fn: np.ndarray | None = None

    @property
    def width(self) -> int:
        return int(self.activations_FK.shape[0])

    def top(self, latent: int, k: int) -> list[tuple[int, int, float]]:
        """(sequence row, position, activation) of the ``k`` strongest used slots of ``latent``."""
        used = np.flatnonzero(self.seq_ids_FK[latent] >= 0)
        order = used[np.argsort(-self.activations_FK[latent, used], kind="stable")][:k]
        return [
            (int(self.seq_ids_FK[latent, j]), int(self.positions_FK[latent, j]), float(self.activations_FK[latent, j]))
            for j in order
        ]


_OPTIONAL = {
    "feature_frequencies": ("feature_frequencies_F", "float32"),
    "top_tokens": ("top_tokens_Fn", "int32"),
    "top_logits": ("top_logits_Fn", "float32"),
    "bottom_tokens": ("bottom_tokens_Fn", "int32"),
    "bottom_logits": ("bottom_logits_Fn", "float32"),
}


def write_examples(path: Path, examples: ReleaseExamples) -> None:
    """Write ``examples`` as ``path`` (an ``examples.safetensors``), atomically, its SHA-256 recorded beside it."""
    tensors = {
        "tokens": examples.tokens_SL.astype(np.int32), "seq_ids": examples.seq_ids_FK.astype(np.int32),
        "positions": examples.positions_FK.astype(np.int32), "activations": examples.activations_FK.astype(np.float32),
    }  # fmt: skip
    for key, (field_name, dtype) in _OPTIONAL.items():
        value = getattr(examples, field_name)
        if value is not None:
            tensors[key] = np.asarray(value, dtype=dtype)
    data = safetensors_bytes({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in tensors.items()})
    atomic_write_checksummed(path, lambda handle: handle.write(data))


def _as_numpy(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    """A tensor of any stored dtype (bfloat16 included) as a numpy array of ``dtype`` ('float32' or 'int32')."""
    converted = tensor.float() if dtype == "float32" else tensor.long()
    return converted.numpy().astype(dtype)


def read_examples(path: Path, *, width: int | None = None) -> ReleaseExamples:
    """Read and check an ``examples.safetensors``: the required tensors, consistent shapes, sequence ids and
    positions inside ``tokens``, and (when given) ``width`` latents. Problems raise ReleaseFormatError naming
    the file."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ReleaseFormatError(f"{path} is missing")
    verify_checksum(path, _WRITE_AGAIN)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as error:
        raise ReleaseFormatError(f"{path} is not a readable safetensors file (truncated?): {error}") from error
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise ReleaseFormatError(f"{path}: tensor(s) {missing} missing; the file has {sorted(raw)}")
    examples = ReleaseExamples(
        _as_numpy(raw["tokens"], "int32"), _as_numpy(raw["seq_ids"], "int32"),
        _as_numpy(raw["positions"], "int32"), _as_numpy(raw["activations"], "float32"),
        **{field_name: _as_numpy(raw[key], dtype) for key, (field_name, dtype) in _OPTIONAL.items() if key in raw},
    )  # fmt: skip
    _check(path, examples, width)
    return examples


def _check(path: Path, examples: ReleaseExamples, width: int | None) -> None:
    shapes = {
        "tokens": examples.tokens_SL.shape, "seq_ids": examples.seq_ids_FK.shape,
        "positions": examples.positions_FK.shape, "activations": examples.activations_FK.shape,
    }  # fmt: skip
    if len(shapes["tokens"]) != 2 or len(shapes["activations"]) != 2:
        raise ReleaseFormatError(f"{path}: tokens and activations must be matrices; shapes are {shapes}")
    if not shapes["seq_ids"] == shapes["positions"] == shapes["activations"]:
        raise ReleaseFormatError(f"{path}: seq_ids, positions and activations must have one shape; they have {shapes}")
    F = examples.width
    if width is not None and width != F:
        raise ReleaseFormatError(f"{path} describes {F} latents but its dictionary has {width}")
    for key, (field_name, _dtype) in _OPTIONAL.items():
        value = getattr(examples, field_name)
        if value is not None and (value.ndim < 1 or value.shape[0] != F):
            raise ReleaseFormatError(f"{path}: {key} has shape {value.shape}, expected {F} rows (one per latent)")
    S, L = shapes["tokens"]
    used = examples.seq_ids_FK >= 0
    if np.any(examples.seq_ids_FK[used] >= S) or np.any(examples.seq_ids_FK < -1):
        raise ReleaseFormatError(f"{path}: seq_ids must be -1 (empty) or a row of tokens (0-{S - 1})")
    positions = examples.positions_FK[used]
    if np.any(positions < 0) or np.any(positions >= L):
        raise ReleaseFormatError(f"{path}: positions must lie in a tokens row (0-{L - 1})")

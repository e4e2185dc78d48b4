"""What every interpretability metric shares: the dictionary's latent directions and codes, deterministic
train/test splits, the options a run passes to each metric, and the result interface."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from saescope.sae import AnyDictionary, SparseDictionary, single_layer

#: Rows encoded at once: bounds the (rows, latents) code matrix kept in memory.
ENCODE_CHUNK = 4096


class InterpResult(Protocol):
    """A metric's result: ``to_dict()`` is what metrics.json holds under ``interp.<metric>``; ``summary()``
    the few headline numbers the printed table shows."""

    def to_dict(self) -> dict[str, Any]: ...

    def summary(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class ProbeDataSpec:
    """A user's labelled text for sparse probing: a .jsonl, .csv or .parquet file, or a Hugging Face dataset
    written ``hf:<name>[:<config>]`` (as a corpus source is), and its two fields. ``online`` (None: the
    ``SAESCOPE_ONLINE`` default) allows a Hub dataset to be downloaded."""

    path: Path
    text_field: str = "text"
    label_field: str = "label"
    online: bool | None = None


@dataclass
class InterpOptions:
    """What a run passes to every metric. ``shared`` holds model activations computed once per site and
    reused for every dictionary reading that site (the model forwards dominate the cost)."""

    seed: int = 0
    progress: bool = True
    probe_data: ProbeDataSpec | None = None
    shared: dict[Any, Any] = field(default_factory=dict)


def dictionary_for(sae: AnyDictionary, metric: str) -> SparseDictionary:
    """The single-layer dictionary a metric reads; a clear error for a CLT or crosscoder."""
    return single_layer(sae, f"the {metric} evaluation")


def latent_directions(sae: SparseDictionary, *, transcoder: bool = False) -> torch.Tensor:
    """(F, d_in): each latent's direction in the space the dictionary reads. An SAE's decoder rows (what the
    latent writes, as absorption studies use); a transcoder's encoder columns, since its decoder writes
    another space."""
    if transcoder:
        return sae.W_enc_DF.detach().float().T
    return sae.W_dec_FD.detach().float()


@torch.no_grad()
def encode_rows(sae: SparseDictionary, x_ND: torch.Tensor) -> torch.Tensor:
    """The codes (N, F) of raw activations, in chunks, as float32 on the CPU."""
    device = sae.W_enc_DF.device
    parts = [sae.encode(chunk.to(device)).float().cpu() for chunk in torch.split(x_ND, ENCODE_CHUNK)]
    return torch.cat(parts) if parts else torch.zeros(0, sae.config.width)


def in_test_split(keys: list[str], test_fraction: float, seed: int) -> torch.Tensor:
    """(N,) bool: True for the items whose key hashes (with ``seed``) below ``test_fraction``. Stable across
    machines and independent of the order and number of the other items."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    salt = f"saescope-interp-split:{seed}:".encode()
    values = [int.from_bytes(hashlib.sha256(salt + key.encode("utf-8")).digest()[:8], "big") / 2.0**64 for key in keys]
    return torch.tensor(values, dtype=torch.float64) < test_fraction

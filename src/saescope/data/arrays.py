"""An `ActivationSource` over arrays already in memory or on disk: a user's `.npy` / safetensors file.

Each site is an (N, d) array (a tensor, a numpy array or a read-only memory map); row i of every
site is the same token. Batches are a seeded permutation of the rows per epoch: every row exactly
once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.data.activations import SiteBatch
from saescope.models.sites import Site, SiteKind


class ArrayActivations:
    """Token activations held as arrays; norm scales are estimated on the first `norm_tokens` rows."""

    def __init__(
        self, arrays: Mapping[Site, torch.Tensor | np.ndarray[Any, Any]], *, norm_tokens: int = 1_000_000
    ) -> None:
        if not arrays:
            raise ValueError("ArrayActivations needs at least one site")
        rows = {site: int(array.shape[0]) for site, array in arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"every site needs the same number of rows (tokens); got {rows}")
        for site, array in arrays.items():
            if len(array.shape) != 2:
                raise ValueError(f"{site}: activations must be 2-D (tokens, width); got shape {tuple(array.shape)}")
        self._arrays = dict(arrays)
        self.n_tokens = next(iter(rows.values()))
        self._scales = {site: self._scale(array, norm_tokens) for site, array in self._arrays.items()}

    @staticmethod
    def _scale(array: torch.Tensor | np.ndarray[Any, Any], norm_tokens: int) -> float:
        head = _float_rows(array, slice(0, norm_tokens))
        return math.sqrt(float(head.double().square().sum(-1).mean()))

    @property
    def sites(self) -> list[Site]:
        return sorted(self._arrays)

    @property
    def widths(self) -> dict[Site, int]:
        return {site: int(array.shape[1]) for site, array in self._arrays.items()}

    @property
    def norm_scales(self) -> dict[Site, float]:
        return dict(self._scales)

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        order = np.random.default_rng([seed, epoch]).permutation(self.n_tokens)
        for start in range(skip_batches * batch_size, self.n_tokens, batch_size):
            index = np.sort(order[start : start + batch_size])
            yield {site: _float_rows(array, index) for site, array in self._arrays.items()}


def _float_rows(array: torch.Tensor | np.ndarray[Any, Any], index: slice | np.ndarray[Any, Any]) -> torch.Tensor:
    """Rows of a tensor or (memory-mapped) numpy array as a new float32 tensor."""
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(index) if isinstance(index, np.ndarray) else index].float()
    return torch.from_numpy(np.array(array[index], dtype=np.float32))


def load_activation_file(path: Path, site: Site | None = None) -> ArrayActivations:
    """Open a user's activation file: `.npy` (one (N, d) array, memory-mapped) or `.safetensors`
    (one tensor per site, named by site id such as `layer_6/res`, or a single tensor of any name)."""
    if not path.is_file():
        raise FileNotFoundError(f"activation file {path} does not exist")
    default_site = site or Site(0, SiteKind.RES)
    if path.suffix == ".npy":
        return ArrayActivations({default_site: np.load(path, mmap_mode="r")})
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) == 1:
            return ArrayActivations({default_site: next(iter(tensors.values()))})
        try:
            return ArrayActivations({Site.parse(name): tensor for name, tensor in tensors.items()})
        except ValueError as error:
            raise ValueError(
                f"{path}: with several tensors, each must be named by its site id (e.g. 'layer_6/res'): {error}"
            ) from error
    raise ValueError(f"{path}: unsupported activation file type {path.suffix!r}; use .npy or .safetensors")

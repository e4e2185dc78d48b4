"""An `ActivationSource` over arrays already in memory or on disk: a user's `.npy` / safetensors file.

Each site is an (N, d) array (a tensor, a numpy array or a read-only memory map); row i of every
site is the same token. Batches are a seeded permutation of the rows per epoch: every row exactly
once per epoch.

`load_activation_file` is the edge where a user's file comes in: it refuses, with an error naming the
file, whatever would train garbage -- a file numpy or safetensors cannot read, a dtype that is not
real numbers, a width below 2, a non-finite value, a value float32 cannot hold, a row whose norm is
absurdly far above the rest -- before anything is trained or created. The check reads the file in
chunks, so a memory-mapped file larger than RAM is checked without being loaded.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.data.activations import OUTLIER_NORM_RATIO, SiteBatch, robust_mean_square
from saescope.models.sites import Site

#: The largest magnitude float32 holds; training computes in float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Rows read at a time by the checks hold about this many bytes (as float64).
CHECK_CHUNK_BYTES = 32 * 2**20
#: The fingerprint of a file hashes this many rows from its start and from its end.
FINGERPRINT_ROWS = 1024

AnyArray = torch.Tensor | np.ndarray[Any, Any]


class ActivationFileError(ValueError):
    """A user's activation file cannot be trained on; the message names the file and what to do."""


class ArrayActivations:
    """Token activations held as arrays; norm scales are estimated on the first `norm_tokens` rows.

    `identity` describes where the arrays came from (set by `load_activation_file`; None for arrays built in
    memory): a resumed training run compares it with the source it was started from.
    """

    def __init__(
        self,
        arrays: Mapping[Site, AnyArray],
        *,
        norm_tokens: int = 1_000_000,
        identity: Mapping[str, Any] | None = None,
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
        self.identity = dict(identity) if identity is not None else None
        self._scales = {site: self._scale(array, norm_tokens) for site, array in self._arrays.items()}

    @staticmethod
    def _scale(array: AnyArray, norm_tokens: int) -> float:
        """C = sqrt(E‖x‖²) over the first rows, leaving out rows far above the median norm (see
        `robust_mean_square`: on data without such rows this is the plain mean, bit for bit)."""
        head = _float_rows(array, slice(0, norm_tokens))
        return math.sqrt(float(robust_mean_square(head.double().square().sum(-1))))

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


def _float_rows(array: AnyArray, index: slice | np.ndarray[Any, Any]) -> torch.Tensor:
    """Rows of a tensor or (memory-mapped) numpy array as a new float32 tensor."""
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(index) if isinstance(index, np.ndarray) else index].float()
    return torch.from_numpy(np.array(array[index], dtype=np.float32))


# --- the edge: reading and checking a user's file ----------------------------------------------------
def load_activation_file(path: Path, site: Site | str | None = None) -> ArrayActivations:
    """Open and check a user's activation file: `.npy` (one (N, d) array, memory-mapped) or `.safetensors`
    (one tensor per site, named by site id such as `layer_6/res`, or a single tensor).

    A file with one array that does not name its site (any `.npy`, a safetensors tensor not named by a site
    id) needs `site`: a `Site` or the text of ``--sites`` naming one site (``layer_6/res`` or ``6/res``).
    Every array is checked (`check_activation_array`) before this returns.
    """
    if not path.is_file():
        raise FileNotFoundError(f"activation file {path} does not exist")
    if path.suffix == ".npy":
        arrays: dict[Site, AnyArray] = {_single_site(path, site): _open_npy(path)}
    elif path.suffix == ".safetensors":
        arrays = _read_safetensors(path, site)
    else:
        raise ActivationFileError(f"{path}: unsupported activation file type {path.suffix!r}; use .npy or .safetensors")
    for array_site, array in arrays.items():
        name = str(path) if len(arrays) == 1 else f"{path} [{array_site}]"
        check_activation_array(array, name)
    identity = {
        "kind": "activation file",
        "path": str(path.resolve()),
        "arrays": {array_site.id: array_fingerprint(array) for array_site, array in sorted(arrays.items())},
    }
    return ArrayActivations(arrays, identity=identity)


_SHORT_SITE = re.compile(r"^\s*(\d+)\s*/\s*([a-z_]+)\s*$")


def parse_one_site(text: str) -> Site:
    """The one site a ``--sites`` text names: ``layer_6/res`` or ``6/res``."""
    short = _SHORT_SITE.match(text)
    if short is not None:
        return Site.parse(f"layer_{short.group(1)}/{short.group(2)}")
    return Site.parse(text)


def _single_site(path: Path, site: Site | str | None) -> Site:
    """The site of a file's one unnamed array: `site`, which must name exactly one."""
    if site is None:
        raise ActivationFileError(
            f"{path} holds one array and does not say which site it was read at: name it with --sites, e.g. "
            "--sites layer_6/res (the dictionary's folder, release and explorer show this site)"
        )
    if isinstance(site, Site):
        return site
    try:
        return parse_one_site(site)
    except ValueError as error:
        raise ActivationFileError(
            f"{path} holds one array, so --sites must name its one site, e.g. layer_6/res; got {site!r} ({error})"
        ) from None


def _open_npy(path: Path) -> np.ndarray[Any, Any]:
    """Memory-map a `.npy` file, after checking its header against its size (a truncated file names itself)."""
    shape, dtype, data_bytes = _npy_header(path)
    _check_dtype(dtype, str(path))
    expected = math.prod(shape) * dtype.itemsize
    if data_bytes < expected:
        raise ActivationFileError(
            f"{path} is truncated: its header announces shape {shape} of {dtype} ({expected} bytes of data) but the "
            f"file holds {data_bytes}; write the file again (np.save) or copy it completely"
        )
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ActivationFileError(f"{path} cannot be read as a .npy array: {error}") from error
    assert isinstance(array, np.ndarray)
    return array


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """(shape, dtype, bytes after the header) of a `.npy` file, or an error naming it."""
    fmt = np.lib.format
    with path.open("rb") as handle:
        try:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, OSError, EOFError, SyntaxError) as error:
            raise ActivationFileError(
                f"{path} is not a readable .npy file ({error}); save the activations with numpy.save(path, array)"
            ) from error
        header_end = handle.tell()
    return tuple(int(n) for n in shape), np.dtype(dtype), path.stat().st_size - header_end


def _read_safetensors(path: Path, site: Site | str | None) -> dict[Site, AnyArray]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ActivationFileError(f"{path} cannot be read as a safetensors file: {error}") from error
    if not tensors:
        raise ActivationFileError(f"{path} holds no tensor")
    if len(tensors) == 1:
        ((name, tensor),) = tensors.items()
        named = _site_or_none(name)
        return {named if named is not None else _single_site(path, site): tensor}
    try:
        return {Site.parse(name): tensor for name, tensor in tensors.items()}
    except ValueError as error:
        raise ActivationFileError(
            f"{path}: with several tensors, each must be named by its site id (e.g. 'layer_6/res'): {error}"
        ) from error


def _site_or_none(name: str) -> Site | None:
    try:
        return Site.parse(name)
    except ValueError:
        return None


def check_activation_array(array: AnyArray, name: str) -> None:
    """Refuse an (N, d) activation array that cannot be trained on, naming `name` (the file) in the error.

    Checks the dtype (real numbers), the layout (2-D, at least one row, width >= 2), then reads the rows in
    chunks: every value finite and within float32's range, the rows not all zero, and no row whose norm is
    more than `OUTLIER_NORM_RATIO` times the median row norm.
    """
    _check_dtype(array.dtype, name)
    shape = tuple(int(n) for n in array.shape)
    if len(shape) != 2:
        raise ActivationFileError(f"{name}: activations must be 2-D (tokens, width); got shape {shape}")
    if shape[0] == 0:
        raise ActivationFileError(f"{name} holds no rows (shape {shape}); it needs one row per token")
    if shape[1] < 2:
        raise ActivationFileError(
            f"{name} has width {shape[1]} (shape {shape}): a dictionary needs activation vectors of width >= 2, "
            "one row per token; a (width, tokens) array must be transposed"
        )
    norms_N = _checked_row_norms(array, name)
    _check_magnitudes(array, norms_N, name)


def _check_dtype(dtype: np.dtype[Any] | torch.dtype, name: str) -> None:
    if isinstance(dtype, torch.dtype):
        if dtype.is_complex:
            raise ActivationFileError(f"{name} holds complex numbers ({dtype}); activations must be real numbers")
        if dtype == torch.bool:
            raise ActivationFileError(f"{name} holds booleans; activations must be real numbers (e.g. float32)")
        return
    if dtype.hasobject:
        raise ActivationFileError(
            f"{name} holds Python objects (dtype {dtype}); save a numeric (float32) array, e.g. "
            "numpy.save(path, np.asarray(rows, dtype=np.float32))"
        )
    if dtype.kind == "c":
        raise ActivationFileError(f"{name} holds complex numbers ({dtype}); activations must be real numbers")
    if dtype.kind not in "fiu":
        raise ActivationFileError(f"{name} has dtype {dtype}; activations must be real numbers (e.g. float32)")


def _chunks(array: AnyArray) -> Iterator[tuple[int, np.ndarray[Any, Any]]]:
    """(first row, float64 rows) of `array`, a bounded number of bytes at a time."""
    n_rows, width = int(array.shape[0]), int(array.shape[1])
    rows_per_chunk = max(1, CHECK_CHUNK_BYTES // (8 * width))
    for start in range(0, n_rows, rows_per_chunk):
        chunk = array[start : start + rows_per_chunk]
        if isinstance(chunk, torch.Tensor):
            yield start, chunk.double().numpy()
        else:
            yield start, np.asarray(chunk, dtype=np.float64)


def _checked_row_norms(array: AnyArray, name: str) -> np.ndarray[Any, Any]:
    """Every row's L2 norm (float64, (N,)); refuses the first non-finite value or one float32 cannot hold."""
    norms: list[np.ndarray[Any, Any]] = []
    for start, chunk_ND in _chunks(array):
        finite_ND = np.isfinite(chunk_ND)
        if not finite_ND.all():
            row, column = (int(i) for i in np.argwhere(~finite_ND)[0])
            raise ActivationFileError(
                f"{name}: row {start + row}, column {column} holds {chunk_ND[row, column]}: activations must be "
                "finite; fix the data or drop the rows that hold NaN or infinity"
            )
        too_large_ND = np.abs(chunk_ND) > FLOAT32_MAX
        if too_large_ND.any():
            row, column = (int(i) for i in np.argwhere(too_large_ND)[0])
            raise ActivationFileError(
                f"{name}: row {start + row}, column {column} holds {chunk_ND[row, column]:.6g}, beyond float32's "
                f"range (±{FLOAT32_MAX:.3g}) that training computes in; fix the data or drop that row"
            )
        norms.append(np.sqrt(np.square(chunk_ND).sum(axis=1)))
    return np.concatenate(norms)


def _check_magnitudes(array: AnyArray, norms_N: np.ndarray[Any, Any], name: str) -> None:
    """Refuse all-zero data, and rows whose norm is more than `OUTLIER_NORM_RATIO` times the median."""
    if not float(norms_N.max()) > 0:
        raise ActivationFileError(f"{name}: every row is zero; there is nothing to learn from these activations")
    median = float(np.median(norms_N))
    if not median > 0:  # mostly empty rows: no typical size to compare with
        return
    outliers = np.flatnonzero(norms_N > OUTLIER_NORM_RATIO * median)
    if outliers.size:
        first = int(outliers[0])
        row_D = np.asarray(_float_rows(array, slice(first, first + 1))[0].double())
        column = int(np.argmax(np.abs(row_D)))
        raise ActivationFileError(
            f"{name}: {outliers.size} row(s) have a norm over {OUTLIER_NORM_RATIO:.0e} times the median row norm "
            f"{median:.4g}; the first is row {first} (norm {float(norms_N[first]):.4g}), whose column {column} holds "
            f"{row_D[column]:.6g}. Such rows are corrupt or no token activations (e.g. a summed or special-token row) "
            "and would decide the training loss: drop them from the file"
        )


def array_fingerprint(array: AnyArray) -> dict[str, Any]:
    """What identifies an array cheaply: shape, dtype and the SHA-256 of its first and last rows (and shape)."""
    shape = [int(n) for n in array.shape]
    digest = hashlib.sha256(repr((shape, str(array.dtype))).encode())
    n_rows = shape[0]
    head = array[: min(FINGERPRINT_ROWS, n_rows)]
    tail = array[max(n_rows - FINGERPRINT_ROWS, 0) :]
    for part in (head, tail):
        digest.update(_raw_bytes(part))
    return {"shape": shape, "dtype": str(array.dtype), "sha256": digest.hexdigest()}


def _raw_bytes(part: AnyArray) -> bytes:
    if isinstance(part, torch.Tensor):
        return part.contiguous().view(torch.uint8).numpy().tobytes()
    return np.ascontiguousarray(part).tobytes()

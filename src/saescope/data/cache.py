"""The on-disk activation cache: sharded per site, checksummed, resumable, memory-mapped shuffled reads.

Layout of a cache folder::

    manifest.json                      settings, widths, mask policy, shard list with checksums, norm sums
    tokens/shard_00000.bin             int64 rows (token id, window index, position) of each token
    layer_6/res/shard_00000.bin        raw rows (n_tokens, width) in the storage dtype
    layer_6/att/shard_00000.bin        ...

Shard k of every site holds the same tokens in the same order, so a batch of row indices gives every
site's activations for the same tokens -- one stream feeds every SAE. A shard covers a fixed number of
whole windows. Shard files are written to temporary names and renamed; the manifest, rewritten
atomically after each shard, lists only complete shards. After a kill -9, a rerun skips exactly the
windows of the listed shards (the window stream is deterministic) and continues: no token is lost or
duplicated. A rerun first checks every listed shard against its size and SHA-256; from the first bad one
on, the shards are dropped from the manifest and written again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from saescope.atomic import CorruptFileError, atomic_write_json, read_json_object, sha256_file
from saescope.data.activations import OUTLIER_NORM_RATIO, KnownSites, SiteBatch, TokenActivations
from saescope.data.corpus import CORPUS_CONFIG_SCHEMA, mask_policy
from saescope.models.sites import Site
from saescope.versions import RecordSchema

MANIFEST = "manifest.json"
#: The layout of the shard files (their names, row order and dtypes), recorded as the manifest's "format".
FORMAT_VERSION = 1
#: The manifest's own fields (its "settings" hold a corpus config, which carries its own version).
CACHE_MANIFEST_SCHEMA = RecordSchema("activation cache manifest")
STORAGE_DTYPES: dict[str, tuple[torch.dtype, type[np.generic]]] = {
    # bfloat16 has no numpy dtype: its bits are stored and memory-mapped as uint16.
    "bfloat16": (torch.bfloat16, np.uint16),
    "float16": (torch.float16, np.float16),
    "float32": (torch.float32, np.float32),
}
_TOKEN_COLUMNS = 3  # token id, window index, position in window
#: Keys every reader of a cache manifest relies on, in "settings" and in each entry of "shards".
_SETTINGS_KEYS = ("sites", "widths", "dtype")
_SHARD_KEYS = ("index", "windows", "tokens", "tokens_file", "files", "sum_sq")

log = logging.getLogger(__name__)


class CacheMismatchError(ValueError):
    """The folder holds a cache made with other settings."""


@dataclass(frozen=True)
class CacheSettings:
    """Everything that determines a cache's content; a rerun must match it to resume."""

    model: str
    sites: tuple[Site, ...]
    widths: Mapping[Site, int]
    dtype: str
    corpus: Mapping[str, Any]
    context_size: int
    windows_per_shard: int

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}")
        if self.windows_per_shard < 1:
            raise ValueError(f"windows_per_shard must be >= 1, got {self.windows_per_shard}")
        if not self.sites:
            raise ValueError("a cache needs at least one site")

    def identity(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "sites": [site.id for site in self.sites],
            "widths": {site.id: int(self.widths[site]) for site in self.sites},
            "dtype": self.dtype,
            "corpus": CORPUS_CONFIG_SCHEMA.migrate(self.corpus, origin="CacheSettings.corpus"),
            "context_size": self.context_size,
            "windows_per_shard": self.windows_per_shard,
        }


def _site_dir(site: Site) -> Path:
    return Path(f"layer_{site.layer}") / site.kind.value


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.bin"


def read_cache_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an activation cache, with the keys every reader relies on; `CorruptFileError` naming the
    file and what is wrong when it is not valid JSON or lacks one of them."""
    rebuild = (
        f"It is damaged or was not written by `saescope cache`: build the cache again into a new folder "
        f"(`saescope cache --out NEW_FOLDER`); nothing in {path.parent} was changed."
    )
    manifest = read_json_object(path, lambda problem: CorruptFileError(f"{problem}. {rebuild}"))
    for key, kind, json_name in (("settings", dict, "an object"), ("shards", list, "a list")):
        if key not in manifest:
            raise CorruptFileError(f"{path} has no '{key}' key. {rebuild}")
        if not isinstance(manifest[key], kind):
            raise CorruptFileError(f"{path}: '{key}' must be {json_name}, not {manifest[key]!r:.60}. {rebuild}")
    missing = [key for key in _SETTINGS_KEYS if key not in manifest["settings"]]
    if missing:
        raise CorruptFileError(f"{path}: 'settings' has no {missing} key(s). {rebuild}")
    for position, shard in enumerate(manifest["shards"]):
        missing = [key for key in _SHARD_KEYS if not isinstance(shard, dict) or key not in shard]
        if missing:
            raise CorruptFileError(f"{path}: shard {position} of 'shards' has no {missing} key(s). {rebuild}")
    manifest = CACHE_MANIFEST_SCHEMA.migrate(manifest, origin=str(path))
    return {**manifest, "settings": current_cache_settings(manifest["settings"], origin=str(path))}


def current_cache_settings(settings: Mapping[str, Any], *, origin: str) -> dict[str, Any]:
    """A cache manifest's "settings" (also recorded in a training run's source.json) in today's form: the corpus
    config inside migrated to its current version, so that a cache made by an older saescope keeps its identity."""
    corpus = settings.get("corpus")
    if not isinstance(corpus, Mapping):
        return dict(settings)
    return {**settings, "corpus": CORPUS_CONFIG_SCHEMA.migrate(corpus, origin=f"{origin}, settings.corpus")}


def check_shard_file(path: Path, record: Mapping[str, Any], folder: Path, *, hash_it: bool) -> None:
    """`CorruptFileError` naming `path` when it is missing or differs from its manifest `record` in size (or,
    with `hash_it`, in SHA-256)."""
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing from the activation cache {folder}")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptFileError(f"{path} has {size} bytes, the manifest says {record['bytes']} (truncated?)")
    if hash_it:
        actual = sha256_file(path)
        if actual != record["sha256"]:
            raise CorruptFileError(
                f"{path} does not match its SHA-256 checksum in {folder / MANIFEST} (expected {record['sha256']}, "
                f"actual {actual})"
            )


def _shard_files(
    folder: Path, sites: Sequence[Site], shard: Mapping[str, Any]
) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """(path, manifest record) of each file of one shard: its tokens, then each site's rows."""
    yield folder / "tokens" / _shard_name(int(shard["index"])), shard["tokens_file"]
    for site in sites:
        yield folder / _site_dir(site) / _shard_name(int(shard["index"])), shard["files"][site.id]


class _ShardFile:
    """One shard file being appended to under a temporary name, hashed as it is written."""

    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self.final = final
        self.temp = final.with_name(final.name + ".partial")
        self.handle: BinaryIO = self.temp.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def append(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def commit(self) -> dict[str, Any]:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.final)
        return {"bytes": self.size, "sha256": self.digest.hexdigest()}

    def abort(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()


def _to_bytes(x_ND: torch.Tensor, dtype: str) -> bytes:
    torch_dtype, numpy_dtype = STORAGE_DTYPES[dtype]
    stored = x_ND.detach().to(device="cpu", dtype=torch_dtype).contiguous()
    if torch_dtype is torch.bfloat16:
        stored = stored.view(torch.int16)
    return stored.numpy().view(numpy_dtype).tobytes()


class CacheWriter:
    """Writes token activations into shards; `resume` continues where a killed run stopped."""

    def __init__(self, folder: Path, settings: CacheSettings, extra: Mapping[str, Any] | None = None) -> None:
        self.folder = folder
        self.settings = settings
        self.manifest = self._open_manifest(extra or {})

    def _open_manifest(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        path = self.folder / MANIFEST
        identity = self.settings.identity()
        if path.exists():
            manifest = read_cache_manifest(path)
            differences = [
                f"{key}: cache has {manifest['settings'].get(key)!r}, asked for {value!r}"
                for key, value in identity.items()
                if manifest["settings"].get(key) != value
            ]
            if differences:
                raise CacheMismatchError(
                    f"{self.folder} holds an activation cache made with other settings ("
                    + "; ".join(differences)
                    + "). Choose another output folder, or delete this one to rebuild it."
                )
            return self._without_corrupt_shards(manifest)
        self.folder.mkdir(parents=True, exist_ok=True)
        policy = mask_policy(self.settings.corpus.get("chat_template"))  # which positions were dropped
        manifest = CACHE_MANIFEST_SCHEMA.stamp(
            {"format": FORMAT_VERSION, "settings": identity, "mask_policy": policy, "shards": [], **dict(extra)}
        )
        atomic_write_json(path, manifest)
        return manifest

    def _without_corrupt_shards(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Check every listed shard file (size and SHA-256); from the first bad shard on, drop the shards from
        the manifest so that `write` produces them again (the window stream is deterministic)."""
        shards = manifest["shards"]
        for position, shard in enumerate(shards):
            try:
                for path, record in _shard_files(self.folder, self.settings.sites, shard):
                    check_shard_file(path, record, self.folder, hash_it=True)
            except CorruptFileError as error:
                log.warning(
                    "%s; shard %d and the %d shard(s) after it are written again", error, position,
                    len(shards) - position - 1,
                )  # fmt: skip
                manifest = {**manifest, "shards": shards[:position]}
                atomic_write_json(self.folder / MANIFEST, manifest)
                break
        return manifest

    @property
    def windows_done(self) -> int:
        return sum(int(shard["windows"]) for shard in self.manifest["shards"])

    @property
    def tokens_done(self) -> int:
        return sum(int(shard["tokens"]) for shard in self.manifest["shards"])

    def write(self, token_stream: Iterable[TokenActivations], token_budget: int) -> Iterator[int]:
        """Consume `token_stream` (which must start at window `windows_done`) until the cache holds
        `token_budget` tokens; yields the number of tokens written after each forward batch."""
        sites = self.settings.sites
        stream = iter(token_stream)
        while self.tokens_done < token_budget:
            index = len(self.manifest["shards"])
            files = {site: _ShardFile(self.folder / _site_dir(site) / _shard_name(index)) for site in sites}
            token_file = _ShardFile(self.folder / "tokens" / _shard_name(index))
            sum_sq = dict.fromkeys(sites, 0.0)
            windows = tokens = 0
            try:
                while windows < self.settings.windows_per_shard:
                    chunk = next(stream, None)
                    if chunk is None:
                        break
                    take = min(chunk.n_tokens, token_budget - self.tokens_done - tokens)
                    for site in sites:
                        x_ND = chunk.acts[site][:take]
                        files[site].append(_to_bytes(x_ND, self.settings.dtype))
                        norms_N = torch.linalg.vector_norm(x_ND, dim=-1, dtype=torch.float32)
                        sum_sq[site] += float(norms_N.square().double().sum())
                    rows = torch.stack([chunk.token_ids_N, chunk.windows_N, chunk.positions_N], dim=1)[:take]
                    token_file.append(rows.to(torch.int64).numpy().tobytes())
                    windows += chunk.n_windows
                    tokens += take
                    yield take
                    if self.tokens_done + tokens >= token_budget:
                        break
            except BaseException:
                for shard_file in [*files.values(), token_file]:
                    shard_file.abort()
                raise
            if tokens == 0:
                for shard_file in [*files.values(), token_file]:
                    shard_file.abort()
                raise ValueError(
                    f"the corpus ran out after {self.tokens_done} tokens, short of the budget of {token_budget}"
                )
            record = {
                "index": index,
                "windows": windows,
                "tokens": tokens,
                "tokens_file": token_file.commit(),
                "files": {site.id: files[site].commit() for site in sites},
                "sum_sq": {site.id: sum_sq[site] for site in sites},
            }
            self.manifest["shards"].append(record)
            atomic_write_json(self.folder / MANIFEST, self.manifest)


class ActivationCache(KnownSites):
    """Read side of the cache: an `ActivationSource` over memory-mapped shards.

    `verify` = "lazy" (default) checks each shard's SHA-256 the first time it is read in this process,
    "full" checks every file when the cache is opened, "sizes" only compares file sizes.
    """

    def __init__(self, folder: Path, *, verify: str = "lazy", norm_tokens: int | None = None) -> None:
        if verify not in ("lazy", "full", "sizes"):
            raise ValueError(f"verify must be 'lazy', 'full' or 'sizes', got {verify!r}")
        self.folder = folder
        path = folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not an activation cache (no {MANIFEST}); create one with `saescope cache`"
            )
        self.manifest = read_cache_manifest(path)
        settings = self.manifest["settings"]
        self._sites = [Site.parse(site_id) for site_id in settings["sites"]]
        self._widths = {site: int(settings["widths"][site.id]) for site in self._sites}
        self.dtype = str(settings["dtype"])
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        self._verified: set[Path] = set()
        self._verify = verify
        self._norm_tokens = norm_tokens
        self._scales: dict[Site, float] | None = None
        for shard in self.shards:
            for path_, record in _shard_files(folder, self._sites, shard):
                self._check(path_, record, hash_it=verify == "full")

    @property
    def n_tokens(self) -> int:
        return sum(int(shard["tokens"]) for shard in self.shards)

    @property
    def norm_scales(self) -> dict[Site, float]:
        """C = sqrt(E‖x‖²) per site over the first shards covering `norm_tokens` (all shards if None), leaving out
        rows far above the median norm as a streamed estimate does (`outlier_free_rows`).

        The sums come from the manifest. A shard can hold a row above the outlier threshold only if its sum of
        squared norms reaches that threshold, so only such shards are read back (the median is taken on the
        first shard's rows); on data without outliers no shard is read and C is the plain mean, bit for bit.
        """
        if not self.shards:
            raise ValueError(f"{self.folder} holds no complete shard yet")
        if self._scales is not None:
            return dict(self._scales)
        counted = []
        for shard in self.shards:
            counted.append(shard)
            if self._norm_tokens is not None and sum(int(s["tokens"]) for s in counted) >= self._norm_tokens:
                break
        self._scales = {site: self._norm_scale(site, counted) for site in self._sites}
        return dict(self._scales)

    def _norm_scale(self, site: Site, counted: Sequence[Mapping[str, Any]]) -> float:
        median = float(self._square_norms(site, counted[0]).median())
        threshold = OUTLIER_NORM_RATIO**2 * median if median > 0 else math.inf
        total, count = 0.0, 0
        for shard in counted:
            shard_sum = float(shard["sum_sq"][site.id])
            if shard_sum <= threshold:  # every row's squared norm is at most the shard's sum: no outlier here
                total += shard_sum
                count += int(shard["tokens"])
            else:  # summed again without the outliers (subtracting them would lose the rest to rounding)
                sq_N = self._square_norms(site, shard)
                kept_N = sq_N[sq_N <= threshold]
                total += float(kept_N.double().sum())
                count += int(kept_N.numel())
        return math.sqrt(total / count)

    def _square_norms(self, site: Site, shard: Mapping[str, Any]) -> torch.Tensor:
        """The squared norm of every row of one site's shard (float32, as the writer summed them)."""
        rows = self._open_rows(site, shard)
        return torch.cat(
            [
                torch.linalg.vector_norm(self._to_float(rows[start : start + 65_536]), dim=-1).square()
                for start in range(0, len(rows), 65_536)
            ]
        )

    def _check(self, path: Path, record: Mapping[str, Any], *, hash_it: bool) -> None:
        if path in self._verified:
            return
        check_shard_file(path, record, self.folder, hash_it=hash_it)
        if hash_it:
            self._verified.add(path)

    def _open_rows(self, site: Site | None, shard: Mapping[str, Any]) -> np.memmap[Any, Any]:
        index = int(shard["index"])
        dtype: type[np.generic]
        if site is None:
            path, record = self.folder / "tokens" / _shard_name(index), shard["tokens_file"]
            dtype, width = np.int64, _TOKEN_COLUMNS
        else:
            path, record = self.folder / _site_dir(site) / _shard_name(index), shard["files"][site.id]
            dtype, width = STORAGE_DTYPES[self.dtype][1], self._widths[site]
        self._check(path, record, hash_it=self._verify != "sizes")
        return np.memmap(path, dtype=dtype, mode="r", shape=(int(shard["tokens"]), width))

    def _to_float(self, rows: np.ndarray[Any, Any]) -> torch.Tensor:
        # Memory-mapped rows are read-only; fancy-indexed rows are already a private copy.
        tensor = torch.from_numpy(np.require(rows, requirements=["C", "W"]))
        if self.dtype == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return tensor.float()

    def read_shard(self, site: Site, index: int) -> torch.Tensor:
        """All rows of one site's shard, as float32 (n_tokens, width)."""
        return self._to_float(self._open_rows(site, self.shards[index])[:])

    def read_tokens(self, index: int) -> torch.Tensor:
        """(n_tokens, 3) int64: token id, window index, position of each row of shard `index`."""
        return torch.from_numpy(np.array(self._open_rows(None, self.shards[index])))

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        skip_batches: int = 0,
        sites: Sequence[Site] | None = None,
        shards_in_memory: int = 4,
    ) -> Iterator[SiteBatch]:
        """Shuffled float32 batches; each token of the cache appears exactly once per epoch.

        Shards are visited in a seeded random order, `shards_in_memory` at a time; the rows of those
        shards (plus the few left over from the previous group) are permuted together and read through
        memory maps, so memory stays bounded by the group whatever the cache size. The first
        `skip_batches` batches are skipped without being read (to resume mid-epoch).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chosen = list(sites) if sites is not None else self._sites
        unknown = [str(site) for site in chosen if site not in self._widths]
        if unknown:
            raise ValueError(
                f"sites {unknown} are not in the cache {self.folder} (it has {[s.id for s in self._sites]})"
            )
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self.shards))
        leftover = np.empty((0, 2), dtype=np.int64)  # (shard position, row)
        batch_index = 0
        for group_start in range(0, len(order), shards_in_memory):
            group = order[group_start : group_start + shards_in_memory]
            rows = [leftover] + [
                np.stack([np.full(int(self.shards[g]["tokens"]), g), np.arange(int(self.shards[g]["tokens"]))], 1)
                for g in group
            ]
            pool = np.concatenate(rows)[rng.permutation(sum(len(r) for r in rows))]
            is_last = group_start + shards_in_memory >= len(order)
            n_full = len(pool) if is_last else (len(pool) // batch_size) * batch_size
            for start in range(0, n_full, batch_size):
                if batch_index >= skip_batches:
                    yield self._gather(pool[start : start + batch_size], chosen)
                batch_index += 1
            leftover = pool[n_full:]

    def _gather(self, picks: np.ndarray[Any, Any], sites: Sequence[Site]) -> SiteBatch:
        batch: SiteBatch = {site: torch.empty(len(picks), self._widths[site]) for site in sites}
        for shard_position in np.unique(picks[:, 0]):
            in_shard = np.nonzero(picks[:, 0] == shard_position)[0]
            rows = picks[in_shard, 1]
            row_order = np.argsort(rows)  # sorted reads are sequential-ish in the memory map
            target = torch.from_numpy(in_shard[row_order])
            for site in sites:
                values = self._to_float(self._open_rows(site, self.shards[int(shard_position)])[rows[row_order]])
                batch[site][target] = values
        return batch

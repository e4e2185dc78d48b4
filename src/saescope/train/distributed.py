"""Multi-process training with torchrun: the dictionaries of a suite sharded over ranks, one activation stream.

Launch a training command under torchrun; nothing else changes::

    torchrun --nproc-per-node 4 -m saescope run --preset gemma-scope-2-270m --device cuda
    torchrun --nproc-per-node 2 -m saescope train --cache runs/cache --widths 16k,65k --target-l0 50

Under one process (no torchrun, or ``WORLD_SIZE=1``) none of this is used. With several, the process
group uses NCCL when ``--device`` is ``cuda`` (each rank on GPU ``LOCAL_RANK``) and gloo otherwise.

How the work is split
---------------------
* **Dictionaries.** Each dictionary is trained on exactly one rank. `assign_dictionaries` balances
  the cost (width x (d_in + d_out) per dictionary): greedy, largest first, onto the least-loaded rank,
  ties to the lower rank -- deterministic, and any number of dictionaries on any number of ranks (a rank
  may get none: it still helps to produce activations). Every dictionary keeps the initialisation seed
  of its place in the whole suite, so its weights do not depend on the number of ranks.
* **Activations, produced once per token.** Live stream (`rank_split_forwards`): the batches of corpus
  windows are dealt out round-robin (rank r runs the forwards of window batches r, r+N, r+2N, ...);
  after each round the ranks exchange their token activations with ``all_gather`` (row counts first,
  then the rows as raw bytes padded to the longest, then unpadded), so every rank holds the same
  activations in window order. Every rank then runs the same seeded shuffle as a one-process run and
  keeps only the sites its own dictionaries read: the batches are exactly those of a one-process run
  with the same seed. Cache (`saescope.data.cache.ActivationCache`): every rank reads the shared cache
  folder with the same seed -- the same batches, no communication -- for its own sites only; the
  cache itself is built with the forwards split as above and written by rank 0 (`build_cache_split`).
* **Normalisation scales** come from the same exchanged stream (or the cache manifest) on every rank,
  so they are identical everywhere.

Checkpoints, outputs, logs
--------------------------
Each rank writes its own dictionaries' state to ``checkpoint.rank{r}-of-{N}.step{S}.pt`` (atomically, its
SHA-256 beside it) and deletes its older checkpoints only after every rank has written step S (a barrier).
A kill between two ranks' writes therefore leaves every rank holding at least the previous step; on resume the ranks
agree (all-reduce MIN) on the newest step all of them hold and continue from it, so a resumed run is
bit-identical to an uninterrupted one. Resuming needs the same number of ranks (else a clear error).
``saes/<name>/`` is written by the rank that trained the dictionary. Each rank logs to
``metrics.rank{r}-of-{N}.jsonl``; at the end rank 0 merges them into ``metrics.jsonl``, with the rows
in the order of a one-process run. ``saescope run`` runs the activation and training stages on every
rank and evaluation and release on rank 0 alone; the other ranks exit once training is done.

Several machines
----------------
Start the same command on every node, with a rendezvous endpoint on one of them::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0.example:29400 \\
        --rdzv-id suite1 -m saescope run --preset gemma-scope-2b --device cuda --runs-dir /shared/runs

The run folder (and a cache) must be on a filesystem every node sees (NFS, Lustre, ...): each rank
writes its dictionaries and checkpoints there, and rank 0 reads them all for evaluation and release.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import time
from collections.abc import Collection, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from saescope.atomic import (
    atomic_write_checksummed,
    atomic_write_json,
    atomic_write_text,
    remove_checksummed,
)
from saescope.data.activations import (
    ActivationSource,
    SiteBatch,
    StreamedActivations,
    TokenActivations,
    TokenStreamer,
    stream_token_activations,
    window_activations,
)
from saescope.data.cache import ActivationCache
from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.prefetch import Prefetcher
from saescope.data.sources import (
    CacheReport,
    cache_settings,
    cache_writer,
    current_source_record,
    describe_source,
    same_source,
    source_identity,
    write_cache,
)
from saescope.data.windows import WindowBatch, special_token_ids, stack_windows
from saescope.models.loading import LoadedModel
from saescope.models.sites import Site
from saescope.sae import SparseDictionary
from saescope.train.checkpoint import CHECKPOINT
from saescope.train.settings import SAESpec, TrainConfig
from saescope.train.trainer import METRICS, TrainedDictionary, Trainer

#: The identity of the activation source a run started on (`saescope.data.sources.source_identity`).
SOURCE_RECORD = "source.json"
_RANK_CHECKPOINT = re.compile(r"checkpoint\.rank(\d+)-of-(\d+)\.step(\d+)\.pt")


# --- the process group ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankContext:
    """This process's place in a torchrun job, with the few collectives saescope uses."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "gloo" or "nccl"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where tensors sent through the process group live (NCCL needs them on this rank's GPU)."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def min_int(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process among several, else None."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    return int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 (usable before the process group is up)."""
    env = torchrun_env()
    return env is None or env[0] == 0


_CURRENT: RankContext | None = None


def current() -> RankContext | None:
    """The active `RankContext` inside `torchrun_session`, None in a one-process run."""
    return _CURRENT


@contextmanager
def torchrun_session(device: str = "cpu") -> Iterator[RankContext | None]:
    """Join the torchrun process group for the duration of the block (a no-op without torchrun).

    Reads the torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``); NCCL when `device` is CUDA (and this rank's GPU becomes the current device, so
    ``cuda`` means GPU ``LOCAL_RANK``), gloo otherwise. Nested sessions reuse the outer one.
    """
    global _CURRENT
    env = torchrun_env()
    if env is None or _CURRENT is not None:
        yield _CURRENT
        return
    rank, world_size, local_rank = env
    use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    _CURRENT = RankContext(rank, world_size, local_rank, backend)
    try:
        yield _CURRENT
    finally:
        _CURRENT = None
        dist.destroy_process_group()


# --- which rank trains which dictionary -------------------------------------------------------------
def dictionary_cost(spec: SAESpec) -> int:
    """Relative cost of one training step of a dictionary: its encoder and own decoder weights,
    width x (d_in + d_out), per layer (a multi-layer dictionary's decoding of active latents is cheap)."""
    config = spec.dictionary
    return config.total_width * (config.d_in + config.d_target)


def assign_dictionaries(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Deal dictionaries (by index into `costs`) out to `world_size` ranks, balancing the total cost.

    Greedy longest-processing-time: largest cost first (ties: lower index first) onto the rank with the
    least cost so far (ties: lower rank). Deterministic; every index on exactly one rank; the busiest
    rank exceeds the least busy by at most the largest single cost. Returns each rank's sorted indices.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1; got {world_size}")
    if any(not cost >= 0 for cost in costs):
        raise ValueError(f"costs must be non-negative numbers; got {list(costs)}")
    loads = [0.0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owned[rank].append(index)
        loads[rank] += costs[index]
    return [sorted(indices) for indices in owned]


# --- activations: forwards split over ranks, rows exchanged ------------------------------------------
class _Header(NamedTuple):
    """What one rank computed in a round: token and window counts, (dtype, width) of each site."""

    n_tokens: int
    n_windows: int
    layout: tuple[tuple[str, int], ...]

    @property
    def row_bytes(self) -> int:
        return 8 * _TOKEN_COLUMNS + sum(_dtype(name).itemsize * width for name, width in self.layout)


_TOKEN_COLUMNS = 3  # token id, window index, position


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."))
    assert isinstance(dtype, torch.dtype)
    return dtype


def _pack(chunk: TokenActivations, sites: Sequence[Site], device: torch.device) -> tuple[_Header, torch.Tensor]:
    """One rank's chunk as (n_tokens, row_bytes) uint8 rows: int64 token columns, then each site's bytes."""
    columns = torch.stack([chunk.token_ids_N, chunk.windows_N, chunk.positions_N], dim=1).to(torch.int64)
    parts = [columns.contiguous().view(torch.uint8).to(device)]
    parts += [chunk.acts[site].contiguous().view(torch.uint8).to(device) for site in sites]
    layout = tuple((str(chunk.acts[site].dtype), int(chunk.acts[site].shape[1])) for site in sites)
    return _Header(chunk.n_tokens, chunk.n_windows, layout), torch.cat(parts, dim=1)


def _unpack(header: _Header, rows: torch.Tensor, sites: Sequence[Site]) -> TokenActivations:
    columns = rows[:, : 8 * _TOKEN_COLUMNS].contiguous().view(torch.int64).cpu()
    acts, offset = {}, 8 * _TOKEN_COLUMNS
    for site, (dtype_name, width) in zip(sites, header.layout, strict=True):
        dtype = _dtype(dtype_name)
        n_bytes = dtype.itemsize * width
        acts[site] = rows[:, offset : offset + n_bytes].contiguous().view(dtype)
        offset += n_bytes
    return TokenActivations(
        acts=acts,
        token_ids_N=columns[:, 0].clone(),
        windows_N=columns[:, 1].clone(),
        positions_N=columns[:, 2].clone(),
        n_windows=header.n_windows,
    )


def _all_gather_rows(
    ctx: RankContext, headers: Sequence[_Header | None], rows: torch.Tensor | None
) -> list[torch.Tensor]:
    """Every rank's variable-length uint8 rows: padded to the longest, gathered, unpadded."""
    n_max = max([1] + [h.n_tokens for h in headers if h is not None])
    width = max([1] + [h.row_bytes for h in headers if h is not None])
    padded = torch.zeros(n_max, width, dtype=torch.uint8, device=ctx.device)
    if rows is not None:
        padded[: rows.shape[0], : rows.shape[1]] = rows
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return [
        block[: h.n_tokens, : h.row_bytes] if h is not None else block[:0]
        for block, h in zip(gathered, headers, strict=True)
    ]


def split_token_stream(
    model: nn.Module,
    sites: Sequence[Site],
    window_batches: Iterable[WindowBatch],
    special_ids: Collection[int],
    ctx: RankContext,
    *,
    first_window: int = 0,
    prefetch_depth: int = 2,
) -> Generator[TokenActivations, None, None]:
    """`stream_token_activations` with the forwards split over the ranks; yields, on every rank, every
    window batch's activations in window order (a collective: all ranks must consume it alike).

    Each rank walks the whole window stream (tokenising is cheap) but runs the model only on batches
    r, r+N, ... (computed ahead in a background thread). Each round, the ranks exchange their chunk's
    header and rows; a round where no rank has a batch ends the stream everywhere.
    """
    sites = list(sites)

    def own_batches() -> Iterator[TokenActivations]:
        window = first_window
        for index, windows in enumerate(window_batches):
            if index % ctx.world_size == ctx.rank:
                yield window_activations(model, sites, windows, special_ids, first_window=window)
            window += windows.n_windows

    with Prefetcher(own_batches(), depth=prefetch_depth) as prefetched:
        mine = iter(prefetched)
        while True:
            chunk = next(mine, None)
            header, rows = _pack(chunk, sites, ctx.device) if chunk is not None else (None, None)
            headers: list[_Header | None] = ctx.all_gather_object(header)
            if all(h is None for h in headers):
                return
            for h, block in zip(headers, _all_gather_rows(ctx, headers, rows), strict=True):
                if h is not None:
                    yield _unpack(h, block, sites)


def rank_split_forwards(ctx: RankContext) -> TokenStreamer:
    """A live source's forwards split over `ctx`'s ranks (`split_token_stream`): every rank gets exactly the batches
    a one-process stream with the same arguments gives. Every call is collective: all ranks make it alike."""

    def forwards(
        model: nn.Module,
        sites: Sequence[Site],
        window_batches: Iterable[WindowBatch],
        special_ids: Collection[int],
        *,
        prefetch_depth: int = 2,
    ) -> Iterator[TokenActivations]:
        return split_token_stream(model, sites, window_batches, special_ids, ctx, prefetch_depth=prefetch_depth)

    return forwards


def current_forwards() -> TokenStreamer:
    """How a live source runs the model here: split over the ranks under torchrun, else in this process."""
    ctx = current()
    return stream_token_activations if ctx is None else rank_split_forwards(ctx)


def build_cache_split(
    folder: Path,
    loaded: LoadedModel,
    sites: Sequence[Site],
    corpus: CorpusConfig,
    ctx: RankContext,
    *,
    tokens: int,
    dtype: str = "bfloat16",
    batch_windows: int = 4,
    windows_per_shard: int = 16,
    progress: bool = True,
    online: bool | None = None,
) -> CacheReport | None:
    """`saescope.data.sources.build_cache` with the forwards split over the ranks; rank 0 writes.

    The cache is byte-identical to a one-process build (and resumes the same way). Returns the report
    on rank 0 and None elsewhere; on return the cache is complete for every rank.
    """
    settings = cache_settings(loaded, sites, corpus, dtype=dtype, windows_per_shard=windows_per_shard)
    writer = cache_writer(folder, loaded, settings) if ctx.is_main else None
    windows_done, start_tokens = ctx.broadcast_object(
        (writer.windows_done, writer.tokens_done) if writer is not None else None
    )
    started = time.perf_counter()
    windows = itertools.islice(corpus_windows(corpus, loaded.tokenizer, "train", online=online), windows_done, None)
    stream = split_token_stream(
        loaded.model, settings.sites, stack_windows(windows, batch_windows), special_token_ids(loaded.tokenizer),
        ctx, first_window=windows_done,
    )  # fmt: skip
    if writer is None:
        # Pull exactly the chunks rank 0's writer pulls: until the budget is reached or the stream ends.
        remaining = tokens - start_tokens
        while remaining > 0:
            chunk = next(stream, None)
            if chunk is None:
                raise ValueError(f"the corpus ran out short of the budget of {tokens} tokens")
            remaining -= chunk.n_tokens
        stream.close()
        ctx.barrier()
        return None
    desc = f"caching {len(settings.sites)} sites on {ctx.world_size} ranks"
    write_cache(writer, stream, tokens, start_tokens, desc=desc, progress=progress)
    stream.close()
    ctx.barrier()
    return CacheReport(ActivationCache(folder), writer.tokens_done - start_tokens, time.perf_counter() - started)


class _OwnSites:
    """A source that reports every site (for validation and scales) but yields only `keep`'s columns."""

    def __init__(self, source: ActivationSource, keep: Sequence[Site]) -> None:
        self._source = source
        self._keep = list(keep)

    @property
    def sites(self) -> list[Site]:
        return self._source.sites

    @property
    def widths(self) -> dict[Site, int]:
        return self._source.widths

    @property
    def norm_scales(self) -> dict[Site, float]:
        return self._source.norm_scales

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        if isinstance(self._source, (ActivationCache, StreamedActivations)):  # these read only what is asked
            yield from self._source.batches(
                batch_size, seed=seed, epoch=epoch, skip_batches=skip_batches, sites=self._keep
            )
            return
        for batch in self._source.batches(batch_size, seed=seed, epoch=epoch, skip_batches=skip_batches):
            yield {site: batch[site] for site in self._keep}


# --- training ---------------------------------------------------------------------------------------
def _describe_world(world_size: int) -> str:
    return "one process (no torchrun)" if world_size == 1 else f"{world_size} torchrun processes"


def check_checkpoint_layout(out_dir: Path, world_size: int) -> None:
    """Refuse to resume a folder whose checkpoints were written by another number of processes."""
    found: set[int] = {1} if (out_dir / CHECKPOINT).exists() else set()
    for path in out_dir.glob("checkpoint.rank*-of-*.step*.pt"):
        match = _RANK_CHECKPOINT.fullmatch(path.name)
        if match:
            found.add(int(match[2]))
    others = sorted(found - {world_size})
    if others:
        how = "without torchrun" if others[0] == 1 else f"torchrun with --nnodes x --nproc-per-node = {others[0]}"
        raise ValueError(
            f"{out_dir} holds the checkpoint of a training run with {_describe_world(others[0])}, and this run "
            f"has {_describe_world(world_size)}: resume it with the same number of processes ({how}), "
            "or train into another folder"
        )


class ShardedTrainer(Trainer):
    """A `Trainer` for one rank of a torchrun job: it trains the dictionaries `assign_dictionaries`
    gives this rank, with per-rank checkpoints and metrics (see the module docstring)."""

    def __init__(
        self,
        specs: Sequence[SAESpec],
        source: ActivationSource,
        config: TrainConfig,
        out_dir: Path,
        ctx: RankContext,
        *,
        parents: Mapping[str, SparseDictionary] | None = None,
    ) -> None:
        owned = assign_dictionaries([dictionary_cost(spec) for spec in specs], ctx.world_size)[ctx.rank]
        # A rank without dictionaries still draws batches (of the narrowest site) to keep in step.
        needed = {site for i in owned for site in (*specs[i].input_sites, *specs[i].output_sites)}
        keep = sorted(needed) or [min(source.sites, key=lambda s: (source.widths[s], s))]
        if not ctx.is_main:
            config = dataclasses.replace(config, progress=False)
        super().__init__(specs, _OwnSites(source, keep), config, out_dir, owned=owned, parents=parents)
        self.ctx = ctx
        self._tag = f"rank{ctx.rank}-of-{ctx.world_size}"
        self.metrics_path = out_dir / f"metrics.{self._tag}.jsonl"

    def _checkpoint_path(self, step: int) -> Path:
        return self.out_dir / f"checkpoint.{self._tag}.step{step:09d}.pt"

    def _own_checkpoints(self) -> dict[int, Path]:
        steps = {}
        for path in self.out_dir.glob(f"checkpoint.{self._tag}.step*.pt"):
            match = _RANK_CHECKPOINT.fullmatch(path.name)
            if match:
                steps[int(match[3])] = path
        return steps

    def save_checkpoint(self) -> None:
        state = self._checkpoint_state()
        atomic_write_checksummed(self._checkpoint_path(self.step), lambda handle: torch.save(state, handle))
        self.ctx.barrier()  # every rank now holds this step: older checkpoints can go
        for step, path in self._own_checkpoints().items():
            if step < self.step:
                remove_checksummed(path)

    def load_checkpoint(self) -> bool:
        check_checkpoint_layout(self.out_dir, self.ctx.world_size)
        own = self._own_checkpoints()
        common = self.ctx.min_int(max(own, default=-1))  # the newest step every rank holds
        for step, path in own.items():
            if step > common:
                remove_checksummed(path)  # written by this rank only, before a kill
        if common < 0:  # some rank has no checkpoint: all start again, without the rows logged before
            self._truncate_metrics()
            return False
        if common not in own:
            raise ValueError(
                f"rank {self.ctx.rank} has no checkpoint of step {common} in {self.out_dir} although the other "
                "ranks agree on it: the checkpoints are inconsistent; delete them to restart training"
            )
        path = own[common]
        start_over = (
            f"To start this training over from step 0, move it aside (for example `mv {path} {path}.unusable`) and "
            "rerun the same torchrun command: every rank then starts again. Or train into a new output folder."
        )
        self._restore_checkpoint(self._read_checkpoint(path, start_over=start_over), path)
        return True

    def agreed_pass_count(self, passes: int) -> int:
        # A rank-split stream runs each batch's forwards across the ranks: all must read the same batches.
        return -self.ctx.min_int(-passes)

    def run(self, *, max_steps: int | None = None) -> list[TrainedDictionary]:
        trained = super().run(max_steps=max_steps)
        self.ctx.barrier()
        if self.ctx.is_main:
            merge_metrics(self.out_dir, self.specs, self.ctx.world_size)
        return trained


def merge_metrics(out_dir: Path, specs: Sequence[SAESpec], world_size: int) -> None:
    """Write ``metrics.jsonl`` from the ranks' logs, rows ordered as a one-process run writes them."""
    order = {spec.name: index for index, spec in enumerate(specs)}
    rows = []
    for rank in range(world_size):
        path = out_dir / f"metrics.rank{rank}-of-{world_size}.jsonl"
        if path.exists():
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    rows.sort(key=lambda row: (row["step"], order[row["name"]]))
    atomic_write_text(out_dir / METRICS, "".join(json.dumps(row) + "\n" for row in rows))


def train_suite(
    specs: Sequence[SAESpec],
    source: ActivationSource,
    config: TrainConfig,
    out_dir: Path,
    *,
    max_steps: int | None = None,
    parents: Mapping[str, SparseDictionary] | None = None,
) -> list[TrainedDictionary]:
    """Train `specs`: sharded over the ranks inside a `torchrun_session`, else all in this process; `parents` are
    the loaded `--init-from` dictionaries (see `Trainer`).

    Returns the dictionaries trained by this process (`gather_final_metrics` collects every rank's).
    """
    ctx = current()
    check_checkpoint_layout(out_dir, 1 if ctx is None else ctx.world_size)
    trainer = (
        Trainer(specs, source, config, out_dir, parents=parents)
        if ctx is None
        else ShardedTrainer(specs, source, config, out_dir, ctx, parents=parents)
    )
    check_source_record(out_dir, source, write=ctx is None or ctx.is_main)
    return trainer.run(max_steps=max_steps)


def _has_checkpoint(out_dir: Path) -> bool:
    return (out_dir / CHECKPOINT).exists() or any(out_dir.glob("checkpoint.rank*-of-*.step*.pt"))


def check_source_record(out_dir: Path, source: ActivationSource, *, write: bool = True) -> None:
    """Refuse to resume a run from data other than what it started on; record the data of a fresh start.

    The record (`SOURCE_RECORD`, from `source_identity`) is compared only when the folder holds a checkpoint to
    resume; a run without one starts afresh and (when `write`) records its source. A live stream has no record:
    its model and corpus are part of the run's own settings.
    """
    identity = source_identity(source)
    if identity is None:
        return
    path = out_dir / SOURCE_RECORD
    resuming = _has_checkpoint(out_dir)
    if resuming and path.is_file():
        recorded = current_source_record(json.loads(path.read_text(encoding="utf-8")), origin=str(path))
        if not same_source(recorded, identity):
            raise ValueError(
                f"{out_dir} holds a training run started on {describe_source(recorded)}, and this run reads "
                f"{describe_source(identity)}: resuming would train on other data than it started with. Resume "
                "with the source it started on, or train into another folder"
            )
        return
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, identity)


def gather_final_metrics(
    trained: Sequence[TrainedDictionary], specs: Sequence[SAESpec]
) -> list[tuple[str, dict[str, float]]]:
    """(name, last-batch metrics) of every dictionary of the suite, in spec order, on every rank."""
    rows = [(result.name, result.final_metrics) for result in trained]
    ctx = current()
    if ctx is not None:
        rows = [row for rank_rows in ctx.all_gather_object(rows) for row in rank_rows]
    order = {spec.name: index for index, spec in enumerate(specs)}
    return sorted(rows, key=lambda row: order[row[0]])

"""Activation pipeline benchmark: model forward, every-site capture, cache write, shuffled cache read, memory.

What it measures, in one run, on the same token windows (real text from the embedded corpus; Python's
stdlib sources if that corpus cannot be built):

1. Capture overhead. Tokens/s of a bare forward of the model body (every decoder layer; no hooks, no LM
   head) against the same windows through
   * ``window_activations`` called in the main thread (hooks on all sites + dropping special tokens), and
   * ``stream_token_activations`` (the same work in its prefetch thread: what the pipeline runs),
   capturing res/att/mlp on every layer (54 sites on Gemma 3 270M). The three alternate within each
   round so that load from other processes hits all of them; per-round figures, medians and the best
   round are printed. Figure of merit: stream/bare (goal >= 0.9).
2. Cache write. GB/s of ``CacheWriter`` (bf16 by default; conversion, SHA-256, fsync and manifest
   included) fed with activations already in memory, next to a plain write+fsync of files of the same
   sizes, the share of the writer's time spent in its CPU passes, and the writer's token rate next to
   the model's.
3. Cache read. GB/s of ``ActivationCache.batches`` (shuffled, batch 4096, all sites, float32 out) next
   to a plain sequential read of the same shard files (16 MiB buffer), "hot" (files in the page cache)
   and "cold" (evicted just before with ``posix_fadvise(DONTNEED)``; how far ``Cached`` in /proc/meminfo
   fell is printed, so you can see whether the eviction took). Median of ``--rounds`` repetitions.
4. Memory. Peak RSS of a fresh process that streams windows into a cache, at several token budgets:
   ``ru_maxrss`` after loading the model, and the peak while streaming (VmHWM, reset after loading).
   It should not grow with the budget.

Run from the repository root (the converted model is found through SAESCOPE_CACHE, as everywhere)::

    .venv/bin/python benchmarks/activations.py            # context 1024: about 10 min on 2 CPU cores
    .venv/bin/python benchmarks/activations.py --quick    # context 128, small cache: about 2 min

Every figure printed is measured in this run. On a shared machine, compare figures of the same run;
the load average is printed with each section.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from saescope.data.activations import TokenActivations, stream_token_activations, window_activations
from saescope.data.cache import STORAGE_DTYPES, ActivationCache, CacheSettings, CacheWriter
from saescope.data.windows import WindowBatch
from saescope.models import load_model
from saescope.models.sites import Site, select_sites, site_widths

READ_BUFFER = 16 * 1024 * 1024
GB = 1e9
MIB = 2**20


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# ------------------------------------------------------------------------------------------------
# Token windows
# ------------------------------------------------------------------------------------------------


def _windows_from_corpus(tokenizer: Any, n_windows: int, context: int) -> torch.Tensor:
    from saescope.data.corpus import iter_documents
    from saescope.data.windows import iter_token_windows

    windows = list(itertools.islice(iter_token_windows(iter_documents("embedded"), tokenizer, context), n_windows))
    if len(windows) < n_windows:
        raise RuntimeError(f"the embedded corpus gave only {len(windows)} windows")
    return torch.stack([window.ids_T for window in windows])  # plain text: the chat mask keeps every position


def _windows_from_stdlib(tokenizer: Any, n_windows: int, context: int) -> torch.Tensor:
    """Fallback: Python's own standard-library sources, tokenised, each followed by EOS, packed behind BOS."""
    bos, eos = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    needed = n_windows * (context - 1)
    stream: list[int] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        stream += tokenizer(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        stream.append(eos)
        if len(stream) >= needed:
            break
    body = torch.tensor(stream[:needed], dtype=torch.long).view(n_windows, context - 1)
    return torch.cat([torch.full((n_windows, 1), bos, dtype=torch.long), body], dim=1)


def load_windows(tokenizer: Any, n_windows: int, context: int) -> tuple[torch.Tensor, str]:
    """(n_windows, context) token ids starting with BOS, and a word on where the text came from."""
    try:
        return _windows_from_corpus(tokenizer, n_windows, context), "embedded corpus"
    except Exception as error:  # any failure of the corpus module: use the small built-in fallback
        print(f"note: embedded corpus unavailable ({type(error).__name__}: {error}); using stdlib sources")
        return _windows_from_stdlib(tokenizer, n_windows, context), "Python stdlib sources"


def special_ids(tokenizer: Any) -> frozenset[int]:
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    named = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    ids.update(int(v) for v in named if v is not None)
    return frozenset(ids)


def batched(windows_WT: torch.Tensor, batch_windows: int) -> list[torch.Tensor]:
    return [windows_WT[i : i + batch_windows] for i in range(0, windows_WT.shape[0], batch_windows)]


# ------------------------------------------------------------------------------------------------
# 1. Forward vs capture
# ------------------------------------------------------------------------------------------------


def bare_forward_seconds(model: Any, batches: Sequence[torch.Tensor]) -> float:
    body = model.model  # the decoder stack + final norm; no LM head
    started = time.perf_counter()
    with torch.no_grad():
        for ids_BT in batches:
            body(input_ids=ids_BT, use_cache=False)
    return time.perf_counter() - started


def main_thread_capture_seconds(
    model: Any, sites: Sequence[Site], batches: Sequence[torch.Tensor], special: frozenset[int]
) -> float:
    started = time.perf_counter()
    for ids_BT in batches:
        window_activations(model, sites, WindowBatch.of_ids(ids_BT), special)
    return time.perf_counter() - started


def stream_seconds(
    model: Any, sites: Sequence[Site], batches: Sequence[torch.Tensor], special: frozenset[int]
) -> float:
    started = time.perf_counter()
    kept = 0
    for token_acts in stream_token_activations(model, sites, map(WindowBatch.of_ids, batches), special):
        kept += token_acts.n_tokens
    elapsed = time.perf_counter() - started
    assert kept > 0
    return elapsed


def in_worker_thread(measure: Callable[[], float]) -> float:
    """Run `measure` in a fresh thread, as the stream's prefetch thread runs the forward."""
    outcome: list[float | BaseException] = []

    def target() -> None:
        try:
            outcome.append(measure())
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=target, name="bench-worker")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def section_forward(
    args: argparse.Namespace,
    model: Any,
    sites: Sequence[Site],
    batches: Sequence[torch.Tensor],
    special: frozenset[int],
) -> float:
    """Prints section 1; returns the median bare-forward rate (tokens/s, main thread)."""
    n_tokens = sum(int(ids_BT.numel()) for ids_BT in batches)
    bare_main, bare_worker = "bare forward, main thread", "bare forward, worker thread"
    # name -> (measurement, the bare path it is paired with: same kind of thread)
    paths: dict[str, tuple[Callable[[], float], str]] = {
        bare_main: (lambda: bare_forward_seconds(model, batches), bare_main),
        bare_worker: (lambda: in_worker_thread(lambda: bare_forward_seconds(model, batches)), bare_worker),
        "capture, main thread": (lambda: main_thread_capture_seconds(model, sites, batches, special), bare_main),
        "stream_token_activations": (lambda: stream_seconds(model, sites, batches, special), bare_worker),
    }
    # Warm-up of every path on one batch (allocator, kernels, thread pools).
    bare_forward_seconds(model, batches[:1])
    main_thread_capture_seconds(model, sites, batches[:1], special)
    stream_seconds(model, sites, batches[:1], special)
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, (measure, _) in paths.items():
            rates[name].append(n_tokens / measure())
    print(f"\n-- 1. forward vs capture of {len(sites)} sites ({n_tokens} forward positions per round) --")
    print(f"{load_average()} after the section")
    print(f"{'tokens/s':30s}{'median':>8s}{'best':>8s}{'ratio':>7s}  per round (ratio to its bare path, same round)")
    for name, (_, baseline) in paths.items():
        paired = [v / b for v, b in zip(rates[name], rates[baseline], strict=True)]
        rounds = " ".join(f"{v:.1f} ({p:.2f})" for v, p in zip(rates[name], paired, strict=True))
        median, best = statistics.median(rates[name]), max(rates[name])
        print(f"{name:30s}{median:8.1f}{best:8.1f}{statistics.median(paired):7.3f}  {rounds}")
    stream = rates["stream_token_activations"]
    for label, baseline in (("main", bare_main), ("worker", bare_worker)):
        median_ratio = statistics.median(s / b for s, b in zip(stream, rates[baseline], strict=True))
        best_ratio = max(stream) / max(rates[baseline])
        print(
            f"stream / bare forward ({label} thread): {median_ratio:.3f} (median of paired rounds), "
            f"{best_ratio:.3f} (best vs best); goal >= 0.9"
        )
    return statistics.median(rates[bare_main])


# ------------------------------------------------------------------------------------------------
# 2. Cache write
# ------------------------------------------------------------------------------------------------


def shard_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.bin") if path.is_file())


def plain_write_seconds(folder: Path, sizes: Sequence[int]) -> float:
    """Write files of the given sizes (16 MiB chunks of one buffer) and fsync each: the disk's own rate."""
    folder.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(READ_BUFFER)
    started = time.perf_counter()
    for index, size in enumerate(sizes):
        with (folder / f"plain_{index:05d}.bin").open("wb") as handle:
            left = size
            while left > 0:
                left -= handle.write(chunk[: min(left, len(chunk))])
            handle.flush()
            os.fsync(handle.fileno())
    return time.perf_counter() - started


def writer_breakdown(chunks: Sequence[TokenActivations], dtype: str) -> dict[str, float]:
    """Seconds per token of the writer's CPU passes, every site: conversion to the storage dtype and to
    bytes, SHA-256 of those bytes, and the squared-norm sums kept for the normalisation scales."""
    storage = STORAGE_DTYPES[dtype][0]
    spent = {"convert to bytes": 0.0, "sha256": 0.0, "norm sums": 0.0}
    for chunk in chunks:
        for x_ND in chunk.acts.values():
            started = time.perf_counter()
            stored = x_ND.to(storage).contiguous()
            data = (stored.view(torch.int16) if storage is torch.bfloat16 else stored).numpy().tobytes()
            converted = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            hashed = time.perf_counter()
            float(torch.linalg.vector_norm(x_ND, dim=-1, dtype=torch.float32).square().double().sum())
            normed = time.perf_counter()
            spent["convert to bytes"] += converted - started
            spent["sha256"] += hashed - converted
            spent["norm sums"] += normed - hashed
    n_tokens = sum(chunk.n_tokens for chunk in chunks)
    return {name: seconds / n_tokens for name, seconds in spent.items()}


def cache_settings(
    args: argparse.Namespace, sites: Sequence[Site], widths: dict[Site, int], corpus: str
) -> CacheSettings:
    return CacheSettings(
        model=args.model,
        sites=tuple(sites),
        widths=widths,
        dtype=args.cache_dtype,
        corpus={"benchmark": corpus},
        context_size=args.context,
        windows_per_shard=args.windows_per_shard,
    )


def section_write(
    args: argparse.Namespace, chunks: Sequence[TokenActivations], settings: CacheSettings, cache_dir: Path, bare: float
) -> None:
    """Prints section 2 and leaves the cache in `cache_dir`. The writer gets the same few batches over
    and over (it only sees bytes), so a cache of any size needs no more forwards."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    writer = CacheWriter(cache_dir, settings)
    started = time.perf_counter()
    written = sum(writer.write(itertools.cycle(chunks), args.cache_tokens))
    write_seconds = time.perf_counter() - started
    files = shard_files(cache_dir)
    on_disk = sum(path.stat().st_size for path in files)
    plain_dir = cache_dir.parent / "plain"
    plain_seconds = plain_write_seconds(plain_dir, [path.stat().st_size for path in files])
    shutil.rmtree(plain_dir, ignore_errors=True)
    writer_gbs, plain_gbs = on_disk / write_seconds / GB, on_disk / plain_seconds / GB
    writer_tps = written / write_seconds
    per_token = writer_breakdown(chunks, args.cache_dtype)
    print(f"\n-- 2. cache write ({args.cache_dtype}, {written} tokens, {on_disk / GB:.2f} GB in {len(files)} files) --")
    print(load_average())
    print(f"{'':40s}{'GB/s':>8s}{'s':>8s}{'tokens/s':>10s}")
    print(f"{'CacheWriter (convert+sha256+fsync)':40s}{writer_gbs:8.3f}{write_seconds:8.2f}{writer_tps:10.0f}")
    print(f"{'plain write+fsync, same file sizes':40s}{plain_gbs:8.3f}{plain_seconds:8.2f}")
    print(f"CacheWriter/plain write: {writer_gbs / plain_gbs:.3f}")
    shares = ", ".join(f"{name} {seconds * writer_tps:.0%}" for name, seconds in per_token.items())
    print(f"share of the writer's time in its CPU passes (timed separately on the same batches): {shares}")
    print(
        f"writer {writer_tps:.0f} tokens/s vs bare forward {bare:.1f} tokens/s (section 1): "
        f"{writer_tps / bare:.1f}x the rate the model produces tokens at"
    )


# ------------------------------------------------------------------------------------------------
# 3. Cache read
# ------------------------------------------------------------------------------------------------


def cached_bytes() -> int:
    """`Cached:` of /proc/meminfo in bytes (-1 where unavailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def evict(files: Sequence[Path]) -> int:
    """Ask the kernel to drop the files' pages; returns how many bytes `Cached` fell by (-1: unknown)."""
    before = cached_bytes()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    after = cached_bytes()
    return before - after if before >= 0 and after >= 0 else -1


def sequential_read_seconds(files: Sequence[Path]) -> tuple[float, int]:
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    total = 0
    started = time.perf_counter()
    for path in files:
        with path.open("rb", buffering=0) as handle:
            while n := handle.readinto(view):
                total += n
    return time.perf_counter() - started, total


def shuffled_read_seconds(folder: Path, batch_size: int, verify: str) -> tuple[float, int]:
    cache = ActivationCache(folder, verify=verify)
    tokens = 0
    started = time.perf_counter()
    for batch in cache.batches(batch_size, seed=0):
        tokens += int(next(iter(batch.values())).shape[0])
    elapsed = time.perf_counter() - started
    assert tokens == cache.n_tokens, (tokens, cache.n_tokens)
    return elapsed, tokens


def section_read(args: argparse.Namespace, cache_dir: Path, bytes_per_token: int, bare: float) -> None:
    files = [path for path in shard_files(cache_dir) if path.parent.name != "tokens"]
    total = sum(path.stat().st_size for path in files)
    n_tokens = ActivationCache(cache_dir, verify="sizes").n_tokens
    sequential_read_seconds(files)  # every file in the page cache
    seconds: dict[str, list[float]] = {}
    dropped: list[int] = []

    def timed(name: str, cold: bool, measure: Callable[[], float]) -> None:
        if cold:
            dropped.append(evict(files))
        seconds.setdefault(name, []).append(measure())

    for _ in range(args.rounds):
        timed("sequential read, hot", False, lambda: sequential_read_seconds(files)[0])
        timed("shuffled batches, hot", False, lambda: shuffled_read_seconds(cache_dir, args.read_batch, "sizes")[0])
        timed("sequential read, cold", True, lambda: sequential_read_seconds(files)[0])
        timed("shuffled batches, cold", True, lambda: shuffled_read_seconds(cache_dir, args.read_batch, "sizes")[0])
    # The default verify="lazy" hashes every file once per process, on first read.
    timed(
        "shuffled, verify=lazy (+SHA-256), hot",
        False,
        lambda: shuffled_read_seconds(cache_dir, args.read_batch, "lazy")[0],
    )
    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(
        f"\n-- 3. cache read ({total / GB:.2f} GB of activations, {n_tokens} tokens, "
        f"batch {args.read_batch}, all sites) --"
    )
    print(load_average())
    print(f"{'median of ' + str(args.rounds):40s}{'GB/s':>8s}{'s':>8s}{'tokens/s':>11s}  per round (s)")
    for name, value in median.items():
        rounds = " ".join(f"{v:.2f}" for v in seconds[name])
        print(f"{name:40s}{total / value / GB:8.3f}{value:8.2f}{n_tokens / value:11.0f}  {rounds}")
    hot = median["sequential read, hot"] / median["shuffled batches, hot"]
    cold = median["sequential read, cold"] / median["shuffled batches, cold"]
    print(f"shuffled/sequential: hot {hot:.3f}, cold {cold:.3f}")
    print(
        f"eviction: 'Cached' fell by {min(dropped) / GB:.2f}-{max(dropped) / GB:.2f} GB per eviction for "
        f"{total / GB:.2f} GB of files (where it fell by less, 'cold' reads partly came from memory)"
    )
    shuffled_hot = n_tokens / median["shuffled batches, hot"]
    print(f"shuffled hot read: {shuffled_hot:.0f} tokens/s = {shuffled_hot / bare:.1f}x the bare forward's rate")
    assert bytes_per_token * n_tokens == total, (bytes_per_token, n_tokens, total)


# ------------------------------------------------------------------------------------------------
# 4. Peak RSS in a fresh process
# ------------------------------------------------------------------------------------------------


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS:, VmHWM:) in bytes; -1 where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs), so a later peak excludes model loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_probe(args: argparse.Namespace) -> None:
    """Child mode: stream `args.rss_probe` tokens into a cache; print one JSON line of memory figures."""
    budget = int(args.rss_probe)
    loaded = load_model(args.model)
    sites = select_sites(args.sites, loaded.info.n_layers)
    after_load_peak, after_load_now = max_rss_bytes(), status_bytes("VmRSS:")
    windows_WT, source = load_windows(loaded.tokenizer, math.ceil(budget / (args.context - 1)), args.context)
    folder = Path(tempfile.mkdtemp(prefix="rss-", dir=args.workdir))
    try:
        writer = CacheWriter(folder, cache_settings(args, sites, site_widths(loaded.model, sites), source))
        batches = batched(windows_WT, args.batch_windows)
        window_batches = map(WindowBatch.of_ids, batches)
        stream = stream_token_activations(loaded.model, sites, window_batches, special_ids(loaded.tokenizer))
        hwm_reset = reset_peak_rss()
        started = time.perf_counter()
        written = sum(writer.write(stream, budget))
        seconds = time.perf_counter() - started
        hwm = status_bytes("VmHWM:") if hwm_reset else -1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures = {
        "budget": budget,
        "written": written,
        "seconds": seconds,
        "forward_tokens": int(windows_WT.numel()),
        "peak_after_load": after_load_peak,
        "rss_after_load": after_load_now,
        "peak": max_rss_bytes(),
        "peak_while_streaming": hwm,
    }
    print(json.dumps(figures))


def run_rss_probe(args: argparse.Namespace, budget: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--rss-probe", str(budget), "--context", str(args.context), "--batch-windows", str(args.batch_windows)),
        *("--sites", args.sites, "--model", args.model, "--cache-dtype", args.cache_dtype),
        *("--windows-per-shard", str(args.windows_per_shard), "--workdir", args.workdir),
        *(("--threads", str(args.threads)) if args.threads else ()),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"RSS probe for {budget} tokens failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    probe: dict[str, Any] = json.loads(lines[-1])
    return probe


def section_rss(args: argparse.Namespace, n_sites: int) -> None:
    budgets = [int(b) for b in args.rss_budgets.split(",") if b.strip()]
    if not budgets:
        return
    print(f"\n-- 4. peak RSS of a fresh process streaming N tokens into a cache ({n_sites} sites) --")
    header = ("budget", 8), ("written", 9), ("cache tok/s", 12), ("RSS after load", 16), ("peak: load", 12)
    print("".join(f"{name:>{width}s}" for name, width in header) + f"{'peak: stream':>14s}{'stream - load':>15s}")
    peaks = []
    for budget in budgets:
        probe = run_rss_probe(args, budget)
        stream_peak = probe["peak_while_streaming"] if probe["peak_while_streaming"] > 0 else probe["peak"]
        peaks.append(stream_peak)
        print(
            f"{probe['budget']:8d}{probe['written']:9d}{probe['forward_tokens'] / probe['seconds']:12.1f}"
            f"{probe['rss_after_load'] / MIB:12.0f} MiB{probe['peak_after_load'] / MIB:8.0f} MiB"
            f"{stream_peak / MIB:10.0f} MiB{(stream_peak - probe['rss_after_load']) / MIB:11.0f} MiB"
        )
    print(
        "peak: load = ru_maxrss after loading the model; peak: stream = VmHWM reset after loading, read after "
        "streaming (ru_maxrss of the whole process where VmHWM cannot be reset); cache tok/s = forward + write"
    )
    if len(peaks) >= 2:
        print(
            f"streaming peak RSS, largest/smallest budget: {peaks[-1] / peaks[0]:.3f} "
            f"for {budgets[-1] / budgets[0]:.0f}x the tokens"
        )


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="context 128, a small cache, small RSS budgets")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--sites", default="all", help="site selection (saescope syntax); default: all")
    parser.add_argument("--context", type=int, default=None, help="tokens per window (default 1024; quick 128)")
    parser.add_argument("--windows", type=int, default=4, help="windows per timed round (default 4)")
    parser.add_argument("--batch-windows", type=int, default=2, help="windows per forward batch (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each timed path (default 3)")
    parser.add_argument("--cache-tokens", type=int, default=None, help="tokens in the cache (default 16384)")
    parser.add_argument("--cache-dtype", default="bfloat16", choices=sorted(STORAGE_DTYPES))
    parser.add_argument("--windows-per-shard", type=int, default=8)
    parser.add_argument("--read-batch", type=int, default=4096)
    parser.add_argument(
        "--rss-budgets", default=None, help="comma-separated token budgets (default 8192,24576; quick 2048,8192)"
    )
    parser.add_argument("--workdir", default=None, help="scratch folder for caches (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.context = args.context or (128 if args.quick else 1024)
    args.cache_tokens = args.cache_tokens or (4096 if args.quick else 16384)
    if args.rss_budgets is None:
        # Both budgets span more batches than the pipeline holds at once (prefetch depth + 2), so the
        # smaller one already reaches the steady state.
        args.rss_budgets = "2048,8192" if args.quick else "8192,24576"
    return args


def run(args: argparse.Namespace, workdir: Path) -> None:
    loaded = load_model(args.model)
    model, info = loaded.model, loaded.info
    sites = select_sites(args.sites, info.n_layers)
    widths = site_widths(model, sites)
    special = special_ids(loaded.tokenizer)
    windows_WT, text_source = load_windows(loaded.tokenizer, args.windows, args.context)
    batches = batched(windows_WT, args.batch_windows)
    n_kept = int((~torch.isin(windows_WT, torch.tensor(sorted(special)))).sum())
    bytes_per_token = sum(widths.values()) * (torch.finfo(STORAGE_DTYPES[args.cache_dtype][0]).bits // 8)

    print("== saescope activation pipeline benchmark ==")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, {load_average()}"
    )
    print(
        f"model {info.name}: {info.n_layers} layers, d_model {info.d_model}, d_attn {info.d_attn}, "
        f"{info.dtype} on {info.device} (loaded in {info.load_seconds:.1f} s)"
    )
    print(
        f"sites: {len(sites)} ({args.sites}), {bytes_per_token} bytes per token in {args.cache_dtype}; windows: "
        f"{args.windows} x {args.context} tokens of {text_source}, {args.batch_windows} per forward; "
        f"{n_kept} of {windows_WT.numel()} positions kept (special tokens dropped)"
    )

    bare = section_forward(args, model, sites, batches, special)
    chunks = [window_activations(model, sites, WindowBatch.of_ids(ids_BT), special) for ids_BT in batches[:2]]
    cache_dir = workdir / "cache"
    section_write(args, chunks, cache_settings(args, sites, widths, text_source), cache_dir, bare)
    del chunks
    section_read(args, cache_dir, bytes_per_token, bare)
    if not args.keep:
        shutil.rmtree(cache_dir, ignore_errors=True)
    section_rss(args, len(sites))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_probe is not None:
        rss_probe(args)
        return
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="saescope-bench-"))
    args.workdir = str(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

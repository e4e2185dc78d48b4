"""Activation pipeline benchmark: model forward, every-site capture, cache write, shuffled cache read, memory.

What it measures, all in one run on the same token windows (real text from the embedded corpus):

1. Capture overhead: tokens/s of a bare forward of the model body (every decoder layer, no hooks, no LM
   head) against tokens/s of ``stream_token_activations`` capturing all res/att/mlp sites of every layer
   (54 sites on Gemma 3 270M). Rounds alternate bare/stream so machine-load drift hits both; the ratio
   stream/bare is the figure of merit (goal >= 0.9).
2. Cache write: GB/s of ``CacheWriter`` (bf16 by default; conversion + SHA-256 + fsync included) fed with
   activations already in memory, next to a plain write+fsync of the same number of bytes, and the
   writer's token rate next to the model's (how far ahead of the forward the writer is).
3. Cache read: GB/s of ``ActivationCache.batches`` (shuffled, batch 4096, all sites, float32 out) next to
   a plain sequential read of the same shard files (16 MiB buffer), both "hot" (files in the page cache)
   and "cold" (evicted first with ``posix_fadvise(DONTNEED)``; the drop of ``Cached`` in /proc/meminfo is
   printed so you can see whether the eviction took).
4. Memory: peak RSS (``ru_maxrss``) of a fresh process that streams windows into a cache, at several
   token budgets; it should not grow with the budget.

Run (the converted model cache is found through SAESCOPE_CACHE like everywhere in saescope)::

    .venv/bin/python benchmarks/activations.py            # context 1024, about 5-10 min on 2 CPU cores
    .venv/bin/python benchmarks/activations.py --quick    # short windows, fewer of them: about 2 min

Every figure printed is measured in this run; nothing is hard-coded.
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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from saescope.data.activations import TokenActivations, stream_token_activations
from saescope.data.cache import STORAGE_DTYPES, ActivationCache, CacheSettings, CacheWriter
from saescope.models import load_model
from saescope.models.sites import Site, select_sites, site_widths

READ_BUFFER = 16 * 1024 * 1024
GB = 1e9
MIB = 2**20


# ------------------------------------------------------------------------------------------------
# Token windows
# ------------------------------------------------------------------------------------------------


def _windows_from_corpus(tokenizer: Any, n_windows: int, context: int) -> torch.Tensor:
    from saescope.data.corpus import iter_documents, iter_token_windows

    windows = list(itertools.islice(iter_token_windows(iter_documents("embedded"), tokenizer, context), n_windows))
    if len(windows) < n_windows:
        raise RuntimeError(f"the embedded corpus gave only {len(windows)} windows")
    return torch.stack(windows)


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


def stream_seconds(
    model: Any, sites: Sequence[Site], batches: Sequence[torch.Tensor], special: frozenset[int]
) -> float:
    started = time.perf_counter()
    kept = 0
    for token_acts in stream_token_activations(model, sites, iter(batches), special):
        kept += token_acts.n_tokens
    elapsed = time.perf_counter() - started
    assert kept > 0
    return elapsed


# ------------------------------------------------------------------------------------------------
# 2-3. Cache write and read
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


def shard_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.bin") if path.is_file())


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


def writer_breakdown(chunk: TokenActivations, dtype: str) -> dict[str, float]:
    """Seconds per token of the writer's CPU passes over one forward batch, every site: conversion to the
    storage dtype and to bytes, SHA-256 of those bytes, and the squared-norm sum kept for the scales."""
    storage = STORAGE_DTYPES[dtype][0]
    spent = {"convert to bytes": 0.0, "sha256": 0.0, "norm sums": 0.0}
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
    return {name: seconds / chunk.n_tokens for name, seconds in spent.items()}


def repeat_chunks(chunks: Sequence[TokenActivations]) -> Iterator[TokenActivations]:
    """The same few batches over and over: the writer only sees bytes, so a larger cache needs no forwards."""
    return itertools.cycle(chunks)


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


def current_rss_bytes() -> int:
    return status_bytes("VmRSS:")


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
    after_load_peak, after_load_now = max_rss_bytes(), current_rss_bytes()
    n_windows = math.ceil(budget / (args.context - 1))
    windows_WT, _ = load_windows(loaded.tokenizer, n_windows, args.context)
    settings = CacheSettings(
        model=args.model,
        sites=tuple(sites),
        widths=site_widths(loaded.model, sites),
        dtype=args.cache_dtype,
        corpus={"benchmark": "rss-probe"},
        context_size=args.context,
        windows_per_shard=args.windows_per_shard,
    )
    folder = Path(tempfile.mkdtemp(prefix="saescope-bench-rss-", dir=args.workdir))
    try:
        writer = CacheWriter(folder, settings)
        stream = stream_token_activations(
            loaded.model, sites, iter(batched(windows_WT, args.batch_windows)), special_ids(loaded.tokenizer)
        )
        hwm_reset = reset_peak_rss()
        started = time.perf_counter()
        written = sum(writer.write(stream, budget))
        seconds = time.perf_counter() - started
        hwm = status_bytes("VmHWM:") if hwm_reset else -1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        json.dumps(
            {
                "budget": budget,
                "written": written,
                "seconds": seconds,
                "forward_tokens": int(windows_WT.numel()),
                "peak_after_load": after_load_peak,
                "rss_after_load": after_load_now,
                "peak": max_rss_bytes(),
                "peak_while_streaming": hwm,
            }
        )
    )


def run_rss_probe(args: argparse.Namespace, budget: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--rss-probe",
        str(budget),
        *("--context", str(args.context), "--batch-windows", str(args.batch_windows)),
        *("--sites", args.sites, "--model", args.model, "--cache-dtype", args.cache_dtype),
        *("--windows-per-shard", str(args.windows_per_shard), "--workdir", args.workdir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"RSS probe for {budget} tokens failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    probe: dict[str, Any] = json.loads(lines[-1])
    return probe


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short windows, fewer of them, small cache")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--sites", default="all", help="site selection (saescope syntax); default: all")
    parser.add_argument("--context", type=int, default=None, help="tokens per window (default 1024; quick 128)")
    parser.add_argument("--windows", type=int, default=None, help="windows per timed round (default 4; quick 4)")
    parser.add_argument("--batch-windows", type=int, default=2, help="windows per forward batch")
    parser.add_argument("--rounds", type=int, default=None, help="alternating bare/stream rounds (default 3)")
    parser.add_argument("--cache-tokens", type=int, default=None, help="tokens in the cache (default 32768)")
    parser.add_argument("--cache-dtype", default="bfloat16", choices=sorted(STORAGE_DTYPES))
    parser.add_argument("--windows-per-shard", type=int, default=8)
    parser.add_argument("--read-batch", type=int, default=4096)
    parser.add_argument("--rss-budgets", default=None, help="comma-separated token budgets (default 2048,8192)")
    parser.add_argument("--workdir", default=None, help="scratch folder for caches (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.context = args.context or (128 if quick else 1024)
    args.windows = args.windows or 4
    args.rounds = args.rounds or 3
    args.cache_tokens = args.cache_tokens or (4096 if quick else 32768)
    args.rss_budgets = args.rss_budgets or ("512,2048" if quick else "2048,8192")
    return args


def rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rss_probe is not None:
        rss_probe(args)
        return
    own_workdir = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="saescope-bench-")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir if own_workdir else workdir / "cache", ignore_errors=True)
            shutil.rmtree(workdir / "plain", ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> None:
    loaded = load_model(args.model)
    model, info = loaded.model, loaded.info
    sites = select_sites(args.sites, info.n_layers)
    widths = site_widths(model, sites)
    special = special_ids(loaded.tokenizer)
    windows_WT, text_source = load_windows(loaded.tokenizer, args.windows, args.context)
    batches = batched(windows_WT, args.batch_windows)
    n_forward = int(windows_WT.numel())
    n_kept = int((~torch.isin(windows_WT, torch.tensor(sorted(special)))).sum())

    print("== saescope activation pipeline benchmark ==")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model {info.name}: {info.n_layers} layers, d_model {info.d_model}, d_attn {info.d_attn}, "
        f"{info.dtype} on {info.device} (loaded in {info.load_seconds:.1f} s)"
    )
    print(
        f"sites: {len(sites)} ({args.sites}); windows: {args.windows} x {args.context} tokens of {text_source}, "
        f"{args.batch_windows} per forward; {n_kept} of {n_forward} positions kept (special tokens dropped)"
    )

    # --- 1. forward vs capture ----------------------------------------------------------------------
    bare_forward_seconds(model, batches[:1])  # warm-up of both paths (allocator, kernels, threads)
    stream_seconds(model, sites, batches[:1], special)
    bare_rates, stream_rates = [], []
    for _ in range(args.rounds):
        bare_rates.append(rate(n_forward, bare_forward_seconds(model, batches)))
        stream_rates.append(rate(n_forward, stream_seconds(model, sites, batches, special)))
    ratios = [s / b for s, b in zip(stream_rates, bare_rates, strict=True)]
    bare, stream = statistics.median(bare_rates), statistics.median(stream_rates)
    print("\n-- 1. forward vs every-site capture (tokens/s counts every forward position) --")
    print(f"{'':34s}{'tokens/s':>10s}  per round")
    print(f"{'bare forward (model.model)':34s}{bare:10.1f}  " + " ".join(f"{r:.1f}" for r in bare_rates))
    print(
        f"{'stream_token_activations, ' + str(len(sites)) + ' sites':34s}{stream:10.1f}  "
        + " ".join(f"{r:.1f}" for r in stream_rates)
    )
    print(
        f"ratio stream/bare: {statistics.median(ratios):.3f} (median of rounds: "
        + " ".join(f"{r:.3f}" for r in ratios)
        + "); goal >= 0.9"
    )

    # --- 2. cache write -----------------------------------------------------------------------------
    chunks = list(stream_token_activations(model, sites, iter(batches[:2]), special))
    tokens_per_chunk = sum(c.n_tokens for c in chunks) / len(chunks)
    element = torch.finfo(STORAGE_DTYPES[args.cache_dtype][0]).bits // 8
    bytes_per_token = sum(widths.values()) * element
    settings = CacheSettings(
        model=args.model,
        sites=tuple(sites),
        widths=widths,
        dtype=args.cache_dtype,
        corpus={"benchmark": text_source},
        context_size=args.context,
        windows_per_shard=args.windows_per_shard,
    )
    cache_dir = workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    writer = CacheWriter(cache_dir, settings)
    started = time.perf_counter()
    written = sum(writer.write(repeat_chunks(chunks), args.cache_tokens))
    write_seconds = time.perf_counter() - started
    files = shard_files(cache_dir)
    on_disk = sum(path.stat().st_size for path in files)
    plain_seconds = plain_write_seconds(workdir / "plain", [path.stat().st_size for path in files])
    shutil.rmtree(workdir / "plain", ignore_errors=True)
    writer_gbs, plain_gbs = on_disk / write_seconds / GB, on_disk / plain_seconds / GB
    writer_tps = written / write_seconds
    print(f"\n-- 2. cache write ({args.cache_dtype}, {written} tokens, {on_disk / GB:.2f} GB in {len(files)} files) --")
    print(f"bytes per token (all sites): {bytes_per_token}; {tokens_per_chunk:.0f} tokens per forward batch")
    print(f"{'':40s}{'GB/s':>8s}{'s':>8s}")
    print(f"{'CacheWriter (convert+sha256+fsync)':40s}{writer_gbs:8.3f}{write_seconds:8.2f}")
    print(f"{'plain write+fsync of same sizes':40s}{plain_gbs:8.3f}{plain_seconds:8.2f}")
    print(f"ratio CacheWriter/plain write: {writer_gbs / plain_gbs:.3f}")
    per_token = writer_breakdown(chunks[0], args.cache_dtype)
    parts = ", ".join(f"{name} {seconds / (1 / writer_tps):.0%}" for name, seconds in per_token.items())
    print(f"share of the writer's time per token, measured pass by pass on one batch: {parts}")
    print(
        f"writer {writer_tps:.0f} tokens/s vs bare forward {bare:.1f} tokens/s: the writer is "
        f"{writer_tps / bare:.1f}x faster than the model produces tokens"
    )

    # --- 3. cache read ------------------------------------------------------------------------------
    activation_files = [path for path in files if path.parent.name != "tokens"]
    activation_bytes = sum(path.stat().st_size for path in activation_files)
    rows: list[tuple[str, float, float, str]] = []
    sequential_read_seconds(activation_files)  # make sure every file is in the page cache
    seconds, n_bytes = sequential_read_seconds(activation_files)
    rows.append(("sequential read, hot", n_bytes / seconds / GB, seconds, ""))
    seq_hot = n_bytes / seconds / GB
    seconds, tokens = shuffled_read_seconds(cache_dir, args.read_batch, "sizes")
    rows.append(("shuffled batches, hot", tokens * bytes_per_token / seconds / GB, seconds, f"{tokens / seconds:.0f}"))
    shuf_hot = rows[-1][1]
    dropped = evict(activation_files)
    seconds, n_bytes = sequential_read_seconds(activation_files)
    rows.append(("sequential read, cold", n_bytes / seconds / GB, seconds, ""))
    seq_cold = n_bytes / seconds / GB
    dropped_again = evict(activation_files)
    seconds, tokens = shuffled_read_seconds(cache_dir, args.read_batch, "sizes")
    rows.append(("shuffled batches, cold", tokens * bytes_per_token / seconds / GB, seconds, f"{tokens / seconds:.0f}"))
    shuf_cold = rows[-1][1]
    seconds, tokens = shuffled_read_seconds(cache_dir, args.read_batch, "lazy")
    name = "shuffled, verify=lazy (+SHA-256), warm"
    rows.append((name, tokens * bytes_per_token / seconds / GB, seconds, f"{tokens / seconds:.0f}"))
    print(f"\n-- 3. cache read ({activation_bytes / GB:.2f} GB of activations, batch {args.read_batch}, all sites) --")
    print(f"{'':40s}{'GB/s':>8s}{'s':>8s}{'tokens/s':>10s}")
    for name, gbs, secs, tps in rows:
        print(f"{name:40s}{gbs:8.3f}{secs:8.2f}{tps:>10s}")
    print(f"ratio shuffled/sequential: hot {shuf_hot / seq_hot:.3f}, cold {shuf_cold / seq_cold:.3f}")
    gib = activation_bytes / GB
    print(
        f"page cache: 'Cached' fell by {dropped / GB:.2f} GB and {dropped_again / GB:.2f} GB at the two "
        f"evictions (the files are {gib:.2f} GB); where it did not fall, 'cold' reads came from memory"
    )
    hot_tokens_per_second = shuf_hot * GB / bytes_per_token
    print(
        f"shuffled hot read: {hot_tokens_per_second:.0f} tokens/s = {hot_tokens_per_second / bare:.0f}x "
        "the bare forward's rate"
    )

    # --- 4. peak RSS --------------------------------------------------------------------------------
    budgets = [int(b) for b in args.rss_budgets.split(",") if b.strip()]
    print(f"\n-- 4. peak RSS of a fresh process streaming N tokens into a cache ({len(sites)} sites) --")
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
        "streaming (ru_maxrss of the whole process where VmHWM cannot be reset)"
    )
    if len(peaks) >= 2:
        print(
            f"streaming peak RSS, largest/smallest budget: {peaks[-1] / peaks[0]:.3f} "
            f"for {budgets[-1] / budgets[0]:.0f}x the tokens"
        )


if __name__ == "__main__":
    main()

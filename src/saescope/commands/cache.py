"""`saescope cache`: write every requested site's activations to a sharded on-disk cache."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saescope.commands.common import (
    add_config_argument,
    add_corpus_arguments,
    add_model_arguments,
    corpus_from_args,
    load_from_args,
    online_from_args,
)
from saescope.data.cache import STORAGE_DTYPES
from saescope.data.sources import build_cache
from saescope.models.sites import select_sites


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "cache",
        help="cache activations of many sites to disk (sharded, checksummed, resumable)",
        description="Run the model over the corpus's training split and store the activations of every "
        "requested site at every non-special token (BOS/EOS/pad are dropped), one pass for all sites. "
        "Rerunning the same command resumes a killed run; a larger --tokens extends the cache.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--sites",
        default="all",
        help="'all' (every layer x res/att/mlp), a kind ('res'), site ids ('layer_6/res'), or LAYERS/KINDS "
        "such as '0-5/res+mlp'; comma-separated (default: all)",
    )
    parser.add_argument("--tokens", type=int, default=100_000, help="number of tokens to cache (100000)")
    parser.add_argument("--out", type=Path, help="cache folder (default: caches/<model>)")
    parser.add_argument(
        "--storage-dtype", choices=sorted(STORAGE_DTYPES), default="bfloat16", help="dtype on disk (bfloat16)"
    )
    parser.add_argument("--batch-windows", type=int, default=4, help="windows per model forward (4)")
    parser.add_argument("--windows-per-shard", type=int, default=16, help="windows per shard file (16)")
    add_corpus_arguments(parser, training=True)
    add_config_argument(parser)
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1; got {args.tokens}")
    loaded = load_from_args(args)
    sites = select_sites(args.sites, loaded.info.n_layers)
    out: Path = args.out or Path("caches") / Path(args.model).name
    report = build_cache(
        out,
        loaded,
        sites,
        corpus_from_args(args),
        tokens=args.tokens,
        dtype=args.storage_dtype,
        batch_windows=args.batch_windows,
        windows_per_shard=args.windows_per_shard,
        online=online_from_args(args),
    )
    cache = report.cache
    total_bytes = sum(path.stat().st_size for path in out.rglob("*.bin"))
    print(f"\nCache   {out}")
    print(f"Tokens  {cache.n_tokens} in {len(cache.shards)} shards x {len(cache.sites)} sites ({cache.dtype})")
    if report.tokens_written:
        print(
            f"Speed   {report.tokens_written} tokens in {report.seconds:.0f} s ({report.tokens_per_second:.0f} tok/s)"
        )
    print(f"Size    {total_bytes / 1e9:.2f} GB on disk ({total_bytes / max(cache.n_tokens, 1) / 1e3:.1f} kB per token)")
    scales = cache.norm_scales
    by_kind: dict[str, list[float]] = {}
    for site, scale in scales.items():
        by_kind.setdefault(site.kind.value, []).append(scale)
    summary = ", ".join(f"{kind} {min(v):.3g}-{max(v):.3g}" for kind, v in sorted(by_kind.items()))
    print(f"Scale C (sqrt E|x|^2, per site): {summary}")
    return 0

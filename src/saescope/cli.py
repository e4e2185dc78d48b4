"""The `saescope` command line. Each subcommand is a small function that parses flags and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import torch

import saescope
from saescope.atomic import CorruptFileError
from saescope.models.loading import DEFAULT_MODEL, ModelLoadError, load_model
from saescope.models.sites import (
    Site,
    SiteKind,
    UnsupportedArchitectureError,
    all_sites,
    hf_hook_name,
    site_widths,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"embedded model name, local folder or Hugging Face id (default: {DEFAULT_MODEL}, "
        "the Gemma 3 270M base model installed with saescope)",
    )
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="weight dtype (default float32)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument(
        "--online",
        action="store_true",
        help="allow downloading from the Hugging Face Hub (off by default; also SAESCOPE_ONLINE=1)",
    )


def _cmd_info(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, dtype=_DTYPES[args.dtype], device=args.device, online=True if args.online else None)
    info = loaded.info
    model = loaded.model
    sites = all_sites(info.n_layers)
    widths = site_widths(model, sites)
    if args.json:
        payload = {
            "model": info.to_dict(),
            "sites": [
                {"id": s.id, "width": widths[s], "tl_hook": s.tl_hook_name, "hf_hook": hf_hook_name(model, s)}
                for s in sites
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    special_ids = f"bos {info.bos_token_id}, eos {info.eos_token_id}, pad {info.pad_token_id}"
    rows = [
        ("Model", f"{info.name}  [{info.source}, loaded in {info.load_seconds:.1f} s]"),
        ("Class", f"{info.architecture}  (site table {info.family}, model_type {info.model_type})"),
        ("Layers", str(info.n_layers)),
        ("d_model", str(info.d_model)),
        ("Attention", f"{info.n_heads} heads x {info.head_dim} = {info.d_attn} (the att site width)"),
        ("MLP hidden", str(info.d_mlp)),
        ("Vocabulary", f"{info.vocab_size}  ({special_ids})"),
        ("Weights", f"{info.dtype} on {info.device}"),
    ]
    for label, value in rows:
        print(f"{label:<11} {value}")
    print()
    last = info.n_layers - 1
    if args.all_sites:
        print(f"{'site':<18} {'width':>6}  {'TransformerLens hook':<34} HF hook (Gemma Scope 2 config)")
        for site in sites:
            print(f"{site.id:<18} {widths[site]:>6}  {site.tl_hook_name:<34} {hf_hook_name(model, site)}")
        return 0
    print(f"Sites: {len(sites)} ({info.n_layers} layers x {len(SiteKind)} kinds; Gemma Scope trains on res, att, mlp)")
    print(f"{'kind':<10} {'width':>6}  {'layers':<8} {'TransformerLens hook':<34} HF hook (Gemma Scope 2 config)")
    for kind in SiteKind:
        example = Site(0, kind)
        tl_pattern = example.tl_hook_name.replace("blocks.0.", "blocks.{L}.")
        hf_pattern = hf_hook_name(model, example).replace(".0.", ".{L}.", 1)
        print(f"{kind.value:<10} {widths[example]:>6}  {f'0-{last}':<8} {tl_pattern:<34} {hf_pattern}")
    print("\nSite ids are written layer_<L>/<kind>, e.g. layer_6/res; `saescope info --all-sites` lists every one.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saescope",
        description=(
            "Train Gemma Scope-style JumpReLU sparse autoencoders on every layer and sub-layer of a "
            "language model, evaluate them, release them in the Gemma Scope formats and browse their features."
        ),
        epilog="Run `saescope <command> --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"saescope {saescope.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    info = commands.add_parser(
        "info",
        help="load a model and print its facts and the table of sites with their widths",
        description="Load a model (converting the embedded Gemma 3 270M on first use) and print its "
        "architecture, dimensions and every Gemma Scope site with its width and hook names.",
    )
    _add_model_arguments(info)
    info.add_argument("--all-sites", action="store_true", help="list every site of every layer")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="saescope: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.handler(args)
    except (ModelLoadError, UnsupportedArchitectureError, CorruptFileError, ValueError) as error:
        print(f"saescope: error: {error}", file=sys.stderr)
        return 2
    return result

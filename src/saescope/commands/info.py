"""`saescope info`: a model's facts and its table of sites."""

from __future__ import annotations

import argparse
import json
from typing import Any

from saescope.commands.common import add_model_arguments, load_from_args
from saescope.models.sites import Site, SiteKind, all_sites, hf_hook_name, site_widths


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "info",
        help="load a model and print its facts and the table of sites with their widths",
        description="Load a model (converting the embedded Gemma 3 270M on first use) and print its "
        "architecture, dimensions and every Gemma Scope site with its width and hook names.",
    )
    add_model_arguments(parser, positional=True)
    parser.add_argument("--all-sites", action="store_true", help="list every site of every layer")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    info, model = loaded.info, loaded.model
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
        layers = f"0-{info.n_layers - 1}"
        print(f"{kind.value:<10} {widths[example]:>6}  {layers:<8} {tl_pattern:<34} {hf_pattern}")
    print("\nSite ids are written layer_<L>/<kind>, e.g. layer_6/res; `saescope info --all-sites` lists every one.")
    return 0

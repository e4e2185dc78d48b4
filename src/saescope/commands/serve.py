"""`saescope serve`: the feature explorer in a browser, with live search by text and steering."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

from saescope.commands.common import DTYPES, add_model_arguments, online_from_args
from saescope.explore import INDEX_FILE, IndexReader
from saescope.models.loading import LoadedModel, load_model
from saescope.train.devices import check_device


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="browse the features of a run in a web page (search by text, steering)",
        description="Serve the feature index of RUN (RUN/index.sqlite, made by `saescope run` or `saescope index`, "
        "or an index file) at http://HOST:PORT/: the suite overview, one page per dictionary and per latent, search "
        "by text and steering, which load the model on first use. The JSON API's schema is at /openapi.json. The "
        "server binds to 127.0.0.1 (this machine only) unless --host says otherwise; it has no authentication.",
    )
    parser.add_argument("path", type=Path, metavar="RUN", help="run folder holding index.sqlite, or an index file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_model_arguments(parser)
    parser.set_defaults(model=None)  # default: the model recorded in the index
    parser.add_argument("--no-live", action="store_true", help="serve the index only: no model, no search or steering")
    parser.set_defaults(handler=run, subparser=parser)


def _locations(path: Path) -> tuple[Path, Path | None]:
    """(the index file, the folder its dictionaries are read from for live search)."""
    if path.is_dir():
        return path / INDEX_FILE, path
    return path, None


def run(args: argparse.Namespace) -> int:
    from saescope.explore.live import LiveModel
    from saescope.explore.server import create_app

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1-65535; got {args.port}")
    check_device(args.device)  # the live model loads on first use: a bad device is refused now, not then
    index, dictionaries = _locations(args.path)
    reader = IndexReader(index)
    if dictionaries is None:
        recorded = reader.meta.get("source", {}).get("path")
        dictionaries = Path(recorded) if recorded else index.parent
    live = None
    if not args.no_live:
        model_name = args.model or str(reader.meta["model"])

        def load(name: str) -> LoadedModel:
            return load_model(name, dtype=DTYPES[args.dtype], device=args.device, online=online_from_args(args))

        live = LiveModel(model_name, dictionaries, load=load)
    app = create_app(reader, live=live)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this address can use the explorer")
    print(f"saescope explorer for {index}: http://{args.host}:{args.port}/  (Ctrl+C stops it)")
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

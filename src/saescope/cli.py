"""The `saescope` command line: one parser per subcommand (see `saescope.commands`), shared error handling."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import saescope
from saescope.atomic import CorruptFileError
from saescope.commands import autointerp, cache, compare, evaluate, export, index, info, rollouts, run, serve, train
from saescope.commands.common import read_option_file
from saescope.data.documents import CorpusError
from saescope.explore.store import FeatureIndexError
from saescope.models.loading import ModelLoadError
from saescope.models.sites import UnsupportedArchitectureError
from saescope.train import TrainingDivergedError

_COMMANDS = (run, info, cache, train, evaluate, export, rollouts, compare, index, serve, autointerp)
#: Errors whose message already says what went wrong and what to do: printed without a traceback.
_USER_ERRORS = (
    ModelLoadError,
    UnsupportedArchitectureError,
    CorruptFileError,
    CorpusError,
    FeatureIndexError,
    TrainingDivergedError,
    FileNotFoundError,
    ValueError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saescope",
        description=(
            "Train Gemma Scope-style JumpReLU sparse autoencoders on every layer and sub-layer of a language "
            "model, evaluate them, release them in the Gemma Scope formats and browse their features."
        ),
        epilog="Run `saescope <command> --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"saescope {saescope.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.register(commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, using a subcommand's `--config FILE.toml` as defaults that explicit flags override."""
    args = parser.parse_args(argv)
    config_path = getattr(args, "config", None)
    if config_path is not None:
        subparser = args.subparser
        subparser.set_defaults(**read_option_file(config_path, subparser))
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except ValueError as error:
        print(f"saescope: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="saescope: %(message)s", stream=sys.stderr
    )
    try:
        result: int = args.handler(args)
    except _USER_ERRORS as error:
        print(f"saescope: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saescope: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return result

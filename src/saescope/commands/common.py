"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS, CorpusConfig
from saescope.models.loading import DEFAULT_MODEL, LoadedModel, load_model
from saescope.tomlfile import parse_toml
from saescope.train.devices import check_device
from saescope.train.recipes import (
    DEFAULT_RECIPE,
    GEMMA_SCOPE,
    RECIPE_KEYS,
    RECIPES,
    Recipe,
    check_recipe_keys,
    describe_settings,
    parse_set_options,
    short_budget_warning,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_model_arguments(parser: argparse.ArgumentParser, *, positional: bool = False) -> None:
    help_text = (
        f"embedded model name, local folder or Hugging Face id (default: {DEFAULT_MODEL}, "
        "the Gemma 3 270M base model installed with saescope)"
    )
    if positional:
        parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=help_text)
    else:
        parser.add_argument("--model", default=DEFAULT_MODEL, help=help_text)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model weight dtype (float32)")
    parser.add_argument("--device", default="cpu", help="torch device for the model, e.g. cpu, cuda (default cpu)")
    parser.add_argument(
        "--online",
        action="store_true",
        help="allow downloads from the Hugging Face Hub (off by default; also SAESCOPE_ONLINE=1)",
    )


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model of `--model`/`--dtype`/`--device`/`--online`; a device torch cannot use is refused first."""
    check_device(args.device)
    return load_model(args.model, dtype=DTYPES[args.dtype], device=args.device, online=online_from_args(args))


def online_from_args(args: argparse.Namespace) -> bool | None:
    return True if args.online else None


def add_corpus_arguments(parser: argparse.ArgumentParser, *, training: bool = False) -> None:
    """The corpus options; `training` adds the shuffle of training windows (commands that read the train split)."""
    group = parser.add_argument_group("corpus")
    group.add_argument(
        "--corpus",
        default="embedded",
        help="text source: 'embedded' (the corpus installed with saescope), a .txt/.jsonl/.parquet file, "
        "a folder of .txt files, or hf:<dataset>[:<config>] (default: embedded)",
    )
    group.add_argument("--text-field", default="text", help="field/column holding the text (.jsonl, .parquet, hf:)")
    group.add_argument("--context-size", type=int, default=1024, help="tokens per window, BOS included (1024)")
    group.add_argument("--corpus-seed", type=int, default=0, help="seed of the document order (0)")
    group.add_argument(
        "--chat",
        action="store_true",
        help="instruction-tuned models: wrap each document in the chat template as a user turn followed by the "
        "model-turn prefix, and drop the user-turn prefix positions from activations and metrics (method §3.5); "
        "with --text-field messages a .jsonl/.parquet source holds whole conversations (e.g. saescope rollouts)",
    )
    group.add_argument(
        "--chat-template", default=None, metavar="TEMPLATE", help=CHAT_TEMPLATE_HELP + "; implies --chat"
    )
    if training:
        group.add_argument(
            "--window-shuffle-tokens", type=int, default=DEFAULT_WINDOW_SHUFFLE_TOKENS, metavar="TOKENS",
            help="training windows are drawn from a seeded shuffle buffer of this many tokens, so that a batch mixes "
            f"many documents ({DEFAULT_WINDOW_SHUFFLE_TOKENS}; 0 keeps the packed order, as caches made before "
            "this option did)",
        )  # fmt: skip


#: What --chat-template accepts (saescope.data.chat.resolve_chat_template).
CHAT_TEMPLATE_HELP = (
    "chat template: 'tokenizer' (the model's own, the default; an instruction-tuned model has one), 'gemma' "
    "(Gemma's turn format, for a base model whose tokenizer has none, e.g. the embedded gemma-3-270m) or a Jinja "
    "template file"
)


def corpus_from_args(args: argparse.Namespace) -> CorpusConfig:
    chat_template = args.chat_template or ("tokenizer" if args.chat else None)
    return CorpusConfig(
        source=args.corpus,
        text_field=args.text_field,
        context_size=args.context_size,
        seed=args.corpus_seed,
        chat_template=chat_template,
        window_shuffle_tokens=getattr(args, "window_shuffle_tokens", DEFAULT_WINDOW_SHUFFLE_TOKENS),
    )


#: The papers' sparsity warm-up in steps, which `--recipe`'s help names.
_GS_WARMUP = GEMMA_SCOPE.lambda_warmup_steps

#: What `--set help` asks for: the list of recipe keys instead of a run.
SET_HELP = "help"


def add_recipe_arguments(parser: argparse.ArgumentParser, *, recipe_default: str | None) -> None:
    """`--recipe NAME` and repeatable `--set key=value`: how the dictionaries train, as data."""
    group = parser.add_argument_group("recipe (how the dictionaries train; `--set help` lists every key)")
    default_text = recipe_default or f"the preset's, {DEFAULT_RECIPE} unless it names another"
    group.add_argument(
        "--recipe", default=recipe_default, choices=sorted(RECIPES),
        help=f"training recipe: {DEFAULT_RECIPE} for budgets under {_GS_WARMUP:,} steps (what a CPU or a small GPU "
        f"gives; tuned at 128 steps), gemma-scope (the papers') for runs well beyond its {_GS_WARMUP:,}-step "
        f"sparsity warm-up, short of which its L0 stays far above the target (docs/recipes.md, 'Choosing a recipe by "
        f"budget'); default: {default_text}",
    )  # fmt: skip
    group.add_argument(
        "--set", dest="set", action="append", default=None, metavar="KEY=VALUE",
        help="change one recipe setting, e.g. --set lr=1e-3 --set threshold=log (repeatable; a TOML --config or "
        "preset takes the same keys); `--set help` lists the keys with their values and exits",
    )  # fmt: skip


def recipe_settings_from_args(args: argparse.Namespace) -> dict[str, str]:
    """The `--set key=value` settings, later ones winning (`--set help` is handled by `wants_recipe_help`)."""
    settings = parse_set_options([item for item in (args.set or []) if item != SET_HELP])
    check_recipe_keys(settings, origin="--set")
    return settings


def wants_recipe_help(args: argparse.Namespace) -> bool:
    return SET_HELP in (args.set or [])


def print_recipe_help(recipe: Recipe) -> None:
    print(describe_settings(recipe))


def warn_if_budget_too_short(recipe: Recipe, *, total_steps: int, batch_size: int) -> None:
    """Warn (on stderr; the run goes on) when the run is shorter than the recipe's sparsity warm-up."""
    warning = short_budget_warning(recipe, total_steps=total_steps, batch_size=batch_size)
    if warning is not None:
        print(warning, file=sys.stderr)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML file whose keys are this command's options (dashes or underscores); flags given on the "
        "command line override it",
    )


def read_option_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    data = parse_toml(path.read_text(encoding="utf-8"), where=f"config file {path}")
    known = {action.dest for action in parser._actions}
    # Lists in TOML (widths = [4096, 16384]) mean the same as the comma lists of the flags.
    values = {
        key.replace("-", "_"): ",".join(map(str, value)) if isinstance(value, list) else value
        for key, value in data.items()
    }
    if "set" in known:  # recipe keys at the top level are `--set key=value`; flags given later win
        recipe_keys = [key for key in values if key in RECIPE_KEYS]
        values["set"] = [f"{key}={_toml_text(values.pop(key))}" for key in recipe_keys] or None
    unknown = sorted(set(values) - known - {"config"})
    if unknown:
        hint = f"; recipe settings: {', '.join(RECIPE_KEYS)}" if "set" in known else ""
        raise ValueError(f"config file {path}: unknown option(s) {unknown}; see --help for the options{hint}")
    return values


def _toml_text(value: Any) -> str:
    """A TOML value as `--set` text (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

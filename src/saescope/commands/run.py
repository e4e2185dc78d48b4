"""`saescope run`: the main job -- a whole suite (activations, training, evaluation, release) in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from saescope.commands.common import (
    add_recipe_arguments,
    print_recipe_help,
    recipe_settings_from_args,
    wants_recipe_help,
    warn_if_budget_too_short,
)
from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS
from saescope.pipeline import STAGES, SuiteRun, check_run_memory, list_presets, load_preset
from saescope.train import distributed
from saescope.train.devices import check_device
from saescope.train.verdict import implausible_dictionaries, implausible_warning, read_final_metrics

_OVERRIDES = {
    "model": "model name, local folder or Hugging Face id",
    "corpus": "text source: embedded, a .txt/.jsonl/.parquet file, a folder, or hf:<dataset>",
    "kinds": "dictionary kinds: sae, transcoder, skip_transcoder, clt, skip_clt, crosscoder (comma list)",
    "sites": "sites of the SAEs, e.g. all, res, 0-5/res+mlp, layer_6/att (their layers are those of the other kinds)",
    "crosscoder_layers": "layers of the crosscoder kind, e.g. 5,9,12,15 (default: Gemma Scope 2's depths)",
    "multi_layer_widths": "total widths of the clt/skip_clt/crosscoder kinds (default: --widths)",
    "layers": "keep only these layers of --sites, e.g. 0-5",
    "widths": "dictionary widths, e.g. 4096 or 16k,65k",
    "architectures": "jumprelu, topk, batchtopk, relu (comma list)",
    "target_l0": "target L0: 50, 20,50 or res=40,att=60,mlp=60",
    "device": "torch device for the model and SAEs (cpu, cuda)",
    "dtype": "model dtype: float32, bfloat16, float16",
    "activations": "stream (no disk) or cache (written under the run, then read)",
}
_INT_OVERRIDES = {
    "tokens": "training tokens per dictionary",
    "batch_size": "tokens per training step",
    "context_size": "tokens per window, BOS included",
    "eval_tokens": "held-out tokens for reconstruction metrics",
    "eval_loss_windows": "held-out windows for delta LM loss",
    "index_tokens": "held-out tokens of the feature index (0 skips it)",
    "window_shuffle_tokens": "training windows are drawn from a shuffle buffer of this many tokens, so that a batch "
    f"mixes many documents (default {DEFAULT_WINDOW_SHUFFLE_TOKENS}; 0 keeps the corpus order)",
    "seed": "seed",
}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run a whole suite: activations, training, evaluation (report), release -- resumable",
        description="Train, evaluate and release a suite of SAEs for every requested site of a model, from one "
        "activation stream. A preset gives every setting (see --list-presets); flags override single settings "
        "and --set key=value single recipe settings (--set help lists them). "
        f"Stages: {', '.join(STAGES)}; a killed run continues with --resume RUN_DIR, skipping finished stages "
        "and resuming training from its last checkpoint.",
    )
    parser.add_argument("--preset", default="default", help="settings preset (default: default)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument("--name", help="run name: the output goes to runs/<name> (default: the preset's name)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent folder of runs (runs)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed run from its folder")
    overrides = parser.add_argument_group("overrides of preset settings")
    for name, help_text in _OVERRIDES.items():
        overrides.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=help_text)
    for name, help_text in _INT_OVERRIDES.items():
        overrides.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None, help=help_text)
    add_recipe_arguments(parser, recipe_default=None)
    parser.add_argument(
        "--skip-memory-check", action="store_true", help="start even if the memory estimate is above what is free"
    )
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        for name, description in list_presets().items():
            print(f"{name:<22} {description}")
        return 0
    main = distributed.is_main_process()  # under torchrun, only rank 0 prints
    log = print if main else _quiet
    if args.resume is not None:
        if args.set or args.recipe:
            raise ValueError("--resume continues a run with its recorded settings; --recipe and --set do not apply")
        suite = SuiteRun.resume(args.resume, log=log)
        check_device(suite.config.device)
    else:
        overrides = {name: getattr(args, name) for name in [*_OVERRIDES, *_INT_OVERRIDES, "recipe"]}
        config = load_preset(args.preset, {**overrides, **recipe_settings_from_args(args)})
        if wants_recipe_help(args):
            print_recipe_help(config.training_recipe())
            return 0
        if main:
            steps = config.train_config().total_steps
            warn_if_budget_too_short(config.training_recipe(), total_steps=steps, batch_size=config.batch_size)
        check_device(config.device)  # before the run folder is created
        if not args.skip_memory_check:  # before the run folder exists or the model loads
            check_run_memory(config)
        suite = SuiteRun.create(args.runs_dir / (args.name or args.preset), config, log=log)
    if main:
        print(f"Run folder: {suite.folder}  (preset {suite.config.preset})")
        print(f"If it stops, continue with: saescope run --resume {suite.folder}")
    with distributed.torchrun_session(suite.config.device):
        stages = suite.execute()
    if not main:
        return 0
    print("\nStage times: " + ", ".join(f"{stage} {info['seconds']:.0f} s" for stage, info in stages.items()))
    print("\n" + suite.suite_table())
    implausible = implausible_dictionaries(read_final_metrics(suite.folder / "train"))
    if implausible:
        print(implausible_warning(implausible, suite.folder / "train" / "saes"), file=sys.stderr)
    print(f"Report:  {suite.folder / 'report' / 'report.html'}")
    print(f"Release: {suite.folder / 'release'}/")
    if (suite.folder / "index.sqlite").is_file():
        print(f"Explore: saescope serve {suite.folder}")
    return 0


def _quiet(_message: str) -> None:
    pass

"""`saescope index`: the feature index of a run or a release, and its static-site and Neuronpedia exports."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from saescope.commands.common import DTYPES, add_corpus_arguments, add_model_arguments, online_from_args
from saescope.data.corpus import CorpusConfig
from saescope.explore import DEFAULT_TOKENS, INDEX_FILE, ExampleSettings, IndexConfig, IndexReader, build_index
from saescope.explore.export import write_neuronpedia, write_static_site
from saescope.explore.index import recorded_model_name, stored_settings
from saescope.explore.sources import DictionarySet, read_dictionaries
from saescope.models.loading import DEFAULT_MODEL, load_model
from saescope.train.devices import check_device


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "index",
        help="build the feature index of a run or release (for `saescope serve`), or a static site",
        description="One streaming pass over held-out text with the model and every dictionary of RUN_OR_RELEASE "
        "(a run folder, a training folder, a dictionary folder, or a release in the Gemma Scope 1/2 or SAELens "
        "format) keeps, per latent: firing count and density, max and mean activation, the top activating "
        "contexts, uniform samples from explicit activation intervals, the activation histogram; then logit "
        "effects and decoder-cosine neighbours. Written to one SQLite file (default RUN_OR_RELEASE/index.sqlite); "
        "an index built with the same settings is reused (--force rebuilds it). The model and corpus default to "
        "the run's (run_config.json), else the model the release names and the embedded corpus.",
    )
    parser.add_argument("path", type=Path, metavar="RUN_OR_RELEASE", help="run, training, dictionary or release folder")
    parser.add_argument("--out", type=Path, help="index file to write (default: RUN_OR_RELEASE/index.sqlite)")
    add_model_arguments(parser)
    add_corpus_arguments(parser)
    # None = "the run's setting": resolved in `_corpus` and `_model_name`.
    parser.set_defaults(model=None, corpus=None, text_field=None, context_size=None, corpus_seed=None)
    group = parser.add_argument_group("index")
    group.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                       help=f"held-out tokens to index (default {DEFAULT_TOKENS}; millions on a GPU)")  # fmt: skip
    group.add_argument("--batch-windows", type=int, default=8, help="windows per model forward (8)")
    defaults = ExampleSettings()
    group.add_argument("--top-k", type=int, default=defaults.top_k, help=f"top examples per latent ({defaults.top_k})")
    group.add_argument("--intervals", type=int, default=defaults.intervals,
                       help=f"activation intervals per latent, a power of two ({defaults.intervals})")  # fmt: skip
    group.add_argument("--samples-per-interval", type=int, default=defaults.samples_per_interval,
                       help=f"uniform samples per interval ({defaults.samples_per_interval})")  # fmt: skip
    group.add_argument("--context-before", type=int, default=defaults.context_before,
                       help=f"tokens shown before an example's token ({defaults.context_before})")  # fmt: skip
    group.add_argument("--context-after", type=int, default=defaults.context_after,
                       help=f"tokens shown after it ({defaults.context_after})")  # fmt: skip
    group.add_argument("--logit-tokens", type=int, default=10, help="top and bottom logit tokens per latent (10)")
    group.add_argument("--neighbours", type=int, default=10, help="nearest latents by decoder cosine (10)")
    group.add_argument("--seed", type=int, default=0, help="seed of the interval sampling (0)")
    group.add_argument(
        "--force",
        action="store_true",
        help="rebuild even if an index with these settings exists (explanations and detection scores of "
        "dictionaries whose weights are unchanged are kept)",
    )
    exports = parser.add_argument_group("exports")
    exports.add_argument("--static", type=Path, metavar="OUT",
                         help="also write the explorer as a static site (open OUT/index.html from disk; no live "
                         "search or steering)")  # fmt: skip
    exports.add_argument("--neuronpedia", type=Path, metavar="OUT",
                         help="also write one Neuronpedia-style feature JSON per latent: "
                         "OUT/<dictionary>/<latent>.json")  # fmt: skip
    parser.set_defaults(handler=run, subparser=parser)


def _corpus(args: argparse.Namespace, found: DictionarySet) -> CorpusConfig:
    """The run's corpus (as its evaluation read it), else the embedded one; flags override single fields."""
    from saescope.pipeline import RunConfig

    base = RunConfig.from_record(found.run_config).corpus_config() if found.run_config else CorpusConfig()
    chat_template = getattr(args, "chat_template", None) or ("tokenizer" if getattr(args, "chat", False) else None)
    flags = {"source": args.corpus, "text_field": args.text_field, "context_size": args.context_size,
             "seed": args.corpus_seed, "chat_template": chat_template}  # fmt: skip
    return dataclasses.replace(base, **{key: value for key, value in flags.items() if value is not None})


def index_path(path: Path) -> Path:
    """Where the index of a run, training or release folder lives (next to a dictionary file's folder)."""
    return path / INDEX_FILE if path.is_dir() else path.parent / INDEX_FILE


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    found = read_dictionaries(args.path)
    corpus = _corpus(args, found)
    examples = ExampleSettings(
        top_k=args.top_k, intervals=args.intervals, samples_per_interval=args.samples_per_interval,
        context_before=args.context_before, context_after=args.context_after,
    )  # fmt: skip
    config = IndexConfig(
        tokens=args.tokens, batch_windows=args.batch_windows, examples=examples, logit_tokens=args.logit_tokens,
        neighbours=args.neighbours, seed=args.seed,
    )  # fmt: skip
    out = args.out or index_path(args.path)
    wanted = {
        "settings": config.settings(),
        "corpus": {**corpus.to_dict(), "split": "heldout"},
        "dictionaries": [d.name for d in found.dictionaries],
    }
    if not args.force and out.is_file() and stored_settings(out) == wanted:
        print(f"{out} is up to date (same dictionaries, corpus and settings); --force rebuilds it")
    else:
        model_name = recorded_model_name(args.model or found.model or DEFAULT_MODEL)
        started = time.perf_counter()
        loaded = load_model(model_name, dtype=DTYPES[args.dtype], device=args.device, online=online_from_args(args))
        load_seconds = time.perf_counter() - started
        summary = build_index(
            loaded, found.dictionaries, corpus, config, out, model_name=model_name,
            source={"kind": found.kind, "path": str(found.root.resolve())}, report_dir=found.report_dir,
        )  # fmt: skip
        seconds = summary.seconds
        print(
            f"Indexed {summary.dictionaries} dictionaries ({summary.latents} latents, {summary.dead} dead) on "
            f"{summary.n_tokens} held-out tokens in {seconds['total']:.0f} s (model load {load_seconds:.0f} s, "
            f"pass {seconds['pass']:.0f} s, logit effects and neighbours {seconds['weights']:.0f} s): "
            f"{out} ({summary.bytes / 1e6:.1f} MB)"
        )
        if summary.kept_explanations or summary.kept_detection_scores:
            print(
                f"Kept {summary.kept_explanations} explanations and {summary.kept_detection_scores} detection scores "
                "of the dictionaries whose weights are unchanged (from `saescope autointerp` on the index replaced)"
            )
    if args.static is not None:
        files = write_static_site(IndexReader(out), args.static)
        print(f"Static site: {args.static / 'index.html'} ({files} files)")
    if args.neuronpedia is not None:
        files = write_neuronpedia(IndexReader(out), args.neuronpedia)
        print(f"Neuronpedia feature JSON: {args.neuronpedia}/<dictionary>/<latent>.json ({files} files)")
    print(f"Browse: saescope serve {args.out or args.path}")
    return 0

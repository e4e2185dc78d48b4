"""`saescope autointerp`: explanations and detection scores of a sample of latents, cached in the feature index."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from saescope.explore.autointerp import (
    AutointerpSettings,
    EndpointError,
    LanguageModel,
    OpenAICompatibleLM,
    load_local_lm,
    run_autointerp,
    summary_table,
)
from saescope.explore.store import INDEX_FILE, IndexReader
from saescope.models.loading import DEFAULT_MODEL
from saescope.train.devices import check_device

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "autointerp",
        help="explain a sample of latents with an LLM and score the explanations (detection)",
        description="For a sample of each dictionary's latents (stratified by firing frequency), an explainer LLM "
        "writes an explanation from the latent's top-activating and randomly sampled contexts in the feature "
        "index, and a scorer LLM answers, for held-out activating contexts and as many non-activating ones, "
        "whether the latent fires there; the detection score is its accuracy (0.5 = chance). Prints the mean "
        "and the frequency-weighted mean per dictionary. Results are cached in the index (a rerun skips latents "
        "already scored with the same explainer and scorer) and shown by `saescope serve`. Real explanations "
        "need a capable instruction-tuned model (a local one with --explainer, or an OpenAI-compatible endpoint "
        f"with --explainer-url); the default, the embedded {DEFAULT_MODEL} base model, only runs the pipeline "
        "offline and scores near chance.",
    )
    parser.add_argument("index", type=Path, metavar="INDEX", help="index file, or a run folder holding index.sqlite")
    explainer = parser.add_mutually_exclusive_group()
    explainer.add_argument(
        "--explainer",
        metavar="MODEL",
        default=None,
        help=f"local Hugging Face causal LM: name, folder or Hub id (default {DEFAULT_MODEL})",
    )
    explainer.add_argument(
        "--explainer-url",
        metavar="URL",
        default=None,
        help="OpenAI-compatible endpoint (…/v1) to explain with instead of a local model",
    )
    parser.add_argument(
        "--explainer-api-model",
        metavar="NAME",
        default=None,
        help="the model an endpoint serves, sent with every request to --explainer-url / --scorer-url (required "
        "with them)",
    )
    parser.add_argument(
        "--explainer-key-env",
        metavar="VAR",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable holding the endpoint's API key ({DEFAULT_KEY_ENV}; unset: no key)",
    )
    scorer = parser.add_mutually_exclusive_group()
    scorer.add_argument("--scorer", metavar="MODEL", default=None, help="local scorer LLM (default: the explainer)")
    scorer.add_argument("--scorer-url", metavar="URL", default=None, help="OpenAI-compatible scorer endpoint")
    parser.add_argument("--latents", type=int, default=20, metavar="N", help="latents per dictionary (20)")
    parser.add_argument(
        "--saes",
        default="",
        metavar="NAMES",
        help="comma-separated dictionary names (default: every dictionary of the index)",
    )
    defaults = AutointerpSettings()
    parser.add_argument(
        "--score-contexts",
        type=int,
        default=defaults.n_score,
        metavar="N",
        help=f"activating contexts scored per latent, and as many non-activating ({defaults.n_score})",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed of the sampling ({defaults.seed})")
    parser.add_argument("--device", default="cpu", help="torch device of local LLMs (cpu)")
    parser.add_argument("--online", action="store_true", help="allow Hugging Face Hub downloads of local LLMs")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the summary as JSON")
    parser.set_defaults(handler=run, subparser=parser)


def _index_file(path: Path) -> Path:
    return path / INDEX_FILE if path.is_dir() else path


def _language_model(args: argparse.Namespace, model: str | None, url: str | None,
                    loaded: dict[str, LanguageModel]) -> LanguageModel:  # fmt: skip
    """The LLM named by a model or URL flag; the same local model is loaded once for both roles."""
    if url is not None:
        return OpenAICompatibleLM(url, args.explainer_api_model, os.environ.get(args.explainer_key_env) or None)
    name = model or DEFAULT_MODEL
    if name not in loaded:
        loaded[name] = load_local_lm(name, device=args.device, online=True if args.online else None)
    return loaded[name]


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    index = _index_file(args.index)
    IndexReader(index)  # an unusable index is refused before any model loads
    if (args.explainer_url or args.scorer_url) and not args.explainer_api_model:
        raise ValueError(
            "--explainer-url and --scorer-url need --explainer-api-model NAME: the model the endpoint serves"
        )
    settings = AutointerpSettings(n_score=args.score_contexts, seed=args.seed)
    loaded: dict[str, LanguageModel] = {}
    explainer = _language_model(args, args.explainer, args.explainer_url, loaded)
    if args.scorer is None and args.scorer_url is None:
        scorer = explainer
    else:
        scorer = _language_model(args, args.scorer, args.scorer_url, loaded)
    names = [name.strip() for name in args.saes.split(",") if name.strip()]
    try:
        results = run_autointerp(index, explainer, scorer, args.latents, saes=names, settings=settings)
    except EndpointError as error:  # what was scored so far is cached: a rerun resumes
        print(f"saescope: error: {error}; rerun to resume", file=sys.stderr)
        return 2
    print(f"Detection scores (explainer {explainer.name}, scorer {scorer.name}; 0.5 = chance):")
    print(summary_table(results))
    if args.json is not None:
        from saescope.atomic import atomic_write_json

        atomic_write_json(args.json, {"explainer": explainer.name, "scorer": scorer.name,
                                      "dictionaries": [r.to_dict() for r in results]})  # fmt: skip
    print(f"Browse: saescope serve {args.index}")
    return 0

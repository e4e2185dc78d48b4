"""`saescope train`: train sparse dictionaries for many sites at once from a cache, a file or a live model."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saescope.commands.common import (
    add_config_argument,
    add_corpus_arguments,
    add_model_arguments,
    add_recipe_arguments,
    corpus_from_args,
    load_from_args,
    online_from_args,
    print_recipe_help,
    recipe_settings_from_args,
    wants_recipe_help,
    warn_if_budget_too_short,
)
from saescope.data.activations import ActivationSource
from saescope.data.arrays import load_activation_file
from saescope.data.cache import ActivationCache
from saescope.data.sources import streamed_source
from saescope.dictionaries.folder import read_suite
from saescope.models.sites import Site, select_sites
from saescope.release import load_sae
from saescope.sae import ARCHITECTURES, SparseDictionary, single_layer
from saescope.train import SAESpec, distributed
from saescope.train.devices import check_device
from saescope.train.init_from import transcoder_parent_error
from saescope.train.memory import check_train_memory
from saescope.train.recipes import DEFAULT_RECIPE, Recipe, with_settings
from saescope.train.specs import dictionary_specs, parse_target_l0, parse_width
from saescope.train.verdict import (
    IMPLAUSIBLE_EXIT_CODE,
    FinalMetrics,
    implausible_dictionaries,
    implausible_warning,
)


def _csv(value: str) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train JumpReLU (or TopK/BatchTopK/ReLU) SAEs for many sites at once from one activation stream",
        description="Train one dictionary per (site, width, architecture, sparsity) combination, all from the "
        "same batches. Activations come from a cache (--cache), a .npy/.safetensors file (--activations), or a "
        "live model run over the corpus (default). Rerunning the same command resumes from the checkpoint.",
        epilog="Exit status: 0 trained; 2 bad input or settings (nothing trained); 3 trained and weights kept, but "
        "some dictionaries ended with implausible metrics (FVU > 1, or L0 outside 0.5-2x its target), listed in a "
        "warning.",
    )
    source = parser.add_argument_group("activation source (pick one; default: run --model live on --corpus)")
    source.add_argument("--cache", type=Path, help="an activation cache folder made by `saescope cache`")
    source.add_argument("--activations", type=Path, help="a .npy (tokens x d) or .safetensors activation file")
    add_model_arguments(parser)
    add_corpus_arguments(parser, training=True)
    parser.add_argument(
        "--sites", default=None,
        help="sites to train on (default: every site of the source); required for a .npy file (or a lone safetensors "
        "tensor not named by a site id): the one site it was read at, e.g. layer_6/res",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder (runs/train)")
    sae = parser.add_argument_group("dictionaries (comma lists make one dictionary per combination)")
    sae.add_argument("--widths", default="4096", help="latents per dictionary, e.g. 4096 or 16k,65k (4096)")
    sae.add_argument("--architectures", default="jumprelu", help=f"from {', '.join(ARCHITECTURES)} (jumprelu)")
    sae.add_argument(
        "--target-l0",
        default=None,
        help="target L0 per token, e.g. 50, 20,50,150 or per site kind res=40,att=60,mlp=60: the recipe steers "
        "L0 to it (for topk/batchtopk it is k)",
    )
    opt = parser.add_argument_group("budget")
    opt.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per dictionary (1000000)")
    opt.add_argument("--batch-size", type=int, default=4096, help="tokens per step (4096)")
    opt.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed (0)")
    opt.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (500)")
    add_recipe_arguments(parser, recipe_default=DEFAULT_RECIPE)
    parser.add_argument(
        "--init-from",
        action="append",
        metavar="PARENT",
        help="continue training an existing SAE instead of starting afresh (PT→IT finetuning, method §7.6): a saescope "
        "dictionary folder or run folder (every dictionary in it), a Gemma Scope 1/2 or SAELens folder, or a Hub "
        "id with --online; repeat for several. Width and architecture come from the parent; the recipe applies "
        "(λ warm-up 0 unless set); --sites defaults to the parents' sites. "
        "The parent is recorded in config.json and in the model card",
    )
    parser.add_argument(
        "--skip-memory-check", action="store_true", help="start even if the memory estimate is above what is free"
    )
    add_config_argument(parser)
    parser.set_defaults(handler=run, subparser=parser)


@dataclasses.dataclass(frozen=True)
class Parent:
    """A trained dictionary to continue (``--init-from``)."""

    path: str  # the local folder it was read from (a Hub id's downloaded copy), absolute
    name: str
    site: Site
    sae: SparseDictionary


def load_parents(args: argparse.Namespace) -> list[Parent]:
    """The ``--init-from`` dictionaries, read once here to learn their sites, widths and architectures."""
    online = True if args.online else None
    parents = []
    # One string when it comes from a --config TOML list (read as a comma list).
    for text in args.init_from if isinstance(args.init_from, list) else _csv(args.init_from):
        path = Path(text)
        run = path / "train" if (path / "train" / "saes").is_dir() else path
        if (run / "saes").is_dir():  # a training run: continue every dictionary in it
            entries = read_suite(run)
            for entry in entries:
                if entry.is_transcoder:
                    raise transcoder_parent_error(str(entry.folder))
            parents += [Parent(str(e.folder.resolve()), e.name, e.site, single_layer(e.raw_space(), "--init-from"))
                        for e in entries]  # fmt: skip
            continue
        loaded = load_sae(text, online=online)
        if loaded.is_transcoder:
            raise transcoder_parent_error(text)
        site = loaded.site or (Site.parse(args.sites) if args.sites else None)
        if site is None:
            raise ValueError(f"{text}: its files do not say which site it reads; pass it as --sites layer_<L>/<kind>")
        folder = Path(str(loaded.metadata["path"])).resolve()
        parents.append(Parent(str(folder), folder.name, site, single_layer(loaded.sae, "--init-from")))
    counts: dict[str, int] = {}
    for parent in parents:
        counts[parent.name] = counts.get(parent.name, 0) + 1
    # Released folders are often named only by L0 (average_l0_71): name those by their site as well.
    return [
        dataclasses.replace(p, name=f"layer_{p.site.layer}-{p.site.kind.value}-{p.name}") if counts[p.name] > 1 else p
        for p in parents
    ]


def parent_specs(
    parents: Sequence[Parent], source: ActivationSource, recipe: Recipe, target_l0: str | None
) -> list[SAESpec]:
    """One spec per parent: the recipe's settings with the parent's architecture and width, started from the
    parent's weights (so the data-driven initialisations are off, and λ is not warmed up from 0 unless the recipe's
    settings ask)."""
    specs = []
    for parent in parents:
        config = parent.sae.config
        target = target_l0 if target_l0 is not None or config.k is None else str(config.k)
        candidates = dictionary_specs(
            [parent.site], source.widths, [config.width], [config.architecture], parse_target_l0(target), recipe
        )
        if len(candidates) != 1:
            raise ValueError(f"{parent.path}: give one target L0 for it (--target-l0), not {len(candidates)}")
        specs.append(dataclasses.replace(
            candidates[0], name=parent.name, init_from=parent.path, threshold_init_from_data=False,
            decoder_bias_init="zeros",
        ))  # fmt: skip
    if len({spec.name for spec in specs}) != len(specs):
        raise ValueError(f"--init-from names the same dictionary twice: {sorted(spec.name for spec in specs)}")
    return specs


def open_source(args: argparse.Namespace, default_sites: Sequence[Site] | None = None) -> ActivationSource:
    if args.cache is not None and args.activations is not None:
        raise ValueError("give either --cache or --activations, not both")
    if args.cache is not None:
        return ActivationCache(args.cache)
    if args.activations is not None:  # a lone array's site: --sites, else that of the --init-from parents
        parent_sites = sorted({site.id for site in default_sites or []})
        return load_activation_file(
            args.activations, args.sites or (parent_sites[0] if len(parent_sites) == 1 else None)
        )
    loaded = load_from_args(args)
    if default_sites and not args.sites:  # --init-from: only the parents' sites
        sites = sorted(set(default_sites))
    else:
        sites = select_sites(args.sites or "all", loaded.info.n_layers)
    return streamed_source(  # under torchrun, the forwards split over the ranks
        loaded, sites, corpus_from_args(args), online=online_from_args(args), forwards=distributed.current_forwards()
    )


def selected_sites(source: ActivationSource, sites_text: str | None, *, from_file: bool) -> list[Site]:
    """The source's sites, kept to `sites_text` for a cache or file (a live model streams only those)."""
    sites = source.sites
    if sites_text and from_file:
        n_layers = max(site.layer for site in sites) + 1
        wanted = set(select_sites(sites_text, n_layers))
        sites = [site for site in sites if site in wanted]
    return sites


def run(args: argparse.Namespace) -> int:
    with distributed.torchrun_session(args.device):  # under torchrun, the dictionaries are shared out over ranks
        return _train(args)


def training_recipe(args: argparse.Namespace) -> Recipe:
    """`--recipe` with its `--set` settings (a TOML --config's recipe keys among them)."""
    return with_settings(args.recipe, recipe_settings_from_args(args), origin="--set")


def _train(args: argparse.Namespace) -> int:
    check_device(args.device)
    main = distributed.is_main_process()
    recipe = training_recipe(args)
    if wants_recipe_help(args):
        print_recipe_help(recipe)
        return 0
    config = recipe.train_config(
        total_tokens=args.tokens, batch_size=args.batch_size, seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every, device=args.device,
    )  # fmt: skip
    parents = load_parents(args) if args.init_from else []
    source = open_source(args, [parent.site for parent in parents])
    if parents:
        settings = recipe_settings_from_args(args)
        parent_recipe = recipe if "lambda_warmup_steps" in settings else recipe.replace(lambda_warmup_steps=0)
        specs = parent_specs(parents, source, parent_recipe, args.target_l0)
        recipe = parent_recipe
    else:
        sites = selected_sites(source, args.sites, from_file=args.cache is not None or args.activations is not None)
        widths = [parse_width(w) for w in _csv(args.widths)]
        targets = parse_target_l0(args.target_l0)
        specs = dictionary_specs(sites, source.widths, widths, _csv(args.architectures), targets, recipe)
    if not specs:
        raise ValueError("no dictionary to train: check --sites against the source's sites")
    if main:
        print(
            f"Training {len(specs)} dictionaries for {config.total_steps} steps of {config.batch_size} tokens "
            f"-> {args.out}"
        )
        for spec in specs:
            if spec.init_from is not None:
                print(f"  {spec.name} starts from {spec.init_from}")
        warn_if_budget_too_short(recipe, total_steps=config.total_steps, batch_size=config.batch_size)
    if not args.skip_memory_check:  # before the output folder exists
        check_train_memory(specs, source.widths, config, stream_buffer_tokens=getattr(source, "buffer_tokens", 0))
    loaded_parents = {parent.path: parent.sae for parent in parents}
    trained = distributed.train_suite(specs, source, config, args.out, parents=loaded_parents)
    results = distributed.gather_final_metrics(trained, specs)
    target_by_name = {spec.name: spec.target_l0 for spec in specs}
    # Every rank holds every dictionary's metrics, so every rank exits with the same status (torchrun reports
    # the first non-zero one); only rank 0 prints.
    implausible = implausible_dictionaries(FinalMetrics.from_metrics(n, m, target_by_name[n]) for n, m in results)
    exit_code = IMPLAUSIBLE_EXIT_CODE if implausible else 0
    if not main:
        return exit_code
    print(f"\n{'dictionary':<44} {'L0':>7} {'FVU':>7} {'dead':>6}  (last training batch)")
    for name, m in results:
        print(f"{name:<44} {m['l0']:>7.1f} {m['fvu']:>7.3f} {m['dead_fraction']:>6.1%}")
    print(f"\nWeights and configs: {args.out / 'saes'}/<dictionary>/; metrics log: {args.out / 'metrics.jsonl'}")
    if implausible:
        print(implausible_warning(implausible, args.out / "saes"), file=sys.stderr)
    return exit_code

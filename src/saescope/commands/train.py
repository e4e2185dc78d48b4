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
    corpus_from_args,
    load_from_args,
    online_from_args,
)
from saescope.data.activations import ActivationSource
from saescope.data.arrays import load_activation_file
from saescope.data.cache import ActivationCache
from saescope.data.sources import streamed_source
from saescope.models.sites import Site, select_sites
from saescope.release import load_sae
from saescope.release.suite import read_suite
from saescope.sae import ARCHITECTURES, SparseDictionary, single_layer
from saescope.train import SAESpec, TrainConfig, distributed
from saescope.train.devices import check_device
from saescope.train.specs import SuiteOptions, dictionary_specs, parse_target_l0, parse_width
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
        help="target L0 per token, e.g. 50, 20,50,150 or per site kind res=40,att=60,mlp=60: λ is steered to "
        "reach it and JumpReLU thresholds start at the matching quantile (for topk/batchtopk it is k)",
    )
    sae.add_argument("--l0-coefficient", type=float, default=6e-4, help="λ of the L0 penalty (6e-4, SPEC §1.3)")
    sae.add_argument("--l1-coefficient", type=float, default=1.0, help="λ of the ReLU baseline's L1 penalty")
    sae.add_argument(
        "--threshold",
        choices=("raw", "log"),
        default="raw",
        help="JumpReLU threshold parameter: raw θ (default; moves in short runs) or log θ (the paper, "
        "needs ~10^5+ steps at lr 7e-5, SPEC §8.6)",
    )
    sae.add_argument("--lambda-warmup-steps", type=int, default=None, help="λ warm-up (10000; 0 with --target-l0)")
    sae.add_argument("--decoder-bias-init", choices=("zeros", "mean"), default="zeros", help="b_dec init (zeros)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per dictionary (1000000)")
    opt.add_argument("--batch-size", type=int, default=4096, help="tokens per step (4096)")
    opt.add_argument("--lr", type=float, default=7e-5, help="Adam learning rate (7e-5, SPEC §2.1)")
    opt.add_argument("--lr-warmup-steps", type=int, default=1000, help="cosine lr warm-up steps (1000)")
    opt.add_argument("--lr-decay-fraction", type=float, default=0.0, help="linear decay over the last fraction (0)")
    opt.add_argument("--adam-beta1", type=float, default=0.0, help="Adam β1 (0, the papers'; `saescope run` uses 0.9)")
    rec = parser.add_argument_group("short-budget recipe elements (off here; on in `saescope run`'s default recipe)")
    rec.add_argument(
        "--code-scale-init", action="store_true", help="scale the initial codes by their least-squares factor"
    )
    rec.add_argument(
        "--threshold-controller-gain", type=float, default=0.0,
        help="multiply JumpReLU θ by (batch L0 / target) ** GAIN after every step (0 = off; needs --target-l0)",
    )  # fmt: skip
    rec.add_argument(
        "--revive-dead-after-tokens", type=int, default=0,
        help="a JumpReLU latent silent for this many tokens gets θ back at a batch quantile (0 = never)",
    )  # fmt: skip
    rec.add_argument(
        "--revive-rate-fraction", type=float, default=1.0,
        help="a revived latent starts firing on this fraction of the target rate (1; `saescope run` uses 0.1)",
    )  # fmt: skip
    rec.add_argument(
        "--dimension-gain-power", type=float, default=0.0,
        help="divide each activation dimension by its standard deviation ** POWER, absorbed into the saved weights "
        "(0 = off; `saescope run` uses 0.5)",
    )  # fmt: skip
    rec.add_argument(
        "--plain-error-share", type=float, default=0.0,
        help="with dimension gains on, this share of the loss is the plain squared error (0 = the gain-weighted "
        "error alone, as `saescope run`: lower FVU, higher delta loss; see docs/benchmarks)",
    )  # fmt: skip
    rec.add_argument(
        "--max-firing-rate", type=float, default=0.0,
        help="raise the θ of a JumpReLU latent firing on more than this fraction of a batch (0 = off; run: 0.05)",
    )  # fmt: skip
    rec.add_argument(
        "--firing-cap-mean-multiple", type=float, default=2.0,
        help="with --max-firing-rate, the cap is never below this multiple of the mean rate the target L0 asks for "
        "(2)",
    )  # fmt: skip
    rec.add_argument(
        "--decoder-refit-tokens", type=int, default=0,
        help="after the last step, refit each SAE/transcoder decoder to its final codes by least squares over this "
        "many tokens from the start of the data; the codes and L0 do not change (0 = off; `saescope run`: 131072)",
    )  # fmt: skip
    opt.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed (0)")
    opt.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (500)")
    parser.add_argument(
        "--init-from",
        action="append",
        metavar="PARENT",
        help="continue training an existing SAE instead of starting afresh (PT→IT finetuning, SPEC §7.6): a saescope "
        "dictionary folder or run folder (every dictionary in it), a Gemma Scope 1/2 or SAELens folder, or a Hub "
        "id with --online; repeat for several. Width and architecture come from the parent; this command's "
        "schedule and sparsity options apply (λ warm-up 0 unless given); --sites defaults to the parents' sites. "
        "The parent is recorded in config.json and in the model card",
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
            parents += [Parent(str(e.folder.resolve()), e.name, e.site, single_layer(e.raw_space(), "--init-from"))
                        for e in read_suite(run)]  # fmt: skip
            continue
        loaded = load_sae(text, online=online)
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


def parent_specs(args: argparse.Namespace, parents: Sequence[Parent], source: ActivationSource) -> list[SAESpec]:
    """One spec per parent: this command's settings with the parent's architecture and width, started from the
    parent's weights (so the data-driven initialisations are off, and λ is not warmed up from 0 unless asked)."""
    specs = []
    for parent in parents:
        config = parent.sae.config
        target = args.target_l0 if args.target_l0 is not None or config.k is None else str(config.k)
        warmup = 0 if args.lambda_warmup_steps is None else args.lambda_warmup_steps
        as_args = argparse.Namespace(**{
            **vars(args), "widths": str(config.width), "architectures": config.architecture, "target_l0": target,
            "lambda_warmup_steps": warmup, "sites": parent.site.id,
        })  # fmt: skip
        candidates = [spec for spec in build_specs(as_args, source) if spec.site == parent.site]
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
    ctx = distributed.current()
    if ctx is not None:  # under torchrun: the forwards split over the ranks
        return distributed.split_streamed_source(
            loaded, sites, corpus_from_args(args), ctx, online=online_from_args(args)
        )
    return streamed_source(loaded, sites, corpus_from_args(args), online=online_from_args(args))


def build_specs(args: argparse.Namespace, source: ActivationSource) -> list[SAESpec]:
    sites = source.sites
    if args.sites and (args.cache is not None or args.activations is not None):
        n_layers = max(site.layer for site in sites) + 1
        wanted = set(select_sites(args.sites, n_layers))
        sites = [site for site in sites if site in wanted]
    options = SuiteOptions(
        lr=args.lr,
        l0_coefficient=args.l0_coefficient,
        l1_coefficient=args.l1_coefficient,
        threshold=args.threshold,
        lambda_warmup_steps=args.lambda_warmup_steps,
        decoder_bias_init=args.decoder_bias_init,
    )
    widths = [parse_width(w) for w in _csv(args.widths)]
    return dictionary_specs(
        sites, source.widths, widths, _csv(args.architectures), parse_target_l0(args.target_l0), options
    )


def run(args: argparse.Namespace) -> int:
    with distributed.torchrun_session(args.device):  # under torchrun, the dictionaries are shared out over ranks
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    check_device(args.device)
    main = distributed.is_main_process()
    parents = load_parents(args) if args.init_from else []
    source = open_source(args, [parent.site for parent in parents])
    specs = parent_specs(args, parents, source) if parents else build_specs(args, source)
    if not specs:
        raise ValueError("no dictionary to train: check --sites against the source's sites")
    config = TrainConfig(
        total_tokens=args.tokens,
        batch_size=args.batch_size,
        lr_warmup_steps=args.lr_warmup_steps,
        lr_decay_fraction=args.lr_decay_fraction,
        adam_betas=(args.adam_beta1, 0.999),
        code_scale_init=args.code_scale_init,
        threshold_controller_gain=args.threshold_controller_gain,
        revive_dead_after_tokens=args.revive_dead_after_tokens,
        revive_rate_fraction=args.revive_rate_fraction,
        dimension_gain_power=args.dimension_gain_power,
        plain_error_share=args.plain_error_share,
        max_firing_rate=args.max_firing_rate,
        firing_cap_mean_multiple=args.firing_cap_mean_multiple,
        decoder_refit_tokens=args.decoder_refit_tokens,
        seed=args.seed,
        checkpoint_every_steps=args.checkpoint_every,
        device=args.device,
    )
    if main:
        print(
            f"Training {len(specs)} dictionaries for {config.total_steps} steps of {config.batch_size} tokens "
            f"-> {args.out}"
        )
        for spec in specs:
            if spec.init_from is not None:
                print(f"  {spec.name} starts from {spec.init_from}")
    trained = distributed.train_suite(specs, source, config, args.out)
    results = distributed.gather_final_metrics(trained, specs)
    if not main:
        return 0
    print(f"\n{'dictionary':<44} {'L0':>7} {'FVU':>7} {'dead':>6}  (last training batch)")
    for name, m in results:
        print(f"{name:<44} {m['l0']:>7.1f} {m['fvu']:>7.3f} {m['dead_fraction']:>6.1%}")
    print(f"\nWeights and configs: {args.out / 'saes'}/<dictionary>/; metrics log: {args.out / 'metrics.jsonl'}")
    targets = {spec.name: spec.target_l0 for spec in specs}
    implausible = implausible_dictionaries(FinalMetrics.from_metrics(n, m, targets[n]) for n, m in results)
    if implausible:
        print(implausible_warning(implausible, args.out / "saes"), file=sys.stderr)
        return IMPLAUSIBLE_EXIT_CODE
    return 0

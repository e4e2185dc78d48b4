"""SAE quality at equal budget: saescope's recipes against SAELens and sparsify, by delta LM loss at a given L0.

On the embedded Gemma 3 270M and corpus, for a residual, an attention and an MLP site of one middle layer
(default layer 6), one command:

1. caches the sites' activations (saescope's resumable activation cache, float32) and writes the
   *training stream*: the cache's first shuffled epoch, one ``.npy`` per site, rows in the order every
   system trains on them -- the same tokens, the same batches, the same order for everyone;
2. trains every system at every (width, target L0) on that stream with the same token budget:

   ========================  ==============================================================================
   ``saescope-jumprelu``     saescope's default recipe (``saescope.train.recipes.SAESCOPE``)
   ``gemma-scope-jumprelu``  the faithful Gemma Scope recipe (``GEMMA_SCOPE``: lr 7e-5, log θ from 0.001,
                             λ warmed up over 10k steps, b_dec from zero; GS2's quadratic L0 at the target)
   ``saescope-topk``,        saescope's TopK / BatchTopK (k = target) and ReLU + L1 (λ steered to the
   ``-batchtopk``, ``-relu`` target), with the default recipe's optimiser settings
   ``saelens-jumprelu``      SAELens' documented JumpReLU recipe (``step`` L0, λ 5, ε 0.01, θ₀ 0.01)
   ``saelens-jumprelu-quadratic``  the same in SAELens' quadratic target-L0 mode
   ``sparsify-topk``         EleutherAI sparsify TopK with its defaults (SignSGD + schedule-free)
   ``ablate-*``              the default recipe with one element changed (``--systems ablations``)
   ========================  ==============================================================================

   saescope systems of one site train together from one stream (one ``Trainer`` per recipe schedule);
   peers run in their own virtual environments through ``fidelity_saelens_worker.py`` and
   ``fidelity_sparsify_worker.py`` with their own trainers; a peer that cannot run is reported, not faked;
3. evaluates every dictionary with saescope's evaluation (one path: peers' weights become saescope
   JumpReLU / TopK dictionaries in raw activation space) on the same held-out windows: L0, FVU, delta LM
   loss ± standard error, KL, dead and dense (> 10% of tokens) latents;
4. writes ``fidelity.md`` (tables, goal checks, the exact command) and the paper-style plots (delta
   loss vs L0, FVU vs L0; one panel per site, one line per system) into ``--docs``.

Every finished piece is saved atomically under ``--out`` (cache, stream, each trained system, each
evaluation); a rerun skips what is done, so an interrupted run resumes. Set up the peers once (torch first,
so that pip keeps the CPU build)::

    python3 -m venv /tmp/bench_saelens  && /tmp/bench_saelens/bin/pip install torch==2.13.0 sae-lens
    python3 -m venv /tmp/bench_sparsify && /tmp/bench_sparsify/bin/pip install torch==2.13.0 eai-sparsify

Run from the repository root::

    .venv/bin/python benchmarks/fidelity.py          # full grid: ~1M tokens, widths 4k/16k, L0 20/60/150
    .venv/bin/python benchmarks/fidelity.py --tokens 262144 --widths 4096 --l0s 60   # a reduced run

Every figure it writes is measured in the run that wrote it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from saescope.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from saescope.data.activations import SiteBatch
from saescope.data.cache import ActivationCache
from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS, CorpusConfig
from saescope.data.sources import build_cache
from saescope.dictionaries.folder import read_trained_sae
from saescope.dictionaries.sites import DictionarySites
from saescope.eval import EvalConfig, EvalTarget, evaluate
from saescope.eval.metrics import paired_difference
from saescope.eval.report import readable_log_x
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import Site, select_sites
from saescope.sae import DictionaryConfig, SparseDictionary, build_dictionary, single_layer
from saescope.train import SAESpec, TrainConfig, Trainer
from saescope.train.recipes import GEMMA_SCOPE, SAESCOPE, Recipe
from saescope.train.specs import recipe_train_config
from saescope.versions import SCHEMA_VERSION

HERE = Path(__file__).resolve().parent
SAELENS_WORKER = HERE / "fidelity_saelens_worker.py"
SPARSIFY_WORKER = HERE / "fidelity_sparsify_worker.py"


# ------------------------------------------------------------------------------------------------
# the systems
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """One way of training a dictionary: saescope (a recipe and an architecture) or a peer worker."""

    name: str
    label: str
    kind: str  # "saescope", "saelens", "sparsify"
    architecture: str
    recipe: Recipe | None = None
    peer_mode: str | None = None  # SAELens: "step" or "quadratic"
    #: Trains the same whatever the target L0 (a fixed λ): run once, at the middle target of --l0s.
    ignores_target: bool = False
    #: Matryoshka prefixes as fractions of the width (the last is 1), or None for a plain dictionary.
    matryoshka_fractions: tuple[float, ...] | None = None

    @property
    def fingerprint(self) -> str:
        """What decides how this system trains: a saved result with another fingerprint is stale."""
        recipe = self.recipe.to_dict() if self.recipe is not None else None
        if self.matryoshka_fractions is not None and recipe is not None:
            recipe = {**recipe, "matryoshka_fractions": list(self.matryoshka_fractions)}
        return fingerprint(self.kind, self.architecture, recipe, self.peer_mode)


#: Recipe fields added after the saved results of RESULT_VERSION 3, with the architectures whose training reads
#: them (None: all). A result's fingerprint leaves such a field out where it cannot change the training (another
#: architecture, or the field at its default, which is the behaviour before it existed), so that adding one does
#: not make every saved result stale.
FIELDS_SINCE_V3: dict[str, tuple[str, ...] | None] = {
    "revive_rate_fraction": ("jumprelu",),
    "plain_error_share": None,
    "firing_cap_mean_multiple": ("jumprelu",),
    "matryoshka_prefixes": None,
}
RECIPE_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Recipe)}


def fingerprint(kind: str, architecture: str, recipe: dict[str, Any] | None, peer_mode: str | None) -> str:
    """The fingerprint of a system from its parts: the recipe without its description (words do not train) and
    without the fields of `FIELDS_SINCE_V3` where they cannot matter."""
    if recipe is not None:
        recipe = {key: value for key, value in recipe.items() if key != "description"}
        for name, architectures in FIELDS_SINCE_V3.items():
            read = architectures is None or architecture in architectures
            if name in recipe and (not read or recipe[name] == RECIPE_DEFAULTS[name]):
                del recipe[name]
    return json.dumps([kind, architecture, recipe, peer_mode], sort_keys=True)


def _ablation(name: str, label: str, **changes: Any) -> System:
    return System(f"ablate-{name}", f"ablation: {label}", "saescope", "jumprelu", SAESCOPE.replace(**changes))


MAIN_SYSTEMS = (
    System("saescope-jumprelu", "saescope JumpReLU (default recipe)", "saescope", "jumprelu", SAESCOPE),
    System(
        "gemma-scope-jumprelu", "saescope JumpReLU (faithful Gemma Scope recipe)", "saescope", "jumprelu", GEMMA_SCOPE
    ),
    System(
        "saescope-matryoshka",
        "saescope Matryoshka JumpReLU (default recipe; prefixes 1/32, 1/8, 1/2 of the width)",
        "saescope",
        "jumprelu",
        SAESCOPE,
        matryoshka_fractions=(1 / 32, 1 / 8, 1 / 2, 1.0),
    ),
    System("saescope-topk", "saescope TopK", "saescope", "topk", SAESCOPE),
    System("saescope-batchtopk", "saescope BatchTopK", "saescope", "batchtopk", SAESCOPE),
    System("saescope-relu", "saescope ReLU + L1", "saescope", "relu", SAESCOPE),
    System(
        "saelens-jumprelu",
        "SAELens JumpReLU (documented recipe, fixed λ)",
        "saelens",
        "jumprelu",
        peer_mode="step",
        ignores_target=True,
    ),
    System(
        "saelens-jumprelu-quadratic",
        "SAELens JumpReLU (quadratic target L0)",
        "saelens",
        "jumprelu",
        peer_mode="quadratic",
    ),
    System("sparsify-topk", "sparsify TopK (defaults)", "sparsify", "topk"),
)
#: The default recipe followed by Gemma Scope 2's end-to-end KL phase (method §7.6) on extra tokens.
KL_SYSTEM = System(
    "saescope-jumprelu-kl", "saescope JumpReLU (default + KL finetune)", "saescope-kl", "jumprelu",
    SAESCOPE.replace(kl_finetune_tokens=16_384, kl_beta=1.0),
)  # fmt: skip
ABLATIONS = (
    _ablation("no-refit", "no least-squares decoder refit at the end", decoder_refit_tokens=0),
    _ablation("no-dimension-gains", "no dimension gains (C-normalisation only)", dimension_gain_power=0.0),
    _ablation("gain-power-0.25", "dimension gains std^-0.25", dimension_gain_power=0.25),
    _ablation("gain-power-0.35", "dimension gains std^-0.35", dimension_gain_power=0.35),
    _ablation("plain-share-0.25", "a quarter of the loss the plain squared error", plain_error_share=0.25),
    _ablation("plain-share-0.5", "half of the loss the plain squared error", plain_error_share=0.5),
    _ablation("gain-power-1", "dimension gains std^-1", dimension_gain_power=1.0),
    _ablation("no-rate-cap", "no firing-rate cap", max_firing_rate=0.0),
    _ablation("rate-cap-0.08", "firing rates capped at 8%", max_firing_rate=0.08),
    _ablation("rate-cap-0.04", "firing rates capped at 4%", max_firing_rate=0.04),
    _ablation("cap-mean-2", "the cap at least 2× (not 1.5×) the mean rate", firing_cap_mean_multiple=2.0),
    _ablation("cap-mean-1.25", "the cap at least 1.25× (not 2×) the mean rate", firing_cap_mean_multiple=1.25),
    _ablation("cap-mean-1.5", "the cap at least 1.5× (not 2×) the mean rate", firing_cap_mean_multiple=1.5),
    _ablation(
        "cap-0.04-mean-1.25",
        "cap 4%, at least 1.25× the mean rate",
        max_firing_rate=0.04,
        firing_cap_mean_multiple=1.25,
    ),
    _ablation("bdec-zeros", "b_dec starts at zero", decoder_bias_init="zeros"),
    _ablation("bdec-median", "b_dec starts at the geometric median", decoder_bias_init="geometric_median"),
    _ablation("theta-fixed", "θ starts at 0.001 (not from data)", threshold_init_from_data=False),
    _ablation("no-code-scale", "no least-squares code scale at init", code_scale_init=False),
    _ablation("log-theta", "log θ parameter", threshold="log"),
    _ablation("beta1-0", "Adam β1 0 (the papers')", adam_beta1=0.0),
    _ablation("lr-1e-3", "lr 1e-3", lr=1e-3),
    _ablation("lr-1e-2", "lr 1e-2", lr=1e-2),
    _ablation("no-decay", "no lr decay", lr_decay_fraction=0.0),
    _ablation("no-threshold-controller", "no θ controller (λ controller only)", threshold_controller_gain=0.0),
    _ablation("no-revive", "silent latents not revived", revive_dead_after_tokens=0),
    _ablation("revive-full-rate", "silent latents revived at the full target rate", revive_rate_fraction=1.0),
    _ablation("bandwidth-0.01", "ε = 0.01", bandwidth=0.01),
    _ablation("gain-0.02", "λ controller gain 0.02", controller_gain=0.02),
)
SYSTEMS = {system.name: system for system in (*MAIN_SYSTEMS, KL_SYSTEM, *ABLATIONS)}
DEFAULT_SYSTEM = "saescope-jumprelu"


def parse_systems(text: str) -> list[System]:
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "main":
            names += [s.name for s in MAIN_SYSTEMS]
        elif part == "ablations":
            names += [s.name for s in ABLATIONS]
        elif part in SYSTEMS:
            names.append(part)
        else:
            raise SystemExit(f"unknown system {part!r}; known: main, ablations, {', '.join(SYSTEMS)}")
    return [SYSTEMS[name] for name in dict.fromkeys(names)]


# ------------------------------------------------------------------------------------------------
# data: cache -> training stream
# ------------------------------------------------------------------------------------------------


class StreamSource:
    """An `ActivationSource` over the training stream: batches in file order (already shuffled once)."""

    def __init__(self, paths: dict[Site, Path], norm_scales: dict[Site, float]) -> None:
        self._arrays = {site: np.load(path, mmap_mode="r") for site, path in paths.items()}
        self._scales = norm_scales

    @property
    def sites(self) -> list[Site]:
        return sorted(self._arrays)

    @property
    def widths(self) -> dict[Site, int]:
        return {site: int(array.shape[1]) for site, array in self._arrays.items()}

    @property
    def norm_scales(self) -> dict[Site, float]:
        return dict(self._scales)

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        n_rows = min(int(array.shape[0]) for array in self._arrays.values())
        for start in range(skip_batches * batch_size, n_rows - batch_size + 1, batch_size):
            yield {site: torch.from_numpy(np.array(a[start : start + batch_size])) for site, a in self._arrays.items()}


def stream_paths(out: Path, sites: Sequence[Site]) -> dict[Site, Path]:
    return {site: out / "stream" / f"layer_{site.layer}-{site.kind.value}.npy" for site in sites}


def prepare_stream(args: argparse.Namespace, loaded: LoadedModel, sites: list[Site]) -> StreamSource:
    """Cache `--tokens` training tokens of every site, then write the first shuffled epoch as the stream.

    `--stream-shuffle global` permutes all the cached tokens at once; `pools` permutes them four cache shards at a
    time (the cache's default read). A shard holds 64 windows, often a few long documents, so pools differ: on the
    embedded corpus, neighbouring 8,192-token blocks of a pooled 131k-token stream differ in their att mean by about
    what iid blocks do, except across a pool boundary, where the difference is ~200× that. At L0 150 the global
    shuffle lowered sparsify's res delta loss from 0.70 to 0.52 and halved the default recipe's dense att latents
    (7.5% → 3.8%); see docs/results/README.md.
    """
    cache_dir = args.out / "cache"
    # The cache always holds the layer's three sites, so that --sites picks from it without rebuilding.
    all_sites = select_sites(f"{args.layer}/*", loaded.info.n_layers)
    build_cache(
        cache_dir, loaded, all_sites, corpus_config(args), tokens=args.tokens, dtype="float32",
        batch_windows=args.batch_windows, windows_per_shard=64,
    )  # fmt: skip
    cache = ActivationCache(cache_dir, verify="sizes")
    paths = stream_paths(args.out, sites)
    n_rows = (min(cache.n_tokens, args.tokens) // args.batch_size) * args.batch_size
    meta_path = args.out / "stream" / "stream.json"
    meta = {"tokens": n_rows, "batch_size": args.batch_size, "seed": args.seed, "sites": [s.id for s in sites]}
    if args.stream_shuffle != "pools":  # streams written before the option existed are pooled
        meta["shuffle"] = args.stream_shuffle
    if args.window_shuffle_tokens:  # and read their windows in corpus order
        meta["window_shuffle_tokens"] = args.window_shuffle_tokens
    done = meta_path.exists() and json.loads(meta_path.read_text()) == {**meta, "norm_scales": _scales_json(cache)}
    if not done:
        partial = {site: path.with_name(path.name + ".partial.npy") for site, path in paths.items()}
        for path in partial.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            site: np.lib.format.open_memmap(partial[site], mode="w+", dtype=np.float32, shape=(n_rows, width))
            for site, width in cache.widths.items()
            if site in paths
        }
        written = 0
        pools = {"shards_in_memory": len(cache.shards)} if args.stream_shuffle == "global" else {}
        batches = cache.batches(args.batch_size, seed=args.seed, sites=sites, **pools)
        with tqdm(total=n_rows, unit="tok", unit_scale=True, desc="writing the training stream") as bar:
            for batch in batches:
                if written >= n_rows:
                    break
                take = min(batch[sites[0]].shape[0], n_rows - written)
                for site in sites:
                    arrays[site][written : written + take] = batch[site][:take].numpy()
                written += take
                bar.update(take)
        for site, array in arrays.items():
            array.flush()
            os.replace(partial[site], paths[site])
        atomic_write_json(meta_path, {**meta, "norm_scales": _scales_json(cache)})
    return StreamSource(paths, cache.norm_scales)


def check_stream_shuffle(args: argparse.Namespace) -> None:
    """Refuse a work folder whose training stream was shuffled or drawn another way: its saved results were trained
    on that stream, and a cell's record does not say which."""
    meta_path = args.out / "stream" / "stream.json"
    if not meta_path.exists():
        return
    meta = json.loads(meta_path.read_text())
    held = {
        "stream-shuffle": meta.get("shuffle", "pools"),
        "window-shuffle-tokens": meta.get("window_shuffle_tokens", 0),
    }
    given = {"stream-shuffle": args.stream_shuffle, "window-shuffle-tokens": args.window_shuffle_tokens}
    for flag, value in held.items():
        if given[flag] != value:
            raise SystemExit(
                f"{args.out} holds a training stream made with --{flag} {value}, and results trained on it; pass "
                f"--{flag} {value} to use them, or another --out for --{flag} {given[flag]}"
            )


def _scales_json(cache: ActivationCache) -> dict[str, float]:
    return {site.id: scale for site, scale in cache.norm_scales.items()}


def held_window_shuffle(out: Path) -> int:
    """The --window-shuffle-tokens a work folder's training stream was made with (for the sibling scripts)."""
    meta_path = out / "stream" / "stream.json"
    return int(json.loads(meta_path.read_text()).get("window_shuffle_tokens", 0)) if meta_path.exists() else 0


def corpus_config(args: argparse.Namespace) -> CorpusConfig:
    # The cache keeps the windows in the order it drew them; the training stream is shuffled again here
    # (--stream-shuffle).
    return CorpusConfig(context_size=args.context_size, window_shuffle_tokens=args.window_shuffle_tokens)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    site: Site
    width: int
    target_l0: float
    system: System

    @property
    def key(self) -> str:
        return f"layer_{self.site.layer}-{self.site.kind.value}/w{self.width}/l0_{self.target_l0:g}/{self.system.name}"

    @property
    def dictionary_name(self) -> str:
        return f"{self.system.name}-w{self.width}-l0_{self.target_l0:g}"


def weights_path(args: argparse.Namespace, cell: Cell) -> Path:
    return Path(args.out) / "peers" / f"{cell.key}.safetensors"


def result_path(args: argparse.Namespace, cell: Cell) -> Path:
    return Path(args.out) / "results" / f"{cell.key}.json"


def trained_path(args: argparse.Namespace, cell: Cell) -> Path:
    return Path(args.out) / "trained" / f"{cell.key}.json"


#: Bumped when a result row gains a metric or the evaluation changes, so that older rows are evaluated again
#: (not retrained). 3: the held-out sample is spread over the split (it was its first few documents).
RESULT_VERSION = 3


def current_record(path: Path, cell: Cell, *, version: int = 0) -> dict[str, Any] | None:
    """The saved record of `cell` at `path`, or None when there is none, it was made by another recipe (so a
    changed default recipe is retrained and re-evaluated, never reported from old runs) or it is older than
    `version`."""
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    fresh = record.get("fingerprint") == cell.system.fingerprint and record.get("version", 0) >= version
    if "folder" in record and not (Path(record["folder"]) / "config.json").exists():
        fresh = False  # a trained record whose dictionary folder is gone: train it again
    return record if fresh else None


def current_result(args: argparse.Namespace, cell: Cell) -> dict[str, Any] | None:
    return current_record(result_path(args, cell), cell, version=RESULT_VERSION)


#: What a result keeps per held-out prediction (float32, evaluation order), for paired differences: the file suffix
#: of each, and the evaluation's key for it.
PER_PREDICTION = {"deltas": "delta_lm_loss_per_prediction", "kls": "kl_per_prediction"}


def per_prediction_path(args: argparse.Namespace, cell: Cell, measure: str) -> Path:
    """Every held-out prediction's delta loss (`measure` "deltas") or KL ("kls") of a result."""
    return Path(args.out) / "results" / f"{cell.key}.{measure}.npy"


def needs_evaluation(args: argparse.Namespace, cell: Cell) -> bool:
    """No current result, or one saved before results kept their per-prediction deltas and KLs (evaluated again)."""
    return current_result(args, cell) is None or not all(
        per_prediction_path(args, cell, measure).exists() for measure in PER_PREDICTION
    )


def saescope_spec(cell: Cell, d_in: int) -> SAESpec:
    from saescope.train.specs import dictionary_specs

    assert cell.system.recipe is not None
    options = cell.system.recipe
    (spec,) = dictionary_specs(
        [cell.site], {cell.site: d_in}, [cell.width], [cell.system.architecture], [cell.target_l0], options
    )
    dictionary = spec.dictionary
    fractions = cell.system.matryoshka_fractions
    if fractions is not None:
        prefixes = tuple(sorted({max(1, round(fraction * cell.width)) for fraction in fractions}))
        dictionary = dataclasses.replace(dictionary, matryoshka_prefixes=prefixes)
    return SAESpec(
        cell.dictionary_name, spec.site, dictionary, spec.lr, spec.target_l0, spec.threshold_init_from_data,
        spec.decoder_bias_init,
    )  # fmt: skip


def _schedule_key(recipe: Recipe) -> str:
    """Recipes with the same run-wide settings (`TrainConfig`) can share one Trainer."""
    return json.dumps(recipe_train_config(recipe, total_tokens=1, batch_size=1).to_dict(), sort_keys=True)


#: The fields that saved specs and training settings of version 1 (before saescope's configs carried a
#: schema_version) left out, at the value they were left out at.
_SPEC_FIELDS_LEFT_OUT_IN_V1: dict[str, Any] = {"init_from": None, "site_out": None, "layers": []}
_CONFIG_FIELDS_LEFT_OUT_IN_V1: dict[str, Any] = {"plain_error_share": 0.0, "firing_cap_mean_multiple": 2.0}


def _as_version_1(record: dict[str, Any], left_out: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in record.items()
        if key != SCHEMA_VERSION and not (key in left_out and value == left_out[key])
    }  # fmt: skip


def training_folder_digest(specs: Sequence[SAESpec], config: TrainConfig) -> str:
    """The name of a group's training folder: a digest of its specs and training settings in the form saescope
    saved them before its configs carried a schema_version, so that a folder named then keeps its name and an
    interrupted benchmark resumes in it. (The name only finds the folder; the checkpoint's own identity check
    decides whether it resumes.)"""
    identity = {
        "specs": [_as_version_1(spec.to_dict(), _SPEC_FIELDS_LEFT_OUT_IN_V1) for spec in specs],
        "config": _as_version_1(config.to_dict(), _CONFIG_FIELDS_LEFT_OUT_IN_V1),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def train_saescope(args: argparse.Namespace, source: StreamSource, cells: list[Cell]) -> dict[str, float]:
    """Train the saescope cells of one site, one Trainer per distinct recipe schedule; seconds per group."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        assert cell.system.recipe is not None
        groups.setdefault(_schedule_key(cell.system.recipe), []).append(cell)
    seconds = {}
    for group_cells in groups.values():
        recipe = group_cells[0].system.recipe
        assert recipe is not None
        specs = [saescope_spec(cell, source.widths[cell.site]) for cell in group_cells]
        config = recipe_train_config(
            recipe, total_tokens=args.tokens, batch_size=args.batch_size, seed=args.seed,
            checkpoint_every_steps=50, progress=True,
        )  # fmt: skip
        # The folder is named by everything that decides the run, so another recipe never resumes its checkpoint.
        digest = training_folder_digest(specs, config)
        folder = args.out / "train" / f"layer_{cells[0].site.layer}-{cells[0].site.kind.value}" / digest
        started = time.perf_counter()
        Trainer(specs, source, config, folder).run()
        elapsed = time.perf_counter() - started
        for cell in group_cells:
            seconds[cell.key] = elapsed / len(group_cells)
            atomic_write_json(
                trained_path(args, cell),
                {
                    "folder": str(folder / "saes" / cell.dictionary_name),
                    "train_seconds_share": elapsed / len(group_cells),
                    "fingerprint": cell.system.fingerprint,
                },
            )
    return seconds


def peer_python(kind: str, args: argparse.Namespace) -> Path:
    return Path(args.saelens_python if kind == "saelens" else args.sparsify_python)


def train_peer(args: argparse.Namespace, source_paths: dict[Site, Path], cell: Cell) -> str | None:
    """Run the peer's worker; None when it trained, else why it could not."""
    python = peer_python(cell.system.kind, args)
    if not python.exists():
        return f"{cell.system.kind} is not installed ({python} missing; see the module docstring)"
    out = weights_path(args, cell)
    common = [
        "--acts", str(source_paths[cell.site]), "--batch-size", str(args.batch_size), "--tokens", str(args.tokens),
        "--width", str(cell.width), "--seed", str(args.seed), "--out", str(out),
    ]  # fmt: skip
    if cell.system.kind == "saelens":
        assert cell.system.peer_mode is not None
        command = [str(python), str(SAELENS_WORKER), *common, "--target-l0", f"{cell.target_l0:g}"]
        command += ["--mode", cell.system.peer_mode]
    else:
        command = [str(python), str(SPARSIFY_WORKER), *common, "--k", str(round(cell.target_l0))]
    print(f"[{cell.key}] {shlex.join(command)}", flush=True)
    completed = subprocess.run(command, check=False, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if completed.returncode != 0 or not out.exists():
        tail = completed.stderr.strip().splitlines()[-3:]
        return f"{cell.system.kind} worker failed (exit {completed.returncode}): {' | '.join(tail)}"
    return None


# ------------------------------------------------------------------------------------------------
# evaluation: every system through saescope's evaluation
# ------------------------------------------------------------------------------------------------


def peer_dictionary(path: Path, cell: Cell) -> SparseDictionary:
    """A peer's raw-space weights as a saescope JumpReLU or TopK dictionary (no pre-encoder bias)."""
    tensors = load_file(str(path))
    d_in, width = tensors["W_enc_DF"].shape
    if cell.system.architecture == "jumprelu":
        config = DictionaryConfig(
            d_in=d_in, width=width, architecture="jumprelu", threshold_parameterisation="raw",
            apply_pre_encoder_bias=False,
        )  # fmt: skip
        state = {k: v for k, v in tensors.items() if k != "threshold_F"}
        state["raw_threshold_F"] = tensors["threshold_F"]
    else:
        config = DictionaryConfig(
            d_in=d_in, width=width, architecture="topk", k=round(cell.target_l0), apply_pre_encoder_bias=False
        )
        state = dict(tensors)
    sae = build_dictionary(config)
    sae.load_state_dict(state)
    return sae.eval()


def base_cell(cell: Cell) -> Cell:
    """The default-recipe cell a KL-finetuned cell starts from."""
    return Cell(cell.site, cell.width, cell.target_l0, SYSTEMS[DEFAULT_SYSTEM])


def train_kl(args: argparse.Namespace, loaded: LoadedModel, cell: Cell) -> None:
    """KL-finetune the default-recipe dictionary of this cell into a folder of its own."""
    from saescope.train.kl_finetune import KLFinetuneConfig, finetune_trained_folder

    recipe = cell.system.recipe
    assert recipe is not None
    base = current_record(trained_path(args, base_cell(cell)), base_cell(cell))
    assert base is not None
    folder = args.out / "kl" / cell.key
    config = KLFinetuneConfig(tokens=recipe.kl_finetune_tokens, beta=recipe.kl_beta, lr=args.kl_lr, seed=args.seed)
    summary = finetune_trained_folder(loaded, Path(base["folder"]), folder, corpus_config(args), config)
    seconds = float(base["train_seconds_share"]) + float(summary["seconds"])
    atomic_write_json(
        trained_path(args, cell),
        {"folder": str(folder), "train_seconds_share": seconds, "fingerprint": cell.system.fingerprint},
    )


def load_for_eval(args: argparse.Namespace, cell: Cell) -> SparseDictionary:
    if cell.system.kind in ("saescope", "saescope-kl"):
        record = current_record(trained_path(args, cell), cell)
        assert record is not None
        return single_layer(read_trained_sae(Path(record["folder"])).raw_space(), "the fidelity evaluation")
    return peer_dictionary(weights_path(args, cell), cell)


def train_seconds(args: argparse.Namespace, cell: Cell) -> float | None:
    if cell.system.kind in ("saescope", "saescope-kl"):
        record = current_record(trained_path(args, cell), cell)
        return float(record["train_seconds_share"]) if record is not None else None
    sidecar = weights_path(args, cell).with_suffix(".json")
    return float(json.loads(sidecar.read_text())["train_seconds"]) if sidecar.exists() else None


def evaluate_cells(args: argparse.Namespace, loaded: LoadedModel, cells: list[Cell]) -> None:
    pending = [cell for cell in cells if needs_evaluation(args, cell)]
    if not pending:
        return
    targets = [EvalTarget(cell.key, DictionarySites(cell.site), load_for_eval(args, cell)) for cell in pending]
    config = EvalConfig(
        tokens=args.eval_tokens, loss_windows=args.eval_loss_windows, loss_position_stride=args.eval_loss_stride,
        batch_windows=args.batch_windows, keep_prediction_deltas=True,
    )  # fmt: skip
    results = evaluate(loaded, targets, corpus_config(args), config)
    for cell in pending:
        result = results[cell.key]
        recon, loss = result["reconstruction"], result["lm_loss"]
        row = {
            "site": cell.site.id, "width": cell.width, "target_l0": cell.target_l0, "system": cell.system.name,
            "label": cell.system.label, "l0": recon["l0"], "fvu": recon["fvu"],
            "fvu_per_dimension": recon["fvu_mean_over_dimensions"],
            "delta_lm_loss": loss["delta_lm_loss"], "delta_lm_loss_stderr": loss["delta_lm_loss_stderr"],
            "kl": loss["kl_clean_to_spliced"], "loss_recovered": loss["loss_recovered"],
            "dead_fraction": recon["dead_fraction"], "dense_fraction": recon["dense_fraction_above_0.1"],
            "eval_tokens": recon["n_tokens"], "loss_predictions": loss["loss_n_predictions"],
            "train_seconds": train_seconds(args, cell), "fingerprint": cell.system.fingerprint,
            "version": RESULT_VERSION,
        }  # fmt: skip
        for measure, key in PER_PREDICTION.items():
            path = per_prediction_path(args, cell, measure)
            partial = path.with_suffix(".partial.npy")
            partial.parent.mkdir(parents=True, exist_ok=True)
            np.save(partial, np.asarray(loss[key], dtype=np.float32))
            os.replace(partial, path)
        atomic_write_json(result_path(args, cell), row)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


#: A result row's place in the grid: (site, width, target L0, system).
RowKey = tuple[str, int, float, str]


def row_key(row: dict[str, Any]) -> RowKey:
    return row["site"], row["width"], row["target_l0"], row["system"]


#: Per-prediction arrays of the results that kept them: measure ("deltas", "kls") → row → array.
PerPrediction = dict[str, dict[RowKey, np.ndarray]]


def paired_summary(difference: float, stderr: float, digits: int = 4) -> str:
    """A paired difference with its standard error, and how many standard errors it is."""
    in_errors = f" ({difference / stderr:+.1f} s.e.)" if stderr > 0 else ""  # 0: the same predictions exactly
    return f"{difference:+.{digits}f} ± {stderr:.{digits}f}{in_errors}"


def percent_lower(ours: float, other: float) -> str:
    """How much lower `ours` is than `other`; a ratio of signed noise (a delta loss ≤ 0) means nothing."""
    if min(ours, other) <= 0:
        return "–"
    gain = 1 - ours / other
    return f"{100 * gain:.0f}% lower" if gain >= 0 else f"{-100 * gain:.0f}% higher"


def paired(per_prediction: PerPrediction, measure: str, a: RowKey, b: RowKey) -> tuple[float, float] | None:
    """Mean and paired standard error of a − b over the same held-out predictions, where both kept them."""
    first, second = per_prediction[measure].get(a), per_prediction[measure].get(b)
    if first is None or second is None or first.shape != second.shape:
        return None
    return paired_difference(first.tolist(), second.tolist())


def results_table(rows: list[dict[str, Any]], skipped: dict[str, str], per_prediction: PerPrediction) -> str:
    lines = [
        "| site | width | target L0 | system | L0 | FVU | FVU per dimension | delta LM loss ± s.e. | ΔL − default "
        "(paired) | KL | KL − default (paired) | dead % | dense % | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["site"], r["width"], r["target_l0"], r["system"])):
        default = (row["site"], row["width"], row["target_l0"], DEFAULT_SYSTEM)
        differences = {"deltas": "–", "kls": "–"}
        for measure, digits in (("deltas", 3), ("kls", 4)):
            found = paired(per_prediction, measure, row_key(row), default) if row["system"] != DEFAULT_SYSTEM else None
            if found is not None:
                differences[measure] = f"{found[0]:+.{digits}f} ± {found[1]:.{digits}f}"  # table: no s.e. count
        lines.append(
            f"| {row['site']} | {row['width']} | {row['target_l0']:g} | {row['label']} | {row['l0']:.1f} | "
            f"{row['fvu']:.3f} | {row['fvu_per_dimension']:.3f} | "
            f"{row['delta_lm_loss']:.3f} ± {row['delta_lm_loss_stderr']:.3f} | {differences['deltas']} | "
            f"{row['kl']:.4f} | {differences['kls']} | "
            f"{100 * row['dead_fraction']:.1f} | {100 * row['dense_fraction']:.2f} | {_fmt(row['train_seconds'])} |"
        )
    for key, reason in sorted(skipped.items()):
        lines.append(f"| {key} | | | not run | | | | {reason} | | | | | | |")
    return "\n".join(lines) + "\n"


def paired_text(ours: dict[str, Any], other: dict[str, Any], per_prediction: PerPrediction) -> str:
    """Our delta loss and KL minus another system's over the same held-out predictions, where both kept them.

    KL is the delta loss expected under the clean model's next-token distribution, free of the observed token's
    noise: where delta losses are near zero (attention outputs) its paired difference still resolves margins."""
    parts = []
    for measure, what in (("deltas", "delta loss"), ("kls", "KL")):
        found = paired(per_prediction, measure, row_key(ours), row_key(other))
        if found is not None:
            parts.append(f"paired {what} difference (nats) {paired_summary(*found)}")
    return "".join(f"; {part}" for part in parts)


def goal_checks(rows: list[dict[str, Any]], per_prediction: PerPrediction) -> str:
    """The issue's goals, checked on the measured rows."""
    lines = []
    off_target = [r for r in rows if r["system"].startswith(("saescope", "gemma-scope", "ablate"))
                  and abs(r["l0"] / r["target_l0"] - 1) > 0.1]  # fmt: skip
    peers = ("saelens-jumprelu", "saelens-jumprelu-quadratic", "sparsify-topk")
    cells: dict[tuple[str, int, float], dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["site"], row["width"], row["target_l0"]), {})[row["system"]] = row
    for (site, width, target), systems in sorted(cells.items()):
        ours = systems.get(DEFAULT_SYSTEM)
        if ours is None:
            continue
        matched = [s for name, s in systems.items() if name in peers and abs(s["l0"] / ours["l0"] - 1) <= 0.1]
        checks = [
            f"dead {100 * ours['dead_fraction']:.1f}% {'≤' if ours['dead_fraction'] <= 0.05 else '>'} 5%",
            f"dense {100 * ours['dense_fraction']:.2f}% {'= 0' if ours['dense_fraction'] == 0 else '> 0'}",
            f"L0 {ours['l0']:.1f} vs target {target:g} ({100 * (ours['l0'] / target - 1):+.0f}%)",
        ]
        if matched:
            best = min(matched, key=lambda s: s["delta_lm_loss"])
            if best["delta_lm_loss"] > 0:
                gain = 1 - ours["delta_lm_loss"] / best["delta_lm_loss"]
                margin = (f"{f'{100 * gain:.0f}% lower' if gain >= 0 else f'{-100 * gain:.0f}% higher'} "
                          f"({'meets' if gain >= 0.1 else 'misses'} ≥ 10%)")  # fmt: skip
            else:  # a ratio to a delta loss at or below zero (noise around a tiny loss) means nothing
                margin = "no relative margin (the peer's delta loss is ≤ 0)"
            checks.insert(
                0,
                f"delta loss {ours['delta_lm_loss']:.3f} vs best matched-L0 peer ({best['label']}, L0 "
                f"{best['l0']:.1f}) {best['delta_lm_loss']:.3f}: {margin}{paired_text(ours, best, per_prediction)}; "
                f"KL {ours['kl']:.4f} vs {best['kl']:.4f} ({percent_lower(ours['kl'], best['kl'])}); "
                f"FVU {ours['fvu']:.3f} vs {best['fvu']:.3f} "
                f"({'no worse' if ours['fvu'] <= best['fvu'] else 'worse'}); FVU per dimension "
                f"{ours['fvu_per_dimension']:.3f} vs {best['fvu_per_dimension']:.3f} "
                f"({'no worse' if ours['fvu_per_dimension'] <= best['fvu_per_dimension'] else 'worse'})",
            )
        else:
            peer_l0s = ", ".join(f"{s['label']} {s['l0']:.0f}" for n, s in systems.items() if n in peers)
            checks.insert(0, f"no peer within ±10% of our L0 {ours['l0']:.1f} (peers: {peer_l0s or 'none ran'})")
        lines.append(f"* **{site}, width {width}, target L0 {target:g}**: " + "; ".join(checks) + ".")
    lines.append(
        "* **L0 within ±10% of target on held-out data** (saescope systems): "
        + ("every run." if not off_target else "missed by " + ", ".join(
            f"{r['system']} at {r['site']} w{r['width']} (L0 {r['l0']:.1f} vs {r['target_l0']:g})" for r in off_target
        ) + ".")
    )  # fmt: skip
    return "\n".join(lines) + "\n"


def _delta_loss_at(rows: list[dict[str, Any]], l0: float) -> float | None:
    """One system's delta loss at `l0`: interpolated linearly in log L0 between its two nearest measured L0s,
    else its measurement at an L0 within ±10% of `l0`; None otherwise (no extrapolation)."""
    points = sorted((r["l0"], r["delta_lm_loss"]) for r in rows if r["l0"] > 0)
    for (l0_a, loss_a), (l0_b, loss_b) in itertools.pairwise(points):
        if l0_a <= l0 <= l0_b:
            t = 0.0 if l0_b == l0_a else math.log(l0 / l0_a) / math.log(l0_b / l0_a)
            return float(loss_a + t * (loss_b - loss_a))
    near = [(abs(math.log(point_l0 / l0)), loss) for point_l0, loss in points if abs(point_l0 / l0 - 1) <= 0.1]
    return float(min(near)[1]) if near else None


def qualitative_checks(rows: list[dict[str, Any]]) -> str:
    """The papers' qualitative results, checked on the measured rows (saescope's default recipe and its
    TopK and ReLU), each line saying whether this budget reproduces it."""
    by: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((row["site"], row["width"], row["system"]), []).append(row)
    lines = ["* **JumpReLU vs TopK vs ReLU at equal L0** (JumpReLU ≤ TopK < ReLU in the papers; the others' "
             "delta loss interpolated in log L0 to the JumpReLU's L0):"]  # fmt: skip
    for (site, width, system), ours in sorted(by.items()):
        if system != DEFAULT_SYSTEM:
            continue
        for row in sorted(ours, key=lambda r: r["target_l0"]):
            parts, verdicts = [], []
            for other in ("saescope-topk", "saescope-relu"):
                loss = _delta_loss_at(by.get((site, width, other), []), row["l0"])
                if loss is None:
                    parts.append(f"{other.removeprefix('saescope-')} not measured at this L0")
                    continue
                parts.append(f"{other.removeprefix('saescope-')} {loss:.3f}")
                verdicts.append(row["delta_lm_loss"] <= loss + row["delta_lm_loss_stderr"])
            verdict = "" if not verdicts else " — reproduced" if all(verdicts) else " — not reproduced"
            lines.append(f"  * {site} w{width}, L0 {row['l0']:.1f}: JumpReLU {row['delta_lm_loss']:.3f} ± "
                         f"{row['delta_lm_loss_stderr']:.3f}; {'; '.join(parts)}{verdict}")  # fmt: skip
    widths = sorted({row["width"] for row in rows})
    lines.append("* **Wider is better at equal L0** (the default recipe's delta loss, narrowest vs widest width):")
    for site in sorted({row["site"] for row in rows}):
        narrow = by.get((site, widths[0], DEFAULT_SYSTEM), [])
        for row in sorted(by.get((site, widths[-1], DEFAULT_SYSTEM), []) if len(widths) > 1 else [],
                          key=lambda r: r["target_l0"]):  # fmt: skip
            loss = _delta_loss_at(narrow, row["l0"])
            if loss is None:
                continue
            verdict = "reproduced" if row["delta_lm_loss"] < loss else "not reproduced"
            lines.append(f"  * {site}, L0 {row['l0']:.1f}: w{row['width']} {row['delta_lm_loss']:.3f} ± "
                         f"{row['delta_lm_loss_stderr']:.3f} vs w{widths[0]} {loss:.3f} — {verdict}")  # fmt: skip
    lines.append("* **Residual SAEs have larger delta loss than attention and MLP SAEs** (the default recipe):")
    kinds: dict[tuple[int, float], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["system"] == DEFAULT_SYSTEM:
            kinds.setdefault((row["width"], row["target_l0"]), {})[row["site"].rsplit("/", 1)[-1]] = row
    for (width, target), sites in sorted(kinds.items()):
        if not {"res", "att", "mlp"} <= sites.keys():
            continue
        losses = {kind: sites[kind]["delta_lm_loss"] for kind in ("res", "att", "mlp")}
        verdict = "reproduced" if losses["res"] > max(losses["att"], losses["mlp"]) else "not reproduced"
        lines.append(f"  * w{width}, target L0 {target:g}: res {losses['res']:.3f}, att {losses['att']:.3f}, "
                     f"mlp {losses['mlp']:.3f} — {verdict}")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict[str, Any]], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    names = []
    sites = sorted({row["site"] for row in rows})
    for metric, label in (("delta_lm_loss", "delta LM loss (nats)"), ("fvu", "FVU")):
        for width in sorted({row["width"] for row in rows}):
            figure, axes = plt.subplots(1, len(sites), figsize=(5 * len(sites), 4), squeeze=False)
            for axis, site in zip(axes[0], sites, strict=True):
                for system in dict.fromkeys(r["system"] for r in rows):
                    points = sorted(
                        (r["l0"], r[metric], r.get(f"{metric}_stderr", 0.0), r["label"])
                        for r in rows
                        if r["site"] == site and r["system"] == system and r["width"] == width
                    )
                    if not points:
                        continue
                    xs, ys, es, labels = zip(*points, strict=True)
                    style = "-o" if system == DEFAULT_SYSTEM else "--o" if system.startswith("ablate") else "-s"
                    axis.errorbar(xs, ys, yerr=es, fmt=style, label=labels[0], capsize=2, markersize=4)
                readable_log_x(axis)  # plain-number ticks: the default minor labels overlap
                axis.set_yscale("log" if all(r[metric] > 0 for r in rows if r["site"] == site) else "linear")
                axis.set_title(f"{site}, width {width}")
                axis.set_xlabel("L0 (held-out)")
                axis.set_ylabel(label)
                axis.grid(alpha=0.3)
            handles, labels = axes[0][0].get_legend_handles_labels()
            for axis in axes[0][1:]:  # systems missing from the first panel
                for handle, text in zip(*axis.get_legend_handles_labels(), strict=True):
                    if text not in labels:
                        handles.append(handle)
                        labels.append(text)
            figure.tight_layout()
            figure.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            name = f"fidelity-{metric.replace('_', '-')}-vs-l0-w{width}.png"
            atomic_write_bytes(docs / name, buffer.getvalue())
            names.append(name)
    return names


def write_report(args: argparse.Namespace, cells: list[Cell], skipped: dict[str, str], command: str) -> Path:
    found = [(c, row) for c in cells if (row := current_result(args, c)) is not None]
    rows = [row for _, row in found]
    missing = [c.key for c in cells if c.key not in skipped and current_result(args, c) is None]
    per_prediction: PerPrediction = {
        measure: {
            row_key(row): np.load(per_prediction_path(args, c, measure))
            for c, row in found
            if per_prediction_path(args, c, measure).exists()
        }
        for measure in PER_PREDICTION
    }
    args.docs.mkdir(parents=True, exist_ok=True)
    plots = write_plots(rows, args.docs) if rows else []
    stream = json.loads((args.out / "stream" / "stream.json").read_text())
    text = [
        "# SAE fidelity at equal budget: saescope, SAELens, sparsify\n",
        "Generated by `benchmarks/fidelity.py`; every number below was measured by the run this command made:\n",
        f"```\n{command}\n```\n",
        f"Model gemma-3-270m (embedded), layer {args.layer}; {stream['tokens']:,} training tokens per dictionary "
        f"({stream['tokens'] // args.batch_size} steps of {args.batch_size}), the same shuffled tokens in the same "
        f"order for every system; context {args.context_size}. Evaluation (saescope's, one path for all): "
        f"{args.eval_tokens:,} held-out tokens for L0/FVU/dead/dense, delta LM loss and KL on "
        f"{args.eval_loss_windows} held-out windows (every {args.eval_loss_stride}th prediction). Dead = never "
        "fired on the evaluation tokens; dense = fires on > 10% of them. FVU per dimension = each dimension's "
        "FVU averaged with equal weights (the plain FVU of a site with a massive dimension measures that one "
        "dimension). Torch threads: "
        f"{torch.get_num_threads()}.\n",
        "## Goals\n",
        goal_checks(rows, per_prediction),
        "## The papers' qualitative results\n",
        qualitative_checks(rows),
        "## Results\n",
        results_table(rows, skipped, per_prediction),
        "## Plots\n",
        *[f"![{name}]({name})\n" for name in plots],
        *(["## Cells of the grid without a result\n",
           "Not run yet (`--report-only` wrote this report; run the command without it to measure them): "
           + ", ".join(f"`{key}`" for key in missing) + ".\n"] if missing else []),
    ]  # fmt: skip
    path = Path(args.docs) / "fidelity.md"
    atomic_write_text(path, "\n".join(text))
    atomic_write_json(args.docs / "fidelity-results.json", {"command": command, "rows": rows, "skipped": skipped})
    return path


# ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1_048_576, help="training tokens per dictionary (1048576)")
    parser.add_argument("--widths", default="4096,16384", help="dictionary widths (4096,16384)")
    parser.add_argument("--l0s", default="20,60,150", help="target L0s (20,60,150)")
    parser.add_argument(
        "--systems",
        default="main",
        help="comma list of systems, 'main' (default) and/or 'ablations'; see the docstring",
    )
    parser.add_argument("--sites", default="res,att,mlp", help="site kinds of --layer (res,att,mlp)")
    parser.add_argument("--layer", type=int, default=6, help="the middle layer (6 of 18)")
    parser.add_argument("--ablation-sites", default="res", help="site kinds the ablate-* systems train on (res)")
    parser.add_argument(
        "--wide-systems",
        default="all",
        help="systems trained at the widths after the first ('all', or a comma list like --systems); the wider\n"
        "cells cost several times more, so a CPU run may keep them to the default recipe",
    )
    parser.add_argument(
        "--stream-shuffle", choices=("global", "pools"), default="global",
        help="shuffle the training stream over all cached tokens (global) or four cache shards at a time (pools)",
    )  # fmt: skip
    parser.add_argument(
        "--window-shuffle-tokens", type=int, default=DEFAULT_WINDOW_SHUFFLE_TOKENS,
        help=f"draw the cached training windows from a shuffle buffer of this many tokens, as `saescope run` does\n"
        f"({DEFAULT_WINDOW_SHUFFLE_TOKENS}; 0: the first --tokens of the corpus in order, a few dozen documents)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per step for every system (1024)")
    parser.add_argument("--context-size", type=int, default=256, help="tokens per window (256)")
    parser.add_argument("--batch-windows", type=int, default=8, help="windows per model forward (8)")
    parser.add_argument("--eval-tokens", type=int, default=32_768, help="held-out tokens for L0/FVU (32768)")
    parser.add_argument("--eval-loss-windows", type=int, default=16, help="held-out windows for delta loss (16)")
    parser.add_argument("--eval-loss-stride", type=int, default=2, help="count every n-th prediction (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/fidelity"), help="work folder (runs/fidelity)")
    parser.add_argument("--docs", type=Path, default=Path("docs/results"), help="report folder (docs/results)")
    parser.add_argument("--saelens-python", default=os.environ.get("SAELENS_PYTHON", "/tmp/bench_saelens/bin/python"))
    parser.add_argument(
        "--sparsify-python", default=os.environ.get("SPARSIFY_PYTHON", "/tmp/bench_sparsify/bin/python")
    )
    parser.add_argument("--kl-lr", type=float, default=3e-4, help="Adam lr of the KL finetuning phase (3e-4)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from saved results")
    args = parser.parse_args(argv)
    given = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--report-only"]
    command = "python benchmarks/fidelity.py " + shlex.join(given)  # the command that measured the results
    check_stream_shuffle(args)

    widths = [int(w) for w in args.widths.split(",")]
    targets = [float(t) for t in args.l0s.split(",")]
    systems = parse_systems(args.systems)
    loaded = load_model("gemma-3-270m")
    sites = select_sites(f"{args.layer}/{'+'.join(k.strip() for k in args.sites.split(','))}", loaded.info.n_layers)
    ablation_kinds = {k.strip() for k in args.ablation_sites.split(",")}
    wide = systems if args.wide_systems == "all" else parse_systems(args.wide_systems)
    cells = [
        Cell(site, w, t, s)
        for site in sites
        for w in widths
        for t in targets
        for s in systems
        if (not s.name.startswith("ablate-") or site.kind.value in ablation_kinds)
        and (w == widths[0] or s in wide)
        and (not s.ignores_target or t == targets[len(targets) // 2])
    ]
    skipped: dict[str, str] = {}
    if not args.report_only:
        source = prepare_stream(args, loaded, sites)
        paths = stream_paths(args.out, sites)
        for site in sites:
            todo = [c for c in cells if c.site == site and needs_evaluation(args, c)]
            ours = [c for c in todo if c.system.kind == "saescope"
                    and current_record(trained_path(args, c), c) is None]  # fmt: skip
            kl_cells = [c for c in todo if c.system.kind == "saescope-kl"]
            bases = [b for b in map(base_cell, kl_cells) if current_record(trained_path(args, b), b) is None]
            ours += [b for b in bases if b not in ours]
            if ours:
                train_saescope(args, source, ours)
            for cell in kl_cells:
                if current_record(trained_path(args, cell), cell) is None:
                    train_kl(args, loaded, cell)
            for cell in (c for c in todo if c.system.kind in ("saelens", "sparsify")):
                if not weights_path(args, cell).exists():
                    reason = train_peer(args, paths, cell)
                    if reason is not None:
                        print(f"[{cell.key}] not run: {reason}", flush=True)
                        skipped[cell.key] = reason
            evaluate_cells(args, loaded, [c for c in todo if c.key not in skipped])
    report = write_report(args, cells, skipped, command)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

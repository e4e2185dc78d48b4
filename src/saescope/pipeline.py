"""The main job: a whole suite for one model -- activations, training, evaluation, release -- as one run.

A run lives in one folder::

    run_config.json     the full resolved configuration, written first
    stages.json         finished stages with their durations (a finished stage is not redone)
    cache/              activation cache (only with activations = "cache")
    train/              checkpoint, metrics.jsonl, saes/<dictionary>/{sae.safetensors, config.json}
    eval/               <dictionary>/metrics.json (held-out evaluation)
    report/             suite.csv, suite.md, PNG plots, report.html
    release/            gemmascope/, gemmascope2/, saelens/ with model cards
    index.sqlite        the feature index that `saescope serve` browses (saescope.explore)

Presets are TOML files shipped in `saescope/presets/`; every key is a `RunConfig` field or a setting of the
run's recipe (`saescope.train.recipes.RECIPE_KEYS`, e.g. ``lr = 2e-3``), which goes to `RunConfig.recipe_settings`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from saescope.atomic import atomic_write_json
from saescope.checks import check_at_least
from saescope.data.activations import ActivationSource
from saescope.data.cache import ActivationCache
from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS, CorpusConfig
from saescope.data.sources import build_cache, streamed_source
from saescope.eval import EvalConfig, evaluate
from saescope.eval.report import markdown_table, suite_rows, write_report
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import Site, all_sites, select_sites, site_widths
from saescope.tomlfile import parse_toml
from saescope.train import distributed
from saescope.train.memory import (
    MemoryEstimate,
    check_fits_on_device,
    estimate_training_memory,
    meta_model,
    module_bytes,
    stream_buffer_bytes,
    torchrun_world,
)
from saescope.train.recipes import DEFAULT_RECIPE, RECIPE_KEYS, Recipe, with_settings
from saescope.train.settings import SAESpec, TrainConfig
from saescope.train.specs import (
    MULTI_LAYER_KINDS,
    default_crosscoder_layers,
    dictionary_specs,
    family_specs,
    parse_kinds,
    parse_target_l0,
    parse_width,
)
from saescope.versions import RecordSchema, without_version

STAGES = ("activations", "train", "eval", "release", "index")
CONFIG_FILE = "run_config.json"
STAGES_FILE = "stages.json"
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
    """Everything a suite run does. Presets fill it; command-line flags override single fields."""

    preset: str = "custom"
    description: str = ""
    # model and data
    model: str = "gemma-3-270m"
    dtype: str = "float32"
    device: str = "cpu"
    corpus: str = "embedded"
    text_field: str = "text"
    context_size: int = 1024
    # the suite
    #: Dictionary kinds (saescope.train.specs.DICTIONARY_KINDS): sae (one per site of `sites`), transcoder and
    #: skip_transcoder (one per layer of `sites`), clt and skip_clt (one over every layer of `sites`),
    #: crosscoder (one over `crosscoder_layers`).
    kinds: str = "sae"
    crosscoder_layers: str | None = None  # e.g. "5,9,12,15"; None: Gemma Scope 2's depths
    #: Total widths (over all layers) of the clt/skip_clt/crosscoder kinds; None: `widths`.
    multi_layer_widths: str | None = None
    sites: str = "all"
    layers: str | None = None  # e.g. "0-5": keep only these layers of `sites`
    widths: str = "4096"
    architectures: str = "jumprelu"
    target_l0: Any = None  # 50, "20,50", or {res = 40, att = 60, mlp = 60}
    #: How the dictionaries train (`saescope.train.recipes`): "saescope" (short budgets) or "gemma-scope"
    #: (the papers'), with single settings changed by `recipe_settings` ({key: value}, keys of RECIPE_KEYS).
    recipe: str = DEFAULT_RECIPE
    recipe_settings: dict[str, Any] = field(default_factory=dict)
    # training
    tokens: int = 1_000_000
    batch_size: int = 4096
    seed: int = 0
    checkpoint_every_steps: int = 200
    # activations
    activations: str = "stream"  # "stream" (no disk) or "cache" (written once under the run, then read)
    cache_storage_dtype: str = "bfloat16"
    batch_windows: int = 4
    norm_tokens: int = 20_000
    shuffle_buffer_tokens: int = 65_536
    #: Training windows are drawn from a shuffle buffer of this many tokens before the model sees them, so that a
    #: batch mixes many documents (0: stream order, what runs made before the setting did).
    window_shuffle_tokens: int = DEFAULT_WINDOW_SHUFFLE_TOKENS
    # evaluation
    eval_tokens: int = 50_000
    eval_loss_windows: int = 4
    eval_loss_stride: int = 4
    # release
    export_formats: tuple[str, ...] = ("gemmascope", "gemmascope2", "saelens")
    # feature index (saescope.explore): held-out tokens of its pass; 0 skips the stage
    index_tokens: int = 49_152
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"RunConfig.dtype must be one of {_DTYPES}; got {self.dtype!r}")
        if self.activations not in ("stream", "cache"):
            raise ValueError(f"RunConfig.activations must be 'stream' or 'cache'; got {self.activations!r}")
        if self.index_tokens < 0:
            raise ValueError(f"RunConfig.index_tokens must be >= 0 (0 skips the index); got {self.index_tokens!r}")
        positive = ("tokens", "batch_size", "eval_tokens", "context_size", "batch_windows", "norm_tokens")
        check_at_least(self, positive, 1, owner="RunConfig.")
        self.corpus_config()  # CorpusConfig validates the corpus settings (window_shuffle_tokens among them)
        parse_target_l0(self.target_l0)  # validates the form early
        parse_kinds(self.kinds)
        for width in f"{self.widths},{self.multi_layer_widths or self.widths}".split(","):
            parse_width(width)
        self.train_config()  # the recipe, its settings and the token budget, validated before anything is created

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A config from a preset, a record or overrides: recipe keys at the top level (``lr = 2e-3``) are
        recipe settings; top-level ones win over those of a ``recipe_settings`` table; None means unset."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(RECIPE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown run setting(s) {unknown}; run settings: {sorted(known)}; recipe settings: "
                f"{', '.join(RECIPE_KEYS)}"
            )
        values = {key: value for key, value in data.items() if key not in RECIPE_KEYS}
        values["recipe_settings"] = {
            **dict(values.get("recipe_settings") or {}),
            **{key: value for key, value in data.items() if key in RECIPE_KEYS and value is not None},
        }
        if isinstance(values.get("widths"), list):
            values["widths"] = ",".join(str(w) for w in values["widths"])
        if isinstance(values.get("export_formats"), list):
            values["export_formats"] = tuple(values["export_formats"])
        return cls(**values)

    @classmethod
    def from_record(cls, data: Mapping[str, Any], *, origin: str = CONFIG_FILE) -> RunConfig:
        """The config of an existing run folder (its run_config.json, of this or an older saescope, migrated to
        today's fields by `RUN_CONFIG_SCHEMA`); ``origin`` names the file in errors."""
        return cls.from_dict(without_version(RUN_CONFIG_SCHEMA.migrate(data, origin=origin)))

    def to_dict(self) -> dict[str, Any]:
        """Every field, with the record's version: run_config.json."""
        return RUN_CONFIG_SCHEMA.stamp(asdict(self))

    def training_recipe(self) -> Recipe:
        """The named recipe with this run's settings applied."""
        return with_settings(self.recipe, self.recipe_settings, origin=f"run settings (preset {self.preset!r})")

    def train_config(self) -> TrainConfig:
        """The run-wide training settings: the recipe's, with this run's budget, seed and device."""
        return self.training_recipe().train_config(
            total_tokens=self.tokens, batch_size=self.batch_size, seed=self.seed,
            checkpoint_every_steps=self.checkpoint_every_steps, device=self.device,
        )  # fmt: skip

    def corpus_config(self) -> CorpusConfig:
        return CorpusConfig(
            source=self.corpus, text_field=self.text_field, context_size=self.context_size, seed=0,
            window_shuffle_tokens=self.window_shuffle_tokens,
        )  # fmt: skip


def _run_config_v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """Version 1 is every run_config.json before records carried a version; those made before
    window_shuffle_tokens existed lack it and read their windows in stream order (0)."""
    return {"window_shuffle_tokens": 0, **record}


#: A run folder's run_config.json.
RUN_CONFIG_SCHEMA = RecordSchema("run config", (_run_config_v1_to_v2,))


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    presets = {}
    for entry in sorted(resources.files("saescope.presets").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            data = parse_toml(entry.read_text(encoding="utf-8"), where=f"preset {entry.name}")
            presets[entry.name.removesuffix(".toml")] = str(data.get("description", ""))
    return presets


def load_preset(name: str, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    entry = resources.files("saescope.presets").joinpath(f"{name}.toml")
    if not entry.is_file():
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    data = parse_toml(entry.read_text(encoding="utf-8"), where=f"preset {entry.name}")
    data["preset"] = name
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return RunConfig.from_dict(data)


def suite_sites(config: RunConfig, n_layers: int) -> list[Site]:
    """The SAE sites of `config` on a model of `n_layers` layers (`sites`, kept to `layers` if given)."""
    sites = select_sites(config.sites, n_layers)
    if config.layers:
        keep = {site.layer for site in select_sites(f"{config.layers}/*", n_layers)}
        sites = [site for site in sites if site.layer in keep]
    if not sites:
        raise ValueError(f"sites {config.sites!r} with layers {config.layers!r} select nothing")
    return sites


def suite_specs(config: RunConfig, n_layers: int, site_width: Mapping[Site, int]) -> list[SAESpec]:
    """One spec per dictionary of the suite, every kind of `kinds`, on a model of `n_layers` layers whose site
    widths `site_width` gives (every site of every layer)."""
    c = config
    recipe = c.training_recipe()
    widths = [parse_width(w) for w in str(c.widths).split(",")]
    architectures = [a.strip() for a in c.architectures.split(",")]
    targets = parse_target_l0(c.target_l0)
    sites = suite_sites(c, n_layers)
    layers = sorted({site.layer for site in sites})
    crosscoder = (
        [int(layer) for layer in str(c.crosscoder_layers).split(",")]
        if c.crosscoder_layers
        else default_crosscoder_layers(n_layers)
    )
    specs: list[SAESpec] = []
    for kind in parse_kinds(c.kinds):
        if kind == "sae":
            specs += dictionary_specs(sites, site_width, widths, architectures, targets, recipe)
        else:
            span = crosscoder if kind == "crosscoder" else layers
            kind_widths = widths
            if kind in MULTI_LAYER_KINDS and c.multi_layer_widths:
                kind_widths = [parse_width(w) for w in str(c.multi_layer_widths).split(",")]
            specs += family_specs(
                kind, span, site_width, kind_widths, architectures, targets, recipe, sae_widths=widths
            )
    return specs


@dataclass
class SuiteRun:
    """One run folder; `execute()` runs the stages that are not finished yet."""

    folder: Path
    config: RunConfig
    log: Callable[[str], None] = print
    _loaded: LoadedModel | None = None

    @classmethod
    def create(cls, folder: Path, config: RunConfig, log: Callable[[str], None] = print) -> SuiteRun:
        path = folder / CONFIG_FILE
        run = cls(folder, config, log)
        if path.exists():
            # Both in today's form (a record of an older saescope migrated), so that the same run compares equal.
            existing = RunConfig.from_record(json.loads(path.read_text(encoding="utf-8")), origin=str(path)).to_dict()
            if json.loads(json.dumps(existing)) != json.loads(json.dumps(config.to_dict())):
                raise ValueError(
                    f"{folder} already holds a run with other settings; resume it with "
                    f"`saescope run --resume {folder}` or choose another --name"
                )
        else:
            run.specs()  # every dictionary validated on the model before the folder exists
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, config.to_dict())
        return run

    @classmethod
    def resume(cls, folder: Path, log: Callable[[str], None] = print) -> SuiteRun:
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a saescope run (no {CONFIG_FILE})")
        return cls(folder, RunConfig.from_record(json.loads(path.read_text(encoding="utf-8")), origin=str(path)), log)

    # --- bookkeeping ----------------------------------------------------------------------------------
    def stages_done(self) -> dict[str, Any]:
        path = self.folder / STAGES_FILE
        done: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        return done

    def _mark_done(self, stage: str, seconds: float, **details: Any) -> None:
        done = self.stages_done()
        done[stage] = {"seconds": round(seconds, 1), **details}
        atomic_write_json(self.folder / STAGES_FILE, done)

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            import torch

            self._loaded = load_model(
                self.config.model, dtype=getattr(torch, self.config.dtype), device=self.config.device
            )
        return self._loaded

    def sites(self) -> list[Site]:
        return suite_sites(self.config, self.loaded.info.n_layers)

    def specs(self) -> list[SAESpec]:
        """One spec per dictionary of the suite, every kind of `kinds`."""
        n_layers = self.loaded.info.n_layers
        return suite_specs(self.config, n_layers, site_widths(self.loaded.model, all_sites(n_layers)))

    def source_sites(self) -> list[Site]:
        """Every site a dictionary of the suite reads or writes."""
        return sorted({site for spec in self.specs() for site in (*spec.input_sites, *spec.output_sites)})

    # --- stages ---------------------------------------------------------------------------------------
    def _source(self) -> ActivationSource:
        c = self.config
        if c.activations == "cache":
            return ActivationCache(self.folder / "cache", norm_tokens=c.norm_tokens)
        return streamed_source(  # under torchrun, the forwards split over the ranks
            self.loaded, self.source_sites(), c.corpus_config(), batch_windows=c.batch_windows,
            norm_tokens=c.norm_tokens, buffer_tokens=c.shuffle_buffer_tokens, forwards=distributed.current_forwards(),
        )  # fmt: skip

    def stage_activations(self) -> dict[str, Any]:
        if self.config.activations != "cache":
            return {"mode": "stream (activations are computed during training)"}
        ctx = distributed.current()
        if ctx is not None:  # under torchrun: the forwards split over the ranks, rank 0 writes
            split = distributed.build_cache_split(
                self.folder / "cache", self.loaded, self.source_sites(), self.config.corpus_config(), ctx,
                tokens=self.config.tokens, dtype=self.config.cache_storage_dtype,
                batch_windows=self.config.batch_windows, progress=ctx.is_main,
            )  # fmt: skip
            if split is None:
                return {"mode": "cache"}
            return {"mode": "cache", "tokens": split.cache.n_tokens, "tokens_per_second": split.tokens_per_second}
        report = build_cache(
            self.folder / "cache", self.loaded, self.source_sites(), self.config.corpus_config(),
            tokens=self.config.tokens,
            dtype=self.config.cache_storage_dtype, batch_windows=self.config.batch_windows,
        )  # fmt: skip
        return {"mode": "cache", "tokens": report.cache.n_tokens, "tokens_per_second": report.tokens_per_second}

    def stage_train(self) -> dict[str, Any]:
        c = self.config
        source = self._source()
        recipe = c.training_recipe()
        specs = self.specs()
        train_config = c.train_config()
        self.log(f"training {len(specs)} dictionaries for {train_config.total_steps} steps of {c.batch_size} tokens")
        distributed.train_suite(specs, source, train_config, self.folder / "train")  # sharded under torchrun
        details: dict[str, Any] = {"dictionaries": len(specs), "steps": train_config.total_steps}
        ctx = distributed.current()
        if recipe.kl_finetune_tokens > 0 and (ctx is None or ctx.is_main):
            details["kl_finetune_tokens"] = self._kl_finetune(recipe)
        return details

    def _kl_finetune(self, recipe: Recipe) -> int:
        """The recipe's end-to-end KL phase (method §7.6), in place on every trained dictionary."""
        from saescope.dictionaries.folder import read_suite
        from saescope.train.kl_finetune import KLFinetuneConfig, finetune_trained_folder

        config = KLFinetuneConfig(tokens=recipe.kl_finetune_tokens, beta=recipe.kl_beta, seed=self.config.seed)
        for entry in read_suite(self.folder / "train"):
            self.log(f"KL finetuning {entry.name}")
            finetune_trained_folder(self.loaded, entry.folder, entry.folder, self.config.corpus_config(), config)
        return recipe.kl_finetune_tokens

    def stage_eval(self) -> dict[str, Any]:
        from saescope.dictionaries import read_suite
        from saescope.eval.evaluate import trained_target

        c = self.config
        targets = [trained_target(entry) for entry in read_suite(self.folder / "train")]
        eval_config = EvalConfig(
            tokens=c.eval_tokens, loss_windows=c.eval_loss_windows, loss_position_stride=c.eval_loss_stride,
            batch_windows=c.batch_windows,
        )  # fmt: skip
        results = evaluate(self.loaded, targets, c.corpus_config(), eval_config)
        files = write_report(
            list(results.values()), self.folder / "report", title=f"saescope suite: {self.folder.name}"
        )
        return {"dictionaries": len(results), "report": str(files.html)}

    def stage_release(self) -> dict[str, Any]:
        from saescope.release.export import export_release

        # The run's own release folder: a rerun of this stage replaces the files it wrote before.
        summary = export_release(
            self.folder / "train", self.folder / "release", list(self.config.export_formats),
            model_name=self.config.model, model_type=self.loaded.info.model_type,
            training_data=f"corpus {self.config.corpus}, {self.config.tokens} tokens per dictionary", overwrite=True,
        )  # fmt: skip
        return {"formats": list(summary.exported)}

    def stage_index(self) -> dict[str, Any]:
        from saescope.explore import INDEX_FILE, IndexConfig, build_index, read_dictionaries
        from saescope.explore.index import recorded_model_name

        if self.config.index_tokens == 0:
            return {"skipped": "index_tokens = 0"}
        found = read_dictionaries(self.folder)
        config = IndexConfig(tokens=self.config.index_tokens, batch_windows=self.config.batch_windows)
        summary = build_index(
            self.loaded, found.dictionaries, self.config.corpus_config(), config, self.folder / INDEX_FILE,
            model_name=recorded_model_name(self.config.model), report_dir=found.report_dir,
            source={"kind": found.kind, "path": str(self.folder.resolve())},
        )  # fmt: skip
        return {"tokens": summary.n_tokens, "latents": summary.latents, "dead": summary.dead,
                "mb": round(summary.bytes / 1e6, 1)}  # fmt: skip

    def execute(self, *, until: str | None = None) -> dict[str, Any]:
        """Run every unfinished stage in order (stop after stage `until` if given); returns the finished
        stages with their details, in stage order.

        Under torchrun (`saescope.train.distributed`), every rank runs the activation and training stages
        (which split their work over the ranks); evaluation and release run on rank 0 alone, the other
        ranks return once training is done. Only rank 0 records finished stages.
        """
        if until is not None and until not in STAGES:
            raise ValueError(f"unknown stage {until!r}; stages: {STAGES}")
        handlers = {
            "activations": self.stage_activations,
            "train": self.stage_train,
            "eval": self.stage_eval,
            "release": self.stage_release,
            "index": self.stage_index,
        }
        ctx = distributed.current()
        if ctx is not None:
            ctx.barrier()  # every rank reads the same finished stages before rank 0 records new ones
        done_before = self.stages_done()
        for stage in STAGES:
            if stage in done_before:
                self.log(f"[{stage}] already done, skipped")
                continue
            if ctx is not None and stage not in ("activations", "train") and not ctx.is_main:
                break
            self.log(f"[{stage}] ...")
            started = time.perf_counter()
            details = handlers[stage]()
            if ctx is not None and stage in ("activations", "train"):
                ctx.barrier()  # the stage is finished on every rank
            if ctx is None or ctx.is_main:
                self._mark_done(stage, time.perf_counter() - started, **details)
            self.log(f"[{stage}] done in {time.perf_counter() - started:.0f} s")
            if stage == until:
                break
        done = self.stages_done()
        return {stage: done[stage] for stage in STAGES if stage in done}

    def suite_table(self) -> str:
        from saescope.dictionaries.folder import read_suite

        results = [entry.metrics for entry in read_suite(self.folder / "train") if entry.metrics]
        return markdown_table(suite_rows(results)) if results else "(no evaluation metrics yet)\n"


# ------------------------------------------------------------------------------------------------
# The training stage's memory, checked before a run folder exists
# ------------------------------------------------------------------------------------------------


def run_memory_estimate(config: RunConfig) -> MemoryEstimate | None:
    """The training stage's peak per process for a `saescope run` configuration, from the model's sizes alone;
    None when the model's configuration cannot be read here (loading it then reports why, with what to do)."""
    try:
        loaded = meta_model(config.model, config.dtype)
    except (OSError, ValueError):
        return None
    suite = SuiteRun(Path("(not created)"), config, log=_silent, _loaded=loaded)
    specs = suite.specs()
    widths = site_widths(loaded.model, suite.source_sites())
    train_config = config.train_config()
    chunk_tokens = config.batch_windows * config.context_size
    buffer = stream_buffer_bytes(list(widths.values()), config.shuffle_buffer_tokens, chunk_tokens, config.dtype)
    world, on_host = torchrun_world()
    return estimate_training_memory(
        specs, widths, batch_size=config.batch_size, model_bytes=module_bytes(loaded.model), stream_buffer=buffer,
        decoder_refit=train_config.decoder_refit_tokens > 0, world_size=world,
        processes_on_host=1 if config.device.startswith("cuda") else on_host,
    )  # fmt: skip


def check_run_memory(config: RunConfig, *, available: int | None = None) -> MemoryEstimate | None:
    """Refuse a `saescope run` configuration whose training stage will not fit (`InsufficientMemoryError`);
    `available` defaults to what the run's device has free now. Returns the estimate (None: not checked, see
    `run_memory_estimate`)."""
    estimate = run_memory_estimate(config)
    if estimate is None:
        return None
    check_fits_on_device(estimate, config.device, available=available)
    return estimate


def _silent(_message: str) -> None:
    pass

"""Read what the trainer wrote: ``<run>/saes/<name>/{sae.safetensors, config.json[, metrics.json]}``.

``sae.safetensors`` is the dictionary's state dict in training space (activations divided by the site's
scale C, pre-encoder bias on), its SHA-256 recorded beside it in ``sae.safetensors.sha256`` and checked on
every read; ``config.json`` (format ``saescope-dictionary-v1``) holds the site, the
:class:`~saescope.sae.DictionaryConfig`, ``norm_scale`` (C), the training settings and the metrics of the
last training batch. Evaluation writes ``metrics.json`` next to them.

Which L0 names a released SAE: the held-out L0 of ``metrics.json`` (``["reconstruction"]["l0"]`` as
:func:`saescope.eval.evaluate` writes it, or a top-level ``"l0"``) when present, else
``config.json["final_batch_metrics"]["l0"]`` (the last training batch); :attr:`TrainedSAE.l0_source`
says which, and the model card prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saescope.atomic import verify_checksum
from saescope.models.sites import Site, SiteKind, spanned_sites
from saescope.release.common import ReleaseFormatError, read_json_object
from saescope.sae import AnyDictionary, CrossLayerDictionary, DictionaryConfig, build_any_dictionary

DICTIONARY_FORMAT = "saescope-dictionary-v1"
WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"

#: What to do about a corrupted weights file of a trained dictionary.
_WRITE_AGAIN = (
    "Write it again: rerun the training command that wrote it (it resumes from the run's checkpoint.pt, when that "
    f"is still there, and rewrites {WEIGHTS}), or train the dictionary again into a new folder."
)

L0_FROM_METRICS = "held-out evaluation (metrics.json)"
L0_FROM_TRAINING = "last training batch (config.json final_batch_metrics; no metrics.json)"


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class TrainedSAE:
    """One trained dictionary folder, read but not yet loaded."""

    name: str
    folder: Path
    site: Site
    dictionary: DictionaryConfig
    norm_scale: float
    #: Scale of the target site for transcoders trained with their own target scale; else ``norm_scale``.
    norm_scale_out: float
    l0: float
    l0_source: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    #: Output site of a transcoder: ``site_out`` in config.json, else (for a non-SAE dictionary reading
    #: ``mlp_in``) the MLP output of the same layer; None for SAEs.
    site_out: Site | None = field(default=None)
    #: Layers a multi-layer dictionary (CLT, crosscoder) spans, and each input layer's scale; () for one layer.
    layers: tuple[int, ...] = ()
    norm_scales: tuple[float, ...] = ()
    #: Each output layer's scale when the targets were divided by their own scale; () = ``norm_scales``.
    norm_scales_out: tuple[float, ...] = ()

    @property
    def input_sites(self) -> tuple[Site, ...]:
        return spanned_sites(self.site, self.layers)

    @property
    def output_sites(self) -> tuple[Site, ...]:
        return spanned_sites(self.site_out or self.site, self.layers)

    @property
    def is_multi_layer(self) -> bool:
        return self.dictionary.n_layers > 1

    @property
    def is_transcoder(self) -> bool:
        """Reads one site and writes another (GS "transcoder"): not a plain SAE."""
        return self.site_out is not None and self.site_out != self.site

    @property
    def width(self) -> int:
        """Latents in all: per layer × layers for a multi-layer dictionary."""
        return self.dictionary.total_width

    def training_space(self) -> AnyDictionary:
        """The dictionary as trained (inputs divided by C), checked against its recorded checksum."""
        path = self.folder / WEIGHTS
        if not path.is_file():
            raise ReleaseFormatError(f"{path} is missing")
        verify_checksum(path, _WRITE_AGAIN)
        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise ReleaseFormatError(f"{path} is not a readable safetensors file: {error}") from error
        with torch.device("meta"):
            sae = build_any_dictionary(self.dictionary)
        try:
            sae.load_state_dict(state, assign=True)
        except RuntimeError as error:
            raise ReleaseFormatError(f"{path} does not match its config.json dictionary: {error}") from error
        return sae.eval()

    def raw_space(self) -> AnyDictionary:
        """The dictionary with C and b_dec folded in (SPEC §2.7): it reads raw activations."""
        sae = self.training_space()
        if isinstance(sae, CrossLayerDictionary):  # each target was divided by its input layer's scale
            return sae.fold_normalisation(self.norm_scales, self.norm_scales_out or self.norm_scales).eval()
        return sae.fold_normalisation(self.norm_scale, self.norm_scale_out).eval()


@dataclass(frozen=True)
class ExportedSAE:
    """One dictionary written into a release: which, where (relative to the release root), named by which L0."""

    entry: TrainedSAE
    path: Path
    l0: int


#: Where metrics.json may hold the held-out L0, tried in order: ``saescope-metrics-v1`` (written by
#: :func:`saescope.eval.evaluate`) keeps it under ``reconstruction``; a flat file at the top level.
_L0_GROUPS = ("reconstruction", "metrics")


def _heldout_l0(metrics: dict[str, Any] | None) -> float | None:
    if metrics is None:
        return None
    for group in _L0_GROUPS:
        if isinstance(metrics.get(group), dict):
            value = _number(metrics[group].get("l0"))
            if value is not None:
                return value
    return _number(metrics.get("l0"))


def read_trained_sae(folder: Path) -> TrainedSAE:
    """Read one ``<run>/saes/<name>/`` folder; ReleaseFormatError naming the file on any problem."""
    config_path = folder / CONFIG
    config = read_json_object(config_path)
    if config.get("format") != DICTIONARY_FORMAT:
        raise ReleaseFormatError(f"{config_path}: format is {config.get('format')!r}, expected {DICTIONARY_FORMAT!r}")
    try:
        site = Site.parse(str(config["site"]))
        dictionary = DictionaryConfig.from_dict(config["dictionary"])
        norm_scale = _number(config["norm_scale"])
    except (KeyError, TypeError, ValueError) as error:
        raise ReleaseFormatError(f"{config_path}: cannot read site/dictionary/norm_scale: {error}") from error
    if norm_scale is None or norm_scale <= 0:
        raise ReleaseFormatError(f"{config_path}: norm_scale must be a positive number; got {config['norm_scale']!r}")
    norm_scale_out = _number(config.get("norm_scale_out", norm_scale))
    if norm_scale_out is None or norm_scale_out <= 0:
        raise ReleaseFormatError(f"{config_path}: norm_scale_out must be a positive number")
    site_out: Site | None = None
    if config.get("site_out"):
        site_out = Site.parse(str(config["site_out"]))
    elif site.kind is SiteKind.MLP_IN and not dictionary.is_sae:  # a GS transcoder without a recorded target
        site_out = Site(site.layer, SiteKind.MLP)
    layers: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    if dictionary.n_layers > 1:
        try:
            layers = tuple(int(layer) for layer in config["layers"])
            scales = tuple(float(scale) for scale in config["norm_scales"])
        except (KeyError, TypeError, ValueError) as error:
            raise ReleaseFormatError(
                f"{config_path}: a multi-layer dictionary needs 'layers' and 'norm_scales'"
            ) from error
        if len(layers) != dictionary.n_layers or len(scales) != dictionary.n_layers or min(scales) <= 0:
            raise ReleaseFormatError(
                f"{config_path}: 'layers' and 'norm_scales' must hold {dictionary.n_layers} entries (scales > 0)"
            )
    scales_out: tuple[float, ...] = ()
    if dictionary.n_layers > 1 and "norm_scales_out" in config:
        try:
            scales_out = tuple(float(scale) for scale in config["norm_scales_out"])
        except (TypeError, ValueError) as error:
            raise ReleaseFormatError(f"{config_path}: 'norm_scales_out' must be a list of numbers") from error
        if len(scales_out) != dictionary.n_layers or min(scales_out) <= 0:
            raise ReleaseFormatError(
                f"{config_path}: 'norm_scales_out' must hold {dictionary.n_layers} entries (scales > 0)"
            )
    metrics_path = folder / METRICS
    metrics = read_json_object(metrics_path) if metrics_path.exists() else None
    l0 = _heldout_l0(metrics)
    source = L0_FROM_METRICS
    if l0 is None:
        final = config.get("final_batch_metrics")
        l0 = _number(final.get("l0")) if isinstance(final, dict) else None
        source = L0_FROM_TRAINING
    if l0 is None:
        raise ReleaseFormatError(
            f"{folder}: no L0 to name the release folder with: neither {metrics_path} nor "
            f"{config_path}['final_batch_metrics'] has an 'l0'"
        )
    name = str(config.get("name") or folder.name)
    return TrainedSAE(
        name,
        folder,
        site,
        dictionary,
        norm_scale,
        norm_scale_out,
        l0,
        source,
        config,
        metrics,
        site_out,
        layers,
        scales,
        scales_out,
    )


def read_suite(run: Path) -> list[TrainedSAE]:
    """Every trained dictionary of a run folder (``<run>/saes/*/``), sorted by (site, width, L0, name).

    ``run`` may also be one dictionary folder or a folder of dictionary folders.
    """
    if not run.exists():
        raise FileNotFoundError(f"{run} does not exist")
    if (run / CONFIG).is_file() and (run / WEIGHTS).is_file():
        folders = [run]
    else:
        parent = run / "saes" if (run / "saes").is_dir() else run
        folders = sorted(p for p in parent.iterdir() if p.is_dir() and (p / CONFIG).is_file())
    if not folders:
        raise ReleaseFormatError(
            f"{run} holds no trained dictionary: expected {run}/saes/<name>/{{{WEIGHTS},{CONFIG}}} "
            "as written by `saescope train`"
        )
    entries = [read_trained_sae(folder) for folder in folders]
    return sorted(entries, key=lambda e: (e.site, e.width, e.l0, e.name))

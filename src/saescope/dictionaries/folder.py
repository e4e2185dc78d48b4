"""saescope's dictionary folder, written and read here alone.

A trained dictionary lives in ``<training>/saes/<name>/``:

* ``sae.safetensors``: the dictionary's state dict in training space (activations divided by the site's
  scale C, pre-encoder bias on), its SHA-256 recorded beside it in ``sae.safetensors.sha256`` and checked
  on every read;
* ``config.json`` (format ``saescope-dictionary-v1``): the sites, the :class:`~saescope.sae.DictionaryConfig`,
  ``norm_scale`` (C), the training settings and the metrics of the last training batch. Its top level is a
  versioned record (:data:`DICTIONARY_CONFIG_SCHEMA`, the dictionary's spec) read in today's form; its
  ``training`` carries the training settings' own version.

Evaluation writes ``metrics.json`` under the run's own eval folder (:func:`eval_folder`), never into the
training folder; a ``metrics.json`` beside the weights (where runs made before the eval folder existed
keep it) is read too.

Which L0 names a released SAE: the held-out L0 of ``metrics.json`` (``["reconstruction"]["l0"]`` as
:func:`saescope.eval.evaluate` writes it, or a top-level ``"l0"``) when present, else
``config.json["final_batch_metrics"]["l0"]`` (the last training batch); :attr:`TrainedSAE.l0_source`
says which, and the model card prints it.

This module sits below train/, eval/, release/ and explore/ and imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from saescope import atomic
from saescope.atomic import atomic_write_checksummed, atomic_write_json, verify_checksum
from saescope.dictionaries.sites import DictionarySites, HoldsSites
from saescope.models.sites import Site, SiteKind
from saescope.sae import AnyDictionary, CrossLayerDictionary, DictionaryConfig, build_any_dictionary
from saescope.versions import RecordSchema

DICTIONARY_FORMAT = "saescope-dictionary-v1"
WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
METRICS = "metrics.json"
#: The folder of a training run's dictionaries, inside the training folder.
SAES = "saes"
#: The folder of a run's evaluation results, one subfolder per dictionary.
EVAL = "eval"
#: A ``saescope run`` folder holds this file and trains into ``train/``; its eval folder is beside ``train/``.
RUN_CONFIG = "run_config.json"
TRAINING_IN_RUN = "train"

#: What to do about a corrupted weights file of a trained dictionary.
_WRITE_AGAIN = (
    "Write it again: rerun the training command that wrote it (it resumes from the run's checkpoint.pt, when that "
    f"is still there, and rewrites {WEIGHTS}), or train the dictionary again into a new folder."
)


def _dictionary_config_v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """Version 1 left out init_from, site_out and layers when a dictionary had none (a fresh one-layer SAE)."""
    return {"init_from": None, "site_out": None, "layers": [], **record}


#: The top level of a dictionary's config.json, which is its spec (`saescope.train.settings.SAESpec.to_dict`)
#: with its scales and final metrics; a checkpoint stores the same spec records.
DICTIONARY_CONFIG_SCHEMA = RecordSchema("dictionary config", (_dictionary_config_v1_to_v2,))

L0_FROM_METRICS = "held-out evaluation (metrics.json)"
L0_FROM_TRAINING = "last training batch (config.json final_batch_metrics; no metrics.json)"


class DictionaryFormatError(ValueError):
    """A dictionary file or folder is missing, malformed, truncated or inconsistent; the message names it.

    ``saescope.release.ReleaseFormatError`` is this class: the release formats raise it too."""


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; DictionaryFormatError naming the file when missing or malformed."""
    if not path.is_file():
        raise DictionaryFormatError(f"{path} is missing")
    return atomic.read_json_object(path, DictionaryFormatError)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def write_dictionary_folder(folder: Path, sae: AnyDictionary, config: dict[str, Any]) -> None:
    """Write ``sae`` (training space) and its ``config`` as a dictionary folder: the weights with their checksum
    record first, then ``config.json`` (``format`` set to :data:`DICTIONARY_FORMAT`), each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in sae.state_dict().items()}
    atomic_write_checksummed(folder / WEIGHTS, lambda handle: handle.write(safetensors_bytes(tensors)))
    atomic_write_json(folder / CONFIG, {"format": DICTIONARY_FORMAT, **config})


def eval_folder(dictionary_folder: Path) -> Path:
    """Where evaluation writes the ``metrics.json`` of the dictionary in ``dictionary_folder``.

    ``<run>/train/saes/<name>`` (a ``saescope run`` folder) -> ``<run>/eval/<name>``;
    ``<training>/saes/<name>`` (``saescope train --out <training>``) -> ``<training>/eval/<name>``;
    a dictionary folder outside any ``saes/`` folder keeps its metrics beside its weights (it has no run)."""
    if dictionary_folder.parent.name != SAES:
        return dictionary_folder
    training = dictionary_folder.parent.parent
    run = training
    if training.name == TRAINING_IN_RUN and (training.parent / RUN_CONFIG).is_file():
        run = training.parent
    return run / EVAL / dictionary_folder.name


def metrics_path(dictionary_folder: Path) -> Path | None:
    """The ``metrics.json`` of a dictionary: in its eval folder, else beside its weights (runs made before the
    eval folder existed); None when it has not been evaluated."""
    for candidate in (eval_folder(dictionary_folder) / METRICS, dictionary_folder / METRICS):
        if candidate.is_file():
            return candidate
    return None


def write_metrics(folder: Path, metrics: dict[str, Any]) -> Path:
    """Write one dictionary's evaluation ``metrics`` as ``folder/metrics.json`` (atomically); returns the path.
    ``folder`` is the dictionary's eval folder (:func:`eval_folder`) or one the user chose."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / METRICS
    atomic_write_json(path, metrics)
    return path


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class TrainedSAE(HoldsSites):
    """One trained dictionary folder, read but not yet loaded."""

    name: str
    folder: Path
    #: Where it reads and writes. A transcoder's output site is ``site_out`` in config.json, else (for a non-SAE
    #: dictionary reading ``mlp_in``) the MLP output of the same layer.
    sites: DictionarySites
    dictionary: DictionaryConfig
    norm_scale: float
    #: Scale of the target site for transcoders trained with their own target scale; else ``norm_scale``.
    norm_scale_out: float
    l0: float
    l0_source: str
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    #: Each input layer's scale of a multi-layer dictionary (CLT, crosscoder); () for one layer.
    norm_scales: tuple[float, ...] = ()
    #: Each output layer's scale when the targets were divided by their own scale; () = ``norm_scales``.
    norm_scales_out: tuple[float, ...] = ()

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

    @property
    def eval_folder(self) -> Path:
        """Where evaluation writes its ``metrics.json`` (:func:`eval_folder`)."""
        return eval_folder(self.folder)

    def training_space(self) -> AnyDictionary:
        """The dictionary as trained (inputs divided by C), checked against its recorded checksum."""
        path = self.folder / WEIGHTS
        if not path.is_file():
            raise DictionaryFormatError(f"{path} is missing")
        verify_checksum(path, _WRITE_AGAIN)
        try:
            state = load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise DictionaryFormatError(f"{path} is not a readable safetensors file: {error}") from error
        with torch.device("meta"):
            sae = build_any_dictionary(self.dictionary)
        try:
            sae.load_state_dict(state, assign=True)
        except RuntimeError as error:
            raise DictionaryFormatError(f"{path} does not match its config.json dictionary: {error}") from error
        return sae.eval()

    def raw_space(self) -> AnyDictionary:
        """The dictionary with C and b_dec folded in (method §2.7): it reads raw activations."""
        sae = self.training_space()
        if isinstance(sae, CrossLayerDictionary):  # each target was divided by its input layer's scale
            return sae.fold_normalisation(self.norm_scales, self.norm_scales_out or self.norm_scales).eval()
        return sae.fold_normalisation(self.norm_scale, self.norm_scale_out).eval()


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


def _layer_scales(
    config: dict[str, Any], key: str, n_layers: int, config_path: Path, missing: str
) -> tuple[float, ...]:
    """``config[key]``: ``n_layers`` scales > 0; DictionaryFormatError naming the file and field otherwise."""
    try:
        scales = tuple(float(scale) for scale in config[key])
    except (KeyError, TypeError, ValueError) as error:
        raise DictionaryFormatError(f"{config_path}: {missing}") from error
    if len(scales) != n_layers or min(scales) <= 0:
        what = "'layers' and 'norm_scales'" if key == "norm_scales" else f"'{key}'"
        raise DictionaryFormatError(f"{config_path}: {what} must hold {n_layers} entries (scales > 0)")
    return scales


def _read_sites(config: dict[str, Any], dictionary: DictionaryConfig, config_path: Path) -> DictionarySites:
    try:
        site = Site.parse(str(config["site"]))
    except (KeyError, TypeError, ValueError) as error:
        raise DictionaryFormatError(f"{config_path}: cannot read site/dictionary/norm_scale: {error}") from error
    site_out: Site | None = None
    if config.get("site_out"):
        site_out = Site.parse(str(config["site_out"]))
    elif site.kind is SiteKind.MLP_IN and not dictionary.is_sae:  # a GS transcoder without a recorded target
        site_out = Site(site.layer, SiteKind.MLP)
    layers: tuple[int, ...] = ()
    if dictionary.n_layers > 1:
        try:
            layers = tuple(int(layer) for layer in config["layers"])
        except (KeyError, TypeError, ValueError) as error:
            raise DictionaryFormatError(
                f"{config_path}: a multi-layer dictionary needs 'layers' and 'norm_scales'"
            ) from error
    return DictionarySites(site, site_out, layers)


def _read_l0(folder: Path, config: dict[str, Any], metrics: dict[str, Any] | None) -> tuple[float, str]:
    l0 = _heldout_l0(metrics)
    if l0 is not None:
        return l0, L0_FROM_METRICS
    final = config.get("final_batch_metrics")
    l0 = _number(final.get("l0")) if isinstance(final, dict) else None
    if l0 is None:
        raise DictionaryFormatError(
            f"{folder}: no L0 to name the release folder with: neither {eval_folder(folder) / METRICS} nor "
            f"{folder / CONFIG}['final_batch_metrics'] has an 'l0'"
        )
    return l0, L0_FROM_TRAINING


def read_trained_sae(folder: Path) -> TrainedSAE:
    """Read one ``<training>/saes/<name>/`` folder and its metrics; DictionaryFormatError naming the file on any
    problem."""
    config_path = folder / CONFIG
    config = read_json_object(config_path)
    if config.get("format") != DICTIONARY_FORMAT:
        raise DictionaryFormatError(
            f"{config_path}: format is {config.get('format')!r}, expected {DICTIONARY_FORMAT!r}"
        )
    config = DICTIONARY_CONFIG_SCHEMA.migrate(config, origin=str(config_path))
    try:
        dictionary = DictionaryConfig.from_dict(config["dictionary"])
        norm_scale = _number(config["norm_scale"])
    except (KeyError, TypeError, ValueError) as error:
        raise DictionaryFormatError(f"{config_path}: cannot read site/dictionary/norm_scale: {error}") from error
    sites = _read_sites(config, dictionary, config_path)
    if norm_scale is None or norm_scale <= 0:
        raise DictionaryFormatError(
            f"{config_path}: norm_scale must be a positive number; got {config['norm_scale']!r}"
        )
    norm_scale_out = _number(config.get("norm_scale_out", norm_scale))
    if norm_scale_out is None or norm_scale_out <= 0:
        raise DictionaryFormatError(f"{config_path}: norm_scale_out must be a positive number")
    n_layers = dictionary.n_layers
    scales: tuple[float, ...] = ()
    scales_out: tuple[float, ...] = ()
    if n_layers > 1:
        needs = "a multi-layer dictionary needs 'layers' and 'norm_scales'"
        scales = _layer_scales(config, "norm_scales", n_layers, config_path, needs)
        if len(sites.layers) != n_layers:
            raise DictionaryFormatError(
                f"{config_path}: 'layers' and 'norm_scales' must hold {n_layers} entries (scales > 0)"
            )
    if n_layers > 1 and "norm_scales_out" in config:
        listing = "'norm_scales_out' must be a list of numbers"
        scales_out = _layer_scales(config, "norm_scales_out", n_layers, config_path, listing)
    found = metrics_path(folder)
    metrics = read_json_object(found) if found is not None else None
    l0, source = _read_l0(folder, config, metrics)
    name = str(config.get("name") or folder.name)
    return TrainedSAE(
        name, folder, sites, dictionary, norm_scale, norm_scale_out, l0, source, config, metrics, scales, scales_out
    )  # fmt: skip


def is_dictionary_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a saescope dictionary (its weights and config.json)."""
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def read_suite(run: Path) -> list[TrainedSAE]:
    """Every trained dictionary of a training folder (``<training>/saes/*/``), sorted by (site, width, L0, name).

    ``run`` may also be one dictionary folder or a folder of dictionary folders.
    """
    if not run.exists():
        raise FileNotFoundError(f"{run} does not exist")
    if is_dictionary_folder(run):
        folders = [run]
    else:
        parent = run / SAES if (run / SAES).is_dir() else run
        folders = sorted(p for p in parent.iterdir() if p.is_dir() and (p / CONFIG).is_file())
    if not folders:
        raise DictionaryFormatError(
            f"{run} holds no trained dictionary: expected {run}/{SAES}/<name>/{{{WEIGHTS},{CONFIG}}} "
            "as written by `saescope train`"
        )
    entries = [read_trained_sae(folder) for folder in folders]
    return sorted(entries, key=lambda e: (e.site, e.width, e.l0, e.name))

"""Which dictionaries the explorer indexes, read from a run, a training folder, dictionary folders or a release.

* a run folder (``runs/<name>``, made by ``saescope run``): ``train/saes/*`` with their ``metrics.json``
  (``eval/<name>/``, or beside the weights in runs made before the eval folder existed),
  the model and corpus of ``run_config.json``, and the report plots of ``report/``;
* a training folder holding ``saes/`` (``saescope train``), or one dictionary folder;
* a release (``saescope export``, Gemma Scope 1/2, SAELens): every dictionary folder below it. A release
  root holding several formats of the same SAEs (``gemmascope/``, ``gemmascope2/``, ``saelens/``) is read
  through one of them only (:data:`RELEASE_FORMAT_PREFERENCE`), so no SAE is indexed twice.

Every dictionary comes back in raw activation space (normalisation folded in, method §2.7) with a name that
is unique in the set and safe in a URL, since feature pages are addressed by it. A multi-layer dictionary (CLT,
crosscoder) comes back as one :class:`Dictionary` per block, named ``<name>.layer_<L>``: block i is a JumpReLU
reading input site i and writing output site i, and it carries its cross decoders to the later output sites,
so its latents are browsed like any other and their pages can say where they write and how strongly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.dictionaries.folder import SAES, is_dictionary_folder, read_suite
from saescope.dictionaries.folder import WEIGHTS as SAESCOPE_WEIGHTS
from saescope.dictionaries.sites import DictionarySites, HoldsSites
from saescope.models.sites import Site
from saescope.release import load_sae
from saescope.release.common import ReleaseFormatError
from saescope.release.gemmascope import GS1_PARAMS, GS2_PARAMS
from saescope.release.multilayer import BLOCK_FILE_GLOB
from saescope.release.saelens import SAELENS_CONFIG, SAELENS_WEIGHTS
from saescope.sae import AnyDictionary, CrossLayerDictionary, SparseDictionary

#: A release root written with several formats is read through the first of these it holds.
RELEASE_FORMAT_PREFERENCE = ("gemmascope2", "saelens", "gemmascope")
#: Files whose presence makes a folder a dictionary folder for :func:`saescope.release.load_sae`.
_DICTIONARY_MARKERS = (
    GS1_PARAMS, GS2_PARAMS, BLOCK_FILE_GLOB, SAELENS_CONFIG, SAELENS_WEIGHTS, SAESCOPE_WEIGHTS,
)  # fmt: skip
#: What a dictionary name may contain: it is part of every feature page's URL.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
RUN_CONFIG = "run_config.json"


@dataclass(frozen=True)
class Dictionary(HoldsSites):
    """One dictionary to index, in raw activation space: a single-layer one, or one block of a multi-layer one."""

    name: str
    sites: DictionarySites
    """Where it reads and writes: ``site_out`` is ``site`` for an SAE, the target site for a transcoder, output
    site i for block i."""
    sae: SparseDictionary
    folder: Path
    metrics: dict[str, Any] | None = None
    """Its evaluation metrics (``metrics.json`` as :func:`saescope.eval.evaluate` writes it), when known; for a
    block, its layer's entries of the multi-layer dictionary's (see :func:`block_metrics`)."""
    cross_decoders: tuple[tuple[Site, Tensor], ...] = field(default=(), compare=False)
    """A block's writes to the later output sites: (site j, ``W_dec_{i→j}`` (F, d_out)) for j = i+1 .. n−1."""
    parent: str | None = None
    """The name of the multi-layer dictionary this is a block of; None for a single-layer dictionary."""

    @property
    def site_out(self) -> Site:
        """Where it writes (``site`` for an SAE)."""
        return self.sites.output_sites[0]

    @property
    def writes(self) -> tuple[tuple[Site, Tensor], ...]:
        """Every site its latents write and the decoder (F, d_out) they write with: its own first."""
        return ((self.site_out, self.sae.W_dec_FD), *self.cross_decoders)

    def to(self, device: torch.device) -> Dictionary:
        """This dictionary with its weights (cross decoders included) on ``device``, in eval mode."""
        moved = tuple((site, W_FD.to(device)) for site, W_FD in self.cross_decoders)
        return dataclasses.replace(self, sae=self.sae.to(device).eval(), cross_decoders=moved)


@dataclass(frozen=True)
class DictionarySet:
    """The dictionaries of one run or release, and what the folder says about how they were made."""

    kind: str
    """'run', 'training' or 'release'."""
    root: Path
    dictionaries: list[Dictionary]
    model: str | None
    """The model they belong to, when the files say so."""
    run_config: dict[str, Any] | None
    """``run_config.json`` of a run folder (its corpus and context size are the index's defaults)."""
    report_dir: Path | None
    """The run's evaluation report folder (its PNG plots are shown on the suite overview)."""


def safe_name(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_.-]`` replaced by one '-'."""
    name = _UNSAFE.sub("-", text).strip("-.") or "dictionary"
    return name[:200]


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}-{count + 1}")
    return unique


def block_metrics(metrics: dict[str, Any] | None, block: Dictionary) -> dict[str, Any] | None:
    """A block's metrics from its multi-layer dictionary's ``metrics``: the entries for the block's output site
    (``reconstruction`` and ``lm_loss`` ``by_output_site``: the block's own L0, output L rebuilt from the blocks
    ≤ L, layer L spliced alone), and the whole dictionary's headline (every output replaced at once) under
    ``replacement_model``. None when the file has no entry for that site."""
    if metrics is None:
        return None
    reconstruction = _output_site_entry(metrics.get("reconstruction"), block.site_out)
    if reconstruction is None:
        return None
    headline = {key: _headline(metrics.get(key)) for key in ("reconstruction", "lm_loss")}
    return {
        **{key: value for key, value in metrics.items() if key != "layers"},  # "layers" marks a whole-model row
        "site": block.site.id, "site_out": block.site_out.id, "width": block.sae.config.width,
        "reconstruction": reconstruction, "lm_loss": _output_site_entry(metrics.get("lm_loss"), block.site_out),
        "replacement_model": {"name": block.parent, "layers": metrics.get("layers"), **headline},
    }  # fmt: skip


def _output_site_entry(group: object, site: Site) -> dict[str, Any] | None:
    entry = group.get("by_output_site", {}).get(site.id) if isinstance(group, dict) else None
    return entry if isinstance(entry, dict) else None


def _headline(group: object) -> object:
    """A metrics group without its per-layer entries."""
    return {k: v for k, v in group.items() if k != "by_output_site"} if isinstance(group, dict) else group


def expand_dictionary(
    name: str, sae: AnyDictionary, sites: DictionarySites, folder: Path, metrics: dict[str, Any] | None
) -> list[Dictionary]:
    """``sae`` (reading and writing ``sites``) as the explorer's dictionaries: itself, or one per block of a
    multi-layer dictionary (block i named ``<name>.layer_<L>``, L the layer of its input site, with its cross
    decoders to every later site)."""
    input_sites, output_sites = sites.input_sites, sites.output_sites
    if not isinstance(sae, CrossLayerDictionary):
        return [Dictionary(name, DictionarySites(input_sites[0], output_sites[0]), sae, folder, metrics)]
    n = sae.n_layers
    if len(input_sites) != n or len(output_sites) != n:
        raise ReleaseFormatError(
            f"{folder}: a dictionary of {n} layers needs {n} input and output sites; its files name "
            f"{[s.id for s in input_sites]} and {[s.id for s in output_sites]}"
        )
    blocks = []
    for i in range(n):
        cross = tuple((output_sites[j], sae.decoder_to(i, j).detach()) for j in range(i + 1, n))
        sites = DictionarySites(input_sites[i], output_sites[i])
        block_name = safe_name(f"{name}.layer_{input_sites[i].layer}")
        block = Dictionary(block_name, sites, sae.block(i), folder, cross_decoders=cross, parent=name)
        blocks.append(dataclasses.replace(block, metrics=block_metrics(metrics, block)))
    return blocks


def _uniquely_named(dictionaries: list[Dictionary]) -> list[Dictionary]:
    """Block names (``<name>.layer_<L>``) can meet another dictionary's name: make every name unique."""
    names = _unique([d.name for d in dictionaries])
    return [dataclasses.replace(d, name=name) for d, name in zip(dictionaries, names, strict=True)]


def _from_training(training: Path) -> list[Dictionary]:
    entries = read_suite(training)
    names = _unique([safe_name(entry.name) for entry in entries])
    dictionaries: list[Dictionary] = []
    for name, entry in zip(names, entries, strict=True):
        sae = entry.raw_space()
        dictionaries += expand_dictionary(name, sae, entry.sites, entry.folder, entry.metrics)
    return _uniquely_named(dictionaries)


def _release_folders(root: Path) -> list[Path]:
    for format_id in RELEASE_FORMAT_PREFERENCE:
        if (root / format_id).is_dir():
            root = root / format_id
            break
    folders = {path.parent for marker in _DICTIONARY_MARKERS for path in root.rglob(marker)}
    return sorted(folders)


def _from_release(root: Path) -> tuple[list[Dictionary], str | None]:
    folders = _release_folders(root)
    if not folders:
        raise ReleaseFormatError(
            f"{root} holds no dictionary: expected a run folder (runs/<name>), a training folder with saes/, "
            "or a release with Gemma Scope 1/2 or SAELens folders"
        )
    dictionaries: list[Dictionary] = []
    models = set()
    base = root if root.is_dir() else root.parent
    names = _unique([safe_name(folder.relative_to(base).as_posix() or folder.name) for folder in folders])
    for name, folder in zip(names, folders, strict=True):
        loaded = load_sae(folder)
        if loaded.sites is None:
            raise ReleaseFormatError(f"{folder}: its files do not say which site it reads, so it cannot be indexed")
        if loaded.model_name:
            models.add(loaded.model_name)
        metrics = loaded.metadata.get("metrics")
        own_metrics = metrics if isinstance(metrics, dict) else None
        dictionaries += expand_dictionary(name, loaded.sae.eval(), loaded.sites, folder, own_metrics)
    return _uniquely_named(dictionaries), (models.pop() if len(models) == 1 else None)


def read_dictionaries(path: Path) -> DictionarySet:
    """Every dictionary under ``path`` (see the module docstring), loaded in raw activation space."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / "train" / "saes").is_dir():
        config_path = path / RUN_CONFIG
        run_config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
        model = str(run_config["model"]) if run_config and run_config.get("model") else None
        report = path / "report"
        return DictionarySet(
            "run", path, _from_training(path / "train"), model, run_config, report if report.is_dir() else None
        )
    if (path / SAES).is_dir() or is_dictionary_folder(path):
        dictionaries = _from_training(path)
        models = {str(d.metrics.get("model")) for d in dictionaries if d.metrics and d.metrics.get("model")}
        return DictionarySet("training", path, dictionaries, models.pop() if len(models) == 1 else None, None, None)
    dictionaries, model = _from_release(path)
    return DictionarySet("release", path, dictionaries, model, None, None)

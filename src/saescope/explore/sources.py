"""Which dictionaries the explorer indexes, read from a run, a training folder, dictionary folders or a release.

* a run folder (``runs/<name>``, made by ``saescope run``): ``train/saes/*`` with their ``metrics.json``,
  the model and corpus of ``run_config.json``, and the report plots of ``report/``;
* a training folder holding ``saes/`` (``saescope train``), or one dictionary folder;
* a release (``saescope export``, Gemma Scope 1/2, SAELens): every dictionary folder below it. A release
  root holding several formats of the same SAEs (``gemmascope/``, ``gemmascope2/``, ``saelens/``) is read
  through one of them only (:data:`RELEASE_FORMAT_PREFERENCE`), so no SAE is indexed twice.

Every dictionary comes back in raw activation space (normalisation folded in, SPEC §2.7) with a name that
is unique in the set and safe in a URL, since feature pages are addressed by it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.models.sites import Site
from saescope.release import load_sae, read_suite
from saescope.release.common import ReleaseFormatError
from saescope.release.gemmascope import GS1_PARAMS, GS2_PARAMS
from saescope.release.saelens import SAELENS_CONFIG, SAELENS_WEIGHTS
from saescope.release.suite import CONFIG as SAESCOPE_CONFIG
from saescope.release.suite import WEIGHTS as SAESCOPE_WEIGHTS
from saescope.sae import SparseDictionary

#: A release root written with several formats is read through the first of these it holds.
RELEASE_FORMAT_PREFERENCE = ("gemmascope2", "saelens", "gemmascope")
#: Files whose presence makes a folder a dictionary folder for :func:`saescope.release.load_sae`.
_DICTIONARY_MARKERS = (GS1_PARAMS, GS2_PARAMS, SAELENS_CONFIG, SAELENS_WEIGHTS, SAESCOPE_WEIGHTS)
#: What a dictionary name may contain: it is part of every feature page's URL.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
RUN_CONFIG = "run_config.json"


@dataclass(frozen=True)
class Dictionary:
    """One dictionary to index, in raw activation space."""

    name: str
    site: Site
    """Where it reads."""
    site_out: Site
    """Where it writes: ``site`` for an SAE, the target site for a transcoder."""
    sae: SparseDictionary
    folder: Path
    metrics: dict[str, Any] | None = None
    """Its evaluation metrics (``metrics.json`` as :func:`saescope.eval.evaluate` writes it), when known."""


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


def _from_training(training: Path) -> list[Dictionary]:
    entries = read_suite(training)
    names = _unique([safe_name(entry.name) for entry in entries])
    return [
        Dictionary(name, entry.site, entry.site_out or entry.site, entry.raw_space(), entry.folder, entry.metrics)
        for name, entry in zip(names, entries, strict=True)
    ]


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
    dictionaries, models = [], set()
    base = root if root.is_dir() else root.parent
    names = _unique([safe_name(folder.relative_to(base).as_posix() or folder.name) for folder in folders])
    for name, folder in zip(names, folders, strict=True):
        loaded = load_sae(folder)
        if loaded.site is None:
            raise ReleaseFormatError(f"{folder}: its files do not say which site it reads, so it cannot be indexed")
        if loaded.model_name:
            models.add(loaded.model_name)
        metrics = loaded.metadata.get("metrics")
        dictionaries.append(
            Dictionary(
                name, loaded.site, loaded.site_out or loaded.site, loaded.sae.eval(), folder,
                metrics if isinstance(metrics, dict) else None,
            )
        )  # fmt: skip
    return dictionaries, (models.pop() if len(models) == 1 else None)


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
    if (path / "saes").is_dir() or ((path / SAESCOPE_CONFIG).is_file() and (path / SAESCOPE_WEIGHTS).is_file()):
        dictionaries = _from_training(path)
        models = {str(d.metrics.get("model")) for d in dictionaries if d.metrics and d.metrics.get("model")}
        return DictionarySet("training", path, dictionaries, models.pop() if len(models) == 1 else None, None, None)
    dictionaries, model = _from_release(path)
    return DictionarySet("release", path, dictionaries, model, None, None)

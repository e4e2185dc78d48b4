"""Export a trained suite as a release folder: one or all formats, a model card, a checksum manifest.

The release folder is written in a staging folder and moved into place in one rename
(:func:`saescope.atomic.atomic_directory`), with ``SAESCOPE_MANIFEST.json`` listing every file's size and
SHA-256; :func:`saescope.release.load_sae` checks a file against it before reading.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saescope.atomic import MANIFEST_NAME, atomic_directory
from saescope.models.loading import DEFAULT_MODEL
from saescope.release.cards import write_model_card
from saescope.release.common import DEFAULT_MODEL_TYPE, ReleaseExportError
from saescope.release.gemmascope import export_gemmascope, export_gemmascope2
from saescope.release.multilayer import export_multi_layer
from saescope.release.saelens import export_saelens
from saescope.release.suite import ExportedSAE, TrainedSAE, read_suite

FORMATS: tuple[str, ...] = ("gemmascope", "gemmascope2", "saelens")
RELEASE_FORMAT = "saescope-release-v1"
CARD = "README.md"


@dataclass
class ReleaseSummary:
    """What :func:`export_release` wrote."""

    out: Path
    model_name: str
    exported: dict[str, list[ExportedSAE]]
    """format id -> the dictionaries written in it (paths relative to that format's folder)."""
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """(dictionary name, format id, reason) for each dictionary a format cannot hold."""
    format_dirs: dict[str, Path] = field(default_factory=dict)
    """format id -> its folder (``out`` itself when one format was asked for)."""


def unsupported_reason(entry: TrainedSAE, format_id: str) -> str | None:
    """Why ``entry`` cannot be written in ``format_id``, or None when it can."""
    if entry.is_multi_layer and format_id != "gemmascope2":
        return "only the Gemma Scope 2 layout has multi-layer folders (clt/, crosscoder/); use gemmascope2"
    if entry.dictionary.architecture == "topk":
        return "TopK has no per-latent threshold, so it has no JumpReLU form"
    if format_id == "gemmascope" and entry.dictionary.skip:
        return "Gemma Scope 1's params.npz has no skip connection (use gemmascope2 or saelens)"
    return None


def _model_name(entries: Sequence[TrainedSAE], model_name: str | None) -> str:
    if model_name:
        return model_name
    recorded = sorted(
        {str(e.config["model"]) for e in entries if e.config.get("model")}
        | {str(e.metrics["model"]) for e in entries if e.metrics and e.metrics.get("model")}
    )
    if len(recorded) == 1:
        return recorded[0]
    if len(recorded) > 1:
        raise ReleaseExportError(f"the run's dictionaries come from several models {recorded}; pass --model-name")
    return DEFAULT_MODEL


def _check_target(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier saescope release (atomic_directory replaces it)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ReleaseExportError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    manifest = out / MANIFEST_NAME
    try:
        is_release = json.loads(manifest.read_text(encoding="utf-8")).get("format") == RELEASE_FORMAT
    except (OSError, ValueError, AttributeError):
        is_release = False
    if not is_release:
        raise ReleaseExportError(
            f"{out} exists and is not a saescope release folder; choose a new or empty --out (an earlier release "
            "folder is replaced as a whole)"
        )


def export_release(
    run: Path,
    out: Path,
    formats: Sequence[str] = FORMATS,
    *,
    model_name: str | None = None,
    model_type: str = DEFAULT_MODEL_TYPE,
    training_data: str | None = None,
) -> ReleaseSummary:
    """Export every dictionary of ``run`` in ``formats`` into ``out`` (``out/<format>/`` when several).

    ``model_name`` defaults to the ``model`` recorded in the dictionaries' config.json or metrics.json,
    else saescope's embedded default model. ``model_type`` picks the site table that spells the HF hook strings of GS2
    configs and SAELens metadata (``gemma3_text``: the embedded Gemma 3 270M).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ReleaseExportError(f"unknown release format(s) {unknown}; choose from {list(FORMATS)}")
    formats = list(dict.fromkeys(formats))
    entries = read_suite(run)
    name = _model_name(entries, model_name)
    _check_target(out)
    summary = ReleaseSummary(out, name, {})
    extra = {"format": RELEASE_FORMAT, "formats": formats, "model_name": name, "run": str(run)}
    with atomic_directory(out, manifest_extra=extra) as staging:
        for format_id in formats:
            subdir = staging / format_id if len(formats) > 1 else staging
            supported = []
            for entry in entries:
                reason = unsupported_reason(entry, format_id)
                if reason is None:
                    supported.append(entry)
                else:
                    summary.skipped.append((entry.name, format_id, reason))
            if format_id == "gemmascope":
                written = export_gemmascope(supported, subdir, model_name=name)
            elif format_id == "gemmascope2":
                single = [entry for entry in supported if not entry.is_multi_layer]
                multi = [entry for entry in supported if entry.is_multi_layer]
                written = export_gemmascope2(single, subdir, model_name=name, model_type=model_type)
                written += export_multi_layer(multi, subdir, model_name=name, model_type=model_type)
            else:
                written = export_saelens(supported, subdir, model_name=name, model_type=model_type)
            summary.exported[format_id] = written
            summary.format_dirs[format_id] = out / format_id if len(formats) > 1 else out
            if written:
                write_model_card(subdir / CARD, {format_id: written}, model_name=name, training_data=training_data)
        if len(formats) > 1:
            write_model_card(staging / CARD, summary.exported, model_name=name, training_data=training_data)
    return summary

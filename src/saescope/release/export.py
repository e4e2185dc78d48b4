"""Export a trained suite as a release folder: one or all formats, a model card, a checksum manifest.

Everything is first written into a staging folder beside ``out``; nothing in ``out`` changes before the whole
export has been written and checked. Then:

* a new (or empty) ``out``: the staging folder, with ``SAESCOPE_MANIFEST.json`` listing every file's size and
  SHA-256, becomes ``out`` in one rename;
* an earlier saescope release: its files stay. New formats go beside the existing ones (``out/<format>/``), a
  format it already holds is written into its folder again, and if any file would be replaced the export stops
  before touching anything and names every such file, unless ``overwrite`` is set. The files are then moved in
  one by one (each an atomic rename) and the manifest, merged with the earlier one, is written last. Files
  saescope did not write in this call -- a user's notes, an earlier export's folders -- are never deleted;
* any other non-empty folder is refused.

:func:`saescope.release.load_sae` checks a file against the manifest before reading.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saescope.atomic import MANIFEST_NAME, atomic_write_json, sha256_file, write_manifest
from saescope.dictionaries.folder import TrainedSAE, read_suite
from saescope.models.loading import DEFAULT_MODEL
from saescope.release.cards import write_model_card
from saescope.release.common import DEFAULT_MODEL_TYPE, ReleaseExportError
from saescope.release.gemmascope import export_gemmascope, export_gemmascope2
from saescope.release.multilayer import export_multi_layer
from saescope.release.saelens import export_saelens
from saescope.release.suite import ExportedSAE

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
    """format id -> its folder (``out`` itself when one format was asked for in a new release)."""
    replaced: list[str] = field(default_factory=list)
    """Files of an earlier export that this one replaced (paths relative to ``out``; only with ``overwrite``)."""
    added_to: bool = False
    """Whether ``out`` was an earlier release that these formats were added to."""


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


@dataclass(frozen=True)
class ExistingRelease:
    """An earlier saescope release in ``out``: its manifest and where each of its formats lives."""

    manifest: dict[str, Any]
    format_dirs: dict[str, str]
    """format id -> folder relative to the release root ("" for the root itself)."""


def _existing_release(out: Path) -> ExistingRelease | None:
    """The earlier release in ``out``; None when ``out`` is missing or empty. Any other content is refused."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ReleaseExportError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return None
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != RELEASE_FORMAT:
        raise ReleaseExportError(
            f"{out} exists and is not a saescope release folder (no {MANIFEST_NAME} of format {RELEASE_FORMAT!r}); "
            "choose a new or empty --out, or an earlier saescope release to add formats to"
        )
    recorded = manifest.get("format_dirs")
    if isinstance(recorded, dict):
        dirs = {str(k): str(v) for k, v in recorded.items()}
    else:  # written before format_dirs was recorded: one format sat in the root, several in <format>/
        formats = [str(f) for f in manifest.get("formats", [])]
        dirs = {f: ("" if len(formats) == 1 else f) for f in formats}
    return ExistingRelease(manifest, dirs)


def _format_dirs(formats: Sequence[str], existing: ExistingRelease | None) -> dict[str, str]:
    """Where each format goes, relative to the release root: the root for a lone format of a new release, else
    ``<format>/``, or the folder an earlier export of that format used."""
    if existing is None:
        return {f: ("" if len(formats) == 1 else f) for f in formats}
    return {f: existing.format_dirs.get(f, f) for f in formats}


def _files_under(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*")) if path.is_file())


def _conflicts(out: Path, relative_files: Sequence[str]) -> tuple[list[str], list[str]]:
    """(files this export would replace, paths in the way that no export may replace: a folder where a file
    goes, or a file where a folder goes), relative to ``out``."""
    replaced: list[str] = []
    blocked: list[str] = []
    for relative in relative_files:
        target = out / relative
        parents = [p for p in target.relative_to(out).parents if p != Path(".")]
        in_the_way = [p.as_posix() for p in parents if (out / p).exists() and not (out / p).is_dir()]
        if in_the_way:
            blocked.append(f"{in_the_way[0]} (a file where {relative} needs a folder)")
        elif target.is_dir():
            blocked.append(f"{relative} (a folder where a file goes)")
        elif target.exists():
            replaced.append(relative)
    return replaced, sorted(set(blocked))


def _conflict_message(out: Path, replaced: Sequence[str], blocked: Sequence[str], overwrite: bool) -> str:
    lines = []
    if blocked:
        lines.append(f"{out} has {len(blocked)} path(s) in the way of this export, which no export replaces:")
        lines += [f"  {path}" for path in blocked]
    if replaced and not overwrite:
        lines.append(f"{out} already holds {len(replaced)} file(s) that this export would replace:")
        lines += [f"  {path}" for path in replaced]
    lines.append(
        f"Nothing was written. Pass --overwrite (overwrite=True) to replace the files listed (nothing else in {out} "
        "is touched), or choose another --out."
        if not blocked
        else "Nothing was written. Move the paths in the way, or choose another --out."
    )
    return "\n".join(lines)


def _merged_manifest(
    out: Path, existing: ExistingRelease, staged: Mapping[str, dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """The earlier manifest's records of files still there, this export's records, and the union of formats."""
    earlier = existing.manifest.get("files", {})
    files = {rel: record for rel, record in earlier.items() if isinstance(rel, str) and (out / rel).is_file()}
    files |= staged
    formats = list(dict.fromkeys([*existing.format_dirs, *extra["formats"]]))
    format_dirs = {**existing.format_dirs, **extra["format_dirs"]}
    return {**existing.manifest, **extra, "files": dict(sorted(files.items())), "formats": formats,
            "format_dirs": format_dirs}  # fmt: skip


def _write_formats(
    staging: Path,
    entries: Sequence[TrainedSAE],
    dirs: Mapping[str, str],
    summary: ReleaseSummary,
    *,
    model_type: str,
    training_data: str | None,
) -> None:
    """Write every format into ``staging/<its dir>`` with its model card; fill ``summary``."""
    name = summary.model_name
    for format_id, relative in dirs.items():
        subdir = staging / relative
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
        summary.format_dirs[format_id] = summary.out / relative if relative else summary.out
        if written:
            write_model_card(subdir / CARD, {format_id: written}, model_name=name, training_data=training_data)


def _move_into(staging: Path, out: Path, relative_files: Sequence[str]) -> None:
    for relative in relative_files:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)


def export_release(
    run: Path,
    out: Path,
    formats: Sequence[str] = FORMATS,
    *,
    model_name: str | None = None,
    model_type: str = DEFAULT_MODEL_TYPE,
    training_data: str | None = None,
    overwrite: bool = False,
) -> ReleaseSummary:
    """Export every dictionary of ``run`` in ``formats`` into ``out`` (``out/<format>/`` when several, or when
    ``out`` already holds another format; see the module docstring for what happens to an existing ``out``).

    ``model_name`` defaults to the ``model`` recorded in the dictionaries' config.json or metrics.json,
    else saescope's embedded default model. ``model_type`` picks the site table that spells the HF hook strings of GS2
    configs and SAELens metadata (``gemma3_text``: the embedded Gemma 3 270M). ``overwrite`` lets this export
    replace files an earlier one wrote at the same paths; without it such files stop the export, named.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ReleaseExportError(f"unknown release format(s) {unknown}; choose from {list(FORMATS)}")
    formats = list(dict.fromkeys(formats))
    entries = read_suite(run)
    name = _model_name(entries, model_name)
    existing = _existing_release(out)
    dirs = _format_dirs(formats, existing)
    summary = ReleaseSummary(out, name, {}, added_to=existing is not None)
    extra = {"format": RELEASE_FORMAT, "formats": formats, "format_dirs": dirs, "model_name": name, "run": str(run)}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()  # not mkdtemp: its 0700 would become the release's mode when it is renamed into place
    try:
        _write_formats(staging, entries, dirs, summary, model_type=model_type, training_data=training_data)
        if len(formats) > 1 and "" not in dirs.values():  # the root is no single format's folder: a card of all
            write_model_card(staging / CARD, summary.exported, model_name=name, training_data=training_data)
        relative_files = [path.relative_to(staging).as_posix() for path in _files_under(staging)]
        replaced, blocked = _conflicts(out, relative_files)
        if blocked or (replaced and not overwrite):
            raise ReleaseExportError(_conflict_message(out, replaced, blocked, overwrite))
        summary.replaced = replaced
        if existing is None:
            write_manifest(staging, extra)
            os.replace(staging, out)  # out is missing or an empty folder: one rename
        else:
            records = {rel: {"size": (staging / rel).stat().st_size, "sha256": sha256_file(staging / rel)}
                       for rel in relative_files}  # fmt: skip
            _move_into(staging, out, relative_files)
            atomic_write_json(out / MANIFEST_NAME, _merged_manifest(out, existing, records, extra))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary

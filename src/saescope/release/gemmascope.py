"""Gemma Scope 1 and Gemma Scope 2 release layouts: write a trained suite, read one SAE back (method §6).

**Gemma Scope 1** (``google/gemma-scope-2b-pt-res``, ``google/gemma-scope-2b-pt-transcoders`` and siblings)::

    <out>/<model>-<res|att|mlp|transcoders>/layer_{L}/width_{W}/average_l0_{N}/params.npz

``params.npz`` holds float32 ``W_enc`` (d, M), ``W_dec`` (M, d), ``b_enc`` (M), ``b_dec`` (d) and
``threshold`` (M) in raw activation space. ``W`` is Gemma Scope's width token (:func:`width_name`:
16384 -> ``16k``, 65536 -> ``65k``, other widths as the plain integer) and ``N`` the SAE's L0 rounded
to an integer (held-out L0 from evaluation when available, see :mod:`saescope.release.suite`). All
metadata lives in the path; there is no config file.

**Gemma Scope 2** (``google/gemma-scope-2-270m-pt`` and siblings)::

    <out>/<resid_post|attn_out|mlp_out|transcoder>_all/layer_{L}_width_{W}_l0_{label}[_affine]/
        params.safetensors   float32 w_enc, w_dec, b_enc, b_dec, threshold [, affine_skip_connection (d_in, d_out)]
        config.json          hf_hook_point_in, hf_hook_point_out, width, model_name, architecture ("jump_relu"),
                             l0, affine_connection, type ("sae" | "transcoder"); saescope adds l0_measured

``label`` is ``small`` (L0 <= 20), ``medium`` (<= 60) or ``big`` (> 60) from the measured L0
(:func:`l0_label`). ``config.json["l0"]`` is what GS2 writes there, an integer *target*: the dictionary's
recorded ``target_l0`` rounded, else the label's nominal target (:data:`L0_LABEL_TARGETS`); the measured L0
is kept as ``l0_measured``. ``model_name`` is the official id of the original model (the embedded
``gemma-3-270m`` is written ``google/gemma-3-270m-pt``, as GS2 writes it). ``_affine`` marks skip
transcoders, as in GS2: a transcoder and a skip transcoder at one layer, width and label are
``..._l0_small`` and ``..._l0_small_affine``.

Name collisions: when two dictionaries would get the same folder (same site, layer, width and rounded L0 in
GS1, or the same L0 label and skip connection in GS2), every one of them gets a suffix ``_1``, ``_2``, ...
numbered by ascending L0, then dictionary name. For GS2 the suffix goes after the label and before ``_affine``
(``layer_6_width_16k_l0_small_2``).
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from saescope.atomic import atomic_write_checksummed, atomic_write_json
from saescope.dictionaries.folder import TrainedSAE
from saescope.models.loading import gemma_scope_model_id
from saescope.models.sites import Site, SiteKind
from saescope.release.common import (
    DEFAULT_MODEL_TYPE,
    GS1_TRANSCODER_REPO_SUFFIX,
    SITE_FOLDER_NAMES,
    TRANSCODER_FOLDER_NAME,
    LoadedSAE,
    ReleaseExportError,
    ReleaseFormatError,
    ReleaseParams,
    gs2_l0_value,
    hf_hook_point,
    l0_label,
    loaded_from_params,
    read_json_object,
    read_sites,
    read_tensor_file,
    site_from_hf_hook,
    unique_folder_names,
)
from saescope.release.suite import ExportedSAE
from saescope.sae.widths import parse_width_name, width_name

GS1_PARAMS = "params.npz"
GS2_PARAMS = "params.safetensors"
GS2_CONFIG = "config.json"

_GS1_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_GS2_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
_GS2_SKIP = "affine_skip_connection"


# ------------------------------------------------------------------------------------------------
# Folder names
# ------------------------------------------------------------------------------------------------


def gs1_repo_name(entry: TrainedSAE, model_name: str) -> str:
    """``<model>-<res|att|mlp|transcoders>`` (GS1 ships one Hub repo per model and site kind)."""
    kind = GS1_TRANSCODER_REPO_SUFFIX if entry.is_transcoder else SITE_FOLDER_NAMES[entry.site.kind][0]
    return f"{model_name.rstrip('/').rsplit('/', 1)[-1]}-{kind}"


def gs1_folders(entries: Sequence[TrainedSAE], model_name: str) -> list[Path]:
    def base(e: TrainedSAE) -> str:
        return (
            f"{gs1_repo_name(e, model_name)}/layer_{e.site.layer}/width_{width_name(e.width)}/average_l0_{round(e.l0)}"
        )

    names = unique_folder_names(entries, base, lambda e: (e.l0, e.name))
    return [Path(name) for name in names]


def gs2_site_folder(entry: TrainedSAE) -> str:
    kind = TRANSCODER_FOLDER_NAME if entry.is_transcoder else SITE_FOLDER_NAMES[entry.site.kind][1]
    return f"{kind}_all"


def gs2_folders(entries: Sequence[TrainedSAE]) -> list[Path]:
    def base(e: TrainedSAE) -> str:
        return f"{gs2_site_folder(e)}/layer_{e.site.layer}_width_{width_name(e.width)}_l0_{l0_label(e.l0)}"

    def affine(e: TrainedSAE) -> str:
        return "_affine" if e.dictionary.skip else ""

    return [Path(name) for name in unique_folder_names(entries, base, lambda e: (e.l0, e.name), affine)]


# ------------------------------------------------------------------------------------------------
# Gemma Scope 1: params.npz
# ------------------------------------------------------------------------------------------------


def write_gemmascope_npz(path: Path, params: ReleaseParams) -> None:
    """Write a GS1 ``params.npz`` (five float32 arrays, uppercase ``W_`` keys), atomically."""
    if params.W_skip is not None:
        raise ReleaseExportError(
            f"{path}: Gemma Scope 1's params.npz has no skip connection; write skip transcoders in the GS2 layout"
        )
    arrays = {key: getattr(params, key).numpy() for key in _GS1_KEYS}
    atomic_write_checksummed(path, lambda handle: np.savez(handle, **arrays))


def read_gemmascope_npz(path: Path) -> ReleaseParams:
    """Read a GS1 ``params.npz``; keys ``W_enc``/``w_enc`` both accepted (GS1 transcoders vary)."""
    if not path.is_file():
        raise ReleaseFormatError(f"{path} is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise ReleaseFormatError(f"{path} is not a readable .npz file (truncated or corrupt?): {error}") from error
    tensors: dict[str, torch.Tensor | None] = {}
    lower = {name.lower(): name for name in arrays}
    for key in _GS1_KEYS:
        name = lower.get(key.lower())
        if name is None:
            raise ReleaseFormatError(f"{path}: the array {key!r} is missing; the file has {sorted(arrays)}")
        array = arrays[name]
        if array.dtype.kind not in "fiu":
            raise ReleaseFormatError(f"{path}: the array {name!r} is not numeric (dtype {array.dtype}; corrupt file?)")
        tensors[key] = torch.from_numpy(np.array(array, dtype=np.float32))
    return ReleaseParams.from_tensors(tensors, path)


_GS1_LEAF = re.compile(r"^average_l0_(\d+)(?:_\d+)?$")
_GS1_HUB_REPO = re.compile(r"^gemma-scope-(\d+b)-(pt|it)-(\w+)$")
#: GS1 repo suffix -> (input site kind, output site kind or None for an SAE).
_GS1_KINDS: dict[str, tuple[SiteKind, SiteKind | None]] = {
    **{names[0]: (kind, None) for kind, names in SITE_FOLDER_NAMES.items()},
    "transcoder": (SiteKind.MLP_IN, SiteKind.MLP),
    "transcoders": (SiteKind.MLP_IN, SiteKind.MLP),
}


def _model_from_repo(repo: str) -> tuple[str | None, str | None]:
    """``gemma-scope-2b-pt-res`` -> ('gemma-2-2b', 'res'); ``gemma-3-270m-res`` -> ('gemma-3-270m', 'res')."""
    hub = _GS1_HUB_REPO.match(repo)
    if hub is not None:
        size, variant, kind = hub.groups()
        return f"gemma-2-{size}" + ("-it" if variant == "it" else ""), kind
    model, sep, kind = repo.rpartition("-")
    return (model or None, kind) if sep else (None, None)


def read_gemmascope_folder(folder: Path, *, repo_name: str | None = None) -> LoadedSAE:
    """Read ``.../<model>-<kind>/layer_{L}/width_{W}/average_l0_{N}/params.npz``; the site, model, width
    and L0 come from the path where it has that shape, and the width is checked against the arrays.
    ``repo_name`` replaces the ``<model>-<kind>`` folder name (a Hub download's folder is a hash)."""
    path = folder / GS1_PARAMS
    params = read_gemmascope_npz(path)
    metadata: dict[str, Any] = {"path": str(folder)}
    site = site_out = None
    model_name = None
    leaf = _GS1_LEAF.match(folder.name)
    if leaf is not None:
        metadata["average_l0"] = int(leaf.group(1))
    width_dir = folder.parent.name
    if width_dir.startswith("width_"):
        try:
            named_width = parse_width_name(width_dir[len("width_") :])
        except ValueError as error:
            raise ReleaseFormatError(f"{folder}: {error}") from error
        metadata["width_name"] = width_dir[len("width_") :]
        if named_width != params.width:
            raise ReleaseFormatError(
                f"{path}: the folder says {width_dir} ({named_width} latents) but W_enc has {params.width} columns"
            )
    layer_match = re.fullmatch(r"layer_(\d+)", folder.parent.parent.name)
    if layer_match is not None:
        layer = int(layer_match.group(1))
        model_name, kind = _model_from_repo(repo_name or folder.parent.parent.parent.name)
        if kind in _GS1_KINDS:
            kind_in, kind_out = _GS1_KINDS[kind]
            site = Site(layer, kind_in)
            site_out = Site(layer, kind_out) if kind_out is not None else None
        else:
            model_name = None
    metadata["type"] = "transcoder" if site_out is not None else "sae"
    return loaded_from_params(params, read_sites(site, site_out), model_name, "gemmascope", metadata)


# ------------------------------------------------------------------------------------------------
# Gemma Scope 2: params.safetensors + config.json
# ------------------------------------------------------------------------------------------------


def gs2_config(
    params: ReleaseParams,
    *,
    site: Site,
    site_out: Site | None,
    model_name: str,
    l0: float,
    model_type: str = DEFAULT_MODEL_TYPE,
    target_l0: float | None = None,
) -> dict[str, Any]:
    """The GS2 ``config.json`` keys for one dictionary: ``l0`` the integer target as GS2 writes it
    (:func:`gs2_l0_value`), ``l0_measured`` the measured ``l0``, ``model_name`` the official id
    (:func:`gemma_scope_model_id`), ``width`` an int."""
    transcoder = site_out is not None and site_out != site
    hook_in = hf_hook_point(site, model_type)
    return {
        "hf_hook_point_in": hook_in,
        "hf_hook_point_out": hf_hook_point(site_out, model_type) if transcoder and site_out else hook_in,
        "width": params.width,
        "model_name": gemma_scope_model_id(model_name),
        "architecture": "jump_relu",
        "l0": gs2_l0_value(l0, target_l0),
        "l0_measured": round(l0, 2),
        "affine_connection": params.W_skip is not None,
        "type": "transcoder" if transcoder else "sae",
    }


def write_gemmascope2_folder(folder: Path, params: ReleaseParams, config: dict[str, Any]) -> None:
    """Write a GS2 SAE folder: ``params.safetensors`` (lowercase keys) and ``config.json``, atomically."""
    tensors = {gs2: getattr(params, ours) for gs2, ours in _GS2_KEYS.items()}
    if params.W_skip is not None:
        tensors[_GS2_SKIP] = params.W_skip
    data = safetensors_bytes({key: value.contiguous() for key, value in tensors.items()})
    atomic_write_checksummed(folder / GS2_PARAMS, lambda handle: handle.write(data))
    atomic_write_json(folder / GS2_CONFIG, config)


_GS2_LEAF = re.compile(r"^layer_(\d+)_width_(\w+?)_l0_(.+?)(_affine)?$")
_GS2_SITE_FOLDERS: dict[str, tuple[SiteKind, SiteKind | None]] = {
    **{names[1]: (kind, None) for kind, names in SITE_FOLDER_NAMES.items()},
    "transcoder": (SiteKind.MLP_IN, SiteKind.MLP),
}


def read_gemmascope2_folder(folder: Path) -> LoadedSAE:
    """Read a GS2 SAE or (skip) transcoder folder. Sites come from the config's HF hook strings (or
    the folder names when those are absent); width and skip connection are checked against the file."""
    params_path, config_path = folder / GS2_PARAMS, folder / GS2_CONFIG
    config = read_json_object(config_path) if config_path.exists() else {}
    if config.get("type", "sae") not in ("sae", "transcoder"):
        raise ReleaseFormatError(
            f"{config_path}: type {config.get('type')!r} is not supported (only single-layer 'sae'/'transcoder')"
        )
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise ReleaseFormatError(f"{config_path}: architecture {config.get('architecture')!r}, expected 'jump_relu'")
    raw = read_tensor_file(params_path, _GS2_KEYS)
    affine = config.get("affine_connection")
    if affine is True and _GS2_SKIP not in raw:
        raise ReleaseFormatError(f"{params_path}: config.json says affine_connection but {_GS2_SKIP!r} is missing")
    if affine is False and _GS2_SKIP in raw:
        raise ReleaseFormatError(f"{params_path} has {_GS2_SKIP!r} but config.json says affine_connection false")
    tensors: dict[str, torch.Tensor | None] = {ours: raw[gs2] for gs2, ours in _GS2_KEYS.items()}
    tensors["W_skip"] = raw.get(_GS2_SKIP)
    params = ReleaseParams.from_tensors(tensors, params_path)
    if "width" in config and config["width"] != params.width:
        raise ReleaseFormatError(f"{config_path}: width {config['width']!r} but w_enc has {params.width} columns")
    leaf = _GS2_LEAF.match(folder.name)
    if leaf is not None and parse_width_name_or_none(leaf.group(2)) not in (None, params.width):
        raise ReleaseFormatError(
            f"{params_path}: the folder says width_{leaf.group(2)} but w_enc has {params.width} columns"
        )
    site = site_from_hf_hook(str(config["hf_hook_point_in"])) if "hf_hook_point_in" in config else None
    site_out = site_from_hf_hook(str(config["hf_hook_point_out"])) if "hf_hook_point_out" in config else None
    if site is None and leaf is not None:
        kinds = _GS2_SITE_FOLDERS.get(folder.parent.name.removesuffix("_all"))
        if kinds is not None:
            layer = int(leaf.group(1))
            site = Site(layer, kinds[0])
            site_out = Site(layer, kinds[1]) if kinds[1] is not None else None
    metadata: dict[str, Any] = {"path": str(folder), "config": config}
    if leaf is not None:
        metadata["l0_label"] = leaf.group(3)
    model_name = config.get("model_name")
    model = str(model_name) if model_name else None
    return loaded_from_params(params, read_sites(site, site_out), model, "gemmascope2", metadata)


def parse_width_name_or_none(text: str) -> int | None:
    try:
        return parse_width_name(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------
# Whole suites
# ------------------------------------------------------------------------------------------------


def export_gemmascope(entries: Sequence[TrainedSAE], out: Path, *, model_name: str) -> list[ExportedSAE]:
    """Write every entry in the GS1 layout under ``out`` (files written atomically one by one; wrap the
    call in :func:`saescope.atomic.atomic_directory` for an all-or-nothing release)."""
    exported = []
    for entry, folder in zip(entries, gs1_folders(entries, model_name), strict=True):
        params = ReleaseParams.from_dictionary(entry.raw_space())
        write_gemmascope_npz(out / folder / GS1_PARAMS, params)
        exported.append(ExportedSAE(entry, folder, round(entry.l0)))
    return exported


def export_gemmascope2(
    entries: Sequence[TrainedSAE], out: Path, *, model_name: str, model_type: str = DEFAULT_MODEL_TYPE
) -> list[ExportedSAE]:
    """Write every entry in the GS2 layout under ``out`` (``<site>_all/...`` folders)."""
    exported = []
    for entry, folder in zip(entries, gs2_folders(entries), strict=True):
        params = ReleaseParams.from_dictionary(entry.raw_space())
        config = gs2_config(
            params, site=entry.site, site_out=entry.site_out, model_name=model_name, l0=entry.l0,
            model_type=model_type, target_l0=entry.config.get("target_l0"),
        )  # fmt: skip
        write_gemmascope2_folder(out / folder, params, config)
        exported.append(ExportedSAE(entry, folder, round(entry.l0)))
    return exported

"""SAELens's on-disk format: ``cfg.json`` + ``sae_weights.safetensors`` per SAE, read and written.

What we write is what ``sae_lens.SAE.load_from_disk(folder)`` (SAELens 6.x) reads as a JumpReLU SAE,
JumpReLU transcoder or JumpReLU skip transcoder:

* ``cfg.json``: the SAELens 6 config layout — ``d_in``, ``d_sae`` (``d_out`` for transcoders), ``dtype``
  ``"float32"``, ``device`` ``"cpu"``, ``apply_b_dec_to_input: false`` and ``normalize_activations:
  "none"`` (weights are raw-space with b_dec folded, method §2.7), ``reshape_activations`` (``"hook_z"``
  for attention sites: TransformerLens' ``attn.hook_z`` is (…, heads, head_dim) and our site is its
  flattening), ``architecture`` (``jumprelu`` / ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder``),
  and ``metadata`` with ``hook_name`` in TransformerLens style (:func:`saelens_hook_name`, e.g.
  ``blocks.6.hook_resid_post``), the HF hook string (``hf_hook_name``), ``model_name`` and
  ``sae_lens_version: "6.0.0"``. That version marks the config *layout* (SAELens reads configs without
  one as pre-6.0 and renames their keys); it does not claim a SAELens install wrote the file.
* ``sae_weights.safetensors``: float32 ``W_enc`` (d_in, M), ``W_dec`` (M, d_out), ``b_enc``, ``b_dec``,
  ``threshold`` and, for skip transcoders, ``W_skip`` stored (d_out, d_in) as SAELens expects (it
  computes ``x @ W_skip.T``; Gemma Scope 2 stores the transpose).

A transcoder's input is named ``blocks.L.hook_mlp_in``, as SAELens' own Gemma Scope 2 loader names it
(``get_gemma_3_config_from_hf``), not ``blocks.L.ln2.hook_normalized``: the transcoder reads the output of
``pre_feedforward_layernorm`` *with* its gain (``hf_hook_name`` names that module exactly), and TransformerLens'
``ln2.hook_normalized`` fires before the gain. No TransformerLens hook holds exactly that value
(``HookedTransformer``'s ``hook_mlp_in``, when ``use_hook_mlp_in`` is on, is ln2's input); the name marks the
MLP input as SAELens does for Google's own transcoders.

The reader also accepts SAELens folders not written by us: pre-6.0 configs (top-level ``hook_name`` /
``hook_point``), ``apply_b_dec_to_input: true`` (folded into ``b_enc`` on load) and any float dtype.
Run-time normalisation other than ``"none"`` is refused, since its scale is not in the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from saescope.atomic import atomic_write_checksummed, atomic_write_json
from saescope.dictionaries.folder import TrainedSAE
from saescope.models.sites import Site, SiteKind
from saescope.release.common import (
    DEFAULT_MODEL_TYPE,
    SITE_FOLDER_NAMES,
    TRANSCODER_FOLDER_NAME,
    LoadedSAE,
    ReleaseFormatError,
    ReleaseParams,
    hf_hook_point,
    loaded_from_params,
    read_json_object,
    read_sites,
    site_from_tl_hook,
    unique_folder_names,
)
from saescope.release.suite import ExportedSAE
from saescope.sae.widths import width_name

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
#: Marks the SAELens >= 6 config layout (see the module docstring).
SAELENS_LAYOUT_VERSION = "6.0.0"
_ARCHITECTURES = ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder")


#: TransformerLens hook names SAELens gives sites where saescope's own table (:attr:`Site.tl_hook_name`) differs.
_SAELENS_TL_HOOKS: dict[SiteKind, str] = {SiteKind.MLP_IN: "blocks.{layer}.hook_mlp_in"}


def saelens_hook_name(site: Site) -> str:
    """The ``hook_name`` SAELens uses for a site: ``blocks.L.hook_mlp_in`` for a transcoder's input (as its
    Gemma Scope 2 loader writes it), else :attr:`Site.tl_hook_name`."""
    template = _SAELENS_TL_HOOKS.get(site.kind)
    return template.format(layer=site.layer) if template is not None else site.tl_hook_name


def saelens_config(
    params: ReleaseParams,
    *,
    site: Site,
    site_out: Site | None,
    model_name: str | None,
    model_type: str = DEFAULT_MODEL_TYPE,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``cfg.json`` content for one raw-space JumpReLU dictionary."""
    # SAELens has no skip SAE: a skip connection makes it a skip transcoder whose output hook is the input's.
    transcoder = (site_out is not None and site_out != site) or params.W_skip is not None
    site_out = site_out if site_out is not None else site
    architecture = "jumprelu"
    if transcoder:
        architecture = "jumprelu_skip_transcoder" if params.W_skip is not None else "jumprelu_transcoder"
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        "model_name": model_name,
        "hook_name": saelens_hook_name(site),
        "hook_head_index": None,
        "hf_hook_name": hf_hook_point(site, model_type),
        "prepend_bos": True,
        "neuronpedia_id": None,
    }
    config: dict[str, Any] = {
        "architecture": architecture,
        "d_in": params.d_in,
        "d_sae": params.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if site.kind is SiteKind.ATT else "none",
    }
    if transcoder:
        config["d_out"] = params.d_out
        metadata["hook_name_out"] = saelens_hook_name(site_out)
        metadata["hook_head_index_out"] = None
        metadata["hf_hook_name_out"] = hf_hook_point(site_out, model_type)
    metadata.update(extra_metadata or {})
    config["metadata"] = metadata
    return config


def write_saelens_folder(folder: Path, params: ReleaseParams, config: dict[str, Any]) -> None:
    """Write ``sae_weights.safetensors`` and ``cfg.json`` into ``folder``, atomically file by file."""
    tensors = {
        "W_enc": params.W_enc,
        "W_dec": params.W_dec,
        "b_enc": params.b_enc,
        "b_dec": params.b_dec,
        "threshold": params.threshold,
    }
    if params.W_skip is not None:
        tensors["W_skip"] = params.W_skip.T.contiguous()
    data = safetensors_bytes({key: value.contiguous() for key, value in tensors.items()})
    atomic_write_checksummed(folder / SAELENS_WEIGHTS, lambda handle: handle.write(data))
    atomic_write_json(folder / SAELENS_CONFIG, config)


def read_saelens_folder(folder: Path) -> LoadedSAE:
    """Read a SAELens JumpReLU SAE / (skip) transcoder folder into raw-space tensors."""
    config_path, weights_path = folder / SAELENS_CONFIG, folder / SAELENS_WEIGHTS
    config = read_json_object(config_path)
    architecture = config.get("architecture", "standard")
    if architecture not in _ARCHITECTURES:
        raise ReleaseFormatError(
            f"{config_path}: architecture {architecture!r} is not supported; saescope reads {list(_ARCHITECTURES)}"
        )
    normalize = config.get("normalize_activations", "none")
    if normalize not in (None, False, "none"):
        raise ReleaseFormatError(
            f"{config_path}: normalize_activations is {normalize!r}; its scale is not stored in the folder, so "
            "the weights cannot be brought to raw space (fold it with SAELens first)"
        )
    if not weights_path.is_file():
        raise ReleaseFormatError(f"{weights_path} is missing")
    try:
        raw = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ReleaseFormatError(f"{weights_path} is not a readable safetensors file (truncated?): {error}") from error
    if "threshold" not in raw and "log_threshold" in raw:
        raw["threshold"] = raw["log_threshold"].double().exp()
    scaling = raw.get("scaling_factor", raw.get("finetuning_scaling_factor"))
    if scaling is not None and not bool((scaling == 1).all()):
        raise ReleaseFormatError(f"{weights_path}: a fine-tuning scaling factor is not supported")
    missing = [key for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if key not in raw]
    if architecture == "jumprelu_skip_transcoder" and "W_skip" not in raw:
        missing.append("W_skip")
    if missing:
        raise ReleaseFormatError(f"{weights_path}: tensor(s) {missing} missing; the file has {sorted(raw)}")
    tensors: dict[str, torch.Tensor | None] = {
        key: raw[key].float() for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    }
    if "W_skip" in raw:
        tensors["W_skip"] = raw["W_skip"].float().T
    if config.get("apply_b_dec_to_input", False):
        W_enc, b_enc, b_dec = tensors["W_enc"], tensors["b_enc"], tensors["b_dec"]
        assert W_enc is not None
        assert b_enc is not None
        assert b_dec is not None
        if b_dec.shape[0] != W_enc.shape[0]:
            raise ReleaseFormatError(f"{weights_path}: apply_b_dec_to_input needs d_out == d_in")
        tensors["b_enc"] = (b_enc.double() - b_dec.double() @ W_enc.double()).float()
    params = ReleaseParams.from_tensors(tensors, weights_path)
    for key, value in (("d_in", params.d_in), ("d_sae", params.width)):
        if key in config and config[key] != value:
            raise ReleaseFormatError(f"{config_path}: {key} is {config[key]!r} but the weights have {value}")
    metadata = config.get("metadata") if isinstance(config.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)

    def field(key: str) -> Any:
        return metadata.get(key, config.get(key))

    hook = field("hook_name") or config.get("hook_point")
    site = site_from_tl_hook(str(hook)) if hook else None
    hook_out = field("hook_name_out")
    site_out = site_from_tl_hook(str(hook_out)) if hook_out else None
    model_name = field("model_name")
    model = str(model_name) if model_name else None
    metadata_out = {"path": str(folder), "config": config}
    return loaded_from_params(params, read_sites(site, site_out), model, "saelens", metadata_out)


def saelens_folders(entries: Sequence[TrainedSAE]) -> list[Path]:
    """``<res|att|mlp|transcoder>/layer_{L}/width_{W}/average_l0_{N}`` (collisions numbered as in GS1)."""

    def base(e: TrainedSAE) -> str:
        kind = TRANSCODER_FOLDER_NAME if e.is_transcoder else SITE_FOLDER_NAMES[e.site.kind][0]
        return f"{kind}/layer_{e.site.layer}/width_{width_name(e.width)}/average_l0_{round(e.l0)}"

    return [Path(name) for name in unique_folder_names(entries, base, lambda e: (e.l0, e.name))]


def export_saelens(
    entries: Sequence[TrainedSAE], out: Path, *, model_name: str, model_type: str = DEFAULT_MODEL_TYPE
) -> list[ExportedSAE]:
    """Write every entry as a SAELens folder under ``out``."""
    exported = []
    for entry, folder in zip(entries, saelens_folders(entries), strict=True):
        params = ReleaseParams.from_dictionary(entry.raw_space())
        extra = {"saescope": {"name": entry.name, "site": entry.site.id, "l0": entry.l0, "l0_source": entry.l0_source}}
        config = saelens_config(
            params,
            site=entry.site,
            site_out=entry.site_out,
            model_name=model_name,
            model_type=model_type,
            extra_metadata=extra,
        )
        write_saelens_folder(out / folder, params, config)
        exported.append(ExportedSAE(entry, folder, round(entry.l0)))
    return exported

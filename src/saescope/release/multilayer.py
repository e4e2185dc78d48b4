"""Gemma Scope 2 layouts of multi-layer dictionaries: cross-layer transcoders and weakly causal crosscoders.

::

    <out>/clt/width_{W}_l0_{label}[_affine]/                          (CLT: mlp_in -> mlp of every spanned layer)
    <out>/crosscoder/layer_{a}_{b}_{c}_{d}_width_{W}_l0_{label}/      (crosscoder: residual of a set of layers)
        params_layer_{k}.safetensors   block i, float32; k is the block's *model layer* in a CLT (GS2's CLTs
                                       span every layer, so their files are params_layer_0 .. n_layers-1; a
                                       CLT over layers 3-5 has params_layer_3, _4, _5) and the block index
                                       i = 0 .. n-1 in a crosscoder (GS2's layer_5_9_12_15 has _0 .. _3):
            w_enc (d_in, F)  b_enc (F)  threshold (F)
            w_dec (F, n, d_out)       row j: block i's write to output j; rows 0 .. i-1 are zero (a block never
                                      writes to an earlier output), rows i .. n-1 are its writes
            b_dec (d_out)             output i's bias
            [affine_skip_connection (d_in, d_out)]   input i -> output i (CLTs with ``_affine``)
        config.json   type ("clt" | "crosscoder"), architecture "jump_relu", width (latents over all
                      layers), width_per_layer, layers, n_layers, hf_hook_point_in / hf_hook_point_out
                      (GS2's template strings: ``model.layers.{all}.pre_feedforward_layernorm.output`` for a
                      CLT over layers 0 .. n-1, else the layers listed: ``model.layers.{5,9,12,15}.output``),
                      model_name (the official id, as for single-layer folders), l0 (the integer target
                      per layer, as GS2 writes it), l0_measured (over all layers), l0_per_layer (measured),
                      affine_connection

``W`` is the total width (GS2 names a 270M CLT of 18 × 14,560 latents ``262k``; saescope writes
:func:`~saescope.sae.widths.width_name` of the exact total), ``label`` the GS2 label of the L0 *per layer*
(:func:`~saescope.release.common.l0_label`); a CLT and a skip CLT of one width and label are
``clt/width_{W}_l0_{label}`` and ``..._affine``. ``n`` is the number of blocks (spanned layers), and row ``j``
of ``w_dec`` is the j-th spanned layer. Weights are in raw activation space: each layer's normalisation is
folded in.

GS2 has not published the tensor layout inside its ``params_layer_{i}`` files (method §6.2, [U]). The full
``(F, n, d_out)`` decoder with zero rows before ``i`` is *inferred* from circuit-tracer 0.5.0's GS2 CLT loader
(``load_gemma_scope_2_clt``), not from any Google documentation: it ``torch.stack``-s every block's ``w_dec``
(so all must share one shape) and keeps ``w_dec[i, :, i:, :]`` for block ``i``. saescope writes that layout so
the loader can read its CLTs, and applies it to crosscoders too (one layout for ``params_layer_{i}`` files).
(That loader iterates ``range(max(paths))``, so it drops the last block of ``{0: .., ..., n-1: ..}`` and then
fails on the shapes; given one extra, never-read key ``n`` it loads saescope's CLTs with the same outputs.)
The reader accepts this layout (refusing non-zero rows before ``i``, naming the file: a causal dictionary
cannot write backwards) and the ``(F, n-i, d_out)`` layout saescope wrote before (block ``i``'s writes only).
Every shape is checked against block 0, and a disagreement names its file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save as safetensors_bytes

from saescope.atomic import atomic_write_checksummed, atomic_write_json
from saescope.dictionaries.folder import TrainedSAE
from saescope.models.loading import gemma_scope_model_id
from saescope.models.sites import Site
from saescope.release.common import (
    DEFAULT_MODEL_TYPE,
    LoadedSAE,
    ReleaseExportError,
    ReleaseFormatError,
    ReleaseParams,
    gs2_l0_value,
    hf_hook_template,
    l0_label,
    parse_hf_hook_template,
    read_json_object,
    read_sites,
    read_tensor_file,
    site_from_hf_hook,
    unique_folder_names,
)
from saescope.release.suite import ExportedSAE
from saescope.sae import CrossLayerDictionary, DictionaryConfig
from saescope.sae.widths import width_name

MULTI_LAYER_CONFIG = "config.json"
MULTI_LAYER_TYPES = ("clt", "crosscoder")
_SKIP = "affine_skip_connection"
_BLOCK_KEYS = ("w_enc", "b_enc", "threshold", "w_dec", "b_dec")
_PARAMS = re.compile(r"^params_layer_(\d+)\.safetensors$")
_CROSSCODER_LEAF = re.compile(r"^layer_(\d+(?:_\d+)+)_width_")


#: The glob that finds the block files of multi-layer folders (``params_layer_{k}.safetensors``).
BLOCK_FILE_GLOB = "params_layer_*.safetensors"


def block_file_name(k: int) -> str:
    return f"params_layer_{k}.safetensors"


def _block_numbers(folder: Path) -> list[int]:
    return sorted(int(match.group(1)) for path in folder.iterdir() if (match := _PARAMS.match(path.name)))


def is_multi_layer_folder(folder: Path) -> bool:
    """A folder holding ``params_layer_{k}.safetensors`` files (a GS2 CLT or crosscoder)."""
    return folder.is_dir() and bool(_block_numbers(folder))


def multi_layer_files(folder: Path) -> list[Path]:
    """The block files of a multi-layer folder, in block order, and its config."""
    return [*(folder / block_file_name(k) for k in _block_numbers(folder)), folder / MULTI_LAYER_CONFIG]


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def multi_layer_type(entry: TrainedSAE) -> str:
    """'clt' for a dictionary that reads one site kind and writes another (mlp_in -> mlp), else 'crosscoder'."""
    return "clt" if entry.is_transcoder else "crosscoder"


def multi_layer_folders(entries: Sequence[TrainedSAE]) -> list[Path]:
    def base(e: TrainedSAE) -> str:
        label = l0_label(e.l0 / e.dictionary.n_layers)
        if multi_layer_type(e) == "clt":
            return f"clt/width_{width_name(e.width)}_l0_{label}"
        spanned = "_".join(str(layer) for layer in e.layers)
        return f"crosscoder/layer_{spanned}_width_{width_name(e.width)}_l0_{label}"

    def affine(e: TrainedSAE) -> str:
        return "_affine" if e.dictionary.skip else ""

    return [Path(name) for name in unique_folder_names(entries, base, lambda e: (e.l0, e.name), affine)]


def block_file_numbers(kind: str, layers: Sequence[int]) -> list[int]:
    """The ``k`` of each block's ``params_layer_{k}`` file: the model layer in a CLT, the block index in a
    crosscoder (as GS2 names them; see the module docstring)."""
    return list(layers) if kind == "clt" else list(range(len(layers)))


def block_tensors(sae: CrossLayerDictionary, i: int) -> dict[str, torch.Tensor]:
    """The tensors of ``params_layer_{i}`` from a raw-space (folded) dictionary."""
    params = ReleaseParams.from_dictionary(sae.block(i))
    F, n, d_out = params.width, sae.n_layers, params.d_out
    with torch.no_grad():
        writes_FKD = sae.decoder(i).detach().to(device="cpu", dtype=torch.float32)
    w_dec_FND = torch.zeros(F, n, d_out, dtype=torch.float32)  # rows 0 .. i-1 stay zero (see the module doc)
    w_dec_FND[:, i:] = writes_FKD
    tensors = {
        "w_enc": params.W_enc,
        "b_enc": params.b_enc,
        "threshold": params.threshold,
        "w_dec": w_dec_FND,
        "b_dec": params.b_dec,
    }
    if params.W_skip is not None:
        tensors[_SKIP] = params.W_skip
    return tensors


def multi_layer_config(entry: TrainedSAE, *, model_name: str, model_type: str = DEFAULT_MODEL_TYPE) -> dict[str, Any]:
    n = entry.dictionary.n_layers
    # "{all}" for a CLT over layers 0 .. n-1 (a GS2 CLT spans every layer; saescope does not know the model's
    # depth here, and `layers` lists them); other layer sets are listed, as GS2 lists a crosscoder's.
    every_layer = multi_layer_type(entry) == "clt" and list(entry.layers) == list(range(n))
    target = entry.config.get("target_l0")
    target_per_layer = target / n if isinstance(target, (int, float)) and not isinstance(target, bool) else None
    return {
        "type": multi_layer_type(entry),
        "architecture": "jump_relu",
        "width": entry.width,
        "width_per_layer": entry.dictionary.width,
        "n_layers": n,
        "layers": list(entry.layers),
        "hf_hook_point_in": hf_hook_template(entry.site.kind, entry.layers, model_type, every_layer=every_layer),
        "hf_hook_point_out": hf_hook_template(
            (entry.site_out or entry.site).kind, entry.layers, model_type, every_layer=every_layer
        ),
        "model_name": gemma_scope_model_id(model_name),
        "l0": gs2_l0_value(entry.l0 / n, target_per_layer),
        "l0_measured": round(entry.l0, 2),
        "l0_per_layer": round(entry.l0 / n, 2),
        "affine_connection": entry.dictionary.skip,
    }


def write_multi_layer_folder(folder: Path, sae: CrossLayerDictionary, config: dict[str, Any]) -> None:
    """Write one ``params_layer_{k}.safetensors`` per block (:func:`block_file_numbers`) and ``config.json``
    (each file atomically, with its checksum)."""
    numbers = block_file_numbers(str(config["type"]), config["layers"])
    for i, k in enumerate(numbers):
        atomic_write_checksummed(folder / block_file_name(k), _writer(safetensors_bytes(block_tensors(sae, i))))
    atomic_write_json(folder / MULTI_LAYER_CONFIG, config)


def _writer(data: bytes) -> Callable[[BinaryIO], object]:
    return lambda handle: handle.write(data)


def export_multi_layer(
    entries: Sequence[TrainedSAE], out: Path, *, model_name: str, model_type: str = DEFAULT_MODEL_TYPE
) -> list[ExportedSAE]:
    """Write every multi-layer entry under ``out`` in the GS2 ``clt/`` and ``crosscoder/`` layouts."""
    exported = []
    for entry, folder in zip(entries, multi_layer_folders(entries), strict=True):
        sae = entry.raw_space()
        if not isinstance(sae, CrossLayerDictionary):
            raise ReleaseExportError(f"{entry.folder}: {entry.name} is not a multi-layer dictionary")
        write_multi_layer_folder(out / folder, sae, multi_layer_config(entry, model_name=model_name,
                                                                       model_type=model_type))  # fmt: skip
        exported.append(ExportedSAE(entry, folder, round(entry.l0)))
    return exported


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


def _read_block(path: Path, i: int, n: int, paths: Sequence[Path]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        names = ", ".join(p.name for p in paths)
        raise ReleaseFormatError(f"{path} is missing (this {n}-block dictionary needs {names})")
    raw = read_tensor_file(path, _BLOCK_KEYS)
    raw["w_dec"] = _block_writes(path, raw["w_dec"], raw["b_dec"], i, n)
    return raw


def _block_writes(path: Path, w_dec: torch.Tensor, b_dec: torch.Tensor, i: int, n: int) -> torch.Tensor:
    """Block i's writes to outputs i .. n-1, (F, n-i, d_out), from the full (F, n, d_out) or the (F, n-i, d_out)
    layout (either possibly flattened to 2-D); non-zero rows for outputs before i are refused."""
    if w_dec.ndim == 2 and b_dec.ndim == 1 and b_dec.shape[0] > 0 and w_dec.shape[1] % b_dec.shape[0] == 0:
        w_dec = w_dec.reshape(w_dec.shape[0], -1, b_dec.shape[0])  # written flat: (F, K·d_out)
    if w_dec.ndim != 3 or w_dec.shape[1] not in (n, n - i):
        legacy = f" or (F, {n - i}, d_out) (its writes to outputs {i}..{n - 1} only)" if i else ""
        raise ReleaseFormatError(
            f"{path}: w_dec has shape {tuple(w_dec.shape)}; block {i} of {n} must be (F, {n}, d_out) "
            f"(a row per output){legacy}"
        )
    if w_dec.shape[1] == n - i:
        return w_dec
    earlier = w_dec[:, :i]
    if earlier.ne(0).any():
        raise ReleaseFormatError(
            f"{path}: w_dec rows 0..{i - 1} (writes of block {i} to earlier outputs) are not all zero "
            f"(max |w| = {earlier.abs().max().item():.3g}); a causal cross-layer dictionary cannot write backwards"
        )
    return w_dec[:, i:]


def _layers_of(folder: Path, config: dict[str, Any], n: int, kind: str, numbers: Sequence[int]) -> tuple[int, ...]:
    """The spanned layers: config ``layers``, else the crosscoder folder name, else the input hooks (a list, or
    GS2's template string), else a CLT's block file numbers (its model layers), else 0 .. n-1."""
    layers: list[int] | None = None
    hooks = config.get("hf_hook_point_in")
    if isinstance(config.get("layers"), list):
        layers = [int(layer) for layer in config["layers"]]
    elif (leaf := _CROSSCODER_LEAF.match(folder.name)) is not None:
        layers = [int(layer) for layer in leaf.group(1).split("_")]
    elif isinstance(hooks, list):
        sites = [site_from_hf_hook(str(hook)) for hook in hooks]
        layers = [site.layer for site in sites if site is not None]
    elif isinstance(hooks, str) and "{all}" not in hooks and (template := parse_hf_hook_template(hooks, n)):
        layers = list(template[1])
    elif kind == "clt" and len(numbers) == n:
        layers = list(numbers)  # a GS2 CLT names each block file by its layer
    if layers is None:
        layers = list(range(n))
    if len(layers) != n or sorted(set(layers)) != layers:
        raise ReleaseFormatError(
            f"{folder / MULTI_LAYER_CONFIG}: layers {layers} do not match the {n} block files (increasing, one each)"
        )
    return tuple(layers)


def _block_paths(folder: Path, kind: str, layers: Sequence[int], numbers: Sequence[int]) -> list[Path]:
    """Each block's file: named as :func:`block_file_numbers` says, or as the other convention when the files
    in the folder follow that one (crosscoders by layer, or CLTs by block index as saescope wrote them before)."""
    preferred = block_file_numbers(kind, layers)
    other = block_file_numbers("crosscoder" if kind == "clt" else "clt", layers)
    chosen = other if not set(numbers) <= set(preferred) and set(numbers) <= set(other) else preferred
    return [folder / block_file_name(k) for k in chosen]


def _sites_of(config: dict[str, Any], kind: str, layers: tuple[int, ...]) -> tuple[Site, Site]:
    """The first block's input and output sites from the hook strings, else from the dictionary type."""

    def first(key: str) -> Site | None:
        hooks = config.get(key)
        hook = hooks[0] if isinstance(hooks, list) and hooks else hooks
        if not isinstance(hook, str):
            return None
        if "{" not in hook:
            return site_from_hf_hook(hook)
        template = parse_hf_hook_template(hook, len(layers))
        return Site(layers[0], template[0].kind) if template is not None else None

    site, site_out = first("hf_hook_point_in"), first("hf_hook_point_out")
    if site is None:
        site = Site.parse(f"layer_{layers[0]}/{'mlp_in' if kind == 'clt' else 'res'}")
    if site_out is None:
        site_out = Site.parse(f"layer_{layers[0]}/{'mlp' if kind == 'clt' else 'res'}")
    return site, site_out


def read_multi_layer_folder(folder: Path) -> LoadedSAE:
    """Read a GS2 CLT/crosscoder folder; every problem raises ReleaseFormatError naming the file."""
    config_path = folder / MULTI_LAYER_CONFIG
    config = read_json_object(config_path) if config_path.exists() else {}
    kind = str(config.get("type") or ("crosscoder" if folder.parent.name == "crosscoder" else "clt"))
    if kind not in MULTI_LAYER_TYPES:
        raise ReleaseFormatError(f"{config_path}: type {kind!r}, expected one of {list(MULTI_LAYER_TYPES)}")
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise ReleaseFormatError(f"{config_path}: architecture {config.get('architecture')!r}, expected 'jump_relu'")
    numbers = _block_numbers(folder)
    n = int(config.get("n_layers") or len(numbers))
    if n < 2:
        raise ReleaseFormatError(f"{folder}: a multi-layer dictionary needs 2+ block files; found {len(numbers)}")
    layers = _layers_of(folder, config, n, kind, numbers)
    paths = _block_paths(folder, kind, layers, numbers)
    blocks = [_read_block(path, i, n, paths) for i, path in enumerate(paths)]
    skip = _SKIP in blocks[0]
    affine = config.get("affine_connection")
    if affine is not None and bool(affine) != skip:
        raise ReleaseFormatError(
            f"{paths[0]}: config.json says affine_connection {affine} but the file "
            f"{'has' if skip else 'lacks'} {_SKIP!r}"
        )
    params = [_block_params(path, raw, skip) for path, raw in zip(paths, blocks, strict=True)]
    d_in, width, d_out = params[0].d_in, params[0].width, params[0].d_out
    for path, p in zip(paths, params, strict=True):
        if (p.d_in, p.width, p.d_out) != (d_in, width, d_out):
            raise ReleaseFormatError(
                f"{path}: (d_in, width, d_out) = {(p.d_in, p.width, p.d_out)} but "
                f"{paths[0].name} has {(d_in, width, d_out)}"
            )
    if "width" in config and int(config["width"]) != width * n:
        raise ReleaseFormatError(f"{config_path}: width {config['width']} but the files hold {n} × {width} latents")
    sae = _assemble(params, [raw["w_dec"] for raw in blocks], skip)
    site, site_out = _sites_of(config, kind, layers)
    model = config.get("model_name")
    metadata = {"path": str(folder), "config": {**config, "type": kind}}
    return LoadedSAE(sae, read_sites(site, site_out, layers), str(model) if model else None, "gemmascope2", metadata)


def _block_params(path: Path, raw: dict[str, torch.Tensor], skip: bool) -> ReleaseParams:
    if (_SKIP in raw) != skip:
        raise ReleaseFormatError(f"{path}: {_SKIP!r} must be in every block file or in none")
    tensors: dict[str, torch.Tensor | None] = {
        "W_enc": raw["w_enc"],
        "W_dec": raw["w_dec"][:, 0, :],
        "b_enc": raw["b_enc"],
        "b_dec": raw["b_dec"],
        "threshold": raw["threshold"],
        "W_skip": raw.get(_SKIP),
    }
    return ReleaseParams.from_tensors(tensors, path)


def _assemble(params: Sequence[ReleaseParams], w_decs: Sequence[torch.Tensor], skip: bool) -> CrossLayerDictionary:
    n, first = len(params), params[0]
    config = DictionaryConfig(
        d_in=first.d_in, width=first.width, d_out=first.d_out, architecture="jumprelu", n_layers=n,
        apply_pre_encoder_bias=False, skip=skip, sparsity="l0", threshold_parameterisation="raw",
    )  # fmt: skip
    with torch.device("meta"):
        sae = CrossLayerDictionary(config)
    state: dict[str, torch.Tensor] = {}
    for i, (p, w_dec) in enumerate(zip(params, w_decs, strict=True)):
        state |= {f"blocks.{i}.W_enc_DF": p.W_enc, f"blocks.{i}.b_enc_F": p.b_enc, f"blocks.{i}.W_dec_FD": p.W_dec,
                  f"blocks.{i}.b_dec_D": p.b_dec, f"blocks.{i}.raw_threshold_F": p.threshold}  # fmt: skip
        if p.W_skip is not None:
            state[f"blocks.{i}.W_skip_DD"] = p.W_skip
        if i < n - 1:
            state[f"W_cross.{i}"] = w_dec[:, 1:, :].to(torch.float32).transpose(0, 1).contiguous()
    sae.load_state_dict({key: value.clone() for key, value in state.items()}, assign=True)
    return sae.eval()

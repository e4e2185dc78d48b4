"""What every release format shares: the five raw-space JumpReLU tensors, naming rules, errors.

Every released dictionary is a JumpReLU in raw activation space (method §2.7, §6)::

    pre = x @ W_enc + b_enc                 # no "- b_dec": the pre-encoder bias is folded into b_enc
    f   = (pre > threshold) * relu(pre)
    y   = f @ W_dec + b_dec [+ x @ W_skip]  # W_skip only for affine skip transcoders (GS2)

:class:`ReleaseParams` holds those tensors and converts them to and from a
:class:`~saescope.sae.SparseDictionary`; the format modules only decide file names and key names.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from saescope.atomic import MANIFEST_NAME, sha256_file
from saescope.dictionaries.folder import DictionaryFormatError
from saescope.dictionaries.folder import read_json_object as read_json_object  # the release readers use it too
from saescope.dictionaries.sites import DictionarySites
from saescope.models.sites import ARCHITECTURES, Site, SiteKind, architecture_for_model_type
from saescope.sae import AnyDictionary, BatchTopK, DictionaryConfig, JumpReLU, ReLU, build_dictionary, single_layer
from saescope.sae.jumprelu import MIN_RAW_THRESHOLD

log = logging.getLogger(__name__)

#: A release file or folder is missing, malformed, truncated or inconsistent; the message names it. The same
#: class as the dictionary folder's error, so one ``except`` catches a bad file whichever format it is in.
ReleaseFormatError = DictionaryFormatError


class ReleaseExportError(ValueError):
    """A dictionary cannot be written in the asked-for release format (the message says why)."""


# ------------------------------------------------------------------------------------------------
# Width names (Gemma Scope folder names)
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# L0 labels (Gemma Scope 2 folder names)
# ------------------------------------------------------------------------------------------------

#: Upper bounds (inclusive) of the GS2 L0 labels, applied to the measured L0. GS2 targets 10-20
#: ("small"), 30-60 ("medium") and 90-150 ("big") (method §6.2); the cut points sit in the gaps.
L0_LABEL_BOUNDS: tuple[tuple[str, float], ...] = (("small", 20.0), ("medium", 60.0), ("big", math.inf))


def l0_label(l0: float) -> str:
    """'small' for L0 <= 20, 'medium' for L0 <= 60, else 'big'."""
    return next(label for label, bound in L0_LABEL_BOUNDS if l0 <= bound)


#: The integer GS2 writes as ``config.json["l0"]`` for each label of its per-site sweeps (its L0 targets,
#: e.g. ``google/gemma-scope-2-270m-pt`` ``resid_post/..._l0_big`` has ``"l0": 150``); used when a dictionary
#: recorded no target of its own.
L0_LABEL_TARGETS: dict[str, int] = {"small": 20, "medium": 60, "big": 150}


def gs2_l0_value(measured_l0: float, target_l0: object) -> int:
    """The GS2 ``config.json["l0"]``: the training target rounded when one was recorded, else the nominal
    target of the label the measured L0 gets (:data:`L0_LABEL_TARGETS`). Both in the unit of the label
    (per layer for multi-layer dictionaries)."""
    if isinstance(target_l0, (int, float)) and not isinstance(target_l0, bool) and math.isfinite(target_l0):
        return round(target_l0)
    return L0_LABEL_TARGETS[l0_label(measured_l0)]


T = TypeVar("T")


def unique_folder_names(
    items: Sequence[T],
    base: Callable[[T], str],
    order: Callable[[T], Any],
    suffix: Callable[[T], str] = lambda _item: "",
) -> list[str]:
    """One folder name per item: ``base(item) + suffix(item)``, or ``base(item)_<i> + suffix(item)``
    (i = 1, 2, ...) for items whose *whole* name is shared, numbered in ``order`` (which must be
    deterministic, e.g. (L0, name)). Items that differ only in their suffix (GS2's ``_affine``) do not collide."""
    names = [(base(item), suffix(item)) for item in items]
    groups: dict[tuple[str, str], list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    result = [stem + tail for stem, tail in names]
    for (stem, tail), indices in groups.items():
        if len(indices) > 1:
            for rank, index in enumerate(sorted(indices, key=lambda i: order(items[i])), start=1):
                result[index] = f"{stem}_{rank}{tail}"
    return result


# ------------------------------------------------------------------------------------------------
# Site naming in the formats
# ------------------------------------------------------------------------------------------------

#: Site kind -> (Gemma Scope 1 repo suffix, Gemma Scope 2 folder prefix). Transcoders use "transcoder".
SITE_FOLDER_NAMES: dict[SiteKind, tuple[str, str]] = {
    SiteKind.RES: ("res", "resid_post"),
    SiteKind.ATT: ("att", "attn_out"),
    SiteKind.MLP: ("mlp", "mlp_out"),
    SiteKind.RESID_PRE: ("resid_pre", "resid_pre"),
    SiteKind.MLP_IN: ("mlp_in", "mlp_in"),
}
TRANSCODER_FOLDER_NAME = "transcoder"
#: Gemma Scope 1 names its transcoder repository in the plural: ``google/gemma-scope-2b-pt-transcoders``.
GS1_TRANSCODER_REPO_SUFFIX = "transcoders"

#: The model type whose site table spells the GS2 hook strings when no model is loaded (the embedded
#: Gemma 3 270M is a ``gemma3_text`` model).
DEFAULT_MODEL_TYPE = "gemma3_text"


def hf_hook_point(site: Site, model_type: str = DEFAULT_MODEL_TYPE) -> str:
    """The GS2 ``hf_hook_point_in/out`` string of a site, spelled from the architecture table without a
    model: ``model.layers.6.output``, ``model.layers.6.self_attn.o_proj.input``, ..."""
    return _hf_hook(site.kind, str(site.layer), model_type)


def hf_hook_template(
    kind: SiteKind, layers: Sequence[int], model_type: str = DEFAULT_MODEL_TYPE, *, every_layer: bool = False
) -> str:
    """The GS2 hook string of a multi-layer dictionary: ``model.layers.{all}.pre_feedforward_layernorm.output``
    with ``every_layer`` (GS2's CLTs), else the layers listed, ``model.layers.{5,9,12,15}.output`` (GS2's
    crosscoders)."""
    token = "all" if every_layer else ",".join(str(layer) for layer in layers)
    return _hf_hook(kind, "{" + token + "}", model_type)


def _hf_hook(kind: SiteKind, layer_token: str, model_type: str) -> str:
    spec = architecture_for_model_type(model_type)
    point = spec.hook_points[kind]
    return ".".join([spec.layers_paths[0], layer_token, *([point.module] if point.module else []), point.io])


_HF_TEMPLATE = re.compile(r"\{([^}]*)\}")


def parse_hf_hook_template(hook: str, n_layers: int) -> tuple[Site, tuple[int, ...]] | None:
    """The first site and the layers of a GS2 template hook string (``model.layers.{all}.output`` with
    ``n_layers`` blocks, or ``model.layers.{5,9,12,15}.output``); None when ``hook`` is not a template
    of a known site."""
    match = _HF_TEMPLATE.search(hook)
    if match is None:
        return None
    token = match.group(1).strip()
    try:
        layers = tuple(range(n_layers)) if token == "all" else tuple(int(part) for part in token.split(","))
    except ValueError:
        return None
    if not layers:
        return None
    site = site_from_hf_hook(hook[: match.start()] + str(layers[0]) + hook[match.end() :])
    return (site, layers) if site is not None else None


_HF_HOOK = re.compile(r"^(?:.*\.)?layers\.(\d+)(?:\.(.+?))?\.(input|output)$")


def site_from_hf_hook(hook: str) -> Site | None:
    """The site an HF hook string names (``model.layers.6.post_feedforward_layernorm.output`` ->
    ``layer_6/mlp``), read against the Gemma table first, then the other architectures; None if unknown."""
    match = _HF_HOOK.match(hook.strip())
    if match is None:
        return None
    layer, module, io = int(match.group(1)), match.group(2) or "", match.group(3)
    for spec in sorted(ARCHITECTURES, key=lambda s: not s.name.startswith("gemma")):
        for kind, point in spec.hook_points.items():
            if point.module == module and point.io == io:
                return Site(layer, kind)
    return None


_TL_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: TransformerLens hook suffixes that name a site; ``hook_mlp_in`` is SAELens' GS2 transcoder input name.
_TL_EXTRA = {"hook_mlp_in": SiteKind.MLP_IN}


def site_from_tl_hook(hook: str) -> Site | None:
    """The site a TransformerLens hook name names (``blocks.6.hook_resid_post`` -> ``layer_6/res``)."""
    match = _TL_HOOK.match(hook.strip())
    if match is None:
        return None
    layer, suffix = int(match.group(1)), match.group(2)
    for kind in SiteKind:
        if Site(layer, kind).tl_hook_name == hook.strip():
            return Site(layer, kind)
    kind_or_none = _TL_EXTRA.get(suffix)
    return Site(layer, kind_or_none) if kind_or_none is not None else None


# ------------------------------------------------------------------------------------------------
# The five (six) tensors
# ------------------------------------------------------------------------------------------------


def _shape(tensor: Tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in tensor.shape)


@dataclass(frozen=True)
class ReleaseParams:
    """Raw-space JumpReLU parameters as released (float32, contiguous, on the CPU).

    ``W_enc`` (d_in, M), ``W_dec`` (M, d_out), ``b_enc`` (M,), ``b_dec`` (d_out,), ``threshold`` (M,),
    ``W_skip`` (d_in, d_out) or None. Build with :meth:`from_dictionary` or :meth:`from_tensors`.
    """

    W_enc: Tensor
    W_dec: Tensor
    b_enc: Tensor
    b_dec: Tensor
    threshold: Tensor
    W_skip: Tensor | None = None

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor | None], source: Path) -> ReleaseParams:
        """Validate shapes and values of tensors read from ``source``; errors name ``source``."""
        for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            if tensors.get(key) is None:
                raise ReleaseFormatError(f"{source}: the tensor {key} is missing")
        found = {key: _shape(value) for key, value in tensors.items() if value is not None}
        W_enc, W_dec = tensors["W_enc"], tensors["W_dec"]
        assert W_enc is not None
        assert W_dec is not None
        if W_enc.ndim != 2 or W_dec.ndim != 2:
            raise ReleaseFormatError(f"{source}: W_enc and W_dec must be matrices; shapes are {found}")
        d_in, width = _shape(W_enc)
        d_out = int(W_dec.shape[1])
        expected: dict[str, tuple[int, ...]] = {
            "W_enc": (d_in, width),
            "W_dec": (width, d_out),
            "b_enc": (width,),
            "b_dec": (d_out,),
            "threshold": (width,),
        }
        if tensors.get("W_skip") is not None:
            expected["W_skip"] = (d_in, d_out)
        for key, shape in expected.items():
            if found[key] != shape:
                raise ReleaseFormatError(
                    f"{source}: {key} has shape {found[key]}, expected {shape} (W_enc says d_in={d_in}, "
                    f"width={width}; W_dec says d_out={d_out}); all shapes: {found}"
                )
        clean: dict[str, Tensor] = {}
        for key in expected:
            value = tensors[key]
            assert value is not None
            value = value.detach().to(device="cpu", dtype=torch.float32).contiguous()
            if not bool(torch.isfinite(value).all()):
                raise ReleaseFormatError(f"{source}: {key} contains NaN or infinite values (corrupt file?)")
            clean[key] = value
        return cls(**clean)

    @classmethod
    def from_dictionary(cls, dictionary: AnyDictionary) -> ReleaseParams:
        """The release tensors of a dictionary already in raw space (``fold_normalisation`` applied).

        JumpReLU: its θ. BatchTopK: its global inference threshold on every latent (its eval-mode rule
        ``pre * (pre > t)`` is a JumpReLU with θ = t). ReLU: θ = 0 (``(pre > 0) * relu(pre)`` is ReLU).
        TopK has no threshold form and is refused, and so is a multi-layer dictionary (its blocks are
        written one by one, :mod:`saescope.release.multilayer`).
        """
        try:
            sae = single_layer(dictionary, "a single-layer release folder")
        except ValueError as error:
            raise ReleaseExportError(str(error)) from error
        if sae.config.apply_pre_encoder_bias:
            raise ReleaseExportError(
                "release formats hold raw-space weights without a pre-encoder bias: call "
                "fold_normalisation(C) on the dictionary first (method §2.7)"
            )
        width = sae.config.width
        with torch.no_grad():
            if isinstance(sae, JumpReLU):
                threshold = sae.threshold_F.detach().float()
            elif isinstance(sae, BatchTopK):
                if not sae.threshold_is_set:
                    raise ReleaseExportError("this BatchTopK dictionary has no inference threshold yet (untrained)")
                threshold = sae.inference_threshold.detach().float().expand(width)
            elif isinstance(sae, ReLU):
                threshold = torch.zeros(width)
            else:
                raise ReleaseExportError(
                    f"architecture {sae.config.architecture!r} has no per-latent threshold, so it cannot be "
                    "written as a JumpReLU (the only architecture of the Gemma Scope and these SAELens formats)"
                )
            tensors = {
                "W_enc": sae.W_enc_DF,
                "W_dec": sae.W_dec_FD,
                "b_enc": sae.b_enc_F,
                "b_dec": sae.b_dec_D,
                "threshold": threshold,
                "W_skip": sae.W_skip_DD,
            }
            return cls.from_tensors(tensors, Path(f"<{sae.config.architecture} dictionary>"))

    def to_dictionary(self) -> JumpReLU:
        """A raw-space :class:`~saescope.sae.JumpReLU` holding exactly these float32 values.

        It uses the "raw" threshold parameterisation so θ is stored as is (no log/exp round trip);
        that parameterisation floors θ at ``MIN_RAW_THRESHOLD`` (1e-6) in the forward pass, which only
        matters for files with θ <= 1e-6 (e.g. a ReLU written as θ = 0).
        """
        config = DictionaryConfig(
            d_in=self.d_in,
            width=self.width,
            d_out=self.d_out,
            architecture="jumprelu",
            apply_pre_encoder_bias=False,
            skip=self.W_skip is not None,
            threshold_parameterisation="raw",
        )
        with torch.device("meta"):  # no random init of weights that are overwritten at once
            sae = build_dictionary(config)
        state = {
            "W_enc_DF": self.W_enc,
            "b_enc_F": self.b_enc,
            "W_dec_FD": self.W_dec,
            "b_dec_D": self.b_dec,
            "raw_threshold_F": self.threshold,
        }
        if self.W_skip is not None:
            state["W_skip_DD"] = self.W_skip
        sae.load_state_dict({key: value.clone() for key, value in state.items()}, assign=True)
        assert isinstance(sae, JumpReLU)
        return sae.eval()

    @property
    def n_thresholds_below_floor(self) -> int:
        """How many θ are at or below the 1e-6 floor of the loaded dictionary (see :meth:`to_dictionary`)."""
        return int((self.threshold <= MIN_RAW_THRESHOLD).sum())


@dataclass
class LoadedSAE:
    """A dictionary read from any supported format, in raw activation space: what every reader returns."""

    sae: AnyDictionary
    """The dictionary (eval mode); its codes are those of the released weights (C× training-time codes)."""
    sites: DictionarySites | None
    """Where it reads and writes; None when its files do not say which site it reads."""
    model_name: str | None
    """The model it belongs to, when the files say so."""
    source_format: str
    """'gemmascope', 'gemmascope2', 'saelens' or 'saescope'."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Format-specific details: the path, the config file's content, recorded L0, ..."""

    @property
    def site(self) -> Site | None:
        """Where it reads (for a multi-layer dictionary: at its first layer); None when the files do not say."""
        return self.sites.site if self.sites is not None else None

    @property
    def site_out(self) -> Site | None:
        """Where it writes when that is not where it reads (a transcoder, a CLT); None otherwise."""
        if self.sites is None or self.sites.site_out in (None, self.sites.site):
            return None
        return self.sites.site_out

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers a multi-layer dictionary (CLT, crosscoder) spans, in block order; () for one layer."""
        return self.sites.layers if self.sites is not None else ()

    @property
    def is_transcoder(self) -> bool:
        return self.site_out is not None

    @property
    def input_sites(self) -> tuple[Site, ...]:
        """The sites it reads, one per block; () when the site is unknown."""
        return self.sites.input_sites if self.sites is not None else ()

    @property
    def output_sites(self) -> tuple[Site, ...]:
        """The sites it writes, one per block; () when the site is unknown."""
        return self.sites.output_sites if self.sites is not None else ()


def read_sites(site: Site | None, site_out: Site | None, layers: tuple[int, ...] = ()) -> DictionarySites | None:
    """The sites a reader found: None when the files do not say where it reads."""
    return DictionarySites(site, site_out if site_out != site else None, layers) if site is not None else None


def loaded_from_params(
    params: ReleaseParams, sites: DictionarySites | None, model_name: str | None, source_format: str,
    metadata: dict[str, Any],
) -> LoadedSAE:  # fmt: skip
    """A single-layer reader's result: ``params`` as a dictionary, thresholds at the floor counted (and warned of)."""
    below = params.n_thresholds_below_floor
    if below:
        metadata = {**metadata, "thresholds_at_floor": below}
        log.warning(
            "%s: %d threshold(s) are <= 1e-6; the loaded JumpReLU applies them as 1e-6", metadata.get("path"), below
        )
    return LoadedSAE(params.to_dictionary(), sites, model_name, source_format, metadata)


# ------------------------------------------------------------------------------------------------
# Reading helpers
# ------------------------------------------------------------------------------------------------


def read_tensor_file(path: Path, required: Iterable[str]) -> dict[str, Tensor]:
    """The tensors of a safetensors file; ReleaseFormatError naming the file when it is missing, unreadable or
    lacks one of the ``required`` tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ReleaseFormatError(f"{path} is missing")
    try:
        tensors: dict[str, Tensor] = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ReleaseFormatError(f"{path} is not a readable safetensors file (truncated?): {error}") from error
    missing = [key for key in required if key not in tensors]
    if missing:
        raise ReleaseFormatError(f"{path}: tensor(s) {missing} missing; the file has {sorted(tensors)}")
    return tensors


def check_against_manifest(files: Iterable[Path], *, check_hashes: bool = True, max_levels: int = 6) -> set[Path]:
    """If a saescope release manifest lies in a parent folder, check these files' sizes (and SHA-256)
    against it, so a truncated or corrupted file is named even when its format would not notice.
    Returns the (resolved) files whose SHA-256 it checked."""
    files = [Path(f).resolve() for f in files]
    checked: set[Path] = set()
    if not files:
        return checked
    folder = files[0].parent
    for _ in range(max_levels):
        manifest_path = folder / MANIFEST_NAME
        if manifest_path.is_file():
            manifest = read_json_object(manifest_path)
            listed = manifest.get("files", {})
            for file_path in files:
                record = listed.get(file_path.relative_to(folder).as_posix())
                if record is None:
                    continue
                size = file_path.stat().st_size
                if size != record.get("size"):
                    raise ReleaseFormatError(
                        f"{file_path} has {size} bytes, but {manifest_path} records {record.get('size')} (truncated?)"
                    )
                if check_hashes and sha256_file(file_path) != record.get("sha256"):
                    raise ReleaseFormatError(
                        f"{file_path} does not match the SHA-256 checksum recorded in {manifest_path} (corrupted)"
                    )
                if check_hashes:
                    checked.add(file_path)
            return checked
        if folder.parent == folder:
            return checked
        folder = folder.parent
    return checked

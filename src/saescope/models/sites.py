"""Where the Gemma Scope sites live in each supported architecture, and how they are named.

A *site* is one place in one layer whose activations a dictionary reads or writes (method §3.1):

| kind        | meaning                                                   | TransformerLens hook          |
|-------------|-----------------------------------------------------------|-------------------------------|
| `res`       | block output (resid_post)                                 | `blocks.L.hook_resid_post`    |
| `att`       | concatenated head outputs before the attention out-proj   | `blocks.L.attn.hook_z`        |
| `mlp`       | MLP output (after Gemma's post-feed-forward RMSNorm)      | `blocks.L.hook_mlp_out`       |
| `resid_pre` | block input                                               | `blocks.L.hook_resid_pre`     |
| `mlp_in`    | input of the MLP (after the pre-feed-forward norm)        | `blocks.L.ln2.hook_normalized`|

Each architecture table maps a kind to a module inside the decoder layer and whether the site is
that module's input or output. The Gemma Scope 2 hook strings (`model.layers.6.output`,
`model.layers.6.self_attn.o_proj.input`, ...) are spelled from the same table, so there is one
source of truth per architecture.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn


class SiteKind(str, enum.Enum):
    RES = "res"
    ATT = "att"
    MLP = "mlp"
    RESID_PRE = "resid_pre"
    MLP_IN = "mlp_in"


#: The three sites Gemma Scope trains SAEs on, in its usual order.
GEMMA_SCOPE_KINDS: tuple[SiteKind, ...] = (SiteKind.RES, SiteKind.ATT, SiteKind.MLP)

_TL_HOOKS: dict[SiteKind, str] = {
    SiteKind.RES: "blocks.{layer}.hook_resid_post",
    SiteKind.ATT: "blocks.{layer}.attn.hook_z",
    SiteKind.MLP: "blocks.{layer}.hook_mlp_out",
    SiteKind.RESID_PRE: "blocks.{layer}.hook_resid_pre",
    SiteKind.MLP_IN: "blocks.{layer}.ln2.hook_normalized",
}

_SITE_ID = re.compile(r"^layer_(\d+)/([a-z_]+)$")


@dataclass(frozen=True, order=True)
class Site:
    """One site of one layer, e.g. `Site(6, SiteKind.RES)`, written `layer_6/res`."""

    layer: int
    kind: SiteKind

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"site layer must be >= 0, got {self.layer}")
        object.__setattr__(self, "kind", SiteKind(self.kind))

    @property
    def id(self) -> str:
        return f"layer_{self.layer}/{self.kind.value}"

    @property
    def tl_hook_name(self) -> str:
        return _TL_HOOKS[self.kind].format(layer=self.layer)

    @classmethod
    def parse(cls, site_id: str) -> Site:
        match = _SITE_ID.match(site_id.strip())
        if match is None:
            raise ValueError(f"cannot parse site id {site_id!r}: expected 'layer_<N>/<kind>', e.g. 'layer_6/res'")
        return cls(int(match.group(1)), _parse_kind(match.group(2)))

    def __str__(self) -> str:
        return self.id


def _parse_kind(text: str) -> SiteKind:
    try:
        return SiteKind(text)
    except ValueError:
        known = ", ".join(kind.value for kind in SiteKind)
        raise ValueError(f"unknown site kind {text!r}; known kinds: {known}") from None


def _parse_layers(text: str, n_layers: int) -> range:
    if text in ("*", "all"):
        return range(n_layers)
    start_text, _, end_text = text.partition("-")
    try:
        start = int(start_text)
        end = int(end_text) if end_text else start
    except ValueError:
        raise ValueError(f"cannot parse layer range {text!r}: expected N, A-B or *") from None
    if not 0 <= start <= end < n_layers:
        raise ValueError(f"layer range {text!r} is outside the model's layers 0-{n_layers - 1}")
    return range(start, end + 1)


def select_sites(spec: str, n_layers: int) -> list[Site]:
    """Turn a user's site selection into a sorted list of sites.

    Comma-separated terms, each one of:
    `all` (every layer x res/att/mlp), a kind (`res`: that kind on every layer), a site id
    (`layer_6/res`), or `LAYERS/KINDS` where LAYERS is `N`, `A-B` or `*` and KINDS is a kind, `*`
    (res/att/mlp), or several kinds joined by `+` (e.g. `0-5/res+mlp`).
    """
    selected: set[Site] = set()
    for raw_term in spec.split(","):
        term = raw_term.strip()
        if not term:
            continue
        if term == "all":
            layers, kinds = range(n_layers), GEMMA_SCOPE_KINDS
        elif term.startswith("layer_"):
            site = Site.parse(term)
            layers, kinds = _parse_layers(str(site.layer), n_layers), (site.kind,)
        elif "/" in term:
            layer_text, kind_text = term.split("/", 1)
            layers = _parse_layers(layer_text, n_layers)
            kinds = GEMMA_SCOPE_KINDS if kind_text == "*" else tuple(_parse_kind(k) for k in kind_text.split("+"))
        else:
            layers, kinds = range(n_layers), (_parse_kind(term),)
        selected.update(Site(layer, kind) for layer in layers for kind in kinds)
    if not selected:
        raise ValueError(f"site selection {spec!r} selects no sites")
    return sorted(selected)


@dataclass(frozen=True)
class HookPoint:
    """A site's location inside one decoder layer: a submodule path ('' = the layer itself)."""

    module: str
    io: Literal["input", "output"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where each site kind lives in one family of Hugging Face decoder models."""

    name: str
    model_types: tuple[str, ...]
    #: Candidate attribute paths to the `ModuleList` of decoder layers, tried in order.
    layers_paths: tuple[str, ...]
    hook_points: dict[SiteKind, HookPoint]
    #: Attention out-projection (its input is the `att` site), for width and logit-effect lookups.
    attn_out_proj: str
    #: Attention logit soft-capping needs the eager attention kernel (method §8, Gemma 2).
    needs_eager_attention: bool = False


_GEMMA_HOOKS = {
    SiteKind.RES: HookPoint("", "output"),
    SiteKind.RESID_PRE: HookPoint("", "input"),
    SiteKind.ATT: HookPoint("self_attn.o_proj", "input"),
    SiteKind.MLP: HookPoint("post_feedforward_layernorm", "output"),
    SiteKind.MLP_IN: HookPoint("pre_feedforward_layernorm", "output"),
}

_LLAMA_HOOKS = {
    SiteKind.RES: HookPoint("", "output"),
    SiteKind.RESID_PRE: HookPoint("", "input"),
    SiteKind.ATT: HookPoint("self_attn.o_proj", "input"),
    SiteKind.MLP: HookPoint("mlp", "output"),
    SiteKind.MLP_IN: HookPoint("post_attention_layernorm", "output"),
}

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        name="gemma2",
        model_types=("gemma2",),
        layers_paths=("model.layers",),
        hook_points=_GEMMA_HOOKS,
        attn_out_proj="self_attn.o_proj",
        needs_eager_attention=True,
    ),
    ArchitectureSpec(
        name="gemma3",
        model_types=("gemma3_text", "gemma3"),
        layers_paths=("model.layers", "model.language_model.layers", "language_model.model.layers"),
        hook_points=_GEMMA_HOOKS,
        attn_out_proj="self_attn.o_proj",
    ),
    ArchitectureSpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers_paths=("model.layers",),
        hook_points=_LLAMA_HOOKS,
        attn_out_proj="self_attn.o_proj",
    ),
    ArchitectureSpec(
        name="gpt2",
        model_types=("gpt2",),
        layers_paths=("transformer.h",),
        hook_points={
            SiteKind.RES: HookPoint("", "output"),
            SiteKind.RESID_PRE: HookPoint("", "input"),
            SiteKind.ATT: HookPoint("attn.c_proj", "input"),
            SiteKind.MLP: HookPoint("mlp", "output"),
            SiteKind.MLP_IN: HookPoint("ln_2", "output"),
        },
        attn_out_proj="attn.c_proj",
    ),
    ArchitectureSpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers_paths=("gpt_neox.layers",),
        hook_points={
            SiteKind.RES: HookPoint("", "output"),
            SiteKind.RESID_PRE: HookPoint("", "input"),
            SiteKind.ATT: HookPoint("attention.dense", "input"),
            SiteKind.MLP: HookPoint("mlp", "output"),
            SiteKind.MLP_IN: HookPoint("post_attention_layernorm", "output"),
        },
        attn_out_proj="attention.dense",
    ),
)


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no site table."""


def supported_model_types() -> list[str]:
    return sorted(model_type for spec in ARCHITECTURES for model_type in spec.model_types)


def architecture_for_model_type(model_type: str) -> ArchitectureSpec:
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"no site table for model type {model_type!r}; supported model types: "
        f"{', '.join(supported_model_types())}. Add an ArchitectureSpec in saescope/models/sites.py."
    )


def architecture_of(model: nn.Module) -> ArchitectureSpec:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no `config.model_type`")
    return architecture_for_model_type(model_type)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's `ModuleList` of decoder layers, found through the architecture table."""
    spec = architecture_of(model)
    for path in spec.layers_paths:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UnsupportedArchitectureError(
        f"{type(model).__name__} ({spec.name}) has none of the expected layer lists {spec.layers_paths}"
    )


def layers_path(model: nn.Module) -> str:
    spec = architecture_of(model)
    layers = decoder_layers(model)
    return next(path for path in spec.layers_paths if _has_submodule(model, path, layers))


def _has_submodule(model: nn.Module, path: str, expected: nn.Module) -> bool:
    try:
        return model.get_submodule(path) is expected
    except AttributeError:
        return False


def hook_module(model: nn.Module, site: Site) -> tuple[nn.Module, HookPoint]:
    """The module to hook for `site`, and whether the site is its input or its output."""
    layers = decoder_layers(model)
    if site.layer >= len(layers):
        raise ValueError(f"site {site} is past the model's last layer ({len(layers) - 1})")
    point = architecture_of(model).hook_points[site.kind]
    layer = layers[site.layer]
    return (layer.get_submodule(point.module) if point.module else layer), point


def hf_hook_name(model: nn.Module, site: Site) -> str:
    """The Gemma Scope 2 `hf_hook_point_in/out` string, e.g. `model.layers.6.self_attn.o_proj.input`."""
    point = architecture_of(model).hook_points[site.kind]
    parts = [layers_path(model), str(site.layer)] + ([point.module] if point.module else []) + [point.io]
    return ".".join(parts)


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2:
        # GPT-2's Conv1D stores its weight as (in, out).
        return int(weight.shape[0])
    raise UnsupportedArchitectureError(f"cannot read the input width of {type(module).__name__}")


def text_config(model: nn.Module) -> Any:
    """The model's (text) config; multimodal models nest the language model's config."""
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no `config`")
    return config.get_text_config()


def site_width(model: nn.Module, kind: SiteKind) -> int:
    """Width of a site kind, read off the modules (the `att` width is n_heads * head_dim)."""
    if kind is SiteKind.ATT:
        spec = architecture_of(model)
        return _in_features(decoder_layers(model)[0].get_submodule(spec.attn_out_proj))
    return int(text_config(model).hidden_size)


def site_widths(model: nn.Module, sites: Iterable[Site]) -> dict[Site, int]:
    widths_by_kind: dict[SiteKind, int] = {}
    result = {}
    for site in sites:
        if site.kind not in widths_by_kind:
            widths_by_kind[site.kind] = site_width(model, site.kind)
        result[site] = widths_by_kind[site.kind]
    return result


def all_sites(n_layers: int, kinds: Sequence[SiteKind] = tuple(SiteKind)) -> list[Site]:
    return sorted(Site(layer, kind) for layer in range(n_layers) for kind in kinds)


def spanned_sites(site: Site, layers: Sequence[int]) -> tuple[Site, ...]:
    """``site``'s kind at each of ``layers`` (a multi-layer dictionary's sites), or ``(site,)`` when empty."""
    if not layers:
        return (site,)
    return tuple(Site(layer, site.kind) for layer in layers)

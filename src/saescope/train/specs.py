"""Turn a suite description (dictionary kinds x sites x widths x architectures x target L0s) into one `SAESpec`
per dictionary.

Dictionary kinds (:data:`DICTIONARY_KINDS`, method §2.6, §7.4, §7.5), all the same code configured differently:

* ``sae``: one per selected site, reading and writing it;
* ``transcoder`` / ``skip_transcoder``: one per selected layer, reading ``mlp_in`` and writing ``mlp``, with no
  pre-encoder bias (and, for the skip kind, the affine path ``x @ W_skip``);
* ``clt`` / ``skip_clt``: one cross-layer transcoder over every selected layer (``mlp_in`` -> ``mlp`` of that
  layer and every later one), optionally with per-layer affine skips;
* ``crosscoder``: one weakly causal crosscoder on the residual stream of ``crosscoder_layers``.

For the multi-layer kinds the width is the total over layers (Gemma Scope 2 names CLTs that way: per layer
``width // layers``) and the target L0 is the total too (active latents per token over all layers).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig
from saescope.sae.widths import parse_width_name
from saescope.train.recipes import Recipe
from saescope.train.settings import SAESpec, TrainConfig


def parse_width(text: str | int) -> int:
    """4096, '4096', or a Gemma Scope width name such as '16k' (16384) or '1m' (1048576)."""
    return parse_width_name(str(text).strip().lower())


DICTIONARY_KINDS: tuple[str, ...] = ("sae", "transcoder", "skip_transcoder", "clt", "skip_clt", "crosscoder")
MULTI_LAYER_KINDS: tuple[str, ...] = ("clt", "skip_clt", "crosscoder")


def parse_kinds(text: str) -> list[str]:
    """'sae,transcoder' -> ['sae', 'transcoder'], each checked against DICTIONARY_KINDS."""
    kinds = [kind.strip() for kind in str(text).split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in DICTIONARY_KINDS]
    if unknown or not kinds:
        raise ValueError(f"dictionary kinds must be a comma list of {DICTIONARY_KINDS}; got {text!r}")
    return kinds


def default_crosscoder_layers(n_layers: int) -> list[int]:
    """Gemma Scope 2's crosscoder layers, {5, 9, 12, 15} on the 18-layer 270M, at the same depths elsewhere."""
    return sorted({min(n_layers - 1, round(n_layers * depth / 18)) for depth in (5, 9, 12, 15)})


def parse_target_l0(text: str | float | Mapping[str, Any] | None) -> dict[str, list[float]] | list[float] | None:
    """'50', '20,50', 'res=40,att=60,mlp=60' or a {kind: value} table -> targets for all kinds or per kind."""
    if text is None or text == "":
        return None
    if isinstance(text, Mapping):
        return {str(kind): [float(v) for v in str(value).split("+")] for kind, value in text.items()}
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if all("=" in part for part in parts):
        per_kind: dict[str, list[float]] = {}
        for part in parts:
            kind, value = part.split("=", 1)
            per_kind.setdefault(kind.strip(), []).append(float(value))
        return per_kind
    if any("=" in part for part in parts):
        raise ValueError(f"target L0 {text!r} mixes 'kind=value' and plain values")
    return [float(part) for part in parts]


def dictionary_specs(
    sites: Sequence[Site],
    site_widths: Mapping[Site, int],
    widths: Sequence[int],
    architectures: Sequence[str],
    targets: dict[str, list[float]] | list[float] | None,
    recipe: Recipe,
) -> list[SAESpec]:
    """One spec per (site, width, architecture, target L0), named `layer_L-kind-arch-width-l0_T`."""
    specs = []
    for site, width, architecture in itertools.product(sites, widths, architectures):
        if isinstance(targets, dict):
            if site.kind.value not in targets:
                raise ValueError(
                    f"no target L0 for site kind {site.kind.value!r} (targets given for {sorted(targets)})"
                )
            site_targets: list[float | None] = list(targets[site.kind.value])
        else:
            site_targets = list(targets) if targets else [None]
        for target in site_targets:
            name = f"layer_{site.layer}-{site.kind.value}-{architecture}-{width}"
            specs.append(_spec(name, site, site_widths[site], width, architecture, target, recipe))
    return specs


#: The site kind whose target L0 a dictionary kind takes first when per-kind targets do not name it: a
#: transcoder writes the MLP output, a crosscoder reads the residual stream. Failing that, the first of
#: res, mlp, att that has one (a target is a share of latents, meaningful at any site).
DEFAULT_TARGET_SITE_KIND: dict[str, str] = {
    "transcoder": "mlp", "skip_transcoder": "mlp", "clt": "mlp", "skip_clt": "mlp", "crosscoder": "res",
}  # fmt: skip


def _targets_for(
    kind: str, targets: dict[str, list[float]] | list[float] | None, scale: float = 1.0
) -> list[float | None]:
    """`kind`'s target L0s: its own, else (per-kind targets without it) a site kind's times `scale`, else an
    error naming what to give. `scale` is a multi-layer dictionary's total width over the width of the SAEs of
    its site kind, so that it fires on the same share of its latents as they do."""
    if not isinstance(targets, dict):
        return list(targets) if targets else [None]
    if kind in targets:
        return list(targets[kind])
    candidates = [DEFAULT_TARGET_SITE_KIND[kind], "res", "mlp", "att"]
    site_kind = next((candidate for candidate in candidates if candidate in targets), None)
    if site_kind is None:
        raise ValueError(
            f"no target L0 for {kind!r} (targets given for {sorted(targets)}); give one as {kind}=N, or a "
            f"{DEFAULT_TARGET_SITE_KIND[kind]}=N target that it can take"
        )
    return [target * scale for target in targets[site_kind]]


def family_specs(
    kind: str,
    layers: Sequence[int],
    site_widths: Mapping[Site, int],
    widths: Sequence[int],
    architectures: Sequence[str],
    targets: dict[str, list[float]] | list[float] | None,
    recipe: Recipe,
    *,
    sae_widths: Sequence[int] | None = None,
) -> list[SAESpec]:
    """The specs of one non-SAE dictionary kind over `layers` (see the module docstring); `site_widths`
    must hold the widths of the sites they read and write.

    With per-kind targets that do not name `kind`, it takes its site kind's target (`DEFAULT_TARGET_SITE_KIND`):
    a transcoder as is, a multi-layer dictionary scaled by its total width over the SAE width at the same
    position of `sae_widths` (default: `widths`), i.e. on the same share of its latents as those SAEs."""
    if kind not in DICTIONARY_KINDS or kind == "sae":
        raise ValueError(f"family_specs takes one of {DICTIONARY_KINDS[1:]}; got {kind!r}")
    layers = sorted(set(layers))
    if not layers:
        raise ValueError(f"{kind}: no layers selected")
    kind_in, kind_out = (SiteKind.RES, SiteKind.RES) if kind == "crosscoder" else (SiteKind.MLP_IN, SiteKind.MLP)
    skip = kind.startswith("skip_")
    specs = []
    if kind in MULTI_LAYER_KINDS:
        first, first_out = Site(layers[0], kind_in), Site(layers[0], kind_out)
        span = "_".join(str(layer) for layer in layers) if kind == "crosscoder" else f"{layers[0]}-{layers[-1]}"
        reference = list(sae_widths or widths)
        paired = reference if len(reference) == len(widths) else [reference[0]] * len(widths)
        scaled = [(width, target) for width, sae_width in zip(widths, paired, strict=True)
                  for target in _targets_for(kind, targets, width / sae_width)]  # fmt: skip
        for width, target in scaled:
            per_layer = width // len(layers)
            if per_layer < 1:
                raise ValueError(f"{kind}: width {width} is less than one latent per layer over {len(layers)} layers")
            specs.append(
                _spec(
                    f"{kind}-layers_{span}-jumprelu-{per_layer * len(layers)}", first, site_widths[first], per_layer,
                    "jumprelu", target, recipe, site_out=first_out, d_out=site_widths[first_out], skip=skip,
                    layers=tuple(layers),
                )
            )  # fmt: skip
        return specs
    for layer, width, architecture in itertools.product(layers, widths, architectures):
        site, site_out = Site(layer, kind_in), Site(layer, kind_out)
        for target in _targets_for(kind, targets):
            specs.append(
                _spec(
                    f"layer_{layer}-{kind}-{architecture}-{width}", site, site_widths[site], width, architecture,
                    target, recipe, site_out=site_out, d_out=site_widths[site_out], skip=skip,
                )
            )  # fmt: skip
    return specs


def _spec(
    name: str,
    site: Site,
    d_in: int,
    width: int,
    architecture: str,
    target: float | None,
    recipe: Recipe,
    *,
    site_out: Site | None = None,
    d_out: int | None = None,
    skip: bool = False,
    layers: tuple[int, ...] = (),
) -> SAESpec:
    controlled = target is not None and recipe.l0_steering == "controller"
    warmup = recipe.lambda_warmup_steps
    fields: dict[str, Any] = {"d_in": d_in, "width": width, "architecture": architecture}
    if site_out is not None:  # a transcoder: no pre-encoder bias (method §2.6)
        fields.update(d_out=d_out, apply_pre_encoder_bias=False, skip=skip)
    if recipe.matryoshka_prefixes:
        if layers:
            raise ValueError(
                f"{name}: Matryoshka prefixes (recipe setting matryoshka_prefixes) apply to single-layer "
                "dictionaries, not to a CLT or crosscoder; set it to 0 for multi-layer kinds"
            )
        fields["matryoshka_prefixes"] = matryoshka_widths(width, recipe.matryoshka_prefixes)
    if layers:
        fields["n_layers"] = len(layers)
        if target is not None and recipe.l0_steering == "quadratic":
            raise ValueError(
                f"{name}: multi-layer dictionaries aim at an L0 with the controller (l0_steering 'controller'), "
                "not the quadratic penalty; use the saescope recipe or l0_steering 'controller'"
            )
    if architecture in ("topk", "batchtopk"):
        if target is None:
            raise ValueError(f"{architecture} needs a target L0 (its k)")
        fields["k"] = round(target)
    elif architecture == "jumprelu":
        fields.update(
            threshold_parameterisation=recipe.threshold,
            threshold_init=recipe.threshold_init,
            bandwidth=recipe.bandwidth,
            l0_coefficient=recipe.l0_coefficient,
            lambda_warmup_steps=warmup,
        )
        if target is not None and recipe.l0_steering == "quadratic":  # GS2 eq. 5 (method §7.2)
            fields.update(sparsity="quadratic_l0", target_l0=target)
    else:
        fields.update(l1_coefficient=recipe.l1_coefficient, lambda_warmup_steps=warmup)
    tag = f"l0_{target:g}" if target is not None else f"lambda_{recipe.l0_coefficient:g}"
    steered = controlled and architecture in ("jumprelu", "relu")
    return SAESpec(
        name=f"{name}-{tag}",
        site=site,
        dictionary=DictionaryConfig(**fields),
        lr=recipe.lr,
        target_l0=target if steered else None,
        threshold_init_from_data=(
            recipe.threshold_init_from_data if steered and architecture in ("jumprelu", "relu") else None
        ),
        decoder_bias_init=recipe.decoder_bias_init,
        site_out=site_out,
        layers=layers,
    )


def matryoshka_widths(width: int, prefixes: int) -> tuple[int, ...]:
    """The nested prefix widths of a Matryoshka dictionary: ``prefixes`` of them, each a quarter of the next, the
    last the whole width (fewer when the narrowest would round below one latent): 4096, 3 -> (256, 1024, 4096)."""
    return tuple(sorted({max(1, width // 4**power) for power in range(prefixes)}))


def recipe_train_config(recipe: Recipe, *, total_tokens: int, **run_settings: Any) -> TrainConfig:
    """The `TrainConfig` that `recipe` fills (`Recipe.train_config`)."""
    return recipe.train_config(total_tokens=total_tokens, **run_settings)

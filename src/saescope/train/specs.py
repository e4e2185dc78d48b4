"""Turn a suite description (sites x widths x architectures x target L0s) into one `SAESpec` per dictionary."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saescope.models.sites import Site
from saescope.sae import DictionaryConfig
from saescope.sae.widths import parse_width_name
from saescope.train.trainer import SAESpec


def parse_width(text: str | int) -> int:
    """4096, '4096', or a Gemma Scope width name such as '16k' (16384) or '1m' (1048576)."""
    return parse_width_name(str(text).strip().lower())


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


@dataclass(frozen=True)
class SuiteOptions:
    """The knobs shared by every dictionary of a suite (see `saescope train --help`)."""

    lr: float = 7e-5
    l0_coefficient: float = 6e-4
    l1_coefficient: float = 1.0
    threshold: str = "raw"
    lambda_warmup_steps: int | None = None  # None: 10,000 (the paper), or 0 with a target L0
    decoder_bias_init: str = "zeros"


def dictionary_specs(
    sites: Sequence[Site],
    site_widths: Mapping[Site, int],
    widths: Sequence[int],
    architectures: Sequence[str],
    targets: dict[str, list[float]] | list[float] | None,
    options: SuiteOptions,
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
            specs.append(_spec(site, site_widths[site], width, architecture, target, options))
    return specs


def _spec(site: Site, d_in: int, width: int, architecture: str, target: float | None, options: SuiteOptions) -> SAESpec:
    warmup = options.lambda_warmup_steps
    if warmup is None:
        warmup = 0 if target is not None else 10_000
    fields: dict[str, Any] = {"d_in": d_in, "width": width, "architecture": architecture}
    if architecture in ("topk", "batchtopk"):
        if target is None:
            raise ValueError(f"{architecture} needs a target L0 (its k)")
        fields["k"] = round(target)
    elif architecture == "jumprelu":
        fields.update(
            threshold_parameterisation=options.threshold,
            l0_coefficient=options.l0_coefficient,
            lambda_warmup_steps=warmup,
        )
    else:
        fields.update(l1_coefficient=options.l1_coefficient, lambda_warmup_steps=warmup)
    tag = f"l0_{target:g}" if target is not None else f"lambda_{options.l0_coefficient:g}"
    return SAESpec(
        name=f"layer_{site.layer}-{site.kind.value}-{architecture}-{width}-{tag}",
        site=site,
        dictionary=DictionaryConfig(**fields),
        lr=options.lr,
        target_l0=target if architecture in ("jumprelu", "relu") else None,
        decoder_bias_init=options.decoder_bias_init,
    )

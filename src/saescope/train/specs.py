"""Turn a suite description (sites x widths x architectures x target L0s) into one `SAESpec` per dictionary."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saescope.models.sites import Site
from saescope.sae import DictionaryConfig
from saescope.sae.widths import parse_width_name
from saescope.train.recipes import L0_STEERING, Recipe
from saescope.train.trainer import SAESpec, TrainConfig


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
    """The knobs shared by every dictionary of a suite (see `saescope train --help`); a `Recipe` fills
    them all (`from_recipe`)."""

    lr: float = 7e-5
    l0_coefficient: float = 6e-4
    l1_coefficient: float = 1.0
    threshold: str = "raw"
    lambda_warmup_steps: int | None = None  # None: 10,000 (the paper), or 0 with a target L0
    decoder_bias_init: str = "zeros"
    threshold_init: float = 0.001
    #: None: from the data exactly when a controller steers λ to a target L0.
    threshold_init_from_data: bool | None = None
    bandwidth: float = 0.001
    l0_steering: str = "controller"  # one of recipes.L0_STEERING

    def __post_init__(self) -> None:
        if self.l0_steering not in L0_STEERING:
            raise ValueError(f"SuiteOptions.l0_steering must be one of {L0_STEERING}; got {self.l0_steering!r}")

    @classmethod
    def from_recipe(cls, recipe: Recipe, **overrides: Any) -> SuiteOptions:
        """The recipe's settings; `overrides` that are not None replace single fields."""
        values: dict[str, Any] = {
            "lr": recipe.lr,
            "l0_coefficient": recipe.l0_coefficient,
            "threshold": recipe.threshold,
            "lambda_warmup_steps": recipe.lambda_warmup_steps,
            "decoder_bias_init": recipe.decoder_bias_init,
            "threshold_init": recipe.threshold_init,
            "threshold_init_from_data": recipe.threshold_init_from_data,
            "bandwidth": recipe.bandwidth,
            "l0_steering": recipe.l0_steering,
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


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
    controlled = target is not None and options.l0_steering == "controller"
    warmup = options.lambda_warmup_steps
    if warmup is None:
        warmup = 0 if controlled else 10_000
    fields: dict[str, Any] = {"d_in": d_in, "width": width, "architecture": architecture}
    if architecture in ("topk", "batchtopk"):
        if target is None:
            raise ValueError(f"{architecture} needs a target L0 (its k)")
        fields["k"] = round(target)
    elif architecture == "jumprelu":
        fields.update(
            threshold_parameterisation=options.threshold,
            threshold_init=options.threshold_init,
            bandwidth=options.bandwidth,
            l0_coefficient=options.l0_coefficient,
            lambda_warmup_steps=warmup,
        )
        if target is not None and options.l0_steering == "quadratic":  # GS2 eq. 5 (SPEC §7.2)
            fields.update(sparsity="quadratic_l0", target_l0=target)
    else:
        fields.update(l1_coefficient=options.l1_coefficient, lambda_warmup_steps=warmup)
    tag = f"l0_{target:g}" if target is not None else f"lambda_{options.l0_coefficient:g}"
    steered = controlled and architecture in ("jumprelu", "relu")
    return SAESpec(
        name=f"layer_{site.layer}-{site.kind.value}-{architecture}-{width}-{tag}",
        site=site,
        dictionary=DictionaryConfig(**fields),
        lr=options.lr,
        target_l0=target if steered else None,
        threshold_init_from_data=options.threshold_init_from_data if steered and architecture == "jumprelu" else None,
        decoder_bias_init=options.decoder_bias_init,
    )


def recipe_train_config(recipe: Recipe, *, total_tokens: int, **settings: Any) -> TrainConfig:
    """The run-wide settings of `recipe` (schedules, controller gain); `settings` that are not None
    (batch size, seed, device, or an explicit schedule value) override them."""
    values: dict[str, Any] = {
        "lr_warmup_steps": recipe.lr_warmup_steps,
        "lr_warmup_start_fraction": recipe.lr_warmup_start_fraction,
        "lr_decay_fraction": recipe.lr_decay_fraction,
        "controller_gain": recipe.controller_gain,
    }
    values.update({key: value for key, value in settings.items() if value is not None})
    return TrainConfig(total_tokens=total_tokens, **values)

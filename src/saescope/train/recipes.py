"""Named training recipes: every setting that decides *how* a dictionary is trained, as data.

A recipe is the one place where training settings live. Its per-dictionary settings (learning rate, threshold
parameter and start, λ, b_dec init, ...) become each dictionary's `SAESpec` (:mod:`saescope.train.specs`); its
run-wide settings are the fields of :class:`~saescope.train.settings.TrainConfig` of the same name, which the recipe
fills (:func:`saescope.train.specs.recipe_train_config`). Every entry point (`saescope train`, `saescope run`, a
preset or a TOML config) picks a recipe by name and changes single settings by key (:func:`with_settings`);
`saescope train --set help` lists the keys.

Two recipes ship:

* ``gemma-scope`` -- the papers' recipe, unchanged (method §2.1, §10): Adam at 7e-5 with a cosine warm-up
  over 1,000 steps and no decay, log θ starting at 0.001, ε = 0.001, λ = 6e-4 warmed up over 10,000
  steps, b_dec starting at zero. With a target L0 it uses Gemma Scope 2's quadratic target-L0 penalty
  (method §7.2), the papers' own way to aim at an L0. It is built for ~10⁶ steps.
* ``saescope`` -- the default, for the few hundred to few thousand steps a CPU or a small GPU budget
  gives. Same architecture, same θ-only straight-through estimator, same released format; what changes
  is where training starts, how fast it may move and how L0 is held (each element's ablation is in
  ``docs/benchmarks/`` and ``docs/results/``):

  - each activation dimension is divided by the square root of its standard deviation (the gains are absorbed
    into the saved weights), so the squared error no longer spends the dictionary on a massive dimension (Gemma
    3's residual stream has one that holds most of the variance);
  - b_dec starts at the data mean, so the SAE does not spend its first steps learning the mean;
  - thresholds start at the per-latent quantile of the first batch that gives the target L0 (instead of
    θ = 0.001, where every latent fires on about half the tokens), and all codes are then scaled by their
    least-squares factor on that batch (random directions at those thresholds overshoot the target);
  - a raw θ parameter (log θ moves by ~lr per step under Adam, method §8.6) and Adam with momentum
    (β1 = 0.9 instead of the papers' 0: a latent that fires rarely otherwise gets steps of many times lr
    whenever it fires) at a larger learning rate, with a short warm-up and a linear decay at the end;
  - L0 held on the target by two controllers: θ scaled each step by (L0/target)^0.5, which moves L0 at
    once, and an integral controller on λ (no λ warm-up: the θ start already has the right L0);
  - a latent silent for a while gets its θ back at the quantile of a fraction of the target rate (a latent
    above all its pre-activations gets no gradient at all, so it would otherwise stay dead; revived at the full
    rate it fires on tokens it reconstructs badly), and a latent firing on much more than the mean rate the
    target asks for gets θ raised to where it fires on the cap (against dense latents);
  - the ReLU baseline starts with b_enc at its target-rate quantile and its L1 λ low, which the controller
    raises (a high start silences every latent in the first steps);
  - after the last step, each decoder is refit to its final codes by ridge least squares over the first
    training tokens (:mod:`saescope.train.refit`): the codes and L0 stay as trained, and a few hundred Adam
    steps leave the decoder short of the best read-out of its codes.

  Gemma Scope 2's end-to-end KL finetuning (method §7.6, :mod:`saescope.train.kl_finetune`) is an
  optional final phase of any recipe (``kl_finetune_tokens`` > 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saescope.train.inits import DECODER_BIAS_INITS
from saescope.train.inits import geometric_median as geometric_median  # re-exported: it used to live here
from saescope.train.settings import TrainConfig

#: How a recipe aims at a requested L0: "controller" (saescope's integral control of λ, with θ started at
#: the matching quantile), "quadratic" (GS2's quadratic penalty around the target, method §7.2) or "none"
#: (fixed λ: the target only names the dictionary; GS1).
L0_STEERING = ("controller", "quadratic", "none")


def _setting(help_text: str, default: Any = dataclasses.MISSING) -> Any:
    """A recipe field with the one-line help `saescope train --set help` prints."""
    if default is dataclasses.MISSING:
        return field(metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Recipe:
    """How to train a JumpReLU dictionary (and the TopK/BatchTopK/ReLU baselines next to it).

    Every field but ``name`` and ``description`` is a setting a user may change by key (:data:`RECIPE_KEYS`). The
    run-wide ones carry the name of the `TrainConfig` field they fill; construction validates every setting.
    """

    name: str
    description: str
    lr: float = _setting("Adam learning rate of every dictionary")
    threshold: str = _setting("JumpReLU threshold parameter: 'log' (the papers') or 'raw'")
    threshold_init: float = _setting("θ at init, normalised units, when it is not taken from the data")
    threshold_init_from_data: bool = _setting(
        "θ starts at the quantile of the first batch giving the target L0 (needs l0_steering 'controller')"
    )
    bandwidth: float = _setting("ε of the rectangle-kernel straight-through estimator, normalised units")
    l0_coefficient: float = _setting("λ of the L0 penalty (the starting λ when a controller steers it)")
    lambda_warmup_steps: int = _setting("steps over which λ is warmed up from 0")
    l0_steering: str = _setting(
        "how a target L0 is aimed at: 'controller' (integral control of λ), 'quadratic' (GS2's penalty around "
        "the target) or 'none' (fixed λ)"
    )
    decoder_bias_init: str = _setting("b_dec at init: 'zeros', 'mean' or 'geometric_median' of the first batch")
    lr_warmup_steps: int = _setting("cosine learning-rate warm-up steps")
    lr_warmup_start_fraction: float = _setting("the warm-up starts at this fraction of lr")
    lr_decay_fraction: float = _setting("linear learning-rate decay to 0 over this last fraction of the steps")
    controller_gain: float = _setting("gain of the integral controller on λ")
    l1_coefficient: float = _setting(
        "the ReLU baseline's L1 λ (its start when a controller steers it: a high start silences every latent)", 1.0
    )
    adam_beta1: float = _setting("Adam β1 (the papers': 0)", 0.0)
    adam_beta2: float = _setting("Adam β2 (the papers': 0.999)", 0.999)
    target_scale: str = _setting(
        "a transcoder's target is divided by its input's scale ('input', GS1) or its own ('own')", "input"
    )
    threshold_controller_gain: float = _setting(
        "multiply JumpReLU θ by (batch L0 / target) ** this after every step (0 = off)", 0.0
    )
    code_scale_init: bool = _setting("scale the initial codes by their least-squares factor on the first batch", False)
    linear_map_decoder_init: bool = _setting(
        "start transcoder decoder rows along the first batch's least-squares linear map of their encoder directions",
        False,
    )
    revive_dead_after_tokens: int = _setting(
        "a JumpReLU latent silent for this many tokens gets θ back at a batch quantile (0 = never)", 0
    )
    revive_rate_fraction: float = _setting("a revived latent starts firing on this fraction of the target rate", 1.0)
    dimension_gain_power: float = _setting(
        "divide each activation dimension by its standard deviation ** this, absorbed into the saved weights (0 = off)",
        0.0,
    )
    plain_error_share: float = _setting(
        "with dimension gains on, this share of the loss is the plain squared error (0 = the weighted error alone)",
        0.0,
    )
    max_firing_rate: float = _setting(
        "raise the θ of a JumpReLU latent firing on more than this fraction of a batch (0 = off)", 0.0
    )
    firing_cap_mean_multiple: float = _setting(
        "the firing-rate cap never falls below this multiple of the mean rate the target L0 asks for", 2.0
    )
    decoder_refit_tokens: int = _setting(
        "after the last step, refit each decoder to its final codes by least squares over this many tokens "
        "(at most the run's; 0 = off)",
        0,
    )
    matryoshka_prefixes: int = _setting(
        "train each single-layer dictionary as a Matryoshka one with this many nested prefixes, each a quarter of "
        "the next: W/4^(n-1), ..., W/4, W (method §7.3; 0 = off)",
        0,
    )
    kl_finetune_tokens: int = _setting("tokens of end-to-end KL finetuning after training (method §7.6; 0 = none)", 0)
    kl_beta: float = _setting("weight of the KL term in the KL finetuning phase", 1.0)

    def __post_init__(self) -> None:
        if self.threshold not in ("log", "raw"):
            raise ValueError(f"recipe setting threshold must be 'log' or 'raw'; got {self.threshold!r}")
        if self.l0_steering not in L0_STEERING:
            raise ValueError(f"recipe setting l0_steering must be one of {L0_STEERING}; got {self.l0_steering!r}")
        if self.decoder_bias_init not in DECODER_BIAS_INITS:
            raise ValueError(
                f"recipe setting decoder_bias_init must be one of {DECODER_BIAS_INITS}; got {self.decoder_bias_init!r}"
            )
        if self.threshold_init_from_data and self.l0_steering != "controller":
            raise ValueError("recipe setting threshold_init_from_data = true goes with l0_steering = 'controller'")
        for name in ("lr", "threshold_init", "bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"recipe setting {name} must be > 0; got {getattr(self, name)!r}")
        nonnegative = (
            "l0_coefficient",
            "l1_coefficient",
            "lambda_warmup_steps",
            "matryoshka_prefixes",
            "kl_finetune_tokens",
            "kl_beta",
        )
        for name in nonnegative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"recipe setting {name} must be >= 0; got {getattr(self, name)!r}")
        self.train_config(total_tokens=1, batch_size=1)  # the run-wide settings, by TrainConfig's own checks

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's (β1, β2), as `TrainConfig.adam_betas` takes them."""
        return (self.adam_beta1, self.adam_beta2)

    def train_config(self, *, total_tokens: int, **run_settings: Any) -> TrainConfig:
        """The `TrainConfig` this recipe fills: every `TrainConfig` field the recipe has a setting of that name
        for (schedules, controllers, the short-budget elements), then `run_settings` that are not None (batch
        size, seed, device, checkpoint interval: what a run says, not how it trains)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(run_settings) - names)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; TrainConfig has: {', '.join(sorted(names))}")
        values = {name: getattr(self, name) for name in names if hasattr(self, name)}
        values.update({key: value for key, value in run_settings.items() if value is not None})
        values["total_tokens"] = total_tokens
        return TrainConfig(**values)

    def replace(self, **changes: Any) -> Recipe:
        """A validated copy with some settings changed (an ablation of this recipe)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def settings(self) -> dict[str, Any]:
        """Every setting by key (the fields but name and description)."""
        return {key: getattr(self, key) for key in RECIPE_KEYS}


#: The keys of a recipe's settings, as `--set key=value`, a preset or a TOML config names them.
RECIPE_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Recipe) if f.name not in ("name", "description")
)


GEMMA_SCOPE = Recipe(
    name="gemma-scope",
    description="the Gemma Scope papers' recipe (method §2.1, §7.2), built for ~10^6 steps",
    lr=7e-5,
    threshold="log",
    threshold_init=0.001,
    threshold_init_from_data=False,
    bandwidth=0.001,
    l0_coefficient=6e-4,
    lambda_warmup_steps=10_000,
    l0_steering="quadratic",
    decoder_bias_init="zeros",
    lr_warmup_steps=1000,
    lr_warmup_start_fraction=0.1,
    lr_decay_fraction=0.0,
    controller_gain=0.0,
)

SAESCOPE = Recipe(
    name="saescope",
    description="saescope's short-budget recipe: dimensions weighted by std^-1/2, mean b_dec, data-driven θ start "
    "with least-squares code scale, raw θ, transcoder decoders along the least-squares linear map, Adam(0.9, 0.999) "
    "at lr 3e-3 with decay, L0 held on target by θ and λ controllers, silent latents revived at a tenth of the "
    "target rate, firing rates capped at 5% (or 1.5x the target's mean rate, if more), decoders refit by least "
    "squares at the end",
    lr=3e-3,
    threshold="raw",
    threshold_init=0.001,
    threshold_init_from_data=True,
    bandwidth=0.001,
    l0_coefficient=6e-4,
    lambda_warmup_steps=0,
    l0_steering="controller",
    decoder_bias_init="mean",
    lr_warmup_steps=10,
    lr_warmup_start_fraction=0.1,
    lr_decay_fraction=0.2,
    controller_gain=0.05,
    adam_beta1=0.9,
    code_scale_init=True,
    linear_map_decoder_init=True,
    threshold_controller_gain=0.5,
    revive_dead_after_tokens=8192,
    revive_rate_fraction=0.1,
    target_scale="own",
    dimension_gain_power=0.5,
    max_firing_rate=0.05,
    firing_cap_mean_multiple=1.5,
    l1_coefficient=0.003,
    decoder_refit_tokens=131_072,
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (GEMMA_SCOPE, SAESCOPE)}
DEFAULT_RECIPE = SAESCOPE.name


def short_budget_warning(recipe: Recipe, *, total_steps: int, batch_size: int) -> str | None:
    """A warning for a run shorter than the recipe's sparsity warm-up, where a penalty (not a controller) aims at
    the L0: λ never reaches full strength, so L0 stays above its target. None when the budget is long enough.

    The papers' recipe warms λ up over 10,000 steps because it is built for about a million; the default recipe
    has no λ warm-up (its θ controller holds L0 from the first step)."""
    warmup = recipe.lambda_warmup_steps
    if recipe.l0_steering == "controller" or warmup <= total_steps:
        return None
    warmup_tokens = warmup * batch_size
    return (
        f"warning: recipe {recipe.name!r} warms its sparsity coefficient up over {warmup:,} steps "
        f"({warmup_tokens:,} tokens at batch {batch_size:,}) and this run trains {total_steps:,} steps, so the L0 "
        "penalty never reaches full strength and L0 will stay far above its target. For a budget this short use "
        f"--recipe {DEFAULT_RECIPE}; for the papers' recipe train at least {warmup_tokens:,} tokens, or shorten its "
        "warm-up with --set lambda_warmup_steps=N."
    )


def get_recipe(name: str) -> Recipe:
    """The named recipe; a clear error listing the names otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def with_settings(recipe: Recipe | str, settings: Mapping[str, Any], *, origin: str = "recipe settings") -> Recipe:
    """`recipe` (or the recipe of that name) with single settings changed, validated once.

    Values may be typed (a TOML file, a preset) or text (``--set key=value``); text is read as the setting's
    type. An unknown key is an error that lists the valid ones; `origin` says where the settings came from.
    """
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    check_recipe_keys(settings, origin=origin)
    if not settings:
        return base
    changes = {key: _setting_value(key, value, getattr(base, key), origin) for key, value in settings.items()}
    try:
        return base.replace(**changes)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from error


def check_recipe_keys(keys: Iterable[str], *, origin: str) -> None:
    """An error listing the valid keys if any of `keys` is not a recipe setting."""
    unknown = sorted(set(keys) - set(RECIPE_KEYS))
    if unknown:
        raise ValueError(f"{origin}: unknown recipe setting(s) {unknown}; valid keys: {', '.join(RECIPE_KEYS)}")


def parse_set_options(items: Sequence[str]) -> dict[str, str]:
    """['lr=1e-3', 'threshold=log'] (repeated ``--set``) -> {'lr': '1e-3', 'threshold': 'log'}; later wins."""
    settings = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes key=value (e.g. --set lr=1e-3; --set help lists the keys); got {item!r}")
        settings[key.strip().replace("-", "_")] = value.strip()
    return settings


def describe_settings(recipe: Recipe) -> str:
    """Every recipe key with its value in `recipe` and what it does (what ``--set help`` prints)."""
    helps = {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(Recipe)}
    lines = [f"Recipe {recipe.name!r} ({recipe.description}).", "Keys for --set key=value (or a TOML config):"]
    for key, value in recipe.settings().items():
        lines.append(f"  {key} = {_format_value(value)}\n      {helps[key]}")
    lines.append(
        f"Other recipes: {', '.join(name for name in RECIPES if name != recipe.name) or 'none'} (--recipe NAME)"
    )
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_KIND_NAMES: dict[type, str] = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _setting_value(key: str, value: Any, current: Any, origin: str) -> Any:
    """`value` as the type of the setting's `current` value (bool, int, float or str)."""
    kind = type(current)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE + _FALSE:
                return text in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except ValueError:
        raise ValueError(f"{origin}: recipe setting {key} takes {_KIND_NAMES[kind]}; got {value!r}") from None

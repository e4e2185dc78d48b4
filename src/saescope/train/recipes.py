"""Named training recipes: every setting that decides *how* a JumpReLU dictionary is trained, as data.

Two recipes ship:

* ``gemma-scope`` -- the papers' recipe, unchanged (SPEC §2.1, §10): Adam at 7e-5 with a cosine warm-up
  over 1,000 steps and no decay, log θ starting at 0.001, ε = 0.001, λ = 6e-4 warmed up over 10,000
  steps, b_dec starting at zero. With a target L0 it uses Gemma Scope 2's quadratic target-L0 penalty
  (SPEC §7.2), the papers' own way to aim at an L0. It is built for ~10⁶ steps.
* ``saescope`` -- the default, for the few hundred to few thousand steps a CPU or a small GPU budget
  gives. Same architecture, same θ-only straight-through estimator, same released format; what changes
  is where training starts, how fast it may move and how L0 is held, each change measured by an ablation in
  ``docs/benchmarks/fidelity.md``:

  - each activation dimension is divided by the square root of its standard deviation (the gains are absorbed
    into the saved weights), so the squared error no longer spends the dictionary on a massive dimension: on
    Gemma 3 270M's layer-6 residual stream one dimension holds 80% of the variance, and without the gains
    delta LM loss was 4x higher (1.26 vs 0.31 nats in the ablation; the largest single change measured);
  - b_dec starts at the data mean, so the SAE does not spend its first steps learning the mean (Gemma 3's
    residual stream has a massive dimension whose mean dwarfs everything else);
  - thresholds start at the per-latent quantile of the first batch that gives the target L0 (instead of
    θ = 0.001, where every latent fires on about half the tokens), and all codes are then scaled by their
    least-squares factor on that batch (random directions at those thresholds overshoot: first FVU 3–6 on
    Gemma 3 270M's layer 6, 0.4–0.7 after the scale);
  - a raw θ parameter (log θ moves by ~lr per step under Adam, SPEC §8.6) and Adam with momentum
    (β1 = 0.9 instead of the papers' 0: a latent that fires rarely otherwise gets steps of many times lr
    whenever it fires) at a 40× larger learning rate, with a short warm-up and a linear decay at the end;
  - L0 held on the target by two controllers: θ scaled each step by (L0/target)^0.5, which moves L0 at
    once, and an integral controller on λ (no λ warm-up: the θ start already has the right L0);
  - a latent silent for 8,192 tokens gets its θ back at the quantile of a tenth of the target rate (a latent
    above all its pre-activations gets no gradient at all, so it would otherwise stay dead; revived at the full
    rate it fired on tokens it reconstructs badly: attention-output FVU 0.463 vs 0.440 at L0 20), and a latent
    firing on more than 5% of a batch (or 1.5× the mean rate the target L0 asks for, if that is more) gets θ
    raised to the quantile where it fires on that rate (dense latents: 0.22% → 0.02% of the residual SAE's,
    1.9% → 0.2% of the MLP SAE's, at the same delta loss; at L0 150 of 4,096 the floor of 1.5×, not 2×, the
    mean rate took the latents on > 10% of held-out tokens from 2 to 0–1 (res), 1 to 0 (mlp) and 41 to 7–12
    (att) over two initialisations, delta loss and KL within noise, FVU 2–9% higher);
  - the ReLU baseline starts with b_enc at its target-rate quantile and its L1 λ low (0.003), which the
    controller raises: at λ 1 the first steps silenced every latent (L0 0 in the benchmark);
  - after the last step, each decoder is refit to its final codes by ridge least squares over the first 131,072
    training tokens (:mod:`saescope.train.refit`): the codes and L0 stay as trained, and a few hundred Adam steps
    leave the decoder well short of the best read-out of its codes.

  Gemma Scope 2's end-to-end KL finetuning (SPEC §7.6, :mod:`saescope.train.kl_finetune`) is an
  optional final phase of any recipe (``kl_finetune_tokens`` > 0).

A recipe fills :class:`~saescope.train.specs.SuiteOptions` (per dictionary) and
:class:`~saescope.train.trainer.TrainConfig` (per run); explicit settings override single fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

#: How a recipe aims at a requested L0: "controller" (saescope's integral control of λ, with θ started at
#: the matching quantile), "quadratic" (GS2's quadratic penalty around the target, SPEC §7.2) or "none"
#: (fixed λ: the target only names the dictionary; GS1).
L0_STEERING = ("controller", "quadratic", "none")
DECODER_BIAS_INITS = ("zeros", "mean", "geometric_median")


@dataclass(frozen=True)
class Recipe:
    """How to train a JumpReLU dictionary (and the TopK/BatchTopK/ReLU baselines next to it)."""

    name: str
    description: str
    lr: float
    threshold: str  # "log" (the paper) or "raw"
    threshold_init: float  # θ at init, normalised units, when it is not taken from the data
    threshold_init_from_data: bool  # θ starts at the quantile giving the target L0 (needs a target)
    bandwidth: float  # ε of the rectangle-kernel STE, normalised units
    l0_coefficient: float  # λ (the starting λ when a controller steers it)
    lambda_warmup_steps: int
    l0_steering: str
    decoder_bias_init: str
    lr_warmup_steps: int
    lr_warmup_start_fraction: float
    lr_decay_fraction: float
    controller_gain: float
    #: The ReLU baseline's L1 λ (its start when a controller steers it: the controller raises a low start within a
    #: few dozen steps, while a high one silences every ReLU latent first, and a silent ReLU latent gets no gradient).
    l1_coefficient: float = 1.0
    #: Adam's β1 and β2 (the papers: 0 and 0.999).
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    #: A transcoder's target divided by its input's scale ("input", GS1) or its own ("own"; see the trainer).
    target_scale: str = "input"
    #: Multiply θ by (batch L0 / target) ** this after every step (0 = off; see the trainer).
    threshold_controller_gain: float = 0.0
    #: Scale the initial codes by their least-squares factor on the first batch (see the trainer).
    code_scale_init: bool = False
    #: Start transcoder decoder rows along the batch's least-squares linear map of their encoder directions.
    linear_map_decoder_init: bool = False
    #: Revive a JumpReLU latent silent for this many tokens (θ back at a batch quantile); 0 = never.
    revive_dead_after_tokens: int = 0
    #: A revived latent starts firing on this fraction of the target rate (see the trainer).
    revive_rate_fraction: float = 1.0
    #: Divide each activation dimension by its standard deviation to this power (0 = off; see the trainer).
    dimension_gain_power: float = 0.0
    #: Share of the loss that is the plain squared error, with dimension gains on (see the trainer).
    plain_error_share: float = 0.0
    #: Cap each JumpReLU latent's firing rate on a training batch at this fraction via θ (0 = off; see the trainer).
    max_firing_rate: float = 0.0
    #: The cap never falls below this multiple of the mean rate the target L0 asks for (see the trainer).
    firing_cap_mean_multiple: float = 2.0
    #: Tokens of the final least-squares decoder refit (see `saescope.train.refit`), at most the run's tokens; 0 = none.
    decoder_refit_tokens: int = 0
    #: Tokens of end-to-end KL finetuning after training (SPEC §7.6); 0 = none.
    kl_finetune_tokens: int = 0
    kl_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold not in ("log", "raw"):
            raise ValueError(f"Recipe.threshold must be 'log' or 'raw'; got {self.threshold!r}")
        if self.l0_steering not in L0_STEERING:
            raise ValueError(f"Recipe.l0_steering must be one of {L0_STEERING}; got {self.l0_steering!r}")
        if self.decoder_bias_init not in DECODER_BIAS_INITS:
            raise ValueError(
                f"Recipe.decoder_bias_init must be one of {DECODER_BIAS_INITS}; got {self.decoder_bias_init!r}"
            )
        if self.threshold_init_from_data and self.l0_steering != "controller":
            raise ValueError("Recipe.threshold_init_from_data goes with l0_steering='controller'")
        for name in ("lr", "threshold_init", "bandwidth"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Recipe.{name} must be > 0; got {getattr(self, name)!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"Recipe.{name} must be in [0, 1); got {getattr(self, name)!r}")
        if not 0.0 <= self.dimension_gain_power <= 1.0:
            raise ValueError(f"Recipe.dimension_gain_power must be in [0, 1]; got {self.dimension_gain_power!r}")
        if not 0.0 <= self.plain_error_share < 1.0:
            raise ValueError(f"Recipe.plain_error_share must be in [0, 1); got {self.plain_error_share!r}")
        if not 0.0 < self.revive_rate_fraction <= 1.0:
            raise ValueError(f"Recipe.revive_rate_fraction must be in (0, 1]; got {self.revive_rate_fraction!r}")
        if not 0.0 <= self.max_firing_rate < 1.0:
            raise ValueError(f"Recipe.max_firing_rate must be in [0, 1); got {self.max_firing_rate!r}")
        if not self.firing_cap_mean_multiple >= 1.0:
            raise ValueError(f"Recipe.firing_cap_mean_multiple must be >= 1; got {self.firing_cap_mean_multiple!r}")
        for name in ("revive_dead_after_tokens", "decoder_refit_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"Recipe.{name} must be >= 0; got {getattr(self, name)!r}")
        if self.kl_finetune_tokens < 0 or self.kl_beta < 0:
            raise ValueError("Recipe.kl_finetune_tokens and Recipe.kl_beta must be >= 0")

    def replace(self, **changes: Any) -> Recipe:
        """A validated copy with some settings changed (an ablation of this recipe)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GEMMA_SCOPE = Recipe(
    name="gemma-scope",
    description="the Gemma Scope papers' recipe (SPEC §2.1, §7.2), built for ~10^6 steps",
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


def get_recipe(name: str) -> Recipe:
    """The named recipe; a clear error listing the names otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def geometric_median(x_ND: torch.Tensor, *, iterations: int = 50, tolerance: float = 1e-7) -> torch.Tensor:
    """The point minimising Σ_n ‖x_n − m‖ (Weiszfeld's iteration, in float64), shape (D,).

    A starting b_dec that, unlike the mean, is not dragged by a few outlier tokens.
    """
    x = x_ND.double()
    median_D = x.mean(0)
    for _ in range(iterations):
        weights_N = 1.0 / (x - median_D).norm(dim=-1).clamp_min(1e-12)
        updated_D = (weights_N[:, None] * x).sum(0) / weights_N.sum()
        moved = float((updated_D - median_D).norm())
        median_D = updated_D
        if moved <= tolerance * float(median_D.norm().clamp_min(1e-12)):
            break
    return median_D.to(x_ND.dtype)

"""Train many sparse dictionaries at once from one activation stream (SPEC §2.4, §2.5).

Every batch of token activations is read once and fed to every dictionary that wants its site; each
dictionary has its own Adam optimiser, schedules and (optionally) target-L0 controller. Steps follow
SPEC §2.4 exactly: normalise by the site's scale C, loss with warmed-up λ, backward, project decoder
gradients orthogonal to the rows, Adam(β1=0, β2=0.999), renormalise decoder rows.

Checkpoints hold weights, optimiser states, controller states, dead-latent counters, the data position
and the RNG state, written atomically; a resumed run gives bit-identical weights to an uninterrupted one.
Checkpoints and saved dictionaries record their SHA-256 beside them (``<name>.sha256``), checked when read.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saescope.atomic import (
    CorruptFileError,
    atomic_write_checksummed,
    atomic_write_json,
    atomic_write_text,
    verify_checksum,
)
from saescope.data.activations import ActivationSource, SiteBatch
from saescope.dictionaries.folder import SAES, write_dictionary_folder
from saescope.dictionaries.sites import SpansSites
from saescope.models.sites import Site
from saescope.sae import (
    AnyDictionary,
    CrossLayerDictionary,
    DictionaryConfig,
    JumpReLU,
    SparseDictionary,
    build_any_dictionary,
    dictionary_blocks,
)
from saescope.train.init_from import initialise_from_parent_
from saescope.train.inits import DECODER_BIAS_INITS, geometric_median
from saescope.train.refit import DecoderRefit, refit_passes, refittable
from saescope.train.schedules import TargetL0Controller, learning_rate

CHECKPOINT = "checkpoint.pt"
#: Values of `TrainConfig.target_scale`.
TARGET_SCALES = ("input", "own")
METRICS = "metrics.jsonl"


class TrainingDivergedError(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class BadActivationsError(TrainingDivergedError):
    """The training data, not a dictionary, holds a non-finite value (or one too large for float32 arithmetic);
    the last good checkpoint is kept."""


#: A normalised row whose squared norm exceeds this overflows float32, the dtype dictionaries compute in.
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _first_non_finite(x_BD: torch.Tensor) -> tuple[int, int, float] | None:
    """(row, column, value) of the first non-finite entry of a batch, or None."""
    bad = (~torch.isfinite(x_BD)).nonzero()
    if bad.shape[0] == 0:
        return None
    row, column = (int(i) for i in bad[0])
    return row, column, float(x_BD[row, column])


@dataclass(frozen=True)
class SAESpec(SpansSites):
    """One dictionary to train: where it reads and writes, what it is, and its optimiser settings.

    An SAE reads and writes ``site``. A transcoder reads ``site`` and writes ``site_out``. A multi-layer
    dictionary (``dictionary.n_layers > 1``: a CLT or crosscoder) spans ``layers``: it reads ``site``'s kind
    and writes ``site_out``'s kind (default: the same) at each of them, ``site`` naming the first layer.
    Inputs are divided by their site's scale C (SPEC §2.2), and each target by the scale of the input it
    is paired with (the transcoder convention, SPEC §2.6; for an SAE or crosscoder that is its own).
    """

    name: str
    site: Site
    dictionary: DictionaryConfig
    lr: float = 7e-5  # SPEC §2.1
    #: Steer λ so that L0 settles on this value (saescope addition, see `TargetL0Controller`).
    target_l0: float | None = None
    #: Initialise each JumpReLU threshold at the quantile of its pre-activations on the first batch that
    #: makes the latent fire on target_l0 / width of tokens (saescope addition; the paper uses θ = 0.001).
    #: None = on exactly when target_l0 is set.
    threshold_init_from_data: bool | None = None
    #: "zeros" (the paper), "mean" (b_dec starts at the first batch's mean, as sparsify does) or
    #: "geometric_median" (of the first batch; robust to outlier tokens). Matters for sites with a large
    #: mean such as Gemma's massive-activation residual dimensions.
    decoder_bias_init: str = "zeros"
    #: Start from this trained dictionary (a folder `load_sae` reads) instead of a fresh initialisation:
    #: PT→IT finetuning (SPEC §7.6, `saescope.train.init_from`). The data-driven inits above are skipped.
    init_from: str | None = None
    #: Where a transcoder writes (None: ``site``, an SAE); for a multi-layer dictionary, the output kind.
    site_out: Site | None = None
    #: The layers a multi-layer dictionary spans, ascending, the first being ``site.layer``; () for one layer.
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"SAESpec.name must be a non-empty folder name without '/'; got {self.name!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"SAESpec.lr must be a positive number; got {self.lr!r}")
        if self.target_l0 is not None and not 0 < self.target_l0 < self.dictionary.total_width:
            raise ValueError(f"SAESpec.target_l0 must be in (0, width × n_layers); got {self.target_l0!r}")
        n_layers = self.dictionary.n_layers
        if self.layers or n_layers > 1:
            layers = tuple(self.layers)
            if len(layers) != n_layers or list(layers) != sorted(set(layers)) or layers[0] != self.site.layer:
                raise ValueError(
                    f"SAESpec.layers must be {n_layers} ascending distinct layers starting at {self.site.layer} "
                    f"(dictionary.n_layers = {n_layers}); got {self.layers!r}"
                )
            if self.init_from is not None:
                raise ValueError("SAESpec.init_from is not supported for multi-layer dictionaries yet")
        if self.decoder_bias_init not in DECODER_BIAS_INITS:
            raise ValueError(
                f"SAESpec.decoder_bias_init must be one of {DECODER_BIAS_INITS}; got {self.decoder_bias_init!r}"
            )
        if self.init_thresholds_from_data and self.dictionary.architecture not in ("jumprelu", "relu"):
            raise ValueError("SAESpec.threshold_init_from_data needs a jumprelu or relu dictionary")
        if self.init_thresholds_from_data and self.target_l0 is None:
            raise ValueError("SAESpec.threshold_init_from_data needs target_l0 (the firing rate to start at)")

    @property
    def init_thresholds_from_data(self) -> bool:
        """Whether a JumpReLU's θ (a ReLU's b_enc) starts where each latent fires at the target rate."""
        if self.threshold_init_from_data is None:
            return self.target_l0 is not None and self.dictionary.architecture == "jumprelu"
        return self.threshold_init_from_data

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "site": self.site.id,
            "dictionary": self.dictionary.to_dict(),
            "lr": self.lr,
            "target_l0": self.target_l0,
            "threshold_init_from_data": self.init_thresholds_from_data,
            "decoder_bias_init": self.decoder_bias_init,
            **({"init_from": self.init_from} if self.init_from is not None else {}),
            **({"site_out": self.site_out.id} if self.site_out is not None else {}),
            **({"layers": list(self.layers)} if self.layers else {}),
        }


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every dictionary of a training run: the one place of the run-wide training settings.

    A recipe fills the fields it has a setting of the same name for (`Recipe.train_config`); the others say
    what a run is rather than how it trains (token budget, batch size, seed, checkpoints, device)."""

    total_tokens: int
    batch_size: int = 4096  # SPEC §2.1
    lr_warmup_steps: int = 1000  # cosine warm-up from 0.1·lr (SPEC §2.1)
    lr_warmup_start_fraction: float = 0.1
    lr_decay_fraction: float = 0.0  # none in the paper (SPEC §9 item 1)
    adam_betas: tuple[float, float] = (0.0, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    dead_window_tokens: int = 1_000_000  # a latent is dead if it has not fired in this many tokens
    #: What a transcoder's target (or a CLT's targets) is divided by: "input" -- the scale C of the input it is
    #: paired with (GS1, SPEC §2.2) -- or "own" -- its own site's scale, folded back at release like the
    #: input's. A site whose scale is far from its input's (Gemma 3's MLP outputs) makes a short run under
    #: "input" spend its steps growing the encoder; "own" puts every target at norm ≈ 1.
    target_scale: str = "input"
    #: After the data-driven inits, scale every code by the least-squares factor on the first batch (saescope
    #: addition; see `least_squares_code_scale`).
    code_scale_init: bool = False
    #: A transcoder (or CLT block) starts with each latent's decoder row along the output that the batch's
    #: least-squares linear map gives for its encoder direction (saescope addition; see
    #: `linear_map_decoders`); otherwise decoder rows are random directions of the output space.
    linear_map_decoder_init: bool = False
    #: Each step, multiply every JumpReLU threshold by (batch L0 / target L0) ** this (0 = off; needs a target
    #: L0). A direct hold on L0 next to the λ controller; see `Trainer._steer_thresholds`.
    threshold_controller_gain: float = 0.0
    #: A JumpReLU latent silent for this many tokens gets θ reset to a quantile of the current batch, where it
    #: fires on ``revive_rate_fraction`` of its target rate (0 = never; needs a target L0). See
    #: `Trainer._revive_dead_latents`.
    revive_dead_after_tokens: int = 0
    #: A revived latent's θ is set where it fires on this fraction of the mean rate its target L0 asks for
    #: (1 = the mean rate; see `Trainer._revive_dead_latents`).
    revive_rate_fraction: float = 1.0
    #: Divide each dimension of a site's normalised activations by its first-batch standard deviation to this
    #: power (with one common factor that keeps the mean squared norm), and absorb the gains into the saved
    #: dictionary (0 = off: only the scalar C). Why: the plain squared error weighs dimensions by their variance,
    #: and a massive activation (Gemma 3's residual stream has a dimension holding most of the variance)
    #: then decides the loss while the model reads the others. The logged FVU is in the weighted space.
    dimension_gain_power: float = 0.0
    #: With dimension gains on, this share of the loss is the plain squared error and the rest the gain-weighted
    #: one, each relative to its first-batch variance: the loss is (1 − s)·FVU_weighted + s·FVU_plain, folded into
    #: the gains (0 = the gain-weighted error alone). Why: the gains move the error into the massive dimensions,
    #: which the plain FVU is mostly made of; a share of the plain error buys them back (see `dimension_gains`).
    plain_error_share: float = 0.0
    #: Each step, a JumpReLU latent firing on more than this fraction of the batch (or
    #: ``firing_cap_mean_multiple`` times the mean rate its target L0 asks for, if more) gets θ raised to the
    #: quantile at which it fires on exactly that (0 = off): a hard hold against dense latents, which the L0
    #: penalty alone lets through (it charges every firing alike).
    max_firing_rate: float = 0.0
    #: The firing-rate cap never falls below this multiple of the mean rate a latent's target L0 asks for (a cap
    #: under the mean would make the target unreachable); with a large target on a narrow dictionary this, not
    #: ``max_firing_rate``, is the cap (150 of 4,096 latents: 3.7% each, twice that 7.3%).
    firing_cap_mean_multiple: float = 2.0
    #: After the last step, set each single-layer dictionary's decoder to the ridge least-squares fit of its
    #: targets given its final codes, over this many tokens from the start of the training data (0 = off; see
    #: `saescope.train.refit`). The codes, and so L0, do not change.
    decoder_refit_tokens: int = 0
    controller_gain: float = 0.02
    progress: bool = True
    #: Where the dictionaries live and train (SAEs stay float32 whatever the model's dtype; θ always is).
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Every run-wide setting is checked here, once (a recipe's run-wide settings by building one)."""
        for name in ("total_tokens", "batch_size", "checkpoint_every_steps", "log_every_steps", "dead_window_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"training setting {name} must be >= 1; got {getattr(self, name)!r}")
        if self.total_tokens < self.batch_size:
            raise ValueError(
                f"training tokens ({self.total_tokens}) are fewer than one batch ({self.batch_size} tokens), which "
                "would train a single step; give at least one batch of tokens (--tokens) or a smaller --batch-size"
            )
        in_unit_interval = {
            "threshold_controller_gain": 0.0 <= self.threshold_controller_gain <= 1.0,
            "lr_decay_fraction": 0.0 <= self.lr_decay_fraction <= 1.0,
            "lr_warmup_start_fraction": 0.0 <= self.lr_warmup_start_fraction <= 1.0,
            "dimension_gain_power": 0.0 <= self.dimension_gain_power <= 1.0,
        }
        for name, valid in in_unit_interval.items():
            if not valid:
                raise ValueError(f"training setting {name} must be in [0, 1]; got {getattr(self, name)!r}")
        below_one = {
            "max_firing_rate": 0.0 <= self.max_firing_rate < 1.0,
            "plain_error_share": 0.0 <= self.plain_error_share < 1.0,
        }
        for name, valid in below_one.items():
            if not valid:
                raise ValueError(f"training setting {name} must be in [0, 1); got {getattr(self, name)!r}")
        if self.target_scale not in TARGET_SCALES:
            raise ValueError(f"training setting target_scale must be one of {TARGET_SCALES}; got {self.target_scale!r}")
        if not 0.0 < self.revive_rate_fraction <= 1.0:
            raise ValueError(
                f"training setting revive_rate_fraction must be in (0, 1]; got {self.revive_rate_fraction!r}"
            )
        for name in ("revive_dead_after_tokens", "decoder_refit_tokens", "lr_warmup_steps", "controller_gain"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"training setting {name} must be >= 0; got {getattr(self, name)!r}")
        if not all(0.0 <= beta < 1.0 for beta in self.adam_betas):
            raise ValueError(f"training settings adam_beta1 and adam_beta2 must be in [0, 1); got {self.adam_betas!r}")
        if not self.firing_cap_mean_multiple >= 1.0:
            raise ValueError(
                f"training setting firing_cap_mean_multiple must be >= 1; got {self.firing_cap_mean_multiple!r}"
            )

    @property
    def total_steps(self) -> int:
        return math.ceil(self.total_tokens / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("progress")
        data.pop("device")  # where it ran does not change what was trained: a run may resume elsewhere
        if self.plain_error_share == 0.0:  # as before the field existed: older checkpoints keep their identity
            del data["plain_error_share"]
        if self.firing_cap_mean_multiple == 2.0:  # likewise
            del data["firing_cap_mean_multiple"]
        return data


@dataclass
class _Member:
    """A dictionary being trained and its training state."""

    spec: SAESpec
    sae: AnyDictionary
    optimizer: torch.optim.Adam
    controller: TargetL0Controller | None
    tokens_since_fired_F: torch.Tensor
    last: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainedDictionary:
    """What a finished run returns for each dictionary."""

    name: str
    site: Site
    sae: AnyDictionary
    norm_scale: float
    folder: Path
    final_metrics: dict[str, float]


def _batch_fvu(y_BD: torch.Tensor, y_hat_BD: torch.Tensor) -> float:
    """Fraction of variance unexplained of the target on this batch (variance about the batch mean)."""
    residual = (y_BD - y_hat_BD).double().square().sum()
    variance = (y_BD - y_BD.mean(0)).double().square().sum()
    return float(residual / variance.clamp_min(1e-30))


@torch.no_grad()
def least_squares_code_scale(sae: AnyDictionary, x_BD: torch.Tensor, y_BD: torch.Tensor) -> float:
    """The factor s > 0 minimising ‖y − ŷ₀ − s·(ŷ − ŷ₀)‖² on a batch, ŷ₀ being the output with every code zero.

    A fresh dictionary whose thresholds sit at the target-rate quantiles fires the right latents, but their
    codes (raw projections on random directions) add up to several times the target: on Gemma 3 270M's
    layer-6 residual and MLP sites the first reconstruction had FVU 3–6, and the first steps of training went
    into shrinking codes (driving L0 far below its target) instead of learning directions. Scaling the codes
    by s (1 when no latent fires) starts training at the best reconstruction those directions allow.
    """
    output = sae(x_BD)
    base_BD = sae.decode(torch.zeros_like(output.codes), x_BD)
    coded_BD = (output.reconstruction - base_BD).double()
    target_BD = (y_BD.to(base_BD.dtype) - base_BD).double()
    energy = float(coded_BD.square().sum())
    if not energy > 0:  # no latent fires: nothing to scale
        return 1.0
    scale = float((coded_BD * target_BD).sum()) / energy
    # codes uncorrelated with the target (s ≤ 0: the best s ≥ 0 is 0) start tiny, not at their random size
    return max(scale, MIN_CODE_SCALE) if math.isfinite(scale) else 1.0


def threshold_steering_factor(l0: float, target_l0: float, gain: float) -> float:
    """What the θ controller multiplies θ by after a step with this L0: ``(L0 / target) ** gain``, within
    [½, 2] (see `Trainer._steer_thresholds`)."""
    return float(min(2.0, max(0.5, (max(l0, 1e-3) / target_l0) ** gain)))


#: The smallest initial code scale (`least_squares_code_scale`).
MIN_CODE_SCALE = 1e-3


@torch.no_grad()
def linear_map_decoders(W_enc_DF: torch.Tensor, x_BD: torch.Tensor, y_BD: torch.Tensor) -> torch.Tensor:
    """Unit decoder rows (F, d_out) for a transcoder: row i is ``normalize(W_enc[:, i]ᵀ @ M)``, M (d_in, d_out)
    being the ridge least-squares linear map from the centred batch inputs to the centred targets.

    A transcoder's encoder reads one space and its decoder writes another, so random decoder rows are
    unrelated to what their latents see: on Gemma 3 270M's layer-7 and 13 MLPs the codes' least-squares
    scale was 0.006 or negative, and a skip transcoder's L0 then collapsed to 8–12 of a target of 40 (b_enc
    driven below every pre-activation). Starting each latent on the output its input direction linearly
    maps to gives a code scale near 0.4 and a lower FVU after 96 steps (layer 7: 0.36 vs 0.49 with skip, 0.41
    vs 0.59 without). For an SAE M is the identity and this is the tied initialisation.
    """
    x_BD, y_BD = x_BD.double(), y_BD.double()
    xc_BD, yc_BD = x_BD - x_BD.mean(0), y_BD - y_BD.mean(0)
    gram_DD = xc_BD.T @ xc_BD
    ridge = 1e-3 * float(gram_DD.diagonal().mean()) + 1e-12  # keeps the solve defined when batch < d_in
    eye_DD = torch.eye(gram_DD.shape[0], dtype=gram_DD.dtype, device=gram_DD.device)
    map_DE = torch.linalg.solve(gram_DD + ridge * eye_DD, xc_BD.T @ yc_BD)
    rows_FE = W_enc_DF.double().T @ map_DE
    return torch.nn.functional.normalize(rows_FE, dim=-1).to(W_enc_DF.dtype)


#: A dimension's standard deviation counts as at least this fraction of the largest one (a constant
#: dimension must not get a gain near zero).
MIN_RELATIVE_DIMENSION_SD = 1e-3


@torch.no_grad()
def dimension_gains(x_BD: torch.Tensor, power: float, plain_share: float = 0.0) -> torch.Tensor:
    """Gains g (D,), float32, that a site's normalised activations are divided by, so that the squared error
    weighs dimension d by 1/g_d²: a weight ∝ sd_d^(−2·power) (each dimension's batch standard deviation), mixed
    with the plain squared error's equal weights so that the loss is (1 − plain_share)·FVU_weighted +
    plain_share·FVU_plain on this batch; then one common factor keeps the batch's mean squared norm (so lr, θ and
    ε keep the scale that the normalisation C gave them).

    With power 1 every dimension counts alike in the squared error; with power 0 dimensions count by their
    variance, as plain C-normalisation does. In between, a massive dimension still counts most but no longer
    drowns the rest: on Gemma 3 270M's layer-6 residual stream (one dimension holds 80% of the variance) the
    default recipe's delta LM loss is 0.31 nats at power 0.5 and 1.26 without the gains
    (``docs/benchmarks/fidelity.md``). The plain share gives the massive dimensions back part of their weight
    (their error is most of the plain FVU) without flattening the others' weights among themselves, as a lower
    power would.
    """
    x_BD = x_BD.float()
    sd_D = x_BD.std(dim=0)
    sd_D = sd_D.clamp_min(float(sd_D.max()) * MIN_RELATIVE_DIMENSION_SD + 1e-30)
    variance_D = sd_D.square()
    weighted_D = sd_D.pow(-2.0 * power)
    weight_D = (1.0 - plain_share) * weighted_D / (weighted_D * variance_D).sum() + plain_share / variance_D.sum()
    gain_D = weight_D.rsqrt()
    kept = (x_BD / gain_D).square().sum(dim=-1).mean() / x_BD.square().sum(dim=-1).mean().clamp_min(1e-30)
    return gain_D * kept.sqrt()


class Trainer:
    """Trains every `SAESpec` on batches from one `ActivationSource`, checkpointing into `out_dir`.

    `owned` (indices into `specs`) restricts training to some of the dictionaries; each keeps the
    initialisation seed of its place in the whole suite, so a dictionary comes out the same whichever
    process trains it (`saescope.train.distributed` shards a suite over torchrun ranks this way).
    """

    def __init__(
        self,
        specs: Sequence[SAESpec],
        source: ActivationSource,
        config: TrainConfig,
        out_dir: Path,
        *,
        owned: Sequence[int] | None = None,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"dictionary names must be unique; got {names}")
        needed = {site for spec in specs for site in (*spec.input_sites, *spec.output_sites)}
        missing = sorted(site.id for site in needed - set(source.sites))
        if missing:
            raise ValueError(f"the activation source has no site {missing}; it has {[s.id for s in source.sites]}")
        for spec in specs:
            for sites, width_name, width in (
                (spec.input_sites, "d_in", spec.dictionary.d_in),
                (spec.output_sites, "d_out", spec.dictionary.d_target),
            ):
                for site in sites:
                    if source.widths[site] != width:
                        raise ValueError(f"{spec.name}: {width_name} {width} != width {source.widths[site]} of {site}")
        self.specs = list(specs)
        self.source = source
        self.config = config
        self.out_dir = out_dir
        self.norm_scales = {
            site: source.norm_scales[site] for spec in specs for site in (*spec.input_sites, *spec.output_sites)
        }
        for site, scale in self.norm_scales.items():
            if not (math.isfinite(scale) and scale > 0):
                raise BadActivationsError(
                    f"the normalisation scale of {site} is {scale}: the activations it was estimated from are "
                    f"{'all zero' if scale == 0 else 'not finite (NaN or infinity)'}. The data is at fault, not the "
                    "training settings; fix the activation source (cache, file or model dtype)."
                )
        indices = list(range(len(self.specs))) if owned is None else sorted(owned)
        if len(set(indices)) != len(indices) or not all(0 <= i < len(self.specs) for i in indices):
            raise ValueError(f"owned must hold distinct indices into the {len(self.specs)} specs; got {owned}")
        self.members = [self._build(index, self.specs[index]) for index in indices]
        #: Per-site gains of `TrainConfig.dimension_gain_power`, set from the first batch ({} when off).
        self.dimension_gains: dict[Site, torch.Tensor] = {}
        self.decoders_refit = False
        #: The raw (unnormalised) batch of the current step, site by site (read when a loss is not finite).
        self._step_batch: dict[Site, torch.Tensor] = {}
        self.metrics_path = out_dir / METRICS
        self.step = 0
        self.tokens_seen = 0
        self.epoch = 0
        self.batch_in_epoch = 0

    def _build(self, index: int, spec: SAESpec) -> _Member:
        generator = torch.Generator().manual_seed(self.config.seed * 7919 + index)
        sae = build_any_dictionary(spec.dictionary, generator=generator).to(self.config.device)
        if spec.init_from is not None:
            assert isinstance(sae, SparseDictionary)  # SAESpec refuses init_from for multi-layer dictionaries
            initialise_from_parent_(sae, spec.init_from, self.norm_scales[spec.site])
        # fused: one kernel over all parameters; on 2 CPU cores it made Adam 4-5x faster than the
        # default foreach implementation in the train-step benchmark, with the same update rule.
        optimizer = torch.optim.Adam(
            sae.parameters(), lr=spec.lr, betas=self.config.adam_betas, eps=self.config.adam_eps, fused=True
        )
        controller = TargetL0Controller(spec.target_l0, gain=self.config.controller_gain) if spec.target_l0 else None
        fired_F = torch.zeros(spec.dictionary.total_width, dtype=torch.int64, device=self.config.device)
        return _Member(spec, sae, optimizer, controller, fired_F)

    # --- checkpoints --------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "specs": [spec.to_dict() for spec in self.specs]}

    def save_checkpoint(self) -> None:
        state = self._checkpoint_state()
        atomic_write_checksummed(self.out_dir / CHECKPOINT, lambda handle: torch.save(state, handle))

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "identity": self._identity(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "norm_scales": {site.id: scale for site, scale in self.norm_scales.items()},
            "dimension_gains": {site.id: gain for site, gain in self.dimension_gains.items()},
            "decoders_refit": self.decoders_refit,
            "members": {
                m.spec.name: {
                    "sae": m.sae.state_dict(),
                    "optimizer": m.optimizer.state_dict(),
                    "controller": m.controller.log_scale if m.controller else None,
                    "tokens_since_fired": m.tokens_since_fired_F,
                    "last": m.last,
                }
                for m in self.members
            },
            "torch_rng": torch.get_rng_state(),
        }

    def load_checkpoint(self) -> bool:
        """Restore the last checkpoint if there is one; False when starting fresh."""
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            self._truncate_metrics()  # a run killed before its first checkpoint starts its log afresh
            return False
        self._restore_checkpoint(self._read_checkpoint(path, start_over=_start_over_hint(path)), path)
        return True

    def _read_checkpoint(self, path: Path, *, start_over: str) -> dict[str, Any]:
        """The state in `path`, checked against its recorded checksum; `CorruptFileError` naming the file and
        saying how to start over (`start_over`) when it is corrupted or unreadable."""
        verify_checksum(path, start_over)
        try:
            state = torch.load(path, weights_only=False, map_location=self.config.device)
        except Exception as error:  # a damaged file fails in torch's zip, pickle or storage readers alike
            raise CorruptFileError(
                f"{path} is unreadable: it is truncated or not a saescope checkpoint ({error}). {start_over}"
            ) from error
        if not isinstance(state, dict) or "identity" not in state:
            raise CorruptFileError(f"{path} is not a saescope training checkpoint. {start_over}")
        return state

    def _restore_checkpoint(self, state: dict[str, Any], path: Path) -> None:
        if state["identity"] != self._identity():
            raise ValueError(f"{path} was written by a run with other settings; use another output folder or delete it")
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.norm_scales = {Site.parse(site_id): scale for site_id, scale in state["norm_scales"].items()}
        self.dimension_gains = {Site.parse(site_id): gain for site_id, gain in state["dimension_gains"].items()}
        self.decoders_refit = bool(state.get("decoders_refit", False))
        for member in self.members:
            saved = state["members"][member.spec.name]
            member.sae.load_state_dict(saved["sae"])
            member.optimizer.load_state_dict(saved["optimizer"])
            if member.controller is not None:
                member.controller.log_scale = saved["controller"]
            member.tokens_since_fired_F = saved["tokens_since_fired"]
            member.last = dict(saved.get("last", {}))  # a run resumed at its last step still saves its final metrics
        torch.set_rng_state(state["torch_rng"].cpu())
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metric rows logged after the checkpoint, so a resumed log has no duplicates."""
        path = self.metrics_path
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            atomic_write_text(path, "".join(row + "\n" for row in rows))

    # --- the loop -----------------------------------------------------------------------------------
    def _batches(self) -> Iterator[SiteBatch]:
        """Batches from the current data position onwards, across epochs."""
        while True:
            produced = False
            for batch in self.source.batches(
                self.config.batch_size, seed=self.config.seed, epoch=self.epoch, skip_batches=self.batch_in_epoch
            ):
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and self.batch_in_epoch == 0:
                raise ValueError("the activation source yielded no batch")
            self.epoch += 1
            self.batch_in_epoch = 0

    def _member_batch(
        self, member: _Member, batch: dict[Site, torch.Tensor], cache: dict[tuple[Site, Site], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The member's normalised input x and target y (each target divided by its paired input's scale);
        `cache` shares the divided tensors between the members of one step."""

        def normalised(site: Site, scale_site: Site) -> torch.Tensor:
            if (site, scale_site) not in cache:
                x = batch[site] / self.norm_scales[scale_site]
                gain_D = self.dimension_gains.get(site)
                cache[site, scale_site] = x if gain_D is None else x / gain_D
            return cache[site, scale_site]

        spec = member.spec
        xs = [normalised(site, site) for site in spec.input_sites]
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=-1)
        if not spec.transcodes:
            return x, x
        own = self.config.target_scale == "own"
        ys = [
            normalised(out, out if own else site) for out, site in zip(spec.output_sites, spec.input_sites, strict=True)
        ]
        return x, (ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1))

    @torch.no_grad()
    def _initialise_from_data(self, member: _Member, x: torch.Tensor, y: torch.Tensor) -> None:
        spec = member.spec
        sae = member.sae
        if spec.init_from is not None:  # starts from its parent's weights (in this run's space), not from the data
            if self.dimension_gains:
                assert isinstance(sae, SparseDictionary)  # SAESpec refuses init_from for multi-layer dictionaries
                gains_in, gains_out = self._member_gains(member)
                sae.absorb_dimension_gains_(1.0 / gains_in[0], 1.0 / gains_out[0])
            return
        parts = (
            zip(sae.blocks, sae.split_inputs(x), sae.split_outputs(y), strict=True)
            if isinstance(sae, CrossLayerDictionary)
            else [(sae, x, y)]
        )
        for block, x_BD, y_BD in parts:
            assert isinstance(block, SparseDictionary)
            if spec.transcodes and self.config.linear_map_decoder_init:
                block.W_dec_FD.copy_(linear_map_decoders(block.W_enc_DF, x_BD, y_BD))
            if spec.decoder_bias_init == "mean":  # b_dec is the bias of the *output*
                block.b_dec_D.copy_(y_BD.mean(0))
            elif spec.decoder_bias_init == "geometric_median":
                block.b_dec_D.copy_(geometric_median(y_BD))
            if spec.init_thresholds_from_data and isinstance(block, JumpReLU):
                floor = block.config.threshold_init
                block.set_threshold_(self._target_rate_quantiles(member, block, x_BD).clamp_min(floor))
            elif spec.init_thresholds_from_data:  # ReLU: its threshold is 0, so b_enc moves instead
                block.b_enc_F.sub_(self._target_rate_quantiles(member, block, x_BD).to(block.b_enc_F.dtype))
        if self.config.code_scale_init:
            scale = least_squares_code_scale(sae, x, y)
            for block in dictionary_blocks(sae):
                block.scale_codes_(scale)

    def _target_rate_quantiles(
        self,
        member: _Member,
        block: SparseDictionary,
        x_BD: torch.Tensor,
        latents_K: torch.Tensor | None = None,
        rate: float | None = None,
    ) -> torch.Tensor:
        """Each latent's batch quantile of π that makes it fire on ``rate`` of the tokens (default: target L0 /
        total width), float32: for every latent (F,), or for the latents ``latents_K`` only (K,)."""
        spec = member.spec
        assert spec.target_l0 is not None or rate is not None
        W_enc_DK: torch.Tensor = block.W_enc_DF
        b_enc_K: torch.Tensor = block.b_enc_F
        if latents_K is not None:
            W_enc_DK, b_enc_K = W_enc_DK[:, latents_K], b_enc_K[latents_K]
        pre_BK = block.encoder_input(x_BD) @ W_enc_DK + b_enc_K
        if rate is None:
            assert spec.target_l0 is not None
            rate = spec.target_l0 / spec.dictionary.total_width
        rank = min(x_BD.shape[0], max(1, round(x_BD.shape[0] * (1.0 - rate))))
        quantile_K: torch.Tensor = pre_BK.kthvalue(rank, dim=0).values.float()
        return quantile_K

    @torch.no_grad()
    def _steer_thresholds(self, member: _Member, firing_counts_F: torch.Tensor, n_tokens: int) -> None:
        """Scale every JumpReLU threshold by ``(batch L0 / target) ** threshold_controller_gain``, clamped to
        [½, 2] per step: θ up when the dictionary fires too often, down when too rarely. A multi-layer
        dictionary steers each block by its own L0 against an equal share of the target, so that no layer
        takes the others' share.

        Why next to the λ controller: λ reaches θ only through the θ gradient, which Adam normalises and which
        exists only inside the kernel window, so λ steers L0 slowly and late; in a run of a few hundred steps
        L0 then swings far from its target (on Gemma 3 270M's layer-6 MLP: 60 → 10 → 40 within 100 steps).
        A common factor on θ moves L0 at once and keeps the latents' relative thresholds, which θ's own
        straight-through gradient keeps learning.
        """
        gain, target = self.config.threshold_controller_gain, member.spec.target_l0
        if gain == 0 or target is None:
            return
        blocks = dictionary_blocks(member.sae)
        block_l0s = firing_counts_F.reshape(len(blocks), -1).sum(dim=1).double() / n_tokens
        for block, l0 in zip(blocks, block_l0s.tolist(), strict=True):
            if isinstance(block, JumpReLU):
                block.scale_thresholds_(threshold_steering_factor(l0, target / len(blocks), gain))

    @torch.no_grad()
    def _revive_dead_latents(self, member: _Member, x: torch.Tensor) -> None:
        """Give every JumpReLU latent that has not fired in ``revive_dead_after_tokens`` tokens a new start:
        θ back at the quantile of this batch that makes it fire on ``revive_rate_fraction`` of the target rate and,
        for a transcoder or CLT whose quantile lies below the θ floor (``threshold_init``), b_enc raised by the
        difference, so that the latent fires at that rate with θ at the floor.

        A latent whose θ rose above all its pre-activations gets no gradient at all (θ only learns inside
        the kernel window, the encoder only where the latent fires), so without this it stays dead. θ alone
        cannot revive a latent whose b_enc has sunk below every pre-activation it could reach: that is how
        transcoder latents die when their skip path learns the linear part of the map (on Gemma 3 270M's
        layer 16, 38% of a 96-step skip transcoder's latents; train FVU 0.51 without the b_enc lift, 0.41
        with it). SAEs do not get the lift: in the transcoders preset it destabilised the 96-step MLP-output
        SAEs (layer 6: train FVU 0.06 → 0.35, L0 swinging 34–105, delta loss 0.17 → 1.6 nats).

        Why a fraction of the target rate: a latent died because the dictionary had no use for its direction,
        so revived at the full rate it fires on tokens it reconstructs badly. On Gemma 3 270M's layer-6
        attention output at L0 20 (4,096 latents, 112 steps), held-out FVU was 0.463 revived at the full
        rate, 0.440 at a tenth of it, 0.426 without revival (but 67% of the latents dead); the residual and
        MLP SAEs at L0 60, with few dead latents, did not move (0.0406 vs 0.0404, 0.0589 vs 0.0573).
        """
        sae, after, target = member.sae, self.config.revive_dead_after_tokens, member.spec.target_l0
        dead_F = member.tokens_since_fired_F >= after
        if after == 0 or target is None or not bool(dead_F.any()):
            return
        rate = self.config.revive_rate_fraction * target / member.spec.dictionary.total_width
        xs = sae.split_inputs(x) if isinstance(sae, CrossLayerDictionary) else (x,)
        offset = 0
        for block, x_BD in zip(dictionary_blocks(sae), xs, strict=True):
            width = block.config.width
            dead_K = dead_F[offset : offset + width].nonzero().flatten()
            if isinstance(block, JumpReLU) and dead_K.numel() > 0:
                floor = block.config.threshold_init
                quantile_K = self._target_rate_quantiles(member, block, x_BD, dead_K, rate=rate)
                if member.spec.transcodes:
                    block.b_enc_F[dead_K] += (floor - quantile_K).clamp_min(0.0).to(block.b_enc_F.dtype)
                theta_F = block.threshold_F.detach().clone()
                theta_F[dead_K] = quantile_K.clamp_min(floor)
                block.set_threshold_(theta_F)
                member.tokens_since_fired_F[offset + dead_K] = 0
            offset += width

    @torch.no_grad()
    def _cap_firing_rates(self, member: _Member, x_BD: torch.Tensor, firing_counts_F: torch.Tensor) -> None:
        """Raise the θ of every JumpReLU latent that fired on more than its cap of this batch to the batch quantile
        at which it fires on exactly the cap. The cap is ``max_firing_rate``, but never below
        ``firing_cap_mean_multiple`` times the mean firing rate that the target L0 asks of the block (60 of 1,024
        latents is already 5.9% each)."""
        if self.config.max_firing_rate == 0:
            return
        n_tokens = x_BD.shape[0]
        blocks = dictionary_blocks(member.sae)
        xs = member.sae.split_inputs(x_BD) if isinstance(member.sae, CrossLayerDictionary) else (x_BD,)
        target = member.spec.target_l0
        offset = 0
        for block, x_block in zip(blocks, xs, strict=True):
            width = block.config.width
            cap = self.config.max_firing_rate
            if target is not None:
                cap = min(1.0, max(cap, self.config.firing_cap_mean_multiple * target / len(blocks) / width))
            dense_K = (firing_counts_F[offset : offset + width] > cap * n_tokens).nonzero().flatten()
            if isinstance(block, JumpReLU) and dense_K.numel() > 0:
                quantile_K = self._target_rate_quantiles(member, block, x_block, dense_K, rate=cap)
                theta_F = block.threshold_F.detach().clone()
                theta_F[dense_K] = torch.maximum(theta_F[dense_K], quantile_K)
                block.set_threshold_(theta_F)
            offset += width

    def _check_batch_finite(self, batch: dict[Site, torch.Tensor]) -> None:
        """Refuse a batch holding NaN or infinity, naming the step, the site and the value: the data is at fault
        (a cache, a live model overflowing in its dtype), not the training settings. One reduction per site and
        one host sync per step."""
        if not batch or bool(torch.stack([torch.isfinite(x_BD).all() for x_BD in batch.values()]).all()):
            return
        for site, x_BD in batch.items():
            found = _first_non_finite(x_BD)
            if found is not None:
                row, column, value = found
                raise BadActivationsError(
                    f"step {self.step}: the activations of {site} hold {value} (batch row {row}, column {column}): "
                    "the data is at fault, not the training settings (a corrupt cache or file, or a model that "
                    f"overflows in its dtype). The last good checkpoint in {self.out_dir} is kept; fix the "
                    "activation source, then resume."
                )

    def _check_batch_magnitudes(self, member: _Member) -> None:
        """After a non-finite loss: refuse, as the data's fault, a row of the member's sites so large once divided
        by its scale C that its squared norm overflows float32. Otherwise the dictionary itself diverged."""
        spec = member.spec
        for site in dict.fromkeys((*spec.input_sites, *spec.output_sites)):
            x_BD = self._step_batch[site]
            sq_B = (x_BD.double() / self.norm_scales[site]).square().sum(-1)
            row = int(sq_B.argmax())
            if float(sq_B[row]) > _FLOAT32_MAX:
                value = float(x_BD[row].abs().max())
                raise BadActivationsError(
                    f"{spec.name} ({spec.site}): the loss is not finite at step {self.step} because batch row {row} "
                    f"of {site} holds a value of magnitude {value:.4g}, about {math.sqrt(float(sq_B[row])):.3g} times "
                    "the site's typical norm: too large for float32 arithmetic. The data is at fault, not the "
                    f"training settings; the last good checkpoint in {self.out_dir} is kept. Fix or drop those rows "
                    "of the activation source, then resume."
                )

    def _train_member(self, member: _Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        spec, config = member.spec, self.config
        lr = learning_rate(
            self.step,
            peak=spec.lr,
            warmup_steps=config.lr_warmup_steps,
            warmup_start_fraction=config.lr_warmup_start_fraction,
            total_steps=config.total_steps,
            decay_fraction=config.lr_decay_fraction,
        )
        for group in member.optimizer.param_groups:
            group["lr"] = lr
        scale = member.controller.scale if member.controller else 1.0
        out = member.sae.loss(x_BD, y_BD, step=self.step, coefficient_scale=scale)
        if not torch.isfinite(out.total):
            self._check_batch_magnitudes(member)
            raise TrainingDivergedError(
                f"{spec.name} ({spec.site}): the loss is {out.total.item()} at step {self.step}; "
                f"the last good checkpoint in {self.out_dir} is kept. Lower its learning rate "
                "or sparsity coefficient and resume."
            )
        out.total.backward()  # type: ignore[no-untyped-call]
        member.sae.project_decoder_grad_()
        member.optimizer.step()
        member.optimizer.zero_grad(set_to_none=True)
        member.sae.normalize_decoder_()
        l0 = float(out.l0)
        if member.controller is not None and self.step >= spec.dictionary.lambda_warmup_steps:
            member.controller.update(l0)
        firing_counts_F = out.output.firing_counts()
        self._steer_thresholds(member, firing_counts_F, x_BD.shape[0])
        member.tokens_since_fired_F += x_BD.shape[0]
        member.tokens_since_fired_F[firing_counts_F > 0] = 0
        dead_fraction = float((member.tokens_since_fired_F >= config.dead_window_tokens).float().mean())
        self._revive_dead_latents(member, x_BD)
        self._cap_firing_rates(member, x_BD, firing_counts_F)
        member.last = {
            "loss": float(out.total.detach()),
            "l0": l0,
            "fvu": _batch_fvu(y_BD, out.output.reconstruction.detach()),
            "lambda": out.sparsity_coefficient,
            "lr": lr,
            "dead_fraction": dead_fraction,
        }

    def _log(self) -> None:
        rows = [{"step": self.step, "name": m.spec.name, **m.last} for m in self.members]
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)

    def _postfix(self) -> str:
        if len(self.members) <= 3:
            return "  ".join(f"{m.spec.name}: L0 {m.last['l0']:.1f} FVU {m.last['fvu']:.3f}" for m in self.members)
        l0s = sorted(m.last["l0"] for m in self.members)
        fvus = sorted(m.last["fvu"] for m in self.members)
        return f"L0 median {l0s[len(l0s) // 2]:.1f} [{l0s[0]:.1f}-{l0s[-1]:.1f}]  FVU median {fvus[len(fvus) // 2]:.3f}"

    def run(self, *, max_steps: int | None = None) -> list[TrainedDictionary]:
        """Train to `config.total_steps` (or stop after `max_steps` steps in total, for tests and
        time-boxed runs), resuming from the checkpoint in `out_dir` when there is one."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.load_checkpoint()
        atomic_write_json(self.out_dir / "train_config.json", self._identity())
        stop_at = self.config.total_steps if max_steps is None else min(max_steps, self.config.total_steps)
        sites = sorted({site for m in self.members for site in (*m.spec.input_sites, *m.spec.output_sites)})
        bar = tqdm(
            total=self.config.total_steps, initial=self.step, unit="step", disable=not self.config.progress,
            desc=f"training {len(self.members)} SAE{'s' if len(self.members) != 1 else ''}",
        )  # fmt: skip
        batches = self._batches()
        try:
            while self.step < stop_at:
                raw = next(batches)
                on_device = {site: raw[site].to(self.config.device) for site in sites}
                self._check_batch_finite(on_device)
                self._step_batch = on_device
                if self.step == 0 and not resumed and self.config.dimension_gain_power > 0:
                    power, share = self.config.dimension_gain_power, self.config.plain_error_share
                    self.dimension_gains = {
                        site: dimension_gains(on_device[site] / self.norm_scales[site], power, share) for site in sites
                    }
                cache: dict[tuple[Site, Site], torch.Tensor] = {}
                for member in self.members:
                    x_BD, y_BD = self._member_batch(member, on_device, cache)
                    if self.step == 0 and not resumed:
                        self._initialise_from_data(member, x_BD, y_BD)
                    self._train_member(member, x_BD, y_BD)
                self.step += 1
                self.tokens_seen += next(iter(raw.values())).shape[0]
                bar.update(1)
                if self.step % self.config.log_every_steps == 0 or self.step == stop_at:
                    self._log()
                    bar.set_postfix_str(self._postfix(), refresh=False)
                if self.step % self.config.checkpoint_every_steps == 0 or self.step == stop_at:
                    self.save_checkpoint()
        finally:
            bar.close()
            self._step_batch = {}
        if self.step == self.config.total_steps and self.config.decoder_refit_tokens > 0 and not self.decoders_refit:
            self._refit_decoders()
            self.decoders_refit = True
            self.save_checkpoint()  # a resumed run saves the refit dictionaries without refitting them again
        return [self._save_dictionary(member) for member in self.members]

    def _refit_decoders(self) -> None:
        """The final phase of `TrainConfig.decoder_refit_tokens`: one or more passes over the first training
        tokens, then each decoder solved in place (in the training space, before the gains are absorbed)."""
        refittable_members = [(m, m.sae) for m in self.members if refittable(m.sae)]
        groups = refit_passes([sae for _, sae in refittable_members])
        tokens = min(self.config.decoder_refit_tokens, self.config.total_tokens)
        for index in range(self._agreed_pass_count(len(groups))):
            group = [refittable_members[i] for i in groups[index]] if index < len(groups) else []
            refits = [(member, DecoderRefit(sae)) for member, sae in group]
            sites = sorted({site for m, _ in group for site in (*m.spec.input_sites, *m.spec.output_sites)})
            seen = 0
            with tqdm(total=tokens, unit="tok", unit_scale=True, disable=not self.config.progress,
                      desc=f"refitting {len(group)} decoder{'s' if len(group) != 1 else ''}") as bar:  # fmt: skip
                for raw in self.source.batches(self.config.batch_size, seed=self.config.seed):
                    take = min(next(iter(raw.values())).shape[0], tokens - seen)
                    on_device = {site: raw[site][:take].to(self.config.device) for site in sites}
                    cache: dict[tuple[Site, Site], torch.Tensor] = {}
                    for member, refit in refits:
                        refit.update(*self._member_batch(member, on_device, cache))
                    seen += take
                    bar.update(take)
                    if seen >= tokens:
                        break
            for member, refit in refits:
                before, after = refit.solve_()
                member.last = {**member.last, "refit_fvu_before": before, "refit_fvu": after}

    def _agreed_pass_count(self, passes: int) -> int:
        """How many refit passes this process reads (a sharded run: the most any rank needs, so that every rank
        reads the same batches)."""
        return passes

    def _member_gains(self, member: _Member) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The dimension gains of the member's input sites and of its output sites, in layer order."""
        spec = member.spec
        return [self.dimension_gains[s] for s in spec.input_sites], [self.dimension_gains[s] for s in spec.output_sites]

    def _saved_dictionary(self, member: _Member) -> AnyDictionary:
        """The member as it is saved: a copy with the dimension gains absorbed, so that it reads activations
        divided by C alone, like every saved dictionary."""
        sae = copy.deepcopy(member.sae)
        if self.dimension_gains:
            gains_in, gains_out = self._member_gains(member)
            if isinstance(sae, CrossLayerDictionary):
                sae.absorb_dimension_gains_(gains_in, gains_out)
            else:
                sae.absorb_dimension_gains_(gains_in[0], gains_out[0])
        return sae

    def _save_dictionary(self, member: _Member) -> TrainedDictionary:
        folder = self.out_dir / SAES / member.spec.name
        sae = self._saved_dictionary(member)
        scales = [self.norm_scales[site] for site in member.spec.input_sites]
        scale = scales[0]
        scales_out = [self.norm_scales[site] for site in member.spec.output_sites]
        own_target_scale: dict[str, Any] = {}
        if member.spec.transcodes and self.config.target_scale == "own":
            own_target_scale = {"norm_scale_out": scales_out[0]}
            if len(scales_out) > 1:
                own_target_scale["norm_scales_out"] = scales_out
        config = {
            **member.spec.to_dict(),
            "norm_scale": scale,
            **({"norm_scales": scales} if len(scales) > 1 else {}),
            **own_target_scale,
            "training": {**self.config.to_dict(), "steps_done": self.step, "tokens_seen": self.tokens_seen},
            "final_batch_metrics": member.last,
        }
        write_dictionary_folder(folder, sae, config)
        return TrainedDictionary(member.spec.name, member.spec.site, sae, scale, folder, dict(member.last))


def _start_over_hint(path: Path) -> str:
    """What to do about an unusable checkpoint, without deleting anything."""
    return (
        f"To start this training over from step 0, move it aside (for example `mv {path} {path}.unusable`) and "
        "rerun the same command, or train into a new output folder."
    )

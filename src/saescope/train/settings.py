"""The settings of a training run: what each dictionary is (`SAESpec`) and how the run trains (`TrainConfig`).

Both are frozen and checked when built, so a bad value fails before anything is created. `saescope.train.trainer`
re-exports them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from saescope.checks import check_at_least
from saescope.dictionaries.folder import DICTIONARY_CONFIG_SCHEMA
from saescope.dictionaries.sites import DictionarySites, SpansSites
from saescope.models.sites import Site
from saescope.sae import DictionaryConfig
from saescope.train.inits import DECODER_BIAS_INITS
from saescope.versions import RecordSchema, without_version

#: Values of `TrainConfig.target_scale`.
TARGET_SCALES = ("input", "own")


@dataclass(frozen=True)
class SAESpec(SpansSites):
    """One dictionary to train: where it reads and writes, what it is, and its optimiser settings.

    An SAE reads and writes ``site``. A transcoder reads ``site`` and writes ``site_out``. A multi-layer
    dictionary (``dictionary.n_layers > 1``: a CLT or crosscoder) spans ``layers``: it reads ``site``'s kind
    and writes ``site_out``'s kind (default: the same) at each of them, ``site`` naming the first layer.
    Inputs are divided by their site's scale C (method §2.2), and each target by the scale of the input it
    is paired with (the transcoder convention, method §2.6; for an SAE or crosscoder that is its own).
    """

    name: str
    site: Site
    dictionary: DictionaryConfig
    lr: float = 7e-5  # method §2.1
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
    #: Start from this trained dictionary instead of a fresh initialisation: PT→IT finetuning (method §7.6,
    #: `saescope.train.init_from`): a saescope dictionary folder, or any folder whose dictionary the caller loaded
    #: (`saescope.release.load_sae`) and handed to the trainer. The data-driven inits above are skipped.
    init_from: str | None = None
    #: Where a transcoder writes (None: ``site``, an SAE); for a multi-layer dictionary, the output kind.
    site_out: Site | None = None
    #: The layers a multi-layer dictionary spans, ascending, the first being ``site.layer``; () for one layer.
    layers: tuple[int, ...] = ()

    @property
    def sites(self) -> DictionarySites:
        """Where it reads and writes (``site``, ``site_out`` and ``layers`` as one record)."""
        return DictionarySites(self.site, self.site_out, self.layers)

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
        """Every field, with the record's version: what a checkpoint stores and the top of the dictionary's
        config.json (`DICTIONARY_CONFIG_SCHEMA`)."""
        return DICTIONARY_CONFIG_SCHEMA.stamp({
            "name": self.name,
            "site": self.site.id,
            "dictionary": self.dictionary.to_dict(),
            "lr": self.lr,
            "target_l0": self.target_l0,
            "threshold_init_from_data": self.init_thresholds_from_data,
            "decoder_bias_init": self.decoder_bias_init,
            "init_from": self.init_from,
            "site_out": self.site_out.id if self.site_out is not None else None,
            "layers": list(self.layers),
        })  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "SAESpec") -> SAESpec:
        """A spec from `to_dict` of this or an older saescope (``origin`` names where ``data`` was read in errors)."""
        fields = without_version(DICTIONARY_CONFIG_SCHEMA.migrate(data, origin=origin))
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{origin}: SAESpec has no field(s) {sorted(unknown)}")
        site_out = fields["site_out"]
        return cls(**{
            **fields,
            "site": Site.parse(str(fields["site"])),
            "dictionary": DictionaryConfig.from_dict(fields["dictionary"]),
            "site_out": Site.parse(str(site_out)) if site_out is not None else None,
            "layers": tuple(int(layer) for layer in fields["layers"]),
        })  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every dictionary of a training run: the one place of the run-wide training settings.

    A recipe fills the fields it has a setting of the same name for (`Recipe.train_config`); the others say
    what a run is rather than how it trains (token budget, batch size, seed, checkpoints, device)."""

    total_tokens: int
    batch_size: int = 4096  # method §2.1
    lr_warmup_steps: int = 1000  # cosine warm-up from 0.1·lr (method §2.1)
    lr_warmup_start_fraction: float = 0.1
    lr_decay_fraction: float = 0.0  # none in the paper (method §9 item 1)
    adam_betas: tuple[float, float] = (0.0, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0
    checkpoint_every_steps: int = 500
    log_every_steps: int = 10
    dead_window_tokens: int = 1_000_000  # a latent is dead if it has not fired in this many tokens
    #: What a transcoder's target (or a CLT's targets) is divided by: "input" -- the scale C of the input it is
    #: paired with (GS1, method §2.2) -- or "own" -- its own site's scale, folded back at release like the
    #: input's. A site whose scale is far from its input's (Gemma 3's MLP outputs) makes a short run under
    #: "input" spend its steps growing the encoder; "own" puts every target at norm ≈ 1.
    target_scale: str = "input"
    #: After the data-driven inits, scale every code by the least-squares factor on the first batch (saescope
    #: addition; see `saescope.train.elements.code_scale`).
    code_scale_init: bool = False
    #: A transcoder (or CLT block) starts with each latent's decoder row along the output that the batch's
    #: least-squares linear map gives for its encoder direction (saescope addition; see
    #: `saescope.train.elements.linear_map`); otherwise decoder rows are random directions of the output space.
    linear_map_decoder_init: bool = False
    #: Each step, multiply every JumpReLU threshold by (batch L0 / target L0) ** this (0 = off; needs a target
    #: L0). A direct hold on L0 next to the λ controller; see `saescope.train.elements.threshold_steering`.
    threshold_controller_gain: float = 0.0
    #: A JumpReLU latent silent for this many tokens gets θ reset to a quantile of the current batch, where it
    #: fires on ``revive_rate_fraction`` of its target rate (0 = never; needs a target L0). See
    #: `saescope.train.elements.revival`.
    revive_dead_after_tokens: int = 0
    #: A revived latent's θ is set where it fires on this fraction of the mean rate its target L0 asks for
    #: (1 = the mean rate; see `saescope.train.elements.revival`).
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
    #: which the plain FVU is mostly made of; a share of the plain error buys them back.
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
        positive = ("total_tokens", "batch_size", "checkpoint_every_steps", "log_every_steps", "dead_window_tokens")
        check_at_least(self, positive, 1, owner="training setting ")
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
        """What was trained, with the record's version (`TRAIN_CONFIG_SCHEMA`): every field but ``progress`` and
        ``device`` (where it ran does not change what was trained: a run may resume elsewhere)."""
        data = asdict(self)
        data.pop("progress")
        data.pop("device")
        return TRAIN_CONFIG_SCHEMA.stamp(data)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, origin: str = "TrainConfig", progress: bool = True, device: str = "cpu"
    ) -> TrainConfig:
        """The settings of `to_dict` of this or an older saescope, with ``progress`` and ``device`` (which it
        leaves out); ``origin`` names where ``data`` was read in errors."""
        fields = without_version(TRAIN_CONFIG_SCHEMA.migrate(data, origin=origin))
        unknown = set(fields) - set(cls.__dataclass_fields__) - {"progress", "device"}
        if unknown:
            raise ValueError(f"{origin}: TrainConfig has no field(s) {sorted(unknown)}")
        betas = tuple(float(beta) for beta in fields["adam_betas"])
        return cls(**{**fields, "adam_betas": (betas[0], betas[1]), "progress": progress, "device": device})


def _train_config_v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """Version 1 left out plain_error_share at 0 and firing_cap_mean_multiple at 2 (their defaults, and what runs
    made before the fields existed did)."""
    return {"plain_error_share": 0.0, "firing_cap_mean_multiple": 2.0, **record}


#: The run-wide training settings as a checkpoint stores them and a dictionary's config.json under "training".
TRAIN_CONFIG_SCHEMA = RecordSchema("training settings", (_train_config_v1_to_v2,))

"""Recipe elements: the interventions a recipe adds to the plain training step, one module each.

`build_elements` is the one place that turns a run's settings into the list of active elements, in the order
the training loop calls them; the loop itself knows none of them by name (see `RecipeElement` for the hooks).
Adding an element means one module here and one line in `build_elements`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saescope.train.elements.base import Member, RecipeElement, TrainingRun, target_rate_quantiles
from saescope.train.elements.code_scale import MIN_CODE_SCALE, CodeScaleInit, least_squares_code_scale
from saescope.train.elements.decoder_bias_init import DecoderBiasInit
from saescope.train.elements.decoder_refit import DecoderRefitAtEnd
from saescope.train.elements.dimension_gains import DimensionGains, dimension_gains
from saescope.train.elements.firing_cap import FiringCap
from saescope.train.elements.linear_map import LinearMapDecoderInit, linear_map_decoders
from saescope.train.elements.revival import DeadLatentRevival
from saescope.train.elements.threshold_init import ThresholdInit
from saescope.train.elements.threshold_steering import ThresholdSteering, threshold_steering_factor

if TYPE_CHECKING:
    from saescope.train.settings import TrainConfig


def build_elements(config: TrainConfig) -> list[RecipeElement]:
    """The elements a run with these settings uses, in the order the loop calls them. The order matters: the
    first-batch inits build on each other (the decoder bias moves what the threshold quantiles see, the code
    scale fits the result), and the after-step holds on θ act in turn on the same step.

    The decoder-bias and threshold inits are per-dictionary settings (`SAESpec`), so they are always listed
    and act on the dictionaries that ask for them."""
    candidates: list[tuple[bool, RecipeElement]] = [
        (config.dimension_gain_power > 0, DimensionGains(config.dimension_gain_power, config.plain_error_share)),
        (config.linear_map_decoder_init, LinearMapDecoderInit()),
        (True, DecoderBiasInit()),
        (True, ThresholdInit()),
        (config.code_scale_init, CodeScaleInit()),
        (config.threshold_controller_gain > 0, ThresholdSteering(config.threshold_controller_gain)),
        (
            config.revive_dead_after_tokens > 0,
            DeadLatentRevival(config.revive_dead_after_tokens, config.revive_rate_fraction),
        ),
        (config.max_firing_rate > 0, FiringCap(config.max_firing_rate, config.firing_cap_mean_multiple)),
        (config.decoder_refit_tokens > 0, DecoderRefitAtEnd(config.decoder_refit_tokens)),
    ]
    return [element for active, element in candidates if active]


__all__ = [
    "MIN_CODE_SCALE",
    "CodeScaleInit",
    "DeadLatentRevival",
    "DecoderBiasInit",
    "DecoderRefitAtEnd",
    "DimensionGains",
    "FiringCap",
    "LinearMapDecoderInit",
    "Member",
    "RecipeElement",
    "ThresholdInit",
    "ThresholdSteering",
    "TrainingRun",
    "build_elements",
    "dimension_gains",
    "least_squares_code_scale",
    "linear_map_decoders",
    "target_rate_quantiles",
    "threshold_steering_factor",
]

"""`build_elements`: the settings decide which elements act, in a fixed order."""

from __future__ import annotations

from element_fixtures import ONE_BATCH

from saescope.train import TrainConfig
from saescope.train.elements import (
    CodeScaleInit,
    DeadLatentRevival,
    DecoderBiasInit,
    DecoderRefitAtEnd,
    DimensionGains,
    FiringCap,
    LinearMapDecoderInit,
    ThresholdInit,
    ThresholdSteering,
    build_elements,
)


def test_the_papers_settings_use_only_the_per_dictionary_inits() -> None:
    kinds = [type(element) for element in build_elements(TrainConfig(total_tokens=ONE_BATCH))]
    assert kinds == [DecoderBiasInit, ThresholdInit]


def test_every_element_setting_switches_its_element_on_in_the_loops_order() -> None:
    config = TrainConfig(
        total_tokens=ONE_BATCH, dimension_gain_power=0.5, linear_map_decoder_init=True, code_scale_init=True,
        threshold_controller_gain=0.1, revive_dead_after_tokens=100, max_firing_rate=0.1, decoder_refit_tokens=100,
    )  # fmt: skip
    kinds = [type(element) for element in build_elements(config)]
    assert kinds == [
        DimensionGains, LinearMapDecoderInit, DecoderBiasInit, ThresholdInit, CodeScaleInit, ThresholdSteering,
        DeadLatentRevival, FiringCap, DecoderRefitAtEnd,
    ]  # fmt: skip

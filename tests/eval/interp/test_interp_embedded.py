"""Absorption and sparse probing on the real embedded Gemma 3 270M at one site, with a tiny budget (slow)."""

from __future__ import annotations

import math

import pytest
import torch

from saescope.eval.interp import AbsorptionConfig, InterpOptions, ProbingConfig, evaluate_absorption, evaluate_probing
from saescope.models.loading import load_model
from saescope.models.sites import Site
from saescope.sae import DictionaryConfig, build_dictionary

pytestmark = pytest.mark.slow


def test_both_metrics_run_on_the_embedded_model_for_one_site() -> None:
    loaded = load_model("gemma-3-270m")
    site = Site.parse("layer_3/res")
    sae = build_dictionary(
        DictionaryConfig(d_in=loaded.info.d_model, width=64, threshold_init=0.01),
        generator=torch.Generator().manual_seed(0),
    )
    options = InterpOptions(progress=False)

    absorption = evaluate_absorption(
        sae, site, loaded, AbsorptionConfig(max_words=1500, min_probe_true_positives=3), options=options
    )
    assert len(absorption.letters) >= 2
    assert 0.0 <= absorption.mean_absorption_fraction <= 1.0
    assert 0.0 <= absorption.full_absorption_rate <= 1.0
    assert absorption.probe_test_f1 > 0.0  # the model's activations carry some first-letter information
    assert all(letter.main_latents for letter in absorption.letters)

    small = ProbingConfig(ks=(1, 5), max_tokens=32, per_label=16)
    probing = evaluate_probing(sae, site, loaded, small, options=options)
    assert len(probing.tasks) >= 2  # the embedded corpus's genres, each against the rest
    assert probing.dense_accuracy > 0.6  # genres are told apart from the raw activations
    for k in (1, 5):
        assert not math.isnan(probing.sparse_accuracy(k))
    assert set(probing.to_dict()) >= {"dense_accuracy", "top_1_accuracy", "top_5_accuracy", "per_task"}

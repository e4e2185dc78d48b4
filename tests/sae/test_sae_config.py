"""DictionaryConfig: defaults, derived fields, validation messages, JSON round trip, registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from saescope.sae import ARCHITECTURES, DICTIONARY_CLASSES, DictionaryConfig, build_dictionary


def test_defaults_follow_gemma_scope() -> None:
    c = DictionaryConfig(d_in=16, width=64)
    assert c.architecture == "jumprelu"
    assert c.d_out == 16
    assert c.apply_pre_encoder_bias
    assert not c.skip
    assert c.sparsity == "l0"
    assert c.threshold_parameterisation == "log"
    assert c.threshold_init == 0.001
    assert c.bandwidth == 0.001
    assert c.lambda_warmup_steps == 10_000
    assert c.quadratic_prefactor == 2.0
    assert c.high_freq_coefficient == 0.0
    assert c.torch_dtype == torch.float32
    assert c.is_sae


@pytest.mark.parametrize(
    ("architecture", "extra", "sparsity"),
    [("jumprelu", {}, "l0"), ("relu", {}, "l1"), ("topk", {"k": 4}, "none"), ("batchtopk", {"k": 4}, "none")],
)
def test_sparsity_default_depends_on_architecture(architecture: str, extra: dict[str, Any], sparsity: str) -> None:
    assert DictionaryConfig(d_in=8, width=16, architecture=architecture, **extra).sparsity == sparsity


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"architecture": "gated"}, "architecture"),
        ({"d_in": 0}, "d_in"),
        ({"width": -3}, "width"),
        ({"width": 2.5}, "width"),
        ({"d_out": 0, "apply_pre_encoder_bias": False}, "d_out"),
        ({"d_out": 12}, "apply_pre_encoder_bias"),
        ({"dtype": "int8"}, "dtype"),
        ({"threshold_parameterisation": "exp"}, "threshold_parameterisation"),
        ({"threshold_init": 0.0}, "threshold_init"),
        ({"bandwidth": -1e-3}, "bandwidth"),
        ({"l0_coefficient": -1.0}, "l0_coefficient"),
        ({"l0_coefficient": float("nan")}, "l0_coefficient"),
        ({"lambda_warmup_steps": -1}, "lambda_warmup_steps"),
        ({"sparsity": "l1"}, "sparsity"),
        ({"sparsity": "quadratic_l0"}, "target_l0"),
        ({"target_l0": 50.0}, "target_l0"),
        ({"quadratic_prefactor": 0.0}, "quadratic_prefactor"),
        ({"high_freq_omega": 1.5}, "high_freq_omega"),
        ({"architecture": "relu", "high_freq_coefficient": 0.1}, "high_freq_coefficient"),
        ({"architecture": "topk"}, "k"),
        ({"architecture": "topk", "k": 17}, "k"),
        ({"k": 4}, "k"),
        ({"batchtopk_threshold_decay": 1.0}, "batchtopk_threshold_decay"),
        ({"matryoshka_prefixes": (4, 8)}, "matryoshka_prefixes"),
        ({"matryoshka_prefixes": (8, 4, 16)}, "matryoshka_prefixes"),
        ({"matryoshka_prefixes": (0, 16)}, "matryoshka_prefixes"),
        ({"skip": 1}, "skip"),
    ],
)
def test_validation_error_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"d_in": 8, "width": 16}
    base.update(kwargs)
    with pytest.raises(ValueError, match=rf"DictionaryConfig\.{field} must be"):
        DictionaryConfig(**base)


def test_transcoder_shapes_are_valid_without_pre_encoder_bias() -> None:
    c = DictionaryConfig(d_in=8, d_out=12, width=16, apply_pre_encoder_bias=False, skip=True)
    assert c.d_out == 12
    assert not c.is_sae


def test_json_round_trip_is_exact() -> None:
    c = DictionaryConfig(
        d_in=8,
        width=16,
        sparsity="quadratic_l0",
        target_l0=5.0,
        high_freq_coefficient=0.2,
        matryoshka_prefixes=(2, 4, 16),
        threshold_parameterisation="raw",
        dtype="bfloat16",
    )
    restored = DictionaryConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert restored == c
    assert restored.matryoshka_prefixes == (2, 4, 16)


def test_from_dict_rejects_unknown_keys_by_name() -> None:
    data = DictionaryConfig(d_in=8, width=16).to_dict()
    data["l0_coef"] = 1.0
    with pytest.raises(ValueError, match="l0_coef"):
        DictionaryConfig.from_dict(data)


def test_registry_covers_every_architecture_and_builds_the_right_class() -> None:
    assert set(DICTIONARY_CLASSES) == set(ARCHITECTURES)
    for architecture in ARCHITECTURES:
        k = 4 if "topk" in architecture else None
        config = DictionaryConfig(d_in=8, width=16, architecture=architecture, k=k)
        module = build_dictionary(config)
        assert type(module) is DICTIONARY_CLASSES[architecture]
        assert module.config is config


def test_classes_refuse_a_config_of_another_architecture() -> None:
    config = DictionaryConfig(d_in=8, width=16)
    for architecture, cls in DICTIONARY_CLASSES.items():
        if architecture != "jumprelu":
            with pytest.raises(ValueError, match="architecture"):
                cls(config)

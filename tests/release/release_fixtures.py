"""Helpers and fixtures for the release tests: trained-suite folders written exactly as the trainer writes them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from saescope.models.sites import Site
from saescope.sae import DictionaryConfig, JumpReLU, SparseDictionary, build_dictionary

D = 16
WIDTH = 48
NORM_SCALE = 3.7

WriteDictionary = Callable[..., Path]


def random_jumprelu(config: DictionaryConfig, seed: int) -> SparseDictionary:
    """A JumpReLU dictionary with non-trivial biases and thresholds (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    sae = build_dictionary(config, generator=generator)
    with torch.no_grad():
        sae.b_enc_F.copy_(0.3 * torch.randn(config.width, generator=generator))
        sae.b_dec_D.copy_(0.5 * torch.randn(config.d_target, generator=generator))
        if sae.W_skip_DD is not None:
            sae.W_skip_DD.copy_(0.1 * torch.randn(config.d_in, config.d_target, generator=generator))
        if not config.apply_pre_encoder_bias:  # a transcoder: perturb the encoder away from its init
            sae.W_enc_DF.mul_(1.5)
    assert isinstance(sae, JumpReLU)
    sae.set_threshold_(0.05 + 0.2 * torch.rand(config.width, generator=generator))
    return sae.eval()


def write_dictionary_folder(
    run: Path,
    name: str,
    sae: SparseDictionary,
    *,
    site: str = "layer_1/res",
    norm_scale: float = NORM_SCALE,
    l0: float = 12.0,
    metrics: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """``<run>/saes/<name>/`` as ``Trainer._save_dictionary`` writes it (plus an optional metrics.json)."""
    folder = run / "saes" / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sae.state_dict().items()}, folder / "sae.safetensors")
    config = {
        "format": "saescope-dictionary-v1",
        "name": name,
        "site": site,
        "dictionary": sae.config.to_dict(),
        "lr": 7e-5,
        "target_l0": None,
        "threshold_init_from_data": False,
        "decoder_bias_init": "zeros",
        "norm_scale": norm_scale,
        "training": {"total_tokens": 4096, "batch_size": 256, "seed": 0, "steps_done": 16, "tokens_seen": 4096},
        "final_batch_metrics": {"loss": 1.0, "l0": l0, "fvu": 0.25, "lambda": 6e-4, "lr": 7e-5, "dead_fraction": 0.0},
        **(extra_config or {}),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def suite_run(tmp_path: Path) -> Path:
    """A run with three SAEs (two at one site that share an L0 label) and one affine skip transcoder."""
    run = tmp_path / "run"
    sae_config = DictionaryConfig(d_in=D, width=WIDTH)
    metrics = {  # as saescope.eval.evaluate writes it (abridged)
        "format": "saescope-metrics-v1",
        "name": "res-a",
        "model": "gemma-3-270m",
        "dataset": {"schema_version": 2, "source": "embedded", "split": "heldout"},  # as evaluation records it
        "mask_policy": "special tokens excluded",
        "reconstruction": {"n_tokens": 4096, "l0": 14.2, "l0_stderr": 0.1, "fvu": 0.2, "dead_fraction": 0.0},
        "lm_loss": {"delta_lm_loss": 0.05, "loss_recovered": 0.9},
    }
    write_dictionary_folder(run, "res-a", random_jumprelu(sae_config, 1), l0=11.6, metrics=metrics)
    write_dictionary_folder(run, "res-b", random_jumprelu(sae_config, 2), l0=17.0)
    write_dictionary_folder(run, "att", random_jumprelu(DictionaryConfig(d_in=24, width=WIDTH), 3),
                            site="layer_0/att", l0=75.4)  # fmt: skip
    skip_config = DictionaryConfig(d_in=D, width=WIDTH, apply_pre_encoder_bias=False, skip=True)
    write_dictionary_folder(run, "tc", random_jumprelu(skip_config, 4), site="layer_2/mlp_in", l0=33.3,
                            extra_config={"site_out": "layer_2/mlp"})  # fmt: skip
    return run


@pytest.fixture
def activations() -> torch.Tensor:
    """Raw activations with a norm around C (as the site's real activations would have)."""
    generator = torch.Generator().manual_seed(7)
    return NORM_SCALE * torch.randn(64, D, generator=generator) / D**0.5 + 0.4


def site(text: str) -> Site:
    return Site.parse(text)

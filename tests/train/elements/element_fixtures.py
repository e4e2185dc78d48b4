"""Shared helpers of the recipe-element tests: tiny data with a known structure, and members to act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch

from saescope.data.arrays import ArrayActivations
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig
from saescope.train import SAESpec, TrainConfig, Trainer
from saescope.train.elements import RecipeElement

RES = Site(0, SiteKind.RES)
ONE_BATCH = 4096  # TrainConfig's default batch size: the fewest tokens a run may have
D, WIDTH = 32, 256

E = TypeVar("E", bound=RecipeElement)


def sparse_tokens(n: int, seed: int) -> torch.Tensor:
    """Sparse combinations of 96 fixed unit atoms (~6 active per token) on top of a large constant mean."""
    atoms_AD = torch.nn.functional.normalize(torch.randn(96, D, generator=torch.Generator().manual_seed(7)), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    codes_NA = (torch.rand(n, 96, generator=generator) < 6 / 96).float() * (
        torch.rand(n, 96, generator=generator) + 0.5
    )
    mean_D = torch.linspace(-1.0, 1.0, D) * 4.0
    return codes_NA @ atoms_AD + mean_D


def outlier_tokens(n: int, seed: int) -> torch.Tensor:
    """`sparse_tokens` with one massive dimension (std ~60x the others') of its own, like Gemma 3's residual."""
    x_ND = sparse_tokens(n, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    x_ND[:, 0] = 200.0 + 30.0 * torch.randn(n, generator=generator)
    return x_ND


def jumprelu_spec(**kwargs: Any) -> SAESpec:
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="raw", lambda_warmup_steps=0)
    return SAESpec("jr", RES, dictionary, **kwargs)


def trainer_for(
    specs: SAESpec | list[SAESpec], tmp_path: Path, arrays: torch.Tensor | dict[Site, torch.Tensor], **settings: Any
) -> Trainer:
    """A trainer (nothing trained yet) of these dictionaries on these activations (a tensor: the residual site)."""
    config = TrainConfig(**{"total_tokens": 10**6, "batch_size": 512, "progress": False, **settings})
    source = ArrayActivations(arrays if isinstance(arrays, dict) else {RES: arrays})
    return Trainer(specs if isinstance(specs, list) else [specs], source, config, tmp_path)


def first_batch(trainer: Trainer, x_ND: torch.Tensor, y_ND: torch.Tensor) -> None:
    """What a fresh run does with its first member's first batch before the first step: every element's
    `on_first_batch`, in order."""
    for element in trainer.elements:
        element.on_first_batch(trainer.members[0], x_ND, y_ND)


def element_of(trainer: Trainer, kind: type[E]) -> E:
    """The trainer's element of this kind."""
    (found,) = [element for element in trainer.elements if isinstance(element, kind)]
    return found

"""Sparse dictionaries: JumpReLU (Gemma Scope), TopK, BatchTopK and ReLU SAEs, transcoders, skip transcoders.

Pure tensor code: no files, no models. Build one from a config with :func:`build_dictionary`.
"""

from __future__ import annotations

import torch

from saescope.sae.base import (
    ForwardOutput,
    LossOutput,
    SparseDictionary,
    SparsityTerms,
    unit_rows_he_uniform,
)
from saescope.sae.config import ARCHITECTURES, DictionaryConfig
from saescope.sae.jumprelu import JumpReLU, JumpReLUFunction, StepFunction, heaviside_step, jumprelu
from saescope.sae.relu import ReLU
from saescope.sae.topk import BatchTopK, TopK

#: The one place that maps ``config.architecture`` to a class.
DICTIONARY_CLASSES: dict[str, type[SparseDictionary]] = {
    "jumprelu": JumpReLU,
    "topk": TopK,
    "batchtopk": BatchTopK,
    "relu": ReLU,
}
assert set(DICTIONARY_CLASSES) == set(ARCHITECTURES), "registry and config.ARCHITECTURES disagree"


from saescope.sae.multilayer import (  # noqa: E402
    AnyDictionary,
    CrossLayerDictionary,
    build_any_dictionary,
    dictionary_blocks,
    layer_output,
    single_layer,
)


def build_dictionary(config: DictionaryConfig, *, generator: torch.Generator | None = None) -> SparseDictionary:
    """A freshly initialised dictionary of ``config.architecture`` (seed it with ``generator``)."""
    return DICTIONARY_CLASSES[config.architecture](config, generator=generator)


__all__ = [
    "ARCHITECTURES",
    "DICTIONARY_CLASSES",
    "AnyDictionary",
    "BatchTopK",
    "CrossLayerDictionary",
    "DictionaryConfig",
    "ForwardOutput",
    "JumpReLU",
    "JumpReLUFunction",
    "LossOutput",
    "ReLU",
    "SparseDictionary",
    "SparsityTerms",
    "StepFunction",
    "TopK",
    "build_any_dictionary",
    "build_dictionary",
    "dictionary_blocks",
    "heaviside_step",
    "jumprelu",
    "layer_output",
    "single_layer",
    "unit_rows_he_uniform",
]

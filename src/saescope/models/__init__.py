"""Models and sites: loading a causal LM and reading or replacing activations at Gemma Scope sites."""

from saescope.models.hooks import capture, splice
from saescope.models.loading import DEFAULT_MODEL, LoadedModel, ModelInfo, load_model
from saescope.models.sites import Site, SiteKind, select_sites

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelInfo",
    "Site",
    "SiteKind",
    "capture",
    "load_model",
    "select_sites",
    "splice",
]

"""saescope: Gemma Scope-style sparse dictionaries for every layer and sub-layer of a language model."""

__version__ = "0.1.0"

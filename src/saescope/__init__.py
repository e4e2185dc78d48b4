"""saescope: Gemma Scope-style sparse dictionaries for every layer and sub-layer of a language model."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `saescope.load_sae` without importing the release stage (and torch) at `import saescope`.
    if name == "load_sae":
        from saescope.release import load_sae

        return load_sae
    raise AttributeError(f"module 'saescope' has no attribute {name!r}")

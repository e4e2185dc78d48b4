"""The tiny random models and tokenizer of tests/conftest.py, for test modules to import.

`from conftest import ...` finds whichever conftest pytest imported last (tests/release has its own), so it breaks
depending on which folders one run collects; this module loads tests/conftest.py by its path instead."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_module(path: Path, name: str) -> ModuleType:
    """The Python file at ``path`` imported as a module called ``name`` (a file outside any package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONFTEST = load_module(Path(__file__).with_name("conftest.py"), "saescope_root_conftest")
VOCAB: int = _CONFTEST.VOCAB
build_tiny_model = _CONFTEST.build_tiny_model
build_tiny_tokenizer = _CONFTEST.build_tiny_tokenizer

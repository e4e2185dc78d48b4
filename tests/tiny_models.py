"""The tiny random models and tokenizer of tests/conftest.py, for test modules to import.

`from conftest import ...` finds whichever conftest pytest imported last (tests/release has its own), so it breaks
depending on which folders one run collects; this module loads tests/conftest.py by its path instead."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _root_conftest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("saescope_root_conftest", Path(__file__).with_name("conftest.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CONFTEST = _root_conftest()
VOCAB: int = _CONFTEST.VOCAB
build_tiny_model = _CONFTEST.build_tiny_model
build_tiny_tokenizer = _CONFTEST.build_tiny_tokenizer

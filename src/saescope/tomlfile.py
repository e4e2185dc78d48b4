"""TOML settings files (the presets of ``saescope run``, a command's ``--config`` file), read the same way on every
supported Python: the standard library's tomllib from 3.11, its tomli backport before."""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def parse_toml(text: str, *, where: str) -> dict[str, Any]:
    """The table in ``text``; ValueError saying ``where`` it came from when it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{where} is not valid TOML: {error}") from error

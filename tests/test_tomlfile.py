"""`saescope.tomlfile`: settings files in TOML, and a named error for a broken one."""

from __future__ import annotations

import pytest

from saescope.tomlfile import parse_toml


def test_a_toml_table_is_read_and_a_broken_file_is_named() -> None:
    assert parse_toml('widths = [4096, 16384]\nrecipe = "saescope"\n', where="x") == {
        "widths": [4096, 16384],
        "recipe": "saescope",
    }
    with pytest.raises(ValueError, match=r"^config file run\.toml is not valid TOML: "):
        parse_toml("widths = [4096,\n", where="config file run.toml")

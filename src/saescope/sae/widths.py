"""Gemma Scope's names for dictionary widths ('16k' = 16384), used on the command line and in releases."""

from __future__ import annotations

#: The width tokens Gemma Scope 1 and 2 use in folder names (method §3.3, §6.1, §6.2). Note 65k = 2^16
#: and 131k = 2^17: the names are the thousands, not multiples of 1024.
GEMMA_SCOPE_WIDTH_NAMES: dict[int, str] = {
    4096: "4k",
    16384: "16k",
    32768: "32k",
    65536: "65k",
    131072: "131k",
    262144: "262k",
    524288: "524k",
    1048576: "1m",
}
_WIDTHS_BY_NAME = {name: width for width, name in GEMMA_SCOPE_WIDTH_NAMES.items()}


def width_name(width: int) -> str:
    """Gemma Scope's folder token for a width (16384 -> '16k'); any other width as the plain integer."""
    return GEMMA_SCOPE_WIDTH_NAMES.get(width, str(width))


def parse_width_name(text: str) -> int:
    """Inverse of :func:`width_name`: '16k' -> 16384, '1m' -> 1048576, '5000' -> 5000."""
    if text in _WIDTHS_BY_NAME:
        return _WIDTHS_BY_NAME[text]
    if text.isdigit() and int(text) > 0:
        return int(text)
    known = ", ".join(_WIDTHS_BY_NAME)
    raise ValueError(f"unknown width name {text!r}: expected one of {known} or a plain integer")

"""Checks that settings records share, below every stage: each names the record, the field and the value."""

from __future__ import annotations

from collections.abc import Iterable


def check_at_least(record: object, names: Iterable[str], minimum: int, *, owner: str) -> None:
    """ValueError for the first field of ``record`` among ``names`` below ``minimum``, named ``{owner}{name}``
    (``owner`` as the message should read: ``"EvalConfig."``, ``"training setting "``)."""
    for name in names:
        value = getattr(record, name)
        if value < minimum:
            raise ValueError(f"{owner}{name} must be >= {minimum}; got {value!r}")

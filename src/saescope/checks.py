"""Checks that settings records share, below every stage: each names the record, the field and the value."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def check_at_least(record: object, names: Iterable[str], minimum: int, *, owner: str) -> None:
    """ValueError for the first field of ``record`` among ``names`` below ``minimum``, named ``{owner}{name}``
    (``owner`` as the message should read: ``"EvalConfig."``, ``"training setting "``)."""
    for name in names:
        value = getattr(record, name)
        if value < minimum:
            raise ValueError(f"{owner}{name} must be >= {minimum}; got {value!r}")


def check_unique_names(names: Sequence[str], *, what: str) -> None:
    """ValueError listing ``names`` when two are the same: dictionaries are addressed by name (their folders,
    metrics and feature pages), so a suite's names must differ. ``what`` names them in the message."""
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique; got {list(names)}")

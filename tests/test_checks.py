"""`saescope.checks`: the shared checks of settings records name the record, the field and the value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from saescope.checks import check_at_least, check_unique_names
from saescope.eval import EvalConfig
from saescope.explore.index import IndexConfig


@dataclass(frozen=True)
class Settings:
    tokens: int = 1
    neighbours: int = 0


def test_the_first_field_below_its_minimum_is_named_with_its_value() -> None:
    check_at_least(Settings(), ("tokens",), 1, owner="Settings.")
    check_at_least(Settings(), ("neighbours",), 0, owner="Settings.")
    with pytest.raises(ValueError, match=r"^Settings\.tokens must be >= 1; got 0$"):
        check_at_least(Settings(tokens=0, neighbours=-1), ("tokens", "neighbours"), 1, owner="Settings.")
    with pytest.raises(ValueError, match=r"^training setting neighbours must be >= 0; got -1$"):
        check_at_least(Settings(neighbours=-1), ("tokens", "neighbours"), 0, owner="training setting ")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EvalConfig(lm_head_chunk=0), "EvalConfig.lm_head_chunk must be >= 1; got 0"),
        (lambda: EvalConfig(loss_windows=-1), "EvalConfig.loss_windows must be >= 0; got -1"),
        (lambda: IndexConfig(neighbours=-2), "IndexConfig.neighbours must be >= 0; got -2"),
    ],
)
def test_settings_records_refuse_values_below_their_minimum(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        make()


def test_a_repeated_name_is_refused_with_every_name_listed() -> None:
    check_unique_names(["a", "b"], what="dictionary")
    with pytest.raises(ValueError, match=r"^evaluation target names must be unique; got \['a', 'b', 'a'\]$"):
        check_unique_names(("a", "b", "a"), what="evaluation target")

"""Saved configs evolve by version: every config saescope saves and reads back carries ``"schema_version": N``.

A kind of record (`RecordSchema`: a run config, a corpus config, a checkpoint's training settings, ...) has one
migration step per version, ``dict -> dict`` from version n to n + 1, beside the dataclass it describes. Reading
a saved dict runs the steps from its version up to the current one, so that a file written by an older saescope
reads as if written today: identity checks (a resumed cache, run or checkpoint) then compare the current form of
both sides. A dict without the key is version 1: the files saescope wrote before records carried a version. A
version newer than this saescope knows is refused (`NewerSchemaError`) rather than guessed at.

Adding a saved field means adding a step: it fills the field, in older records, with the value that reproduces
what those runs did (often not today's default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: The key of a saved record's version.
SCHEMA_VERSION = "schema_version"
#: One step: a record of version n (without its version key) -> the same record at version n + 1.
Migration = Callable[[dict[str, Any]], dict[str, Any]]


class NewerSchemaError(ValueError):
    """A saved record was written by a newer saescope than this one; upgrade saescope to read it."""


@dataclass(frozen=True)
class RecordSchema:
    """One kind of saved record: its name (for messages) and its migration steps, ``steps[n - 1]`` taking
    version n to n + 1; the current version is one more than the number of steps."""

    name: str
    steps: tuple[Migration, ...] = ()

    @property
    def version(self) -> int:
        """The version this saescope writes."""
        return len(self.steps) + 1

    def stamp(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` as saved: the current version first, then the fields."""
        return {SCHEMA_VERSION: self.version, **{key: value for key, value in data.items() if key != SCHEMA_VERSION}}

    def migrate(self, data: Mapping[str, Any], *, origin: str) -> dict[str, Any]:
        """``data`` (a saved record of any version up to the current one) in the current form, version stamped;
        ``origin`` names where it was read (a file) in errors. The input is not changed."""
        record = {key: value for key, value in data.items() if key != SCHEMA_VERSION}
        for step in self.steps[self.saved_version(data, origin=origin) - 1 :]:
            record = step(dict(record))
        return self.stamp(record)

    def saved_version(self, data: Mapping[str, Any], *, origin: str) -> int:
        """The version ``data`` was saved at (1 without the key); ValueError when it is not one this saescope
        reads, `NewerSchemaError` when a newer saescope wrote it."""
        version = data.get(SCHEMA_VERSION, 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(
                f"{origin}: {SCHEMA_VERSION} of the {self.name} is {version!r}, not a whole number >= 1; the file is "
                "damaged or was not written by saescope"
            )
        if version > self.version:
            raise NewerSchemaError(
                f"{origin}: the {self.name} was written by a newer saescope ({SCHEMA_VERSION} {version}; this "
                f"saescope reads up to {self.version}); upgrade saescope to use it"
            )
        return version


def without_version(data: Mapping[str, Any]) -> dict[str, Any]:
    """A record's fields, without its version (to build the dataclass it describes)."""
    return {key: value for key, value in data.items() if key != SCHEMA_VERSION}

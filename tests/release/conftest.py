"""Fixtures of the release tests (defined in release_fixtures.py, which tests also import helpers from)."""

from __future__ import annotations

from release_fixtures import activations, suite_run

__all__ = ["activations", "suite_run"]

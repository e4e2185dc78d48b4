"""An activation cache made by saescope before saved configs carried a schema_version (tests/fixtures/v1) keeps
its identity under today's code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saescope.data.cache import MANIFEST, read_cache_manifest
from saescope.data.sources import build_cache
from saescope.models.loading import load_model
from saescope.models.sites import Site
from v1_fixtures import RUN_CONFIG, v1_run_in

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_cache_made_before_configs_carried_a_version_extends_under_todays_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the fixture names its model relative to the working directory
    folder = v1_run_in(tmp_path) / "cache"
    before = read_cache_manifest(folder / MANIFEST)
    sites = [Site.parse(site) for site in before["settings"]["sites"]]
    report = build_cache(
        folder, load_model(RUN_CONFIG.model), sites, RUN_CONFIG.corpus_config(), tokens=2 * RUN_CONFIG.tokens,
        dtype=RUN_CONFIG.cache_storage_dtype, batch_windows=RUN_CONFIG.batch_windows, progress=False,
    )  # fmt: skip
    after = read_cache_manifest(folder / MANIFEST)
    assert report.cache.n_tokens == 2 * RUN_CONFIG.tokens
    assert after["shards"][: len(before["shards"])] == before["shards"]  # kept, not written again
    assert after["settings"] == before["settings"]
    assert json.loads((folder / MANIFEST).read_text())["settings"]["corpus"]["schema_version"] == 2  # saved whole

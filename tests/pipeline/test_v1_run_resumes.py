"""A run folder written by saescope before saved configs carried a schema_version (tests/fixtures/v1: a cache-mode
run stopped after 2 of its 4 training steps) resumes under today's code: its run config, cache manifest,
source.json and checkpoint identity all read as the same settings, and training ends on the weights the old code
made when it ran straight through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saescope.dictionaries.folder import read_suite
from saescope.pipeline import CONFIG_FILE, SuiteRun
from v1_fixtures import RUN_CONFIG, V1_FINISHED, finished_names, v1_run_in

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_run_stopped_by_saescope_before_versions_resumes_to_the_weights_the_old_code_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the fixture names its model and corpus relative to the working directory
    folder = v1_run_in(tmp_path)
    recorded = (folder / CONFIG_FILE).read_text(encoding="utf-8")

    run = SuiteRun.create(folder, RUN_CONFIG, log=lambda _: None)  # the same settings, not "other settings"
    assert SuiteRun.resume(folder, log=lambda _: None).config == RUN_CONFIG
    run.execute(until="train")

    assert (folder / CONFIG_FILE).read_text(encoding="utf-8") == recorded  # a resume rewrites nothing it recorded
    assert [json.loads(line)["step"] for line in (folder / "train/metrics.jsonl").read_text().splitlines()][-1] == 4
    entries = {entry.name: entry for entry in read_suite(folder / "train")}
    assert sorted(entries) == finished_names()
    for name, entry in entries.items():
        resumed = load_file(str(entry.folder / "sae.safetensors"))
        old = load_file(str(V1_FINISHED / f"{name}.safetensors"))
        assert sorted(resumed) == sorted(old)
        for key, tensor in old.items():
            assert torch.equal(resumed[key], tensor), f"{name}.{key} differs from the old code's weights"

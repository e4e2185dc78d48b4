"""Run settings: presets, validation, and run folders written before a setting existed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS
from saescope.pipeline import CONFIG_FILE, RunConfig, SuiteRun, load_preset


def test_presets_shuffle_training_windows_and_the_corpus_config_carries_it() -> None:
    config = load_preset("default")
    assert config.window_shuffle_tokens == DEFAULT_WINDOW_SHUFFLE_TOKENS
    assert config.corpus_config().window_shuffle_tokens == DEFAULT_WINDOW_SHUFFLE_TOKENS
    assert load_preset("default", {"window_shuffle_tokens": 0}).corpus_config().window_shuffle_tokens == 0


def test_negative_window_shuffle_is_refused() -> None:
    with pytest.raises(ValueError, match="window_shuffle_tokens must be a non-negative integer"):
        load_preset("default", {"window_shuffle_tokens": -1})


def test_a_run_recorded_before_window_shuffling_resumes_in_stream_order(tmp_path: Path) -> None:
    record = load_preset("smoke").to_dict()
    del record["window_shuffle_tokens"]  # a run_config.json written before the setting existed
    folder = tmp_path / "old-run"
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(json.dumps(record))

    assert SuiteRun.resume(folder, log=lambda _: None).config.window_shuffle_tokens == 0
    assert RunConfig.from_record(record).corpus_config().window_shuffle_tokens == 0
    # Starting today's default over it would train on other windows than its checkpoint did.
    with pytest.raises(ValueError, match="already holds a run with other settings"):
        SuiteRun.create(folder, load_preset("smoke"), log=lambda _: None)
    same = dataclasses.replace(load_preset("smoke"), window_shuffle_tokens=0)
    assert SuiteRun.create(folder, same, log=lambda _: None).config == same

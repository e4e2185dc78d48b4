"""CorpusConfig: validation, its JSON identity, and the windows it describes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from corpus_fixtures import long_documents, random_documents, window_ids

from saescope.data.corpus import (
    CORPUS_CONFIG_SCHEMA,
    DEFAULT_WINDOW_SHUFFLE_TOKENS,
    CorpusConfig,
    corpus_windows,
    iter_documents,
)
from saescope.data.windows import iter_token_windows
from tiny_models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


def test_corpus_config_shuffles_training_windows_only(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in long_documents(40, words=60)))
    shuffled = CorpusConfig(source=str(path), context_size=8, heldout_fraction=0.2, window_shuffle_tokens=256)
    in_order = CorpusConfig(source=str(path), context_size=8, heldout_fraction=0.2, window_shuffle_tokens=0)
    assert shuffled.window_shuffle_windows == 32

    def stream(config: CorpusConfig, split: Any) -> list[list[int]]:
        return [w.tolist() for w in window_ids(corpus_windows(config, tokenizer, split))]

    assert stream(shuffled, "train") != stream(in_order, "train")
    assert sorted(stream(shuffled, "train")) == sorted(stream(in_order, "train"))
    assert stream(shuffled, "heldout") == stream(in_order, "heldout")


def test_a_corpus_config_saves_every_field_and_a_version_1_record_without_window_shuffle_read_in_stream_order() -> None:
    saved = CorpusConfig(window_shuffle_tokens=0).to_dict()
    assert saved["window_shuffle_tokens"] == 0
    assert saved["chat_template"] is None
    assert saved["schema_version"] == CORPUS_CONFIG_SCHEMA.version
    assert CorpusConfig().to_dict()["window_shuffle_tokens"] == DEFAULT_WINDOW_SHUFFLE_TOKENS > 0
    # Version 1 (no schema_version) left the field out at 0, and records made before the field were in stream order.
    version_1 = {key: value for key, value in CorpusConfig().to_dict().items() if key not in ("window_shuffle_tokens",
                                                                                        "schema_version")}  # fmt: skip
    assert CorpusConfig.from_dict(version_1).window_shuffle_tokens == 0
    assert CorpusConfig.from_dict(CorpusConfig().to_dict()) == CorpusConfig()
    chat = CorpusConfig(chat_template="gemma", window_shuffle_tokens=512, max_documents=3)
    assert CorpusConfig.from_dict(json.loads(json.dumps(chat.to_dict()))) == chat


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", ""),
        ("text_field", ""),
        ("heldout_fraction", 1.0),
        ("heldout_fraction", -0.1),
        ("context_size", 1),
        ("context_size", 8.0),
        ("seed", -1),
        ("max_documents", 0),
        ("window_shuffle_tokens", -1),
        ("window_shuffle_tokens", True),
    ],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"CorpusConfig\.{field} must be"):
        CorpusConfig(**{field: value})


def test_config_round_trips_and_drives_the_windows(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"t": d.text}) + "\n" for d in random_documents(300)))
    config = CorpusConfig(source=str(path), text_field="t", context_size=8, seed=4, max_documents=100)
    assert CorpusConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="no field"):
        CorpusConfig.from_dict({"sources": "x"})
    windows = window_ids(corpus_windows(config, tokenizer))
    documents = list(iter_documents(str(path), "train", text_field="t", max_documents=100))
    assert len(documents) == 100
    expected = window_ids(
        iter_token_windows(documents, tokenizer, context_size=8, seed=4, window_shuffle=config.window_shuffle_windows)
    )
    assert torch.equal(torch.stack(windows), torch.stack(expected))
    heldout = window_ids(corpus_windows(config, tokenizer, "heldout"))
    assert heldout
    assert not any(torch.equal(h, w) for h in heldout for w in windows)

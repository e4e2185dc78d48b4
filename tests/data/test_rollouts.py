"""Rollouts: seeded per prompt, batched, resumable after a kill, stored as conversations usable as a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat_fixtures import chat_model_dir, write_prompts
from saescope.data import rollouts as rollouts_module
from saescope.data.chat import ChatMessage
from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.rollouts import (
    MANIFEST,
    ROLLOUTS_FILE,
    RolloutConfig,
    RolloutError,
    generate_rollouts,
    read_prompts,
)
from saescope.data.windows import WindowBatch, special_token_ids, special_token_mask
from saescope.models.loading import LoadedModel, load_model

N_PROMPTS = 5


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(chat_model_dir(tmp_path_factory.mktemp("model") / "tiny-it")))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[ChatMessage, ...]]:
    return read_prompts(write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", N_PROMPTS))


def run(loaded: LoadedModel, prompts: list[tuple[ChatMessage, ...]], out: Path, **settings: object) -> str:
    config = RolloutConfig(**{"max_new_tokens": 10, "batch_size": 3, **settings})  # type: ignore[arg-type]
    generate_rollouts(loaded, prompts, out, config, progress=False)
    return (out / ROLLOUTS_FILE).read_text()


def test_rollouts_are_conversations_reproducible_with_a_seed(
    loaded: LoadedModel, prompts: list[tuple[ChatMessage, ...]], tmp_path: Path
) -> None:
    first = run(loaded, prompts, tmp_path / "a")
    records = [json.loads(line) for line in first.splitlines()]
    assert [r["prompt_index"] for r in records] == list(range(N_PROMPTS))
    for record, prompt in zip(records, prompts, strict=True):
        user, assistant = record["messages"]
        assert user == {"role": "user", "content": prompt[0].content}
        assert assistant["role"] == "assistant"
        assert 1 <= record["response_tokens"] <= 10 or record["finish_reason"] == "stop"
        assert "<" not in assistant["content"]  # special tokens are not part of the stored text
    assert {r["finish_reason"] for r in records} <= {"stop", "length"}
    # Same seed, same rollouts; and each prompt draws from its own seeded stream, so the prompts that share
    # its batch do not change its response.
    assert run(loaded, prompts, tmp_path / "c", batch_size=5) == first
    assert run(loaded, prompts, tmp_path / "d", seed=1) != first
    assert run(loaded, prompts, tmp_path / "greedy", temperature=0.0) == run(
        loaded, prompts, tmp_path / "greedy-other-seed", temperature=0.0, seed=5
    )


def test_a_killed_run_resumes_and_writes_the_same_rollouts(
    loaded: LoadedModel, prompts: list[tuple[ChatMessage, ...]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = run(loaded, prompts, tmp_path / "whole")
    real_write = rollouts_module.atomic_write_text
    writes: list[Path] = []

    def write_then_die(path: Path, text: str) -> None:
        if len(writes) == 1:  # killed while sampling the second batch
            raise KeyboardInterrupt
        real_write(path, text)
        writes.append(path)

    monkeypatch.setattr(rollouts_module, "atomic_write_text", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(loaded, prompts, tmp_path / "killed")
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "killed" / "shards").iterdir()] == ["batch_00000.jsonl"]
    assert not (tmp_path / "killed" / ROLLOUTS_FILE).exists()
    assert json.loads((tmp_path / "killed" / MANIFEST).read_text())["complete"] is False
    report = generate_rollouts(loaded, prompts, tmp_path / "killed", RolloutConfig(max_new_tokens=10, batch_size=3),
                               progress=False)  # fmt: skip
    assert report.generated_now == N_PROMPTS - 3
    assert (tmp_path / "killed" / ROLLOUTS_FILE).read_text() == expected
    with pytest.raises(RolloutError, match=r"other settings.*temperature"):
        run(loaded, prompts, tmp_path / "killed", temperature=0.7)


def test_prompt_files_and_settings_are_checked(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("w1 w2\n\n  w3  \n")
    assert read_prompts(tmp_path / "p.txt") == [(ChatMessage("user", "w1 w2"),), (ChatMessage("user", "w3"),)]
    conversation = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "w2"}]
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": [*conversation, {"role": "user", "content": "w3"}]}))
    assert len(read_prompts(tmp_path / "c.jsonl", "messages")[0]) == 3
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": conversation}))
    with pytest.raises(RolloutError, match="must end with a user message"):
        read_prompts(tmp_path / "bad.jsonl", "messages")
    with pytest.raises(RolloutError, match="no field 'prompt'"):
        read_prompts(tmp_path / "bad.jsonl")
    for settings in ({"temperature": -1.0}, {"max_new_tokens": 0}, {"max_new_tokens": 10**6}, {"batch_size": 0}):
        with pytest.raises(RolloutError):
            RolloutConfig(**settings)  # type: ignore[arg-type]


def test_rollouts_are_a_chat_corpus(
    loaded: LoadedModel, prompts: list[tuple[ChatMessage, ...]], tmp_path: Path
) -> None:
    run(loaded, prompts, tmp_path / "r", max_new_tokens=16)
    corpus = CorpusConfig(source=str(tmp_path / "r" / ROLLOUTS_FILE), text_field="messages", context_size=8,
                          heldout_fraction=0.0, chat_template="tokenizer")  # fmt: skip
    windows = WindowBatch.stack(list(corpus_windows(corpus, loaded.tokenizer, "all")))
    kept = int(windows.kept_positions(special_token_ids(loaded.tokenizer)).sum())
    assert 0 < kept < int((windows.ids_BT > 2).sum())  # the prefixes were dropped
    assert int(special_token_mask(windows.ids_BT, loaded.tokenizer).sum()) > kept

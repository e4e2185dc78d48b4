"""`saescope rollouts` end to end on a tiny chat model: output, resume after an interruption, the named error
for a template-less tokenizer, and training on the rollouts with the chat mask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chat_fixtures import chat_model_dir, write_prompts
from saescope.cli import main
from saescope.data import rollouts as rollouts_module
from saescope.train.verdict import IMPLAUSIBLE_EXIT_CODE

#: Exit statuses of a finished `saescope train`: tiny runs may end with implausible metrics (exit 3).
TRAINED = (0, IMPLAUSIBLE_EXIT_CODE)


def rollouts_args(model: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["rollouts", "--model", str(model), "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "8",
            "--batch-size", "2", *extra]  # fmt: skip


def test_rollouts_cli_resumes_after_an_interruption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = chat_model_dir(tmp_path / "tiny-it")
    prompts = write_prompts(tmp_path / "prompts.jsonl", 5)
    assert main(rollouts_args(model, prompts, tmp_path / "whole")) == 0
    out = capsys.readouterr().out
    assert "5 rollouts of" in out
    assert "--text-field messages --chat" in out
    expected = (tmp_path / "whole" / "rollouts.jsonl").read_text()
    assert len(expected.splitlines()) == 5

    real_write = rollouts_module.atomic_write_text
    calls = []

    def interrupted(path: Path, text: str) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(path, text)

    monkeypatch.setattr(rollouts_module, "atomic_write_text", interrupted)
    assert main(rollouts_args(model, prompts, tmp_path / "resumed")) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(rollouts_args(model, prompts, tmp_path / "resumed")) == 0
    assert "(2 from an earlier run)" in capsys.readouterr().out
    assert (tmp_path / "resumed" / "rollouts.jsonl").read_text() == expected
    assert main(rollouts_args(model, prompts, tmp_path / "resumed", "--seed", "3")) == 2
    assert "made with other settings" in capsys.readouterr().err


def test_a_base_model_needs_a_template_and_gets_gemmas_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = chat_model_dir(tmp_path / "tiny-base", with_template=False)
    prompts = write_prompts(tmp_path / "prompts.jsonl", 3)
    assert main(rollouts_args(model, prompts, tmp_path / "r")) == 2
    assert "has no chat template" in capsys.readouterr().err
    assert main(rollouts_args(model, prompts, tmp_path / "r", "--chat-template", "gemma")) == 0
    record = json.loads((tmp_path / "r" / "rollouts.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]


def test_train_on_rollouts_with_the_chat_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = chat_model_dir(tmp_path / "tiny-it")
    assert main(rollouts_args(model, write_prompts(tmp_path / "p.jsonl", 8), tmp_path / "r")) == 0
    train = ["train", "--model", str(model), "--corpus", str(tmp_path / "r" / "rollouts.jsonl"), "--text-field",
             "messages", "--chat", "--context-size", "8", "--sites", "1/res", "--widths", "16", "--target-l0", "3",
             "--tokens", "256", "--batch-size", "64", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(train) in TRAINED
    assert (tmp_path / "run" / "saes" / "layer_1-res-jumprelu-16-l0_3" / "config.json").is_file()
    plain = [arg for arg in train if arg != "--chat"]
    assert main([*plain[:-1], str(tmp_path / "plain")]) == 2  # conversations cannot be read as plain text
    assert "is a conversation" in capsys.readouterr().err

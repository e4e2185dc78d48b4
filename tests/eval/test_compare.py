"""`saescope compare-pt-it`: PT SAEs and IT SAEs (finetuned with --init-from) evaluated on IT rollouts and PT
text; tiny models here, and the whole path once on the embedded Gemma 3 270M (slow)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from chat_fixtures import chat_model_dir, random_text, write_conversations
from saescope.cli import main
from saescope.data.chat import CHAT_MASK_POLICY
from saescope.data.corpus import CorpusConfig
from saescope.dictionaries.folder import read_suite
from saescope.eval import EvalConfig, EvalTarget, evaluate
from saescope.eval.evaluate import MASK_POLICY
from saescope.models.loading import load_model
from saescope.train.verdict import IMPLAUSIBLE_EXIT_CODE

#: Exit statuses of a finished `saescope train`: tiny runs may end with implausible metrics (exit 3).
TRAINED = (0, IMPLAUSIBLE_EXIT_CODE)

TINY_EVAL = ["--context-size", "16", "--tokens", "400", "--loss-windows", "4", "--loss-stride", "1"]


def write_text(path: Path, n: int) -> Path:
    rng = random.Random(2)
    path.write_text("".join(json.dumps({"text": random_text(rng, 40)}) + "\n" for _ in range(n)))
    return path


@pytest.fixture
def tiny_setup(tmp_path: Path) -> dict[str, Path]:
    """A PT model and an "IT" model (same architecture, other weights), PT text, IT rollouts, a PT SAE trained
    on PT text and an IT SAE finetuned from it on the rollouts with the chat mask."""
    paths = {
        "pt_model": chat_model_dir(tmp_path / "pt-model", seed=0),
        "it_model": chat_model_dir(tmp_path / "it-model", seed=1),
        "text": write_text(tmp_path / "text.jsonl", 300),
        "rollouts": write_conversations(tmp_path / "rollouts.jsonl", 80),
        "pt_run": tmp_path / "pt-run",
        "it_run": tmp_path / "it-run",
    }
    common = ["--context-size", "16", "--batch-size", "64", "--set", "lr=1e-3", "--set", "lr_warmup_steps=1"]
    assert main(["train", "--model", str(paths["pt_model"]), "--corpus", str(paths["text"]), "--sites", "1/res",
                 "--widths", "16", "--target-l0", "3", "--tokens", "512", "--out", str(paths["pt_run"]),
                 *common]) in TRAINED  # fmt: skip
    assert main(["train", "--model", str(paths["it_model"]), "--corpus", str(paths["rollouts"]), "--text-field",
                 "messages", "--chat", "--init-from", str(paths["pt_run"]), "--tokens", "256",
                 "--out", str(paths["it_run"]), *common]) in TRAINED  # fmt: skip
    return paths


def test_compare_pt_it_tables_plot_and_metrics(tiny_setup: dict[str, Path], tmp_path: Path) -> None:
    s = tiny_setup
    out = tmp_path / "compare"
    assert main(["compare-pt-it", "--pt-model", str(s["pt_model"]), "--it-model", str(s["it_model"]),
                 "--pt-saes", str(s["pt_run"]), "--it-saes", str(s["it_run"]), "--rollouts", str(s["rollouts"]),
                 "--rollouts-split", "all", "--pt-corpus", str(s["text"]), "--out", str(out),
                 *TINY_EVAL]) == 0  # fmt: skip
    with (out / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["condition"], r["family"]) for r in rows) == [
        ("it-rollouts", "IT"), ("it-rollouts", "PT"), ("pt-text", "IT"), ("pt-text", "PT"),
    ]  # fmt: skip
    for row in rows:
        assert float(row["fvu"]) > 0
        assert float(row["delta_lm_loss_stderr"]) >= 0
        assert row["mask_policy"] == (CHAT_MASK_POLICY if row["condition"] == "it-rollouts" else "exclude-special")
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert "| it-rollouts | layer_1/res | IT |" in (out / "comparison.md").read_text()

    name = "layer_1-res-jumprelu-16-l0_3"
    it_metrics = json.loads((out / "metrics" / "it-rollouts" / f"IT-{name}" / "metrics.json").read_text())
    pt_metrics = json.loads((out / "metrics" / "pt-text" / f"PT-{name}" / "metrics.json").read_text())
    assert it_metrics["mask_policy"].startswith(CHAT_MASK_POLICY)
    assert it_metrics["model"] == str(s["it_model"])
    assert pt_metrics["mask_policy"] == MASK_POLICY
    assert pt_metrics["model"] == str(s["pt_model"])

    # The comparison's numbers are saescope eval's: the PT SAE spliced into the IT model on the rollouts.
    [entry] = read_suite(s["pt_run"])
    loaded = load_model(str(s["it_model"]))
    corpus = CorpusConfig(source=str(s["rollouts"]), text_field="messages", context_size=16, chat_template="tokenizer")
    config = EvalConfig(tokens=400, loss_windows=4, loss_position_stride=1)
    direct = evaluate(loaded, [EvalTarget("pt", entry.sites, entry.raw_space())], corpus, config, progress=False,
                      split="all")["pt"]  # fmt: skip
    [row] = [r for r in rows if r["condition"] == "it-rollouts" and r["family"] == "PT"]
    assert float(row["fvu"]) == pytest.approx(direct["reconstruction"]["fvu"], rel=1e-9)
    assert float(row["delta_lm_loss"]) == pytest.approx(direct["lm_loss"]["delta_lm_loss"], rel=1e-9)


def test_models_of_different_architectures_are_refused(
    tiny_setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = tiny_setup
    other = chat_model_dir(tmp_path / "gemma2-it", architecture="gemma2")
    assert main(["compare-pt-it", "--pt-model", str(s["pt_model"]), "--it-model", str(other), "--pt-saes",
                 str(s["pt_run"]), "--rollouts", str(s["rollouts"]), "--rollouts-split", "all", "--pt-corpus",
                 str(s["text"]), "--out", str(tmp_path / "c"), *TINY_EVAL]) == 2  # fmt: skip
    assert "do not share one architecture" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_pt_to_it_path_on_the_embedded_model(tmp_path: Path) -> None:
    """Rollouts -> PT SAE -> --init-from finetune on the rollouts -> comparison, on the embedded Gemma 3 270M
    base model with saescope's Gemma chat template standing in for an IT model (no IT model ships offline).
    It shows the commands fit together on a real Gemma tokenizer and model; with one model and a few training
    steps, the numbers say nothing about PT vs IT SAEs."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Explain why the sky is blue.\nGive three tips for learning to cook.\n")
    chat = ["--chat-template", "gemma"]
    assert main(["rollouts", "--prompts", str(prompts), "--out", str(tmp_path / "r"), "--max-new-tokens", "12",
                 "--batch-size", "2", *chat]) == 0  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "r" / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert all(r["messages"][1]["content"] for r in records)
    cache = ["--sites", "layer_6/res", "--context-size", "64", "--tokens", "1024", "--out", str(tmp_path / "cache")]
    assert main(["cache", *cache]) == 0
    train = ["--batch-size", "256", "--set", "lr=1e-3", "--set", "lr_warmup_steps=1"]
    assert main(["train", "--cache", str(tmp_path / "cache"), "--tokens", "1024", "--widths", "256", "--target-l0",
                 "20", "--out", str(tmp_path / "pt"), *train]) in TRAINED  # fmt: skip
    # The rollouts are a few dozen tokens: short windows for everything that reads them.
    assert main(["train", "--sites", "layer_6/res", "--context-size", "16", "--corpus",
                 str(tmp_path / "r" / "rollouts.jsonl"), "--text-field", "messages", *chat, "--init-from",
                 str(tmp_path / "pt"), "--tokens", "512", "--out", str(tmp_path / "it"),
                 *train]) in TRAINED  # fmt: skip
    name = "layer_6-res-jumprelu-256-l0_20"
    config = json.loads((tmp_path / "it" / "saes" / name / "config.json").read_text())
    assert config["init_from"] == str((tmp_path / "pt" / "saes" / name).resolve())
    assert main(["compare-pt-it", "--it-model", "gemma-3-270m", "--pt-saes", str(tmp_path / "pt"), "--it-saes",
                 str(tmp_path / "it"), "--rollouts", str(tmp_path / "r"), "--rollouts-split", "all", *chat,
                 "--context-size", "16", "--tokens", "256", "--loss-windows", "1", "--out",
                 str(tmp_path / "c")]) == 0  # fmt: skip
    with (tmp_path / "c" / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert all(float(r["fvu"]) > 0 and r["delta_lm_loss"] for r in rows)

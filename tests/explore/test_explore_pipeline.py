"""The `index` stage of `saescope run` on a tiny model: it runs last, is recorded, skipped when done or at 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saescope.explore import IndexReader
from saescope.pipeline import STAGES, RunConfig, SuiteRun
from tiny_models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    model_dir = root / "tiny-gemma3"
    build_tiny_model("gemma3").save_pretrained(model_dir)
    build_tiny_tokenizer().save_pretrained(model_dir)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(f"w{(7 * i + j) % 90}" for j in range(30))}) + "\n"
                              for i in range(2000)))  # fmt: skip
    return model_dir, corpus


def tiny_config(model_dir: Path, corpus: Path, index_tokens: int) -> RunConfig:
    return RunConfig(
        model=str(model_dir), corpus=str(corpus), sites="1/res+att", widths="32", target_l0=4, context_size=16,
        tokens=1024, batch_size=256, batch_windows=4, norm_tokens=256, shuffle_buffer_tokens=512,
        checkpoint_every_steps=2, eval_tokens=256, eval_loss_windows=1, export_formats=("saelens",),
        index_tokens=index_tokens,
    )  # fmt: skip


def test_the_index_stage_runs_last_and_is_resumable(tiny_setup: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, corpus = tiny_setup
    assert STAGES[-1] == "index"
    folder = tmp_path / "run"
    suite = SuiteRun.create(folder, tiny_config(model_dir, corpus, 300), log=lambda _: None)
    suite.execute(until="release")
    assert not (folder / "index.sqlite").exists()
    # the eval stage writes into the run's eval folder, and nothing into train/
    assert sorted(path.parent.name for path in (folder / "eval").glob("*/metrics.json")) == sorted(
        path.name for path in (folder / "train" / "saes").iterdir()
    )
    assert not list((folder / "train").rglob("metrics.json"))
    messages: list[str] = []
    stages = SuiteRun.resume(folder, log=messages.append).execute()
    assert list(stages) == list(STAGES)
    assert stages["index"]["tokens"] == 300
    reader = IndexReader(folder / "index.sqlite")
    assert [sae.site for sae in reader.saes] == ["layer_1/att", "layer_1/res"]
    assert reader.meta["model"] == str(model_dir)
    assert reader.meta["corpus"]["context_size"] == 16
    assert all(s["evaluation"] is not None for s in reader.suite()["saes"])  # the eval stage's metrics
    again: list[str] = []
    SuiteRun.resume(folder, log=again.append).execute()
    assert "[index] already done, skipped" in again


def test_index_tokens_0_skips_the_stage_and_old_runs_compare_with_the_default(
    tiny_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, corpus = tiny_setup
    config = tiny_config(model_dir, corpus, 0)
    folder = tmp_path / "run"
    folder.mkdir()
    older = config.to_dict()
    del older["schema_version"], older["index_tokens"]  # a run begun before the setting existed (version 1)
    (folder / "run_config.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="other settings"):
        SuiteRun.create(folder, config, log=lambda _: None)
    default = RunConfig.from_record(older)
    assert default.index_tokens == RunConfig().index_tokens
    SuiteRun.create(folder, default, log=lambda _: None)  # same settings once the default is filled in
    assert SuiteRun(folder, config).stage_index() == {"skipped": "index_tokens = 0"}
    with pytest.raises(ValueError, match="index_tokens"):
        tiny_config(model_dir, corpus, -1)

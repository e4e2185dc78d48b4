"""`saescope eval --interp`: results land in each dictionary's metrics.json under "interp" and in a printed table;
an unknown metric or unreadable probe data is refused before anything is loaded or written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from saescope.cli import main
from saescope.models import loading
from saescope.models.sites import Site
from saescope.release.common import hf_hook_point

TINY_D_MODEL = 32  # the tiny Gemma 3 of tests/conftest.py


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(loading.ONLINE_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def released_sae(root: Path, model: Path, site: Site, width: int = 16) -> Path:
    """A Gemma Scope 2 SAE folder for the tiny model, random weights."""
    folder = root / f"layer_{site.layer}_width_{width}_l0_3"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "w_enc": rng.normal(size=(TINY_D_MODEL, width)).astype(np.float32),
        "w_dec": rng.normal(size=(width, TINY_D_MODEL)).astype(np.float32),
        "b_enc": np.zeros(width, dtype=np.float32),
        "b_dec": np.zeros(TINY_D_MODEL, dtype=np.float32),
        "threshold": np.full(width, 0.1, dtype=np.float32),
    }
    save_file(arrays, str(folder / "params.safetensors"))
    hook = hf_hook_point(site)
    config = {"hf_hook_point_in": hook, "hf_hook_point_out": hook, "width": width, "model_name": str(model),
              "architecture": "jump_relu", "l0": 3, "type": "sae"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def labelled_file(path: Path) -> Path:
    """Texts of two labels drawn from disjoint halves of the tiny vocabulary."""
    rng = random.Random(0)
    rows = []
    for i in range(60):
        label = "low" if i % 2 else "high"
        offset = 0 if label == "low" else 45
        rows.append({"body": " ".join(f"w{offset + rng.randrange(45)}" for _ in range(12)), "topic": label})
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def eval_args(folder: Path, corpus: Path, *extra: str) -> list[str]:
    return ["eval", str(folder), "--tokens", "64", "--loss-windows", "1", "--context-size", "16",
            "--corpus", str(corpus), "--out", "report", *extra]  # fmt: skip


def test_probing_results_go_into_metrics_json_and_the_printed_table(
    tmp_path: Path, tiny_model_dir: Path, jsonl_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = released_sae(tmp_path / "release", tiny_model_dir, Site.parse("layer_1/res"))
    data = labelled_file(tmp_path / "topics.jsonl")
    args = ("--interp", "probing", "--probe-data", str(data), "--probe-text-field", "body", "--label-field", "topic")
    assert main(eval_args(folder, jsonl_corpus, *args)) == 0
    out = capsys.readouterr().out
    assert "Interpretability" in out
    assert "probing: top_1_accuracy" in out
    metrics = json.loads((tmp_path / "report" / folder.name / "metrics.json").read_text())
    probing = metrics["interp"]["probing"]
    assert [task["task"] for task in probing["per_task"]] == ["high"]  # two labels: one task
    assert 0.0 <= probing["top_1_accuracy"] <= 1.0
    assert probing["dense_accuracy"] > 0.75  # the two halves of the vocabulary are told apart
    assert metrics["reconstruction"]["n_tokens"] == 64  # the reconstruction metrics are still there


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--interp", "absorption,spelling"), "unknown metric 'spelling'; choose from absorption, probing"),
        (("--interp", "probing", "--probe-data", "missing.jsonl"), "missing.jsonl does not exist"),
        (("--probe-data", "topics.jsonl"), "add --interp probing"),
        (("--interp", "probing", "--probe-data", "topics.jsonl"), "no field 'text'"),
        (("--interp", "probing", "--probe-data", "hf:someone/reviews"), "pass --online"),
        (("--interp", "probing,autointerp"), "autointerp is its own command"),
    ],
)
def test_a_bad_interp_request_is_refused_before_anything_is_loaded(
    tmp_path: Path, jsonl_corpus: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], message: str
) -> None:
    labelled_file(tmp_path / "topics.jsonl")
    folder = released_sae(tmp_path / "release", tmp_path / "no-such-model", Site.parse("layer_1/res"))
    assert main(eval_args(folder, jsonl_corpus, *extra)) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "report").exists()


def test_absorption_on_a_model_without_word_tokens_is_refused_before_any_pass(
    tmp_path: Path, tiny_model_dir: Path, jsonl_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = released_sae(tmp_path / "release", tiny_model_dir, Site.parse("layer_1/res"))
    assert main(eval_args(folder, jsonl_corpus, "--interp", "absorption")) == 2
    error = capsys.readouterr().err
    assert "too few word tokens for the absorption evaluation" in error
    assert not (tmp_path / "report").exists()

"""`saescope cache` and `saescope train` end to end on a tiny local model and a tiny text corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saescope.cli import main
from saescope.data.cache import ActivationCache
from saescope.train.verdict import IMPLAUSIBLE_EXIT_CODE

#: Exit statuses of a finished `saescope train`: these tiny runs may end with implausible metrics (exit 3).
TRAINED = (0, IMPLAUSIBLE_EXIT_CODE)


def cache_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cache", "--model", str(model), "--corpus", str(corpus), "--context-size", "16", "--tokens", "300",
        "--out", str(out), "--windows-per-shard", "4", "--batch-windows", "2", *extra,
    ]  # fmt: skip


def test_cache_then_train(
    tiny_model_dir: Path, text_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir)) == 0
    out = capsys.readouterr().out
    assert "Tokens  300 in" in out
    cache = ActivationCache(cache_dir, verify="full")
    assert cache.n_tokens == 300
    assert len(cache.sites) == 9  # 3 layers x res/att/mlp
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir)) == 0  # complete: nothing to do
    assert ActivationCache(cache_dir).n_tokens == 300
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir, "--storage-dtype", "float32")) == 2
    assert "made with other settings" in capsys.readouterr().err
    # The shuffle of training windows is part of the cache's identity; 0 (the packed order) is another cache.
    assert cache.manifest["settings"]["corpus"]["window_shuffle_tokens"] > 0
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir, "--window-shuffle-tokens", "0")) == 2
    assert "window_shuffle_tokens" in capsys.readouterr().err
    packed = tmp_path / "cache-packed"
    assert main(cache_args(tiny_model_dir, text_corpus, packed, "--window-shuffle-tokens", "0")) == 0
    assert ActivationCache(packed).manifest["settings"]["corpus"]["window_shuffle_tokens"] == 0

    run_dir = tmp_path / "run"
    train = [
        "train", "--cache", str(cache_dir), "--sites", "1/res+att", "--widths", "16,32", "--target-l0", "3",
        "--tokens", "640", "--batch-size", "64", "--set", "lr=1e-3", "--set", "lr_warmup_steps=2",
        "--out", str(run_dir),
    ]  # fmt: skip
    assert main(train) in TRAINED
    names = sorted(p.name for p in (run_dir / "saes").iterdir())
    assert names == [
        "layer_1-att-jumprelu-16-l0_3", "layer_1-att-jumprelu-32-l0_3",
        "layer_1-res-jumprelu-16-l0_3", "layer_1-res-jumprelu-32-l0_3",
    ]  # fmt: skip
    config = json.loads((run_dir / "saes" / names[0] / "config.json").read_text())
    assert config["dictionary"]["d_in"] == 64
    assert config["training"]["steps_done"] == 10
    assert "layer_1-att-jumprelu-16-l0_3" in capsys.readouterr().out


def test_eval_a_trained_run(
    tiny_model_dir: Path, jsonl_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "acts.npy", rng.normal(size=(1000, 32)).astype(np.float32))
    run_dir = tmp_path / "run"
    train = ["train", "--activations", str(tmp_path / "acts.npy"), "--sites", "layer_0/res", "--widths", "16",
             "--target-l0", "4", "--tokens", "256", "--batch-size", "64", "--out", str(run_dir)]  # fmt: skip
    assert main(train) in TRAINED
    report = tmp_path / "report"
    evaluate = ["eval", str(run_dir), "--model", str(tiny_model_dir), "--corpus", str(jsonl_corpus),
                "--context-size", "16", "--tokens", "100", "--loss-windows", "2", "--out", str(report)]  # fmt: skip
    assert main(evaluate) == 0
    metrics = json.loads((report / "layer_0-res-jumprelu-16-l0_4" / "metrics.json").read_text())
    assert metrics["reconstruction"]["n_tokens"] == 100
    assert metrics["lm_loss"]["loss_n_predictions"] > 0
    assert (report / "report.html").is_file()
    assert "layer_0/res" in capsys.readouterr().out


def test_train_from_a_npy_file_with_a_toml_config(tmp_path: Path) -> None:
    generator = np.random.default_rng(0)
    np.save(tmp_path / "acts.npy", generator.normal(size=(2000, 24)).astype(np.float32))
    (tmp_path / "train.toml").write_text(
        'widths = [16]\narchitectures = "topk,jumprelu"\ntarget-l0 = 4\ntokens = 512\nbatch_size = 128\n'
    )
    out = tmp_path / "run"
    argv = ["train", "--activations", str(tmp_path / "acts.npy"), "--sites", "0/res",
            "--config", str(tmp_path / "train.toml")]  # fmt: skip
    assert main([*argv, "--out", str(out)]) in TRAINED
    assert sorted(p.name for p in (out / "saes").iterdir()) == [
        "layer_0-res-jumprelu-16-l0_4",
        "layer_0-res-topk-16-l0_4",
    ]
    (tmp_path / "bad.toml").write_text("widht = 3\n")
    assert main(["train", "--activations", str(tmp_path / "acts.npy"), "--config", str(tmp_path / "bad.toml")]) == 2


def test_topk_without_k_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "acts.npy", np.ones((10, 4), dtype=np.float32))
    argv = ["train", "--activations", str(tmp_path / "acts.npy"), "--sites", "layer_0/res", "--architectures", "topk"]
    assert main(argv) == 2
    assert "topk needs a target L0" in capsys.readouterr().err


def test_a_cache_rerun_rewrites_a_corrupt_shard(
    tiny_model_dir: Path, text_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir = tmp_path / "cache"
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir)) == 0
    shard = cache_dir / "layer_1" / "res" / "shard_00001.bin"
    original = shard.read_bytes()
    damaged = bytearray(original)
    damaged[100] ^= 0x01
    shard.write_bytes(bytes(damaged))
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir)) == 0
    assert "shard_00001.bin does not match its SHA-256" in caplog.text
    assert ActivationCache(cache_dir, verify="full").n_tokens == 300
    assert shard.read_bytes() == original  # the window stream is deterministic: the same rows again


def test_a_cache_manifest_without_shards_is_a_named_error(
    tiny_model_dir: Path, text_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "manifest.json").write_text(json.dumps({"format": 1, "settings": {}}))
    assert main(cache_args(tiny_model_dir, text_corpus, cache_dir)) == 2
    assert "manifest.json has no 'shards' key" in capsys.readouterr().err

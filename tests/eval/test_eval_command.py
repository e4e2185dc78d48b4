"""`saescope eval` evaluates a released dictionary on the model its files name, and refuses, naming that model and
its width, a dictionary that the model at hand cannot run, instead of falling back to the embedded model and
crashing on shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from saescope.cli import main
from saescope.dictionaries import read_suite, write_dictionary_folder
from saescope.dictionaries.folder import L0_FROM_METRICS
from saescope.models import loading
from saescope.models.sites import Site
from saescope.release.common import hf_hook_point
from saescope.sae import DictionaryConfig, build_dictionary

#: The width of the tiny Gemma 3 of tests/conftest.py (it has 3 layers).
TINY_D_MODEL = 32


def jumprelu_arrays(d_in: int, width: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, width)).astype(np.float32),
        "W_dec": rng.normal(size=(width, d_in)).astype(np.float32),
        "b_enc": np.zeros(width, dtype=np.float32),
        "b_dec": np.zeros(d_in, dtype=np.float32),
        "threshold": np.full(width, 0.5, dtype=np.float32),
    }


def gemma_scope_1_folder(root: Path, repo: str, layer: int, d_in: int, width: int = 16) -> Path:
    """``root/<repo>/layer_<L>/width_<W>/average_l0_3/params.npz``, as Google's GS1 repositories lay it out."""
    folder = root / repo / f"layer_{layer}" / f"width_{width}" / "average_l0_3"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **jumprelu_arrays(d_in, width, seed=layer))
    return folder


def gemma_scope_2_folder(root: Path, model_name: str, site: Site, d_in: int, width: int = 16) -> Path:
    """A GS2 SAE folder (``params.safetensors`` + ``config.json``) whose config names ``model_name``."""
    folder = root / "resid_post" / f"layer_{site.layer}_width_{width}_l0_3"
    folder.mkdir(parents=True)
    arrays = {key.lower(): value for key, value in jumprelu_arrays(d_in, width, seed=7).items()}
    save_file(arrays, str(folder / "params.safetensors"))
    hook = hf_hook_point(site)
    config = {"hf_hook_point_in": hook, "hf_hook_point_out": hook, "width": width, "model_name": model_name,
              "architecture": "jump_relu", "l0": 3, "type": "sae"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(autouse=True)
def offline_and_no_embedded_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads, the working directory a fresh folder, and a test failure if the embedded model is loaded."""
    monkeypatch.delenv(loading.ONLINE_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the embedded model was loaded")

    monkeypatch.setattr(loading, "ensure_embedded_converted", refuse)


def eval_args(*paths: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["eval", *map(str, paths), "--tokens", "64", "--loss-windows", "1", "--context-size", "16", *extra]


def test_a_gemma_scope_1_folder_of_a_model_not_at_hand_is_refused_before_anything_is_loaded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = gemma_scope_1_folder(tmp_path / "release", "gemma-scope-2b-pt-res", layer=0, d_in=48)
    assert main(eval_args(folder)) == 2
    error = capsys.readouterr().err
    assert "'gemma-2-2b'" in error  # the model the folder names
    assert "d_model 48" in error
    assert "gemma-3-270m" in error  # the model it would have been evaluated on
    assert "--model" in error
    assert "Traceback" not in error
    assert not (tmp_path / "eval-report").exists()


def test_the_model_a_folder_names_is_used_when_it_can_be_loaded(
    tmp_path: Path, tiny_model_dir: Path, jsonl_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = gemma_scope_2_folder(tmp_path / "release", str(tiny_model_dir), Site.parse("layer_1/res"), TINY_D_MODEL)
    assert main(eval_args(folder, extra=("--corpus", str(jsonl_corpus), "--out", str(tmp_path / "report")))) == 0
    assert f"Evaluating on {tiny_model_dir}" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "report" / folder.name / "metrics.json").read_text())
    assert metrics["model"] == str(tiny_model_dir)
    assert metrics["reconstruction"]["n_tokens"] == 64


@pytest.mark.parametrize(
    ("layer", "d_in", "problem"),
    [(0, 48, "reads vectors of width 48 at layer_0/res, but"), (5, TINY_D_MODEL, "uses layer_5/res, but")],
)
def test_a_dictionary_the_chosen_model_cannot_run_is_refused_before_any_report_is_written(
    tmp_path: Path, tiny_model_dir: Path, jsonl_corpus: Path, capsys: pytest.CaptureFixture[str],
    layer: int, d_in: int, problem: str,
) -> None:  # fmt: skip
    folder = gemma_scope_1_folder(tmp_path / "release", "gemma-scope-2b-pt-res", layer=layer, d_in=d_in)
    args = eval_args(folder, extra=("--model", str(tiny_model_dir), "--corpus", str(jsonl_corpus)))
    assert main(args) == 2
    error = capsys.readouterr().err
    assert problem in error
    assert str(tiny_model_dir) in error
    assert "Traceback" not in error
    assert not (tmp_path / "eval-report").exists()


def test_dictionaries_of_different_models_are_refused_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = gemma_scope_1_folder(tmp_path / "release", "gemma-scope-2b-pt-res", layer=0, d_in=48)
    large = gemma_scope_1_folder(tmp_path / "release", "gemma-scope-9b-pt-res", layer=0, d_in=56)
    assert main(eval_args(small, large)) == 2
    error = capsys.readouterr().err
    assert "different models" in error
    assert "gemma-2-2b" in error
    assert "gemma-2-9b" in error


def test_a_run_is_evaluated_into_its_eval_folder_with_each_dictionary_at_its_own_sites(
    tmp_path: Path, tiny_model_dir: Path, jsonl_corpus: Path
) -> None:
    run = tmp_path / "runs" / "mine"
    (run / "train").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"model": str(tiny_model_dir)}))
    generator = torch.Generator().manual_seed(0)
    sae = build_dictionary(DictionaryConfig(d_in=TINY_D_MODEL, width=16), generator=generator)
    transcoder_config = DictionaryConfig(d_in=TINY_D_MODEL, width=16, apply_pre_encoder_bias=False)
    transcoder = build_dictionary(transcoder_config, generator=generator)
    common = {"norm_scale": 1.0, "final_batch_metrics": {"l0": 4.0}}
    write_dictionary_folder(
        run / "train" / "saes" / "sae",
        sae,
        {"name": "sae", "site": "layer_1/res", "dictionary": sae.config.to_dict(), **common},
    )
    write_dictionary_folder(run / "train" / "saes" / "tc", transcoder,
                            {"name": "tc", "site": "layer_1/mlp_in", "site_out": "layer_1/mlp",
                             "dictionary": transcoder.config.to_dict(), **common})  # fmt: skip
    trained = {path.relative_to(run).as_posix() for path in (run / "train").rglob("*")}
    assert main(eval_args(run, extra=("--corpus", str(jsonl_corpus)))) == 0
    assert {path.relative_to(run).as_posix() for path in (run / "train").rglob("*")} == trained
    sae_metrics = json.loads((run / "eval" / "sae" / "metrics.json").read_text())
    transcoder_metrics = json.loads((run / "eval" / "tc" / "metrics.json").read_text())
    assert sae_metrics["dictionary_kind"] == "sae"
    assert (transcoder_metrics["dictionary_kind"], transcoder_metrics["site_out"]) == ("transcoder", "layer_1/mlp")
    assert [entry.l0_source for entry in read_suite(run / "train")] == [L0_FROM_METRICS, L0_FROM_METRICS]


def test_a_lone_transcoder_folder_is_evaluated_at_its_output_site_with_its_metrics_beside_it(
    tmp_path: Path, tiny_model_dir: Path, jsonl_corpus: Path
) -> None:
    config = DictionaryConfig(d_in=TINY_D_MODEL, width=16, apply_pre_encoder_bias=False)
    transcoder = build_dictionary(config, generator=torch.Generator().manual_seed(1))
    folder = tmp_path / "my-transcoder"
    recorded = {"name": "tc", "site": "layer_2/mlp_in", "site_out": "layer_2/mlp", "model": str(tiny_model_dir),
                "dictionary": config.to_dict(), "norm_scale": 1.0, "final_batch_metrics": {"l0": 4.0}}  # fmt: skip
    write_dictionary_folder(folder, transcoder, recorded)
    assert main(eval_args(folder, extra=("--corpus", str(jsonl_corpus)))) == 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert (metrics["dictionary_kind"], metrics["site"], metrics["site_out"]) == (
        "transcoder",
        "layer_2/mlp_in",
        "layer_2/mlp",
    )

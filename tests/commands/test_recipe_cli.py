"""Recipes as data on the command line: `--recipe NAME` and `--set key=value` for `saescope train` and `saescope
run`, the same keys in a TOML config, `--set help`, and bad settings refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saescope.cli import build_parser, main
from saescope.train.recipes import GEMMA_SCOPE, RECIPE_KEYS, SAESCOPE


@pytest.fixture
def acts(tmp_path: Path) -> Path:
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(1024, 24)).astype(np.float32))
    return path


def train_args(acts: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--activations", str(acts), "--sites", "layer_0/res", "--widths", "32", "--target-l0", "4",
            "--tokens", "256", "--batch-size", "64", "--out", str(out), *extra]  # fmt: skip


def saved_config(out: Path) -> dict[str, object]:
    (folder,) = (out / "saes").iterdir()
    config: dict[str, object] = json.loads((folder / "config.json").read_text())
    return config


def test_train_uses_the_default_saescope_recipe_like_run(acts: Path, tmp_path: Path) -> None:
    assert main(train_args(acts, tmp_path / "run")) == 0
    config = saved_config(tmp_path / "run")
    expected = SAESCOPE.train_config(total_tokens=256, batch_size=64, checkpoint_every_steps=500).to_dict()
    expected = json.loads(json.dumps(expected))  # as saved: tuples are lists
    assert config["training"] == {**expected, "steps_done": 4, "tokens_seen": 256}
    assert (config["lr"], config["decoder_bias_init"], config["threshold_init_from_data"]) == (
        SAESCOPE.lr,
        "mean",
        True,
    )


def test_recipe_and_set_change_single_settings(acts: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["--recipe", "gemma-scope", "--set", "lr=1e-3", "--set", "code_scale_init=true", "--set", "lr=2e-3"]
    assert main(train_args(acts, out, *extra)) == 0
    config = saved_config(out)
    assert config["lr"] == 2e-3  # the later --set wins
    training = config["training"]
    assert isinstance(training, dict)
    assert training["code_scale_init"] is True
    assert training["lr_warmup_steps"] == GEMMA_SCOPE.lr_warmup_steps
    dictionary = config["dictionary"]
    assert isinstance(dictionary, dict)
    assert (dictionary["threshold_parameterisation"], dictionary["sparsity"]) == ("log", "quadratic_l0")


def test_set_matryoshka_prefixes_trains_a_nested_dictionary(acts: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(train_args(acts, out, "--set", "matryoshka_prefixes=2")) == 0
    dictionary = saved_config(out)["dictionary"]
    assert isinstance(dictionary, dict)
    assert dictionary["matryoshka_prefixes"] == [8, 32]


def test_a_toml_config_takes_the_recipe_keys_and_flags_override_it(acts: Path, tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text('recipe = "saescope"\nlr = 1e-3\ncode_scale_init = false\nlr-warmup-steps = 3\n')
    out = tmp_path / "run"
    assert main([*train_args(acts, out, "--set", "lr=5e-4"), "--config", str(toml)]) == 0
    config = saved_config(out)
    training = config["training"]
    assert isinstance(training, dict)
    assert (config["lr"], training["code_scale_init"], training["lr_warmup_steps"]) == (5e-4, False, 3)


def test_unknown_or_bad_settings_are_clear_errors_that_create_nothing(
    acts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(train_args(acts, out, "--set", "learning_rate=1e-3")) == 2
    err = capsys.readouterr().err
    assert "unknown recipe setting(s) ['learning_rate']" in err
    assert all(key in err for key in RECIPE_KEYS)
    assert main(train_args(acts, out, "--set", "max_firing_rate=1.5")) == 2
    assert "max_firing_rate must be in [0, 1)" in capsys.readouterr().err
    assert main(train_args(acts, out, "--set", "lr_warmup_steps=few")) == 2
    assert "lr_warmup_steps takes a whole number; got 'few'" in capsys.readouterr().err
    assert main(train_args(acts, out, "--set", "lr")) == 2
    assert "--set takes key=value" in capsys.readouterr().err
    toml = tmp_path / "bad.toml"
    toml.write_text("lr_warmup = 3\n")
    assert main([*train_args(acts, out), "--config", str(toml)]) == 2
    assert "unknown option(s) ['lr_warmup']" in capsys.readouterr().err
    assert not out.exists()


def test_fewer_tokens_than_one_batch_are_refused_before_anything_is_written(
    acts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--activations", str(acts), "--target-l0", "4", "--tokens", "100", "--out", str(out)]) == 2
    assert "training tokens (100) are fewer than one batch (4096 tokens)" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "run"])
def test_set_help_lists_every_recipe_key_with_its_value(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--set", "help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {key} = " in out for key in RECIPE_KEYS)
    assert "  lr = 0.003" in out
    assert main([command, "--recipe", "gemma-scope", "--set", "lr=1e-4", "--set", "help"]) == 0
    assert "  lr = 0.0001" in capsys.readouterr().out


def test_run_set_help_shows_the_presets_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--preset", "smoke", "--set", "help"]) == 0
    out = capsys.readouterr().out
    assert "  lr = 0.002" in out  # the smoke preset's own lr
    assert "  lr_warmup_steps = 2" in out


def test_train_help_is_short_and_says_how_to_list_the_recipe_keys() -> None:
    parser = build_parser()
    (train,) = [action.choices["train"] for action in parser._subparsers._actions if action.choices]  # type: ignore[union-attr,index]
    text = train.format_help()
    assert "--set help" in text
    assert "--recipe" in text
    for removed in ("--lr ", "--max-firing-rate", "--dimension-gain-power", "--threshold ", "--adam-beta1"):
        assert removed not in text


def test_train_warns_but_runs_when_the_papers_recipe_is_shorter_than_its_sparsity_warm_up(
    acts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(train_args(acts, tmp_path / "short", "--recipe", "gemma-scope")) in (0, 3)  # 3: implausible L0
    err = capsys.readouterr().err
    assert "warms its sparsity coefficient up over 10,000 steps (640,000 tokens at batch 64)" in err
    assert "this run trains 4 steps" in err
    assert "--recipe saescope" in err
    assert (tmp_path / "short" / "saes").is_dir()
    assert main(train_args(acts, tmp_path / "default")) == 0
    assert "sparsity coefficient" not in capsys.readouterr().err


def test_train_does_not_warn_once_the_warm_up_fits_the_budget(
    acts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--recipe", "gemma-scope", "--set", "lambda_warmup_steps=4"]
    main(train_args(acts, tmp_path / "run", *extra))
    assert "sparsity coefficient" not in capsys.readouterr().err


def test_run_warns_when_the_papers_recipe_is_shorter_than_its_sparsity_warm_up(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stop_before_the_run(*_args: object, **_kwargs: object) -> None:
        raise ValueError("stopped by the test after the checks")

    monkeypatch.setattr("saescope.commands.run.check_run_memory", stop_before_the_run)
    argv = ["run", "--preset", "smoke", "--model", str(tiny_model_dir), "--runs-dir", str(tmp_path / "runs")]
    assert main([*argv, "--recipe", "gemma-scope"]) == 2
    err = capsys.readouterr().err
    assert "recipe 'gemma-scope' warms its sparsity coefficient up over 10,000 steps" in err
    assert "stopped by the test" in err
    assert main(argv) == 2  # the preset's own recipe: no warning
    assert "sparsity coefficient" not in capsys.readouterr().err

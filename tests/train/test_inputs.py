"""Bad training input gets a named error, not silent garbage: data that turns non-finite mid-training, runs whose
final metrics are absurd, a resume on other data, an activation file without a site, a bad --device."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from saescope.cli import main
from saescope.data.activations import SiteBatch, TokenActivations
from saescope.data.arrays import ArrayActivations, load_activation_file
from saescope.data.cache import ActivationCache, CacheSettings, CacheWriter
from saescope.models.sites import Site, SiteKind
from saescope.release import export_release
from saescope.sae import DictionaryConfig
from saescope.train import BadActivationsError, SAESpec, TrainConfig, Trainer, TrainingDivergedError, verdict
from saescope.train.distributed import train_suite
from saescope.train.verdict import IMPLAUSIBLE_EXIT_CODE, FinalMetrics, implausible_dictionaries

D = 16
RES, MLP = Site(0, SiteKind.RES), Site(3, SiteKind.MLP)

pytestmark = pytest.mark.usefixtures("one_thread")


def tokens(n: int = 2048, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def spec(site: Site = RES, **kwargs: object) -> SAESpec:
    dictionary = DictionaryConfig(d_in=D, width=32, threshold_parameterisation="raw", lambda_warmup_steps=0)
    defaults: dict[str, object] = {"lr": 1e-3, "target_l0": 4.0}
    defaults.update(kwargs)
    return SAESpec("sae", site, dictionary, **defaults)  # type: ignore[arg-type]


def config(steps: int = 8) -> TrainConfig:
    return TrainConfig(
        total_tokens=steps * 128, batch_size=128, lr_warmup_steps=1, checkpoint_every_steps=1, progress=False
    )


# --- non-finite values mid-training ------------------------------------------------------------------------
class SpoiledAt(ArrayActivations):
    """Clean arrays whose batch `at` gets `value` at (row 5, column 7) of every site, from a cache or live model."""

    def __init__(self, at: int, value: float) -> None:
        super().__init__({RES: tokens()})
        self.at, self.value = at, value

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        for index, batch in enumerate(super().batches(batch_size, seed=seed, epoch=epoch)):
            if index == self.at:
                for x_BD in batch.values():
                    x_BD[5, 7] = self.value
            if index >= skip_batches:
                yield batch


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_a_non_finite_value_in_the_data_names_step_site_and_value(tmp_path: Path, value: float, shown: str) -> None:
    with pytest.raises(BadActivationsError) as caught:
        Trainer([spec()], SpoiledAt(3, value), config(), tmp_path).run()
    message = str(caught.value)
    assert re.match(rf"step 3: the activations of layer_0/res hold {shown} \(batch row \d+, column 7\)", message)
    assert "the data is at fault" in message
    assert "learning rate" not in message
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 3  # the last good one is kept


def test_a_row_too_large_for_float32_is_the_datas_fault(tmp_path: Path) -> None:
    with pytest.raises(BadActivationsError, match=r"at step 2 because batch row 5 of layer_0/res holds a value of "
                       r"magnitude 1e\+30.*too large for float32.*The data is at fault"):  # fmt: skip
        Trainer([spec()], SpoiledAt(2, 1e30), config(), tmp_path).run()


def test_a_dictionary_that_diverges_on_clean_data_keeps_the_learning_rate_advice(tmp_path: Path) -> None:
    source = ArrayActivations({RES: tokens()})
    with pytest.raises(TrainingDivergedError, match="Lower its learning rate") as caught:
        Trainer([spec(lr=1e30)], source, config(), tmp_path).run()
    assert not isinstance(caught.value, BadActivationsError)


# --- the judgement of final metrics --------------------------------------------------------------------------
def test_implausible_final_metrics_are_named_with_their_reason() -> None:
    results = [
        FinalMetrics("good", fvu=0.2, l0=45.0, target_l0=40.0),
        FinalMetrics("no-target", fvu=0.9, l0=500.0, target_l0=None),
        FinalMetrics("worse-than-mean", fvu=1.3, l0=40.0, target_l0=40.0),
        FinalMetrics("too-sparse", fvu=0.3, l0=19.0, target_l0=40.0),
        FinalMetrics("too-dense", fvu=0.3, l0=81.0, target_l0=40.0),
        FinalMetrics("nan", fvu=float("nan"), l0=40.0, target_l0=40.0),
    ]
    lines = implausible_dictionaries(results)
    assert [line.split(":")[0] for line in lines] == ["worse-than-mean", "too-sparse", "too-dense", "nan"]
    assert "FVU 1.3 > 1 (worse than predicting the mean)" in lines[0]
    assert "L0 19, outside [20, 80] around its target 40" in lines[1]


def test_the_refit_fvu_is_the_final_one() -> None:
    result = FinalMetrics.from_metrics("refit", {"fvu": 1.4, "refit_fvu": 0.3, "l0": 4.0}, 4.0)
    assert implausible_dictionaries([result]) == []


def npy_train_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    np.save(tmp_path / "acts.npy", tokens())
    return [
        "train", "--activations", str(tmp_path / "acts.npy"), "--sites", "layer_3/mlp", "--widths", "32",
        "--target-l0", "4", "--tokens", "512", "--batch-size", "128", "--out", str(out), *extra,
    ]  # fmt: skip


def test_train_warns_and_exits_3_on_implausible_results_and_keeps_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(verdict, "MAX_PLAUSIBLE_FVU", -1.0)  # every FVU is now implausible
    out = tmp_path / "run"
    assert main(npy_train_args(tmp_path, out)) == IMPLAUSIBLE_EXIT_CODE == 3
    err = capsys.readouterr().err
    assert "warning: 1 dictionary ended with implausible final metrics" in err
    assert "layer_3-mlp-jumprelu-32-l0_4: FVU" in err
    assert (out / "saes" / "layer_3-mlp-jumprelu-32-l0_4" / "sae.safetensors").is_file()
    monkeypatch.setattr(verdict, "MAX_PLAUSIBLE_FVU", float("inf"))
    monkeypatch.setattr(verdict, "L0_TARGET_RANGE", (0.0, float("inf")))
    assert main(npy_train_args(tmp_path, tmp_path / "again")) == 0
    assert "warning" not in capsys.readouterr().err


def test_every_torchrun_rank_exits_3_on_implausible_results_and_only_rank_0_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from saescope.train import distributed

    monkeypatch.setattr(verdict, "MAX_PLAUSIBLE_FVU", -1.0)  # every FVU is now implausible
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)  # as rank 1 of a torchrun job
    assert main(npy_train_args(tmp_path, tmp_path / "run")) == IMPLAUSIBLE_EXIT_CODE
    assert "warning" not in capsys.readouterr().err


def test_train_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "3 trained and weights kept, but some dictionaries ended with implausible metrics" in " ".join(
        capsys.readouterr().out.split()
    )


def test_run_prints_the_same_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from saescope.pipeline import SuiteRun

    def finished(self: SuiteRun, **_: object) -> dict[str, object]:  # stands for the stages: a trained folder
        folder = self.folder / "train" / "saes" / "layer_6-res-jumprelu-1024-l0_40"
        folder.mkdir(parents=True)
        config = {"name": folder.name, "target_l0": 40.0, "final_batch_metrics": {"l0": 3.0, "fvu": 0.2}}
        (folder / "config.json").write_text(json.dumps(config))
        return {}

    monkeypatch.setattr(SuiteRun, "execute", finished)
    monkeypatch.setattr(SuiteRun, "suite_table", lambda self: "")
    assert main(["run", "--preset", "smoke", "--runs-dir", str(tmp_path), "--name", "r"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 dictionary ended with implausible final metrics" in err
    assert "layer_6-res-jumprelu-1024-l0_40: L0 3, outside [20, 80] around its target 40" in err


# --- the site of a lone array --------------------------------------------------------------------------------
def test_a_npy_file_trains_at_the_site_given_and_needs_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = npy_train_args(tmp_path, out)
    no_site = [arg for arg in args if arg not in ("--sites", "layer_3/mlp")]
    assert main(no_site) == 2
    assert "does not say which site it was read at: name it with --sites" in capsys.readouterr().err
    assert not out.exists()
    assert main(args) in (0, IMPLAUSIBLE_EXIT_CODE)
    (folder,) = (out / "saes").iterdir()
    assert folder.name == "layer_3-mlp-jumprelu-32-l0_4"
    assert json.loads((folder / "config.json").read_text())["site"] == "layer_3/mlp"
    export_release(out, tmp_path / "release", formats=["saelens"])
    assert [p.parent.parent.parent.name for p in (tmp_path / "release").rglob("cfg.json")] == ["layer_3"]


def test_a_bad_file_is_refused_before_anything_is_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = npy_train_args(tmp_path, out)
    array = tokens()
    array[100, 2] = np.nan
    np.save(tmp_path / "acts.npy", array)
    assert main(args) == 2
    assert f"{tmp_path / 'acts.npy'}: row 100, column 2 holds nan" in capsys.readouterr().err
    assert not out.exists()


# --- resuming on the data it started with --------------------------------------------------------------------
def test_a_resume_on_another_file_is_refused_naming_both(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", tokens(seed=0))
    np.save(tmp_path / "b.npy", tokens(seed=1))
    out = tmp_path / "run"
    train_suite([spec(MLP)], load_activation_file(tmp_path / "a.npy", MLP), config(), out, max_steps=3)  # killed
    with pytest.raises(ValueError, match=r"started on the activation file .*a\.npy .* this run reads the activation "
                       r"file .*b\.npy"):  # fmt: skip
        train_suite([spec(MLP)], load_activation_file(tmp_path / "b.npy", MLP), config(), out)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    shutil.copy(tmp_path / "a.npy", tmp_path / "moved.npy")  # the same data elsewhere resumes
    (trained,) = train_suite([spec(MLP)], load_activation_file(tmp_path / "moved.npy", MLP), config(), out)
    assert trained.folder == out / "saes" / "sae"
    fresh = train_suite([spec(MLP)], load_activation_file(tmp_path / "b.npy", MLP), config(), tmp_path / "b")
    assert len(fresh) == 1


def synthetic_cache(folder: Path, seed: int) -> ActivationCache:
    settings = CacheSettings(
        model="synthetic", sites=(RES,), widths={RES: D}, dtype="float32", corpus={"source": "synthetic"},
        context_size=9, windows_per_shard=8,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)

    def stream() -> Iterator[TokenActivations]:
        for window in range(1000):
            yield TokenActivations(
                acts={RES: torch.randn(8, D, generator=generator)}, token_ids_N=torch.arange(8) + 3,
                positions_N=torch.arange(1, 9), windows_N=torch.full((8,), window), n_windows=1,
            )  # fmt: skip

    writer = CacheWriter(folder, settings)
    for _ in writer.write(stream(), 1024):
        pass
    return ActivationCache(folder)


def test_a_resume_on_another_cache_is_refused_naming_both(tmp_path: Path) -> None:
    first, second = synthetic_cache(tmp_path / "c1", seed=0), synthetic_cache(tmp_path / "c2", seed=1)
    out = tmp_path / "run"
    train_suite([spec()], first, config(), out, max_steps=2)
    with pytest.raises(ValueError, match=r"started on the activation cache .*c1 .* reads the activation cache .*c2"):
        train_suite([spec()], second, config(), out)
    assert len(train_suite([spec()], ActivationCache(tmp_path / "c1"), config(), out)) == 1


# --- the device ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cudaX", "bogus", "cuda:99"])
def test_a_bad_device_is_refused_before_anything_is_created(
    tmp_path: Path, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--preset", "smoke", "--device", device, "--runs-dir", str(tmp_path / "runs")]) == 2
    assert f"--device {device!r}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert main([*npy_train_args(tmp_path, tmp_path / "run"), "--device", device]) == 2
    assert f"--device {device!r}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["cache", "--tokens", "1024"], ["info"]])
def test_commands_that_load_the_model_refuse_a_bad_device_by_name(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--out", str(tmp_path / "out")] if command[0] == "cache" else []
    assert main([*command, *out, "--device", "cudaX"]) == 2
    assert "--device 'cudaX' is not a device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["eval", "index", "serve", "autointerp"])
def test_commands_that_read_a_folder_refuse_a_bad_device_before_reading_it(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The folder does not exist either: the device, the cheaper mistake to name, is the error shown first.
    assert main([command, str(tmp_path / "missing"), "--device", "cudaX"]) == 2
    assert "--device 'cudaX' is not a device" in capsys.readouterr().err


@pytest.mark.parametrize(("value", "shown"), [(float("nan"), "nan: .*not finite"), (0.0, "0.0: .*all zero")])
def test_a_scale_estimated_from_bad_data_is_refused_before_training(tmp_path: Path, value: float, shown: str) -> None:
    class BadScale(ArrayActivations):
        @property
        def norm_scales(self) -> dict[Site, float]:
            return {RES: value}

    with pytest.raises(
        BadActivationsError, match=rf"the normalisation scale of layer_0/res is {shown}.*data is at fault"
    ):
        Trainer([spec()], BadScale({RES: tokens()}), config(), tmp_path)
    assert not list(tmp_path.iterdir())

"""Memory planning: the estimates on tiny configurations against hand-computed figures, and runs that cannot fit
refused with a clear error before anything is created."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from saescope.cli import main
from saescope.models.sites import Site
from saescope.pipeline import RunConfig, check_run_memory
from saescope.sae import DictionaryConfig
from saescope.train import memory
from saescope.train.memory import (
    InsufficientMemoryError,
    MemoryEstimate,
    check_fits,
    dictionary_parameter_count,
    dictionary_state_bytes,
    estimate_training_memory,
    host_available_bytes,
    rank_specs,
    refit_bytes,
    step_scratch_bytes,
    stream_buffer_bytes,
)
from saescope.train.settings import SAESpec
from tiny_models import build_tiny_model

RES, MLP = Site.parse("layer_0/res"), Site.parse("layer_0/mlp")
MIB = 1 << 20


def sae_spec(site: Site, d: int = 8, width: int = 16, **config: object) -> SAESpec:
    return SAESpec(f"{site.id.replace('/', '-')}-{width}", site, DictionaryConfig(d_in=d, width=width, **config))  # type: ignore[arg-type]


def test_parameter_count_of_a_jumprelu_sae_and_a_skip_transcoder() -> None:
    # W_enc 8x16 + b_enc 16 + W_dec 16x8 + b_dec 8 + θ 16
    assert dictionary_parameter_count(DictionaryConfig(d_in=8, width=16)) == 128 + 16 + 128 + 8 + 16
    skip = DictionaryConfig(d_in=8, d_out=6, width=16, skip=True, apply_pre_encoder_bias=False)
    # W_enc 8x16 + b_enc 16 + W_dec 16x6 + b_dec 6 + W_skip 8x6 + θ 16
    assert dictionary_parameter_count(skip) == 128 + 16 + 96 + 6 + 48 + 16


def test_training_state_is_four_float32_copies_of_the_parameters_and_an_int64_counter() -> None:
    assert dictionary_state_bytes(DictionaryConfig(d_in=8, width=16)) == 4 * 296 * 4 + 8 * 16


def test_step_scratch_counts_the_dense_path_unless_the_sparse_step_is_forced() -> None:
    assert step_scratch_bytes(DictionaryConfig(d_in=8, width=16), batch_size=32) == 6 * 32 * 16 * 4
    sparse = DictionaryConfig(d_in=8, width=16, step_kernel="sparse")
    # not the sparse step's 5 bytes per entry: the first batch's initialisation runs the dense forward
    # (pre-activations, mask, codes, zero codes), which benchmarks/wide_dictionaries.py measured as the larger
    assert step_scratch_bytes(sparse, batch_size=32) == (4 + 1 + 4 + 4) * 32 * 16


def test_stream_is_the_buffer_and_one_chunk_twice_and_four_chunks_in_flight_of_every_site() -> None:
    rows = 2 * (100 + 28) + 4 * 28
    assert stream_buffer_bytes([8, 24], buffer_tokens=100, chunk_tokens=28, dtype_name="float32") == rows * 32 * 4
    assert stream_buffer_bytes([8, 24], buffer_tokens=100, chunk_tokens=28, dtype_name="bfloat16") == rows * 32 * 2


def test_refit_is_one_pass_of_normal_equations_and_two_float64_copies_of_the_largest_while_it_is_solved() -> None:
    config = DictionaryConfig(d_in=8, width=16)
    normal_equations = 4 * 17 * (17 + 8)
    assert refit_bytes([config, config]) == 2 * normal_equations + 2 * 2 * normal_equations


def test_refit_of_many_dictionaries_holds_one_pass_of_normal_equations_at_a_time() -> None:
    configs = [DictionaryConfig(d_in=640, width=16384)] * 54  # the default suite at width 16k
    normal_equations = 4 * 16385 * (16385 + 640)
    assert refit_bytes(configs) == memory.PASS_MEMORY_BYTES + 2 * 2 * normal_equations


def test_dictionaries_too_wide_for_a_refit_pass_count_no_refit() -> None:
    wide = DictionaryConfig(d_in=640, width=65536)  # its normal equations are above the refit's pass limit
    assert refit_bytes([wide]) == 0
    assert refit_bytes([wide, DictionaryConfig(d_in=8, width=16)]) == (1 + 2 * 2) * 4 * 17 * (17 + 8)


def test_one_wide_sae_is_planned_without_the_refit_it_does_not_run() -> None:
    spec = sae_spec(RES, d=640, width=65536, step_kernel="sparse")
    estimate = estimate_training_memory(
        [spec], {RES: 640}, batch_size=1024, model_bytes=0, stream_buffer=0, decoder_refit=True
    )
    assert estimate.refit == 0
    assert estimate.per_process == (
        dictionary_state_bytes(spec.dictionary) + (4 + 1 + 4 + 4) * 1024 * 65536 + 4 * 1024 * (640 + 640)
    )
    check_fits(estimate, 8 << 30, where="this machine", skip_option="--skip-memory-check")  # not refused


def test_training_estimate_of_two_saes_matches_the_hand_computed_figure() -> None:
    specs = [sae_spec(RES), sae_spec(MLP, width=32)]
    estimate = estimate_training_memory(
        specs, {RES: 8, MLP: 8}, batch_size=64, model_bytes=1000, stream_buffer=5000, decoder_refit=False
    )
    state = (4 * 296 * 4 + 8 * 16) + (4 * (8 * 32 + 32 + 32 * 8 + 8 + 32) * 4 + 8 * 32)
    scratch = 6 * 64 * 32 * 4  # the wider dictionary's dense step
    batch = 4 * 64 * (8 + 8 + 8 + 8)  # two sites in, two reconstructions out
    assert estimate.per_process == 1000 + state + scratch + batch + 5000
    assert estimate.n_dictionaries == 2


def test_torchrun_ranks_each_hold_their_share_of_the_dictionaries() -> None:
    specs = [sae_spec(RES), sae_spec(MLP), sae_spec(Site.parse("layer_1/res")), sae_spec(Site.parse("layer_1/mlp"))]
    assert len(rank_specs(specs, world_size=1)) == 4
    assert len(rank_specs(specs, world_size=2)) == 2
    widths = {spec.site: 8 for spec in specs}
    one = estimate_training_memory(specs, widths, batch_size=8, model_bytes=0, stream_buffer=0, decoder_refit=False)
    two = estimate_training_memory(
        specs, widths, batch_size=8, model_bytes=0, stream_buffer=0, decoder_refit=False, world_size=2
    )
    assert two.dictionaries * 2 == one.dictionaries


def test_a_run_that_does_not_fit_is_refused_with_the_estimate_what_is_available_and_what_fits() -> None:
    estimate = MemoryEstimate(
        model=100 * MIB, dictionaries=900 * MIB, step_scratch=0, batch=0, stream_buffer=0, refit=0, n_dictionaries=9
    )
    check_fits(estimate, available=2000 * MIB, where="this machine", skip_option="--skip-memory-check")  # fits
    with pytest.raises(InsufficientMemoryError) as error:
        check_fits(estimate, available=600 * MIB, where="this machine", skip_option="--skip-memory-check")
    message = str(error.value)
    assert "0.98 GiB" in message  # the estimate
    assert "0.59 GiB available" in message
    assert "About 4 of the 9 dictionaries" in message  # (540 - 100) MiB of room / 100 MiB each
    assert "--widths" in message
    assert "torchrun" in message
    assert "--skip-memory-check" in message


def test_host_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    assert host_available_bytes(meminfo) == 8_000_000 * 1024
    assert host_available_bytes(tmp_path / "absent") > 0  # falls back to os.sysconf


def tiny_run(model_dir: Path, corpus: Path) -> RunConfig:
    return RunConfig(
        model=str(model_dir), corpus=str(corpus), context_size=16, sites="all", widths="32", target_l0=4,
        tokens=256, batch_size=64, shuffle_buffer_tokens=128, batch_windows=2, norm_tokens=64,
    )  # fmt: skip


def test_run_estimate_reads_the_model_sizes_without_loading_it(tiny_model_dir: Path, text_corpus: Path) -> None:
    estimate = check_run_memory(tiny_run(tiny_model_dir, text_corpus), available=1 << 40)
    assert estimate is not None
    assert estimate.model == memory.module_bytes(build_tiny_model("gemma3"))
    assert estimate.n_dictionaries == 3 * build_tiny_model("gemma3").config.num_hidden_layers


def test_a_model_whose_configuration_cannot_be_read_is_left_to_the_model_loader(
    tmp_path: Path, text_corpus: Path
) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    assert check_run_memory(tiny_run(empty, text_corpus), available=1) is None
    assert check_run_memory(tiny_run(Path("nobody/no-such-model"), text_corpus), available=1) is None


def test_run_command_refuses_a_run_that_cannot_fit_before_creating_its_folder(
    tiny_model_dir: Path, text_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(memory, "available_memory_bytes", lambda _device: 1 * MIB)
    argv = [
        "run", "--preset", "smoke", "--model", str(tiny_model_dir), "--corpus", str(text_corpus),
        "--context-size", "16", "--widths", "32", "--runs-dir", str(tmp_path / "runs"), "--name", "big",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "will not fit in memory" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_train_command_refuses_unless_the_check_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda _device: 64 * 1024)
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(512, 24)).astype(np.float32))
    argv = ["train", "--activations", str(tmp_path / "acts.npy"), "--sites", "layer_0/res", "--widths", "256"]
    argv += ["--target-l0", "4", "--tokens", "128", "--batch-size", "64", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "will not fit in memory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--skip-memory-check"]) in (0, 3)  # 3: trained, with a warning about its tiny budget
    assert (tmp_path / "out" / "saes").is_dir()

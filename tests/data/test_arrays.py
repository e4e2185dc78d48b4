"""A user's activation file (`saescope.data.arrays.load_activation_file`): refused with a named error when it
would train garbage, accepted (with its site) otherwise."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescope.data import arrays
from saescope.data.activations import NormScaleEstimator
from saescope.data.arrays import ActivationFileError, ArrayActivations, array_fingerprint, load_activation_file
from saescope.models.sites import Site, SiteKind

SITE = Site(2, SiteKind.MLP)


def tokens(n: int = 1000, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def saved(tmp_path: Path, array: np.ndarray, name: str = "acts.npy") -> Path:
    path = tmp_path / name
    np.save(path, array, allow_pickle=True)
    return path


def test_a_clean_file_opens_memory_mapped_at_the_site_it_is_given(tmp_path: Path) -> None:
    source = load_activation_file(saved(tmp_path, tokens()), "layer_2/mlp")
    assert source.sites == [SITE]
    assert source.widths == {SITE: 16}
    assert isinstance(source._arrays[SITE], np.memmap)
    assert load_activation_file(saved(tmp_path, tokens()), "2/mlp").sites == [SITE]


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, r"row 617, column 3 holds nan"), (-np.inf, r"row 617, column 3 holds -inf")],
)
def test_a_non_finite_value_is_named_by_file_row_column_and_value(tmp_path: Path, value: float, message: str) -> None:
    array = tokens()
    array[617, 3] = value
    array[900, 0] = value
    path = saved(tmp_path, array)
    with pytest.raises(ActivationFileError, match=f"{re.escape(str(path))}: {message}: activations must be finite"):
        load_activation_file(path, SITE)


def test_the_check_reads_in_chunks_and_names_rows_of_later_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrays, "CHECK_CHUNK_BYTES", 8 * 16 * 10)  # 10 rows a chunk
    array = tokens()
    array[987, 15] = np.nan
    with pytest.raises(ActivationFileError, match=r"row 987, column 15 holds nan"):
        load_activation_file(saved(tmp_path, array), SITE)


def test_a_value_float32_cannot_hold_is_named(tmp_path: Path) -> None:
    array = tokens().astype(np.float64)
    array[5, 2] = 1e39
    with pytest.raises(ActivationFileError, match=r"row 5, column 2 holds 1e\+39, beyond float32's range"):
        load_activation_file(saved(tmp_path, array), SITE)


def test_rows_far_above_the_median_norm_are_named(tmp_path: Path) -> None:
    array = tokens()
    array[30:40] = 1.0
    array[30:40, 11] = 1e30
    with pytest.raises(
        ActivationFileError,
        match=r"10 row\(s\) have a norm over 1e\+04 times the median .*; the first is row 30 \(norm 1e\+30\), whose "
        r"column 11 holds 1e\+30",
    ):
        load_activation_file(saved(tmp_path, array), SITE)


def test_rows_somewhat_above_the_median_are_kept(tmp_path: Path) -> None:
    array = tokens()
    array[30] *= 500.0  # a massive-activation token, not corruption
    assert load_activation_file(saved(tmp_path, array), SITE).n_tokens == 1000


def test_an_all_zero_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ActivationFileError, match="every row is zero"):
        load_activation_file(saved(tmp_path, np.zeros((10, 4), np.float32)), SITE)


def test_a_truncated_file_names_itself_and_what_is_missing(tmp_path: Path) -> None:
    path = saved(tmp_path, tokens())
    path.write_bytes(path.read_bytes()[:20_000])
    with pytest.raises(
        ActivationFileError, match=rf"{re.escape(str(path))} is truncated: .*shape \(1000, 16\) of float32"
    ):
        load_activation_file(path, SITE)


def test_garbage_bytes_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "acts.npy"
    path.write_bytes(b"these are not activations" * 10)
    with pytest.raises(ActivationFileError, match=rf"{re.escape(str(path))} is not a readable .npy file"):
        load_activation_file(path, SITE)
    broken = tmp_path / "acts.safetensors"
    broken.write_bytes(b"x" * 100)
    with pytest.raises(ActivationFileError, match=rf"{re.escape(str(broken))} cannot be read as a safetensors file"):
        load_activation_file(broken, SITE)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[1, "a"], [2, "b"]], dtype=object), "holds Python objects"),
        (tokens().astype(np.complex64), r"holds complex numbers \(complex64\)"),
        (tokens()[:, :1], r"has width 1 \(shape \(1000, 1\)\): a dictionary needs activation vectors of width >= 2"),
        (tokens()[:0], "holds no rows"),
        (tokens()[0], r"must be 2-D \(tokens, width\); got shape \(16,\)"),
    ],
)
def test_arrays_that_are_not_token_activations_are_refused(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = saved(tmp_path, array)
    with pytest.raises(ActivationFileError, match=f"{re.escape(str(path))}.*{message}"):
        load_activation_file(path, SITE)


def test_a_lone_array_needs_its_site(tmp_path: Path) -> None:
    path = saved(tmp_path, tokens())
    with pytest.raises(ActivationFileError, match=rf"{re.escape(str(path))} holds one array .* --sites layer_6/res"):
        load_activation_file(path)
    with pytest.raises(ActivationFileError, match=r"--sites must name its one site.*got '0-5/res'"):
        load_activation_file(path, "0-5/res")


def test_a_single_safetensors_tensor_named_by_a_site_keeps_it(tmp_path: Path) -> None:
    save_file({"layer_3/att": torch.from_numpy(tokens())}, str(tmp_path / "named.safetensors"))
    assert load_activation_file(tmp_path / "named.safetensors").sites == [Site(3, SiteKind.ATT)]
    save_file({"acts": torch.from_numpy(tokens()).bfloat16()}, str(tmp_path / "unnamed.safetensors"))
    assert load_activation_file(tmp_path / "unnamed.safetensors", "layer_2/mlp").sites == [SITE]
    nan = torch.from_numpy(tokens())
    nan[4, 4] = float("nan")
    save_file({"layer_0/res": nan, "layer_1/res": torch.from_numpy(tokens())}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ActivationFileError, match=r"two.safetensors \[layer_0/res\]: row 4, column 4 holds nan"):
        load_activation_file(tmp_path / "two.safetensors")


def test_the_fingerprint_tells_files_apart_by_content_not_by_path(tmp_path: Path) -> None:
    first = array_fingerprint(tokens(seed=0))
    assert array_fingerprint(np.load(saved(tmp_path, tokens(seed=0)), mmap_mode="r")) == first
    assert array_fingerprint(tokens(seed=1))["sha256"] != first["sha256"]
    assert array_fingerprint(tokens(n=999))["sha256"] != first["sha256"]


# --- the normalisation scale ---------------------------------------------------------------------------------
def outlier_tokens() -> tuple[np.ndarray, np.ndarray]:
    """200,000 clean rows, and the same with 10 rows of 1e30."""
    clean = tokens(n=200_000, d=8)
    dirty = clean.copy()
    dirty[np.arange(10) * 20_000 + 7] = 1e30
    return clean, dirty


def test_a_few_outlier_rows_do_not_move_the_scale() -> None:
    clean, dirty = outlier_tokens()
    clean_scale = ArrayActivations({SITE: clean}).norm_scales[SITE]
    assert ArrayActivations({SITE: dirty}).norm_scales[SITE] == pytest.approx(clean_scale, rel=1e-3)
    estimator = NormScaleEstimator([SITE])
    for chunk in np.array_split(dirty, 7):
        estimator.update({SITE: torch.from_numpy(chunk)})
    assert estimator.scales()[SITE] == pytest.approx(clean_scale, rel=1e-3)


def test_the_scale_of_data_without_outliers_is_the_plain_one_bit_for_bit() -> None:
    clean, _ = outlier_tokens()
    clean[5] *= 300.0  # a large but plausible row stays in
    head = torch.from_numpy(clean)
    assert ArrayActivations({SITE: clean}).norm_scales[SITE] == math.sqrt(float(head.double().square().sum(-1).mean()))
    estimator, total = NormScaleEstimator([SITE]), 0.0
    for chunk in head.split(30_000):
        estimator.update({SITE: chunk})
        total += float(torch.linalg.vector_norm(chunk, dim=-1, dtype=torch.float32).square().double().sum())
    assert estimator.scales()[SITE] == math.sqrt(total / 200_000)

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from synthetic import SITES, TOKENS_PER_WINDOW, WIDTHS, synthetic_stream, window_chunk

from saescope.atomic import CorruptFileError
from saescope.data.activations import NormScaleEstimator, TokenActivations
from saescope.data.cache import ActivationCache, CacheMismatchError, CacheSettings, CacheWriter


def settings(dtype: str = "float32", windows_per_shard: int = 3) -> CacheSettings:
    return CacheSettings(
        model="synthetic", sites=SITES, widths=WIDTHS, dtype=dtype, corpus={"source": "synthetic"},
        context_size=TOKENS_PER_WINDOW + 1, windows_per_shard=windows_per_shard,
    )  # fmt: skip


def build(folder: Path, budget: int, **kwargs: object) -> CacheWriter:
    writer = CacheWriter(folder, settings(**kwargs))  # type: ignore[arg-type]
    for _ in writer.write(synthetic_stream(writer.windows_done), budget):
        pass
    return writer


def expected_rows(site_index: int, n_tokens: int) -> torch.Tensor:
    chunks = [window_chunk(w).acts[SITES[site_index]] for w in range(n_tokens // TOKENS_PER_WINDOW + 1)]
    return torch.cat(chunks)[:n_tokens]


def all_rows(cache: ActivationCache, site_index: int) -> torch.Tensor:
    return torch.cat([cache.read_shard(SITES[site_index], i) for i in range(len(cache.shards))])


def test_float32_round_trip_is_exact_and_budget_is_exact(tmp_path: Path) -> None:
    build(tmp_path, budget=37)
    cache = ActivationCache(tmp_path, verify="full")
    assert cache.n_tokens == 37
    for site_index in range(2):
        torch.testing.assert_close(all_rows(cache, site_index), expected_rows(site_index, 37), rtol=0, atol=0)
    tokens = torch.cat([cache.read_tokens(i) for i in range(len(cache.shards))])
    assert tokens[:, 1].tolist()[:6] == [0, 0, 0, 0, 0, 1]  # window index column


def test_bfloat16_round_trip_within_bf16_rounding(tmp_path: Path) -> None:
    build(tmp_path, budget=40, dtype="bfloat16")
    cache = ActivationCache(tmp_path)
    expected = expected_rows(1, 40)
    torch.testing.assert_close(all_rows(cache, 1), expected.bfloat16().float(), rtol=0, atol=0)


def test_shuffled_reader_yields_every_token_exactly_once_per_epoch(tmp_path: Path) -> None:
    build(tmp_path, budget=103, windows_per_shard=2)
    cache = ActivationCache(tmp_path)
    epochs = []
    for epoch in range(2):
        batches = list(cache.batches(8, seed=3, epoch=epoch, shards_in_memory=3))
        assert all(b[SITES[0]].shape[0] == 8 for b in batches[:-1])
        ids = torch.cat([b[SITES[0]][:, 0] for b in batches]).long()
        assert sorted(ids.tolist()) == list(range(103))
        epochs.append(ids)
    assert not torch.equal(epochs[0], epochs[1])  # a new order each epoch
    # Rows of different sites in one batch belong to the same tokens.
    batch = next(cache.batches(8, seed=0))
    reference = {site: expected_rows(i, 103) for i, site in enumerate(SITES)}
    token_numbers = batch[SITES[0]][:, 0].long()
    torch.testing.assert_close(batch[SITES[1]], reference[SITES[1]][token_numbers], rtol=0, atol=0)


def test_norm_scales_leave_out_outlier_rows_as_a_streamed_estimate_does(tmp_path: Path) -> None:
    def with_outlier(first_window: int) -> Iterator[TokenActivations]:
        for chunk in synthetic_stream(first_window):
            if chunk.windows_N[0] == 7:  # a row in the third shard, of both sites
                chunk = dataclasses.replace(chunk, acts={site: x.clone() for site, x in chunk.acts.items()})
                for x_ND in chunk.acts.values():
                    x_ND[2] = 1e12
            yield chunk

    writer = CacheWriter(tmp_path, settings())
    for _ in writer.write(with_outlier(0), 60):
        pass
    streamed = NormScaleEstimator(SITES)
    for chunk in with_outlier(0):
        if streamed.n_tokens >= 60:
            break
        streamed.update(chunk.acts)
    cache = ActivationCache(tmp_path)
    for site, scale in streamed.scales().items():
        assert scale < 1e3  # the outlier row would make it about 1e12
        assert cache.norm_scales[site] == pytest.approx(scale, rel=1e-6)


def test_norm_scales_from_shard_sums(tmp_path: Path) -> None:
    build(tmp_path, budget=50)
    cache = ActivationCache(tmp_path)
    for site_index, site in enumerate(SITES):
        rows = expected_rows(site_index, 50).double()
        assert cache.norm_scales[site] == pytest.approx(rows.square().sum(-1).mean().sqrt().item(), rel=1e-6)


def test_corrupted_shard_is_named(tmp_path: Path) -> None:
    build(tmp_path, budget=30)
    shard = tmp_path / "layer_1" / "att" / "shard_00001.bin"
    data = bytearray(shard.read_bytes())
    data[17] ^= 0x55
    shard.write_bytes(bytes(data))
    cache = ActivationCache(tmp_path)  # lazy: detected on first read
    with pytest.raises(CorruptFileError, match=r"layer_1/att/shard_00001\.bin does not match"):
        cache.read_shard(SITES[1], 1)
    shard.write_bytes(bytes(data[:-4]))
    with pytest.raises(CorruptFileError, match=r"shard_00001\.bin has .* bytes"):
        ActivationCache(tmp_path)


def flip_a_byte(path: Path, offset: int = 17) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_rerun_rewrites_a_corrupt_shard_and_the_shards_after_it(tmp_path: Path, damage: str) -> None:
    build(tmp_path, budget=45)  # 3 shards of 3 windows
    shard = tmp_path / "layer_1" / "att" / "shard_00001.bin"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-4])
    else:
        flip_a_byte(shard)
    writer = build(tmp_path, budget=45)  # what `saescope cache` does when rerun
    assert writer.tokens_done == 45
    cache = ActivationCache(tmp_path, verify="full")
    for site_index in range(2):
        torch.testing.assert_close(all_rows(cache, site_index), expected_rows(site_index, 45), rtol=0, atol=0)


def test_a_rerun_on_a_sound_cache_writes_nothing(tmp_path: Path) -> None:
    build(tmp_path, budget=45)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.bin")}
    assert build(tmp_path, budget=45).windows_done == 9
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.bin")} == before


@pytest.mark.parametrize("key", ["shards", "settings"])
def test_a_manifest_without_a_key_is_named_by_reader_and_writer(tmp_path: Path, key: str) -> None:
    build(tmp_path, budget=10)
    manifest_path = tmp_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest[key]
    damaged = json.dumps(manifest)
    manifest_path.write_text(damaged)
    expected = rf"manifest\.json has no '{key}' key.*saescope cache --out"
    with pytest.raises(CorruptFileError, match=expected):
        ActivationCache(tmp_path)
    with pytest.raises(CorruptFileError, match=expected):
        CacheWriter(tmp_path, settings())
    assert manifest_path.read_text() == damaged  # left as it was


def test_a_manifest_that_is_not_json_is_named_by_the_writer(tmp_path: Path) -> None:
    build(tmp_path, budget=10)
    (tmp_path / "manifest.json").write_text('{"settings": ')
    with pytest.raises(CorruptFileError, match=r"manifest\.json is not valid JSON"):
        CacheWriter(tmp_path, settings())


def test_other_settings_are_refused_with_a_way_forward(tmp_path: Path) -> None:
    build(tmp_path, budget=10)
    with pytest.raises(CacheMismatchError, match=r"dtype: cache has 'float32', asked for 'bfloat16'.*another output"):
        CacheWriter(tmp_path, settings(dtype="bfloat16"))


KILL_SCRIPT = """
import sys, time
sys.path[:0] = [{tests!r}, {src!r}]
from pathlib import Path
from synthetic import synthetic_stream
from test_cache import settings
from saescope.data.cache import CacheWriter

def slow():
    for chunk in synthetic_stream():
        time.sleep(0.02)
        yield chunk

writer = CacheWriter(Path({folder!r}), settings())
for _ in writer.write(slow(), 10_000):
    pass
"""


def test_resume_after_kill_9_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "killed"
    tests_dir, src_dir = Path(__file__).parent, Path(__file__).parents[2] / "src"
    script = KILL_SCRIPT.format(tests=str(tests_dir), src=str(src_dir), folder=str(folder))
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    manifest = folder / "manifest.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not manifest.exists() or '"index": 1' not in manifest.read_text()):
        time.sleep(0.05)
    process.kill()  # SIGKILL: no cleanup runs
    process.wait()
    assert list(folder.rglob("*.partial")), "expected a half-written shard at the moment of the kill"
    resumed = build(folder, budget=60)
    assert resumed.tokens_done == 60
    reference = tmp_path / "reference"
    build(reference, budget=60)
    for site_index in range(2):
        torch.testing.assert_close(
            all_rows(ActivationCache(folder, verify="full"), site_index),
            all_rows(ActivationCache(reference), site_index),
            rtol=0,
            atol=0,
        )

"""Files written by hand (as Google's would be) load and run the published forward; bad files give named errors."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescope.models.sites import Site, SiteKind
from saescope.release import (
    ReleaseDownloadError,
    ReleaseFormatError,
    export_release,
    load_sae,
    site_from_hf_hook,
    site_from_tl_hook,
)

D_IN, WIDTH = 12, 4096  # width_4k


def gs_arrays(d_in: int = D_IN, width: int = WIDTH, d_out: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d_out = d_in if d_out is None else d_out
    W_dec = rng.standard_normal((width, d_out)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    return {
        "W_enc": rng.standard_normal((d_in, width)).astype(np.float32) * 0.5,
        "W_dec": W_dec,
        "b_enc": rng.standard_normal(width).astype(np.float32) * 0.2,
        "b_dec": rng.standard_normal(d_out).astype(np.float32),
        "threshold": rng.uniform(0.1, 1.0, width).astype(np.float32),
    }


def write_gs1(
    root: Path, arrays: dict[str, np.ndarray], leaf: str = "gemma-2-2b-res/layer_20/width_4k/average_l0_71"
) -> Path:
    folder = root / leaf
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **arrays)
    return folder


def reference_forward(x: np.ndarray, p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """method §6.1 (the Gemma Scope tutorial's forward), in float64 numpy."""
    pre = x @ p["W_enc"].astype(np.float64) + p["b_enc"]
    acts = (pre > p["threshold"]) * np.maximum(pre, 0)
    return acts, acts @ p["W_dec"].astype(np.float64) + p["b_dec"]


def test_thresholds_at_the_floor_are_counted_and_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = gs_arrays()
    arrays["threshold"][:3] = 0.0
    with caplog.at_level(logging.WARNING, logger="saescope.release"):
        loaded = load_sae(write_gs1(tmp_path, arrays))
    assert loaded.metadata["thresholds_at_floor"] == 3
    assert any("3 threshold(s) are <= 1e-6" in record.getMessage() for record in caplog.records)
    assert "thresholds_at_floor" not in load_sae(write_gs1(tmp_path / "fine", gs_arrays())).metadata


def test_hand_written_gemma_scope_npz_runs_the_published_forward(tmp_path: Path) -> None:
    arrays = gs_arrays()
    folder = write_gs1(tmp_path, arrays)
    loaded = load_sae(folder)
    assert loaded.source_format == "gemmascope"
    assert loaded.site == Site(20, SiteKind.RES)
    assert loaded.model_name == "gemma-2-2b"
    assert loaded.metadata["average_l0"] == 71
    assert loaded.metadata["width_name"] == "4k"
    x = np.random.default_rng(1).standard_normal((32, D_IN)).astype(np.float32) * 2
    codes = loaded.sae.encode(torch.from_numpy(x))
    # exactly the same float32 operations as the tutorial's torch code
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    x_t = torch.from_numpy(x)
    pre = x_t @ t["W_enc"] + t["b_enc"]
    expected = (pre > t["threshold"]) * torch.relu(pre)
    assert torch.equal(codes, expected)
    assert torch.equal(loaded.sae.decode(codes), expected @ t["W_dec"] + t["b_dec"])
    # and, up to float32 rounding, the float64 formula (b_dec is not subtracted before encoding)
    acts, recon = reference_forward(x.astype(np.float64), arrays)
    codes_np = codes.detach().numpy()
    active = codes_np > 0
    assert (active == (acts > 0)).mean() > 0.999
    assert 0 < active.mean() < 1
    both = active & (acts > 0)
    np.testing.assert_allclose(codes_np[both], acts[both], rtol=1e-4, atol=1e-4)
    same_rows = (active == (acts > 0)).all(axis=1)
    recon_ours = loaded.sae.decode(codes).detach().numpy()
    np.testing.assert_allclose(recon_ours[same_rows], recon[same_rows], rtol=1e-3, atol=1e-3)


def test_gemma_scope_transcoder_repo_and_lowercase_keys(tmp_path: Path) -> None:
    arrays = {k.lower(): v for k, v in gs_arrays().items()}
    folder = write_gs1(tmp_path, arrays, "gemma-scope-2b-pt-transcoders/layer_3/width_4k/average_l0_12")
    loaded = load_sae(folder)
    assert loaded.model_name == "gemma-2-2b"
    assert loaded.site == Site(3, SiteKind.MLP_IN)
    assert loaded.site_out == Site(3, SiteKind.MLP)


def test_hand_written_gs2_affine_transcoder_decodes_with_the_skip(tmp_path: Path) -> None:
    d_in, d_out = 10, 14
    arrays = gs_arrays(d_in, 64, d_out)
    skip = np.random.default_rng(3).standard_normal((d_in, d_out)).astype(np.float32)
    folder = tmp_path / "transcoder_all" / "layer_4_width_64_l0_small_affine"
    folder.mkdir(parents=True)
    tensors = {k.lower(): torch.from_numpy(v) for k, v in arrays.items()}
    save_file({**tensors, "affine_skip_connection": torch.from_numpy(skip)}, folder / "params.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "hf_hook_point_in": "model.layers.4.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.4.post_feedforward_layernorm.output",
        "width": 64, "model_name": "gemma-v3-270m-pt", "architecture": "jump_relu", "l0": 10,
        "affine_connection": True, "type": "transcoder",
    }))  # fmt: skip
    loaded = load_sae(folder)
    assert loaded.source_format == "gemmascope2"
    assert loaded.model_name == "gemma-v3-270m-pt"
    assert loaded.site == Site(4, SiteKind.MLP_IN)
    assert loaded.site_out == Site(4, SiteKind.MLP)
    assert loaded.metadata["l0_label"] == "small"
    x = torch.randn(20, d_in, generator=torch.Generator().manual_seed(0))
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    pre = x @ t["W_enc"] + t["b_enc"]
    f = (pre > t["threshold"]) * torch.relu(pre)
    assert torch.equal(loaded.sae.encode(x), f)
    expected = f @ t["W_dec"] + t["b_dec"] + x @ torch.from_numpy(skip)
    torch.testing.assert_close(loaded.sae(x).reconstruction, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="skip"):
        loaded.sae.decode(f)  # the skip path needs the input


@pytest.mark.parametrize(
    ("hook", "site"),
    [("model.layers.6.output", Site(6, SiteKind.RES)),
     ("model.layers.6.self_attn.o_proj.input", Site(6, SiteKind.ATT)),
     ("model.layers.6.post_feedforward_layernorm.output", Site(6, SiteKind.MLP)),
     ("model.language_model.layers.2.pre_feedforward_layernorm.output", Site(2, SiteKind.MLP_IN)),
     ("model.layers.6.input", Site(6, SiteKind.RESID_PRE)),
     ("lm_head.output", None)],
)  # fmt: skip
def test_hf_hook_strings_name_sites(hook: str, site: Site | None) -> None:
    assert site_from_hf_hook(hook) == site


def test_tl_hook_names_name_sites() -> None:
    assert site_from_tl_hook("blocks.6.hook_resid_post") == Site(6, SiteKind.RES)
    assert site_from_tl_hook("blocks.3.attn.hook_z") == Site(3, SiteKind.ATT)
    assert site_from_tl_hook("blocks.3.hook_mlp_in") == Site(3, SiteKind.MLP_IN)
    assert site_from_tl_hook("hook_embed") is None


# --- malformed files -------------------------------------------------------------------------------


def test_missing_key_is_named(tmp_path: Path) -> None:
    arrays = gs_arrays()
    del arrays["threshold"]
    folder = write_gs1(tmp_path, arrays)
    with pytest.raises(ReleaseFormatError, match=r"params\.npz.*'threshold' is missing"):
        load_sae(folder)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    arrays = gs_arrays()
    arrays["b_enc"] = arrays["b_enc"][:-1]
    folder = write_gs1(tmp_path, arrays)
    with pytest.raises(ReleaseFormatError, match=r"params\.npz: b_enc has shape \(4095,\), expected \(4096,\)"):
        load_sae(folder)


def test_width_in_the_folder_name_must_match_the_arrays(tmp_path: Path) -> None:
    folder = write_gs1(tmp_path, gs_arrays(), "gemma-2-2b-res/layer_20/width_16k/average_l0_71")
    with pytest.raises(ReleaseFormatError, match=r"params\.npz: the folder says width_16k \(16384 latents\)"):
        load_sae(folder)


def test_truncated_npz_is_named(tmp_path: Path) -> None:
    folder = write_gs1(tmp_path, gs_arrays())
    path = folder / "params.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ReleaseFormatError, match=r"params\.npz is not a readable \.npz file"):
        load_sae(folder)


def test_corrupt_npz_member_is_named(tmp_path: Path) -> None:
    arrays = gs_arrays()
    del arrays["threshold"]
    folder = write_gs1(tmp_path, arrays)
    with zipfile.ZipFile(folder / "params.npz", "a") as archive:  # a member whose bytes are not an .npy array
        archive.writestr("threshold.npy", b"not an npy file")
    with pytest.raises(ReleaseFormatError, match=r"params\.npz: the array 'threshold' is not numeric"):
        load_sae(folder)


def test_nan_values_are_named(tmp_path: Path) -> None:
    arrays = gs_arrays()
    arrays["W_dec"][3, 2] = np.nan
    with pytest.raises(ReleaseFormatError, match="W_dec contains NaN"):
        load_sae(write_gs1(tmp_path, arrays))


def _gs2_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "resid_post_all" / "layer_2_width_4k_l0_medium"
    folder.mkdir(parents=True)
    save_file({k.lower(): torch.from_numpy(v) for k, v in gs_arrays().items()}, folder / "params.safetensors")
    (folder / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.2.output", "width": 4096,
                                                    "architecture": "jump_relu", "type": "sae"}))  # fmt: skip
    return folder


def test_truncated_safetensors_is_named(tmp_path: Path) -> None:
    folder = _gs2_folder(tmp_path)
    path = folder / "params.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ReleaseFormatError, match=r"params\.safetensors is not a readable safetensors file"):
        load_sae(folder)


def test_gs2_missing_tensor_and_bad_config_are_named(tmp_path: Path) -> None:
    folder = _gs2_folder(tmp_path)
    assert load_sae(folder).site == Site(2, SiteKind.RES)
    (folder / "config.json").write_text('{"width": 4096, "type": "sae", ')
    with pytest.raises(ReleaseFormatError, match=r"config\.json is not valid JSON"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"width": 16384}))
    with pytest.raises(ReleaseFormatError, match=r"config\.json: width 16384 but w_enc has 4096 columns"):
        load_sae(folder)
    (folder / "config.json").write_text(json.dumps({"affine_connection": True, "type": "transcoder"}))
    with pytest.raises(ReleaseFormatError, match="affine_skip_connection' is missing"):
        load_sae(folder)
    tensors = {k.lower(): torch.from_numpy(v) for k, v in gs_arrays().items() if k != "W_dec"}
    save_file(tensors, folder / "params.safetensors")
    (folder / "config.json").write_text("{}")
    with pytest.raises(ReleaseFormatError, match=r"params\.safetensors: tensor\(s\) \['w_dec'\] missing"):
        load_sae(folder)


def test_truncated_or_corrupted_file_in_a_release_is_caught_by_the_manifest(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["saelens"])
    folder = tmp_path / "out/res/layer_1/width_48/average_l0_17"
    weights = folder / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # same size, still parses: only the checksum notices
    weights.write_bytes(bytes(data))
    with pytest.raises(ReleaseFormatError, match=r"sae_weights\.safetensors does not match the SHA-256"):
        load_sae(folder)
    load_sae(folder, check_hashes=False)  # sizes still agree
    weights.write_bytes(bytes(data[:-8]))
    with pytest.raises(ReleaseFormatError, match=r"sae_weights\.safetensors has \d+ bytes, but .* records"):
        load_sae(folder, check_hashes=False)


def test_a_folder_of_something_else_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ReleaseFormatError, match="is not a dictionary folder"):
        load_sae(tmp_path)


# --- Hub ids --------------------------------------------------------------------------------------


def test_hub_id_offline_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAESCOPE_ONLINE", raising=False)
    with pytest.raises(ReleaseDownloadError, match="SAESCOPE_ONLINE=1"):
        load_sae("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    monkeypatch.setenv("SAESCOPE_ONLINE", "0")
    with pytest.raises(ReleaseDownloadError, match="online=True"):
        load_sae("google/gemma-scope-2-270m-pt/resid_post_all/layer_5_width_16k_l0_small")


def test_hub_download_goes_through_snapshot_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With downloads on, the Hub folder is fetched and read like a local one (the Hub itself is faked)."""
    import huggingface_hub

    sub = "layer_20/width_4k/average_l0_71"
    write_gs1(tmp_path / "snapshot", gs_arrays(), sub)
    calls: list[tuple[str, list[str]]] = []

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        calls.append((repo_id, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = load_sae(f"google/gemma-scope-2b-pt-res/{sub}", online=True)
    assert calls == [("google/gemma-scope-2b-pt-res", [f"{sub}/*"])]
    assert loaded.site == Site(20, SiteKind.RES)
    assert loaded.model_name == "gemma-2-2b"
    assert loaded.metadata["hub_id"] == f"google/gemma-scope-2b-pt-res/{sub}"


def test_missing_local_path_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sae(tmp_path / "nope")

"""Gemma Scope 2 CLT and crosscoder folders: layout, export -> load round trip, folding, errors that name files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from release_fixtures import write_dictionary_folder
from safetensors.torch import load_file, save_file

from saescope.dictionaries.folder import read_trained_sae
from saescope.models.sites import Site
from saescope.release import export_release, load_sae
from saescope.release.common import ReleaseFormatError
from saescope.sae import CrossLayerDictionary, DictionaryConfig, build_any_dictionary

D_IN, D_OUT, WIDTH = 12, 10, 20
SCALES = (2.0, 3.0, 5.0)


def random_multi_layer(n_layers: int, *, skip: bool, seed: int, d_out: int = D_OUT) -> CrossLayerDictionary:
    """A multi-layer dictionary as after training: non-zero cross decoders, biases and thresholds."""
    generator = torch.Generator().manual_seed(seed)
    config = DictionaryConfig(d_in=D_IN, width=WIDTH, d_out=d_out, architecture="jumprelu", n_layers=n_layers,
                              apply_pre_encoder_bias=False, skip=skip, sparsity="l0")  # fmt: skip
    sae = build_any_dictionary(config, generator=generator)
    assert isinstance(sae, CrossLayerDictionary)
    with torch.no_grad():
        for cross in sae.W_cross:
            cross.copy_(0.2 * torch.randn(cross.shape, generator=generator))
        for i in range(n_layers):
            block = sae.block(i)
            block.b_enc_F.copy_(0.3 * torch.randn(WIDTH, generator=generator))
            block.b_dec_D.copy_(0.5 * torch.randn(d_out, generator=generator))
            block.W_enc_DF.mul_(2.0)
            if block.W_skip_DD is not None:
                block.W_skip_DD.copy_(0.1 * torch.randn(D_IN, d_out, generator=generator))
            block.set_threshold_(0.05 + 0.2 * torch.rand(WIDTH, generator=generator))
    return sae.eval()


def write_clt(
    run: Path,
    name: str = "clt",
    *,
    skip: bool = False,
    l0: float = 90.0,
    first_layer: int = 0,
    seed: int = 3,
    target_l0: float | None = None,
) -> tuple[Path, CrossLayerDictionary]:
    sae = random_multi_layer(3, skip=skip, seed=seed)
    layers = [first_layer + i for i in range(3)]
    folder = write_dictionary_folder(
        run, name, sae, site=f"layer_{first_layer}/mlp_in", l0=l0,  # type: ignore[arg-type]
        extra_config={"site_out": f"layer_{first_layer}/mlp", "layers": layers, "norm_scales": list(SCALES),
                      "target_l0": target_l0},
    )  # fmt: skip
    return folder, sae


def raw_inputs(n_layers: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return torch.cat([s * torch.randn(32, D_IN, generator=generator) for s in SCALES[:n_layers]], dim=-1)


@pytest.mark.parametrize("skip", [False, True])
def test_clt_layout_shapes_and_config(tmp_path: Path, skip: bool) -> None:
    run_folder, _ = write_clt(tmp_path / "run", skip=skip, l0=90.0)
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"], model_name="gemma-3-270m")
    folder = tmp_path / "out" / ("clt/width_60_l0_medium" + ("_affine" if skip else ""))  # 90 / 3 layers = 30
    assert [e.path for e in summary.exported["gemmascope2"]] == [folder.relative_to(tmp_path / "out")]
    raw = read_trained_sae(run_folder).raw_space()
    assert isinstance(raw, CrossLayerDictionary)
    for i in range(3):
        tensors = load_file(folder / f"params_layer_{i}.safetensors")
        # full (F, n, d_out) in every block (what circuit-tracer's GS2 CLT loader stacks): row j = output j
        assert tensors["w_dec"].shape == (WIDTH, 3, D_OUT)
        assert not tensors["w_dec"][:, :i].any()
        for j in range(i, 3):
            assert torch.equal(tensors["w_dec"][:, j], raw.decoder_to(i, j).detach())
        assert tensors["w_enc"].shape == (D_IN, WIDTH)
        assert tensors["b_dec"].shape == (D_OUT,)
        assert ("affine_skip_connection" in tensors) is skip
        assert all(t.dtype == torch.float32 for t in tensors.values())
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == "clt"
    assert config["architecture"] == "jump_relu"
    assert config["affine_connection"] is skip
    assert config["width"] == 3 * WIDTH
    assert config["width_per_layer"] == WIDTH
    assert config["layers"] == [0, 1, 2]
    # as google/gemma-scope-2-270m-pt clt/width_262k_l0_big/config.json writes them
    assert config["hf_hook_point_in"] == "model.layers.{all}.pre_feedforward_layernorm.output"
    assert config["hf_hook_point_out"] == "model.layers.{all}.post_feedforward_layernorm.output"
    assert config["model_name"] == "google/gemma-3-270m-pt"
    assert (config["l0"], config["l0_measured"], config["l0_per_layer"]) == (60, 90.0, 30.0)  # no target: "medium"


def test_clt_config_l0_is_the_target_per_layer(tmp_path: Path) -> None:
    write_clt(tmp_path / "run", l0=93.0, target_l0=90.0)
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    config = json.loads((tmp_path / "out/clt/width_60_l0_medium/config.json").read_text())
    assert (config["l0"], config["l0_measured"]) == (30, 93.0)


def test_a_clt_and_a_skip_clt_of_one_label_are_plain_and_affine(tmp_path: Path) -> None:
    """GS2 names them clt/width_W_l0_L and clt/width_W_l0_L_affine; numbers are only for true collisions."""
    write_clt(tmp_path / "run", "plain", l0=95.0)
    write_clt(tmp_path / "run", "skip", skip=True, l0=80.0)
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    paths = {item.entry.name: item.path.as_posix() for item in summary.exported["gemmascope2"]}
    assert paths == {"plain": "clt/width_60_l0_medium", "skip": "clt/width_60_l0_medium_affine"}


def test_a_clt_over_later_layers_names_its_files_by_model_layer_and_round_trips(tmp_path: Path) -> None:
    folder, _ = write_clt(tmp_path / "run", first_layer=3)
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    release = tmp_path / "out/clt/width_60_l0_medium"
    assert sorted(p.name for p in release.glob("params_layer_*.safetensors")) == [
        f"params_layer_{k}.safetensors" for k in (3, 4, 5)
    ]
    config = json.loads((release / "config.json").read_text())
    assert config["hf_hook_point_in"] == "model.layers.{3,4,5}.pre_feedforward_layernorm.output"
    loaded = load_sae(release)
    assert loaded.layers == (3, 4, 5)
    assert loaded.input_sites == tuple(Site.parse(f"layer_{i}/mlp_in") for i in (3, 4, 5))
    assert loaded.output_sites == tuple(Site.parse(f"layer_{i}/mlp") for i in (3, 4, 5))
    x = raw_inputs()
    with torch.no_grad():
        expected = read_trained_sae(folder).raw_space()(x)
        assert (expected.codes != 0).any()
        torch.testing.assert_close(loaded.sae(x).reconstruction, expected.reconstruction, rtol=1e-6, atol=1e-6)


def test_a_gs2_clt_folder_with_only_official_keys_loads(tmp_path: Path) -> None:
    """Google's CLT config has no layers/n_layers: the {all} template and the files say which layers."""
    write_clt(tmp_path / "run")
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    release = tmp_path / "out/clt/width_60_l0_medium"
    official = tmp_path / "official" / "clt" / release.name
    official.mkdir(parents=True)
    for path in release.glob("params_layer_*"):
        (official / path.name).write_bytes(path.read_bytes())
    config = json.loads((release / "config.json").read_text())
    keys = ("hf_hook_point_in", "hf_hook_point_out", "width", "model_name", "architecture", "l0", "affine_connection",
            "type")  # fmt: skip
    (official / "config.json").write_text(json.dumps({key: config[key] for key in keys}))
    loaded = load_sae(official)
    assert loaded.layers == (0, 1, 2)
    assert loaded.site == Site.parse("layer_0/mlp_in")
    assert loaded.model_name == "google/gemma-3-270m-pt"
    x = raw_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.sae(x).reconstruction, load_sae(release).sae(x).reconstruction)


def test_a_clt_over_later_layers_written_by_block_index_still_loads(tmp_path: Path) -> None:
    """saescope once numbered a partial CLT's files from 0; the reader still takes them (config layers 3-5)."""
    write_clt(tmp_path / "run", first_layer=3)
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    release = tmp_path / "out/clt/width_60_l0_medium"
    older = tmp_path / "older"
    older.mkdir()
    for k in (3, 4, 5):
        (older / f"params_layer_{k - 3}.safetensors").write_bytes(
            (release / f"params_layer_{k}.safetensors").read_bytes()
        )
    config = json.loads((release / "config.json").read_text())
    (older / "config.json").write_text(json.dumps({**config, "hf_hook_point_in": [], "hf_hook_point_out": []}))
    loaded = load_sae(older)
    assert loaded.layers == (3, 4, 5)
    x = raw_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.sae(x).reconstruction, load_sae(release).sae(x).reconstruction)


@pytest.mark.parametrize("skip", [False, True])
def test_clt_round_trip_folds_each_layers_scale_exactly(tmp_path: Path, skip: bool) -> None:
    """Raw output j of the released CLT = s_j × training-space output j on x / s (targets were divided by
    their input layer's scale), and loading the release gives that same dictionary."""
    folder, trained = write_clt(tmp_path / "run", skip=skip)
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    release_folder = next((tmp_path / "out" / "clt").iterdir())
    loaded = load_sae(release_folder)
    assert isinstance(loaded.sae, CrossLayerDictionary)
    assert loaded.layers == (0, 1, 2)
    assert loaded.source_format == "gemmascope2"
    assert loaded.input_sites == tuple(Site.parse(f"layer_{i}/mlp_in") for i in range(3))
    assert loaded.output_sites == tuple(Site.parse(f"layer_{i}/mlp") for i in range(3))

    x_raw = raw_inputs()
    scales_in = torch.cat([torch.full((D_IN,), s) for s in SCALES])
    scales_out = torch.cat([torch.full((D_OUT,), s) for s in SCALES])
    with torch.no_grad():
        expected = trained(x_raw / scales_in).reconstruction * scales_out
        got = loaded.sae(x_raw).reconstruction
        direct = read_trained_sae(folder).raw_space()(x_raw).reconstruction
    assert (trained(x_raw / scales_in).codes != 0).float().sum() > 0  # the check is not on all-zero codes
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, direct, rtol=1e-6, atol=1e-6)


def test_crosscoder_folder_names_its_layers_and_round_trips(tmp_path: Path) -> None:
    sae = random_multi_layer(3, skip=False, seed=5, d_out=D_IN)
    write_dictionary_folder(tmp_path / "run", "xc", sae, site="layer_5/res", l0=150.0,  # type: ignore[arg-type]
                            extra_config={"layers": [5, 9, 12], "norm_scales": list(SCALES)})  # fmt: skip
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    folder = tmp_path / "out" / "crosscoder" / "layer_5_9_12_width_60_l0_medium"
    config = json.loads((folder / "config.json").read_text())
    assert config["type"] == "crosscoder"
    # as GS2's crosscoder/layer_5_9_12_15_width_1m_l0_big: the layers listed, files by block index
    assert config["hf_hook_point_in"] == config["hf_hook_point_out"] == "model.layers.{5,9,12}.output"
    assert sorted(p.name for p in folder.glob("params_layer_*.safetensors")) == [
        f"params_layer_{i}.safetensors" for i in range(3)
    ]
    loaded = load_sae(folder)
    assert loaded.layers == (5, 9, 12)
    assert loaded.site == Site.parse("layer_5/res")
    assert loaded.site_out is None
    x = raw_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.sae(x).reconstruction, read_trained_sae(tmp_path / "run/saes/xc").raw_space()(x).reconstruction
        )


def test_crosscoder_without_config_reads_layers_from_the_folder_name(tmp_path: Path) -> None:
    sae = random_multi_layer(3, skip=False, seed=5, d_out=D_IN)
    write_dictionary_folder(tmp_path / "run", "xc", sae, site="layer_5/res",  # type: ignore[arg-type]
                            extra_config={"layers": [5, 9, 12], "norm_scales": list(SCALES)})  # fmt: skip
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    folder = next((tmp_path / "out" / "crosscoder").iterdir())
    copy = tmp_path / "copy" / "crosscoder" / folder.name
    copy.mkdir(parents=True)
    for i in range(3):
        (copy / f"params_layer_{i}.safetensors").write_bytes((folder / f"params_layer_{i}.safetensors").read_bytes())
    loaded = load_sae(copy)
    assert loaded.layers == (5, 9, 12)
    assert loaded.site == Site.parse("layer_5/res")


def test_formats_without_multi_layer_folders_skip_them_with_a_reason(tmp_path: Path) -> None:
    write_clt(tmp_path / "run")
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope", "gemmascope2", "saelens"])
    skipped = {(name, fid) for name, fid, _ in summary.skipped}
    assert skipped == {("clt", "gemmascope"), ("clt", "saelens")}
    assert all("gemmascope2" in reason for _, _, reason in summary.skipped)
    assert len(summary.exported["gemmascope2"]) == 1


def _exported_clt(tmp_path: Path) -> Path:
    write_clt(tmp_path / "run")
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    folder = next((tmp_path / "out" / "clt").iterdir())
    copy = tmp_path / "copy"  # outside the release, so the manifest does not catch the edits first
    copy.mkdir()
    for path in folder.iterdir():
        if path.suffix != ".sha256":  # nor the files' own checksums: these tests edit the files on purpose
            (copy / path.name).write_bytes(path.read_bytes())
    return copy


def test_missing_layer_file_is_named(tmp_path: Path) -> None:
    folder = _exported_clt(tmp_path)
    (folder / "params_layer_1.safetensors").unlink()
    with pytest.raises(ReleaseFormatError, match=r"params_layer_1\.safetensors is missing"):
        load_sae(folder)


def test_mismatched_block_widths_name_the_file(tmp_path: Path) -> None:
    folder = _exported_clt(tmp_path)
    path = folder / "params_layer_2.safetensors"
    tensors = load_file(path)
    tensors = {k: (v[: WIDTH - 1] if k in ("b_enc", "threshold", "w_dec") else v) for k, v in tensors.items()}
    tensors["w_enc"] = load_file(path)["w_enc"][:, : WIDTH - 1].contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    with pytest.raises(ReleaseFormatError, match=r"params_layer_2\.safetensors.*width"):
        load_sae(folder)


def _rewrite_w_dec(folder: Path, layout: str) -> None:
    """Rewrite each block's full (F, n, d_out) w_dec as ``full-flat`` (F, n·d_out), ``legacy`` (F, n-i, d_out)
    (block i's writes only, as saescope wrote it before) or ``legacy-flat`` (F, (n-i)·d_out)."""
    for i in range(3):
        path = folder / f"params_layer_{i}.safetensors"
        tensors = load_file(path)
        w_dec = tensors["w_dec"][:, i:] if layout.startswith("legacy") else tensors["w_dec"]
        tensors["w_dec"] = (w_dec.reshape(WIDTH, -1) if layout.endswith("flat") else w_dec).contiguous()
        save_file(tensors, path)


@pytest.mark.parametrize("layout", ["full-flat", "legacy", "legacy-flat"])
def test_reader_accepts_the_legacy_and_flat_decoder_layouts(tmp_path: Path, layout: str) -> None:
    folder = _exported_clt(tmp_path)
    expected = load_sae(folder).sae
    _rewrite_w_dec(folder, layout)
    last_w_dec = {"full-flat": (WIDTH, 3 * D_OUT), "legacy": (WIDTH, 1, D_OUT), "legacy-flat": (WIDTH, D_OUT)}
    assert load_file(folder / "params_layer_2.safetensors")["w_dec"].shape == last_w_dec[layout]
    loaded = load_sae(folder).sae
    x = raw_inputs()
    with torch.no_grad():
        assert (expected.encode(x) != 0).any()
        assert torch.equal(loaded(x).reconstruction, expected(x).reconstruction)


def test_decoder_rows_for_earlier_layers_must_be_zero(tmp_path: Path) -> None:
    """A causal CLT's block i cannot write to outputs before i: non-zero rows there are refused, naming the file."""
    folder = _exported_clt(tmp_path)
    path = folder / "params_layer_2.safetensors"
    tensors = load_file(path)
    tensors["w_dec"][:, 1] = 0.5
    save_file(tensors, path)
    with pytest.raises(ReleaseFormatError, match=r"params_layer_2\.safetensors: w_dec rows 0\.\.1 .*backwards"):
        load_sae(folder)


def test_wrong_decoder_fan_out_names_the_file(tmp_path: Path) -> None:
    folder = _exported_clt(tmp_path)
    path = folder / "params_layer_0.safetensors"
    tensors = load_file(path)
    tensors["w_dec"] = tensors["w_dec"][:, :2].contiguous()  # block 0 must write to all 3 layers
    save_file(tensors, path)
    with pytest.raises(ReleaseFormatError, match=r"params_layer_0\.safetensors: w_dec has shape"):
        load_sae(folder)


def test_affine_flag_that_disagrees_with_the_files_is_named(tmp_path: Path) -> None:
    folder = _exported_clt(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "affine_connection": True}))
    with pytest.raises(ReleaseFormatError, match="affine_connection"):
        load_sae(folder)


def test_corrupted_block_file_inside_a_release_is_caught_by_the_manifest(tmp_path: Path) -> None:
    write_clt(tmp_path / "run")
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    folder = next((tmp_path / "out" / "clt").iterdir())
    path = folder / "params_layer_1.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ReleaseFormatError, match=r"params_layer_1\.safetensors does not match the SHA-256"):
        load_sae(folder)

"""Export a trained suite in every format and load it back: same codes, sites, names and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from release_fixtures import NORM_SCALE, WIDTH, D, random_jumprelu, write_dictionary_folder
from safetensors.torch import load_file

from saescope.models.sites import Site, SiteKind
from saescope.release import (
    ReleaseExportError,
    TrainedSAE,
    export_release,
    l0_label,
    load_sae,
    parse_width_name,
    read_suite,
    width_name,
)
from saescope.sae import DictionaryConfig, build_dictionary

RES1 = Site(1, SiteKind.RES)


def _entry(run: Path, name: str) -> TrainedSAE:
    return next(e for e in read_suite(run) if e.name == name)


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "name"),
    [(4096, "4k"), (16384, "16k"), (32768, "32k"), (65536, "65k"), (131072, "131k"), (262144, "262k"),
     (524288, "524k"), (1048576, "1m"), (48, "48"), (16000, "16000"), (8192, "8192")],
)  # fmt: skip
def test_width_names_follow_gemma_scope(width: int, name: str) -> None:
    assert width_name(width) == name
    assert parse_width_name(name) == width


@pytest.mark.parametrize(("l0", "label"), [(3, "small"), (20, "small"), (20.4, "medium"), (60, "medium"), (61, "big")])
def test_l0_labels(l0: float, label: str) -> None:
    assert l0_label(l0) == label


def test_release_layout_and_collision_names(suite_run: Path, tmp_path: Path) -> None:
    summary = export_release(suite_run, tmp_path / "out", model_name="gemma-3-270m")
    paths = {fid: {i.entry.name: i.path.as_posix() for i in items} for fid, items in summary.exported.items()}
    # GS1: held-out L0 from metrics.json (14.2 -> 14) beats the training batch's 11.6; no skip transcoder.
    assert paths["gemmascope"] == {
        "res-a": "gemma-3-270m-res/layer_1/width_48/average_l0_14",
        "res-b": "gemma-3-270m-res/layer_1/width_48/average_l0_17",
        "att": "gemma-3-270m-att/layer_0/width_48/average_l0_75",
    }
    assert [(name, fid) for name, fid, _ in summary.skipped] == [("tc", "gemmascope")]
    # GS2: both residual SAEs are "small", so both get a suffix numbered by ascending L0.
    assert paths["gemmascope2"] == {
        "res-a": "resid_post_all/layer_1_width_48_l0_small_1",
        "res-b": "resid_post_all/layer_1_width_48_l0_small_2",
        "att": "attn_out_all/layer_0_width_48_l0_big",
        "tc": "transcoder_all/layer_2_width_48_l0_medium_affine",
    }
    assert paths["saelens"]["tc"] == "transcoder/layer_2/width_48/average_l0_33"
    out = tmp_path / "out"
    for fid in ("gemmascope", "gemmascope2", "saelens"):
        assert (out / fid / "README.md").is_file()
    assert (out / "README.md").is_file()
    assert (out / "SAESCOPE_MANIFEST.json").is_file()


def test_gs1_npz_holds_five_float32_raw_space_arrays(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["gemmascope"], model_name="gemma-3-270m")
    path = tmp_path / "out/gemma-3-270m-res/layer_1/width_48/average_l0_14/params.npz"
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    assert sorted(arrays) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    assert {key: a.shape for key, a in arrays.items()} == {
        "W_enc": (D, WIDTH), "W_dec": (WIDTH, D), "b_enc": (WIDTH,), "b_dec": (D,), "threshold": (WIDTH,)
    }  # fmt: skip
    assert all(a.dtype == np.float32 for a in arrays.values())
    trained = _entry(suite_run, "res-a").training_space()
    # Folding (method §2.7): b_dec' = C b_dec, θ' = C θ, b_enc' = C (b_enc - b_dec W_enc), W unchanged.
    np.testing.assert_allclose(arrays["b_dec"], NORM_SCALE * trained.b_dec_D.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(arrays["threshold"], NORM_SCALE * trained.threshold_F.detach().numpy(), rtol=1e-6)
    expected_b_enc = NORM_SCALE * (trained.b_enc_F - trained.b_dec_D @ trained.W_enc_DF).detach().numpy()
    np.testing.assert_allclose(arrays["b_enc"], expected_b_enc, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(arrays["W_dec"], trained.W_dec_FD.detach().numpy())
    np.testing.assert_allclose(np.linalg.norm(arrays["W_dec"], axis=1), 1.0, rtol=1e-5)


def test_gs2_files_have_lowercase_keys_and_config(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["gemmascope2"], model_name="gemma-3-270m")
    folder = tmp_path / "out/transcoder_all/layer_2_width_48_l0_medium_affine"
    tensors = load_file(folder / "params.safetensors")
    assert sorted(tensors) == ["affine_skip_connection", "b_dec", "b_enc", "threshold", "w_dec", "w_enc"]
    assert tensors["affine_skip_connection"].shape == (D, D)
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "hf_hook_point_in": "model.layers.2.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.2.post_feedforward_layernorm.output",
        "width": WIDTH,
        "model_name": "google/gemma-3-270m-pt",  # the official id, as GS2 writes it
        "architecture": "jump_relu",
        "l0": 60,  # GS2's integer target: no target_l0 recorded, so the "medium" label's
        "l0_measured": 33.3,
        "affine_connection": True,
        "type": "transcoder",
    }
    att = json.loads((tmp_path / "out/attn_out_all/layer_0_width_48_l0_big/config.json").read_text())
    assert att["hf_hook_point_in"] == att["hf_hook_point_out"] == "model.layers.0.self_attn.o_proj.input"
    assert (att["type"], att["affine_connection"], att["l0"], att["l0_measured"]) == ("sae", False, 150, 75.4)


def test_gs2_config_l0_is_the_recorded_target(tmp_path: Path) -> None:
    sae = random_jumprelu(DictionaryConfig(d_in=D, width=WIDTH), 0)
    write_dictionary_folder(tmp_path / "run", "a", sae, l0=41.7, extra_config={"target_l0": 40.0})
    export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"], model_name="google/gemma-2-2b")
    config = json.loads((tmp_path / "out/resid_post_all/layer_1_width_48_l0_medium/config.json").read_text())
    assert (config["l0"], config["l0_measured"], config["model_name"]) == (40, 41.7, "google/gemma-2-2b")
    loaded = load_sae(tmp_path / "out/resid_post_all/layer_1_width_48_l0_medium")
    assert loaded.model_name == "google/gemma-2-2b"


def _write_transcoder_pair(run: Path, layer: int, l0_plain: float, l0_skip: float) -> None:
    for name, skip, l0 in (("tc", False, l0_plain), ("stc", True, l0_skip)):
        config = DictionaryConfig(d_in=D, width=WIDTH, apply_pre_encoder_bias=False, skip=skip)
        sae = random_jumprelu(config, layer + 10 * skip)
        extra = {"site_out": f"layer_{layer}/mlp"}
        write_dictionary_folder(run, f"{name}{layer}", sae, site=f"layer_{layer}/mlp_in", l0=l0, extra_config=extra)


def test_transcoder_and_skip_transcoder_of_one_label_get_the_official_names(tmp_path: Path) -> None:
    """GS2: ``..._l0_small`` and ``..._l0_small_affine`` at every layer, whichever has the lower L0."""
    _write_transcoder_pair(tmp_path / "run", 1, l0_plain=12.0, l0_skip=15.0)
    _write_transcoder_pair(tmp_path / "run", 2, l0_plain=15.0, l0_skip=12.0)
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2"])
    paths = {item.entry.name: item.path.as_posix() for item in summary.exported["gemmascope2"]}
    assert paths == {
        "tc1": "transcoder_all/layer_1_width_48_l0_small",
        "stc1": "transcoder_all/layer_1_width_48_l0_small_affine",
        "tc2": "transcoder_all/layer_2_width_48_l0_small",
        "stc2": "transcoder_all/layer_2_width_48_l0_small_affine",
    }
    loaded = load_sae(tmp_path / "out/transcoder_all/layer_2_width_48_l0_small_affine")
    assert loaded.sae.config.skip
    assert loaded.site_out == Site(2, SiteKind.MLP)


def test_gs1_transcoders_go_in_the_plural_repository(tmp_path: Path) -> None:
    """Google's repository is google/gemma-scope-2b-pt-transcoders."""
    _write_transcoder_pair(tmp_path / "run", 3, l0_plain=70.6, l0_skip=70.0)
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope"], model_name="gemma-2-2b")
    assert [item.path.as_posix() for item in summary.exported["gemmascope"]] == [
        "gemma-2-2b-transcoders/layer_3/width_48/average_l0_71"
    ]
    loaded = load_sae(tmp_path / "out/gemma-2-2b-transcoders/layer_3/width_48/average_l0_71")
    assert (loaded.site, loaded.site_out, loaded.model_name) == (Site(3, SiteKind.MLP_IN), Site(3, SiteKind.MLP),
                                                                 "gemma-2-2b")  # fmt: skip


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("format_id", "folder"),
    [
        ("gemmascope", "gemma-3-270m-res/layer_1/width_48/average_l0_14"),
        ("gemmascope2", "resid_post_all/layer_1_width_48_l0_small_1"),
        ("saelens", "res/layer_1/width_48/average_l0_14"),
    ],
)
def test_export_then_load_gives_identical_codes(
    suite_run: Path, tmp_path: Path, activations: torch.Tensor, format_id: str, folder: str
) -> None:
    export_release(suite_run, tmp_path / "out", [format_id], model_name="gemma-3-270m")
    loaded = load_sae(tmp_path / "out" / folder)
    assert loaded.source_format == format_id
    assert loaded.site == RES1
    # GS2 records the original's official id, which load_model maps back to the embedded model
    assert loaded.model_name == ("google/gemma-3-270m-pt" if format_id == "gemmascope2" else "gemma-3-270m")
    assert loaded.site_out is None
    reference = _entry(suite_run, "res-a").raw_space()
    codes = loaded.sae.encode(activations)
    assert torch.equal(codes, reference.encode(activations))
    assert (codes > 0).any()
    assert (codes == 0).any()
    assert torch.equal(loaded.sae(activations).reconstruction, reference(activations).reconstruction)


@pytest.mark.parametrize(
    ("format_id", "folder"),
    [("gemmascope2", "transcoder_all/layer_2_width_48_l0_medium_affine"),
     ("saelens", "transcoder/layer_2/width_48/average_l0_33")],
)  # fmt: skip
def test_skip_transcoder_round_trip_keeps_the_skip_path(
    suite_run: Path, tmp_path: Path, activations: torch.Tensor, format_id: str, folder: str
) -> None:
    export_release(suite_run, tmp_path / "out", [format_id], model_name="gemma-3-270m")
    loaded = load_sae(tmp_path / "out" / folder)
    assert loaded.site == Site(2, SiteKind.MLP_IN)
    assert loaded.site_out == Site(2, SiteKind.MLP)
    assert loaded.is_transcoder
    assert loaded.sae.config.skip
    reference = _entry(suite_run, "tc").raw_space()
    assert torch.equal(loaded.sae.encode(activations), reference.encode(activations))
    out = loaded.sae(activations).reconstruction
    torch.testing.assert_close(out, reference(activations).reconstruction, rtol=0, atol=1e-6)
    without_skip = loaded.sae.decode(loaded.sae.encode(activations), activations) - activations @ loaded.sae.W_skip_DD
    assert not torch.allclose(out, without_skip)


def test_folded_weights_on_raw_activations_give_c_times_training_codes(
    suite_run: Path, tmp_path: Path, activations: torch.Tensor
) -> None:
    export_release(suite_run, tmp_path / "out", ["gemmascope"], model_name="gemma-3-270m")
    loaded = load_sae(tmp_path / "out/gemma-3-270m-res/layer_1/width_48/average_l0_14")
    trained = _entry(suite_run, "res-a").training_space()
    training_codes = trained.encode(activations / NORM_SCALE)
    released_codes = loaded.sae.encode(activations)
    assert torch.equal(released_codes > 0, training_codes > 0)
    torch.testing.assert_close(released_codes, NORM_SCALE * training_codes, rtol=1e-5, atol=1e-5)
    recon = loaded.sae(activations).reconstruction
    torch.testing.assert_close(
        recon, NORM_SCALE * trained(activations / NORM_SCALE).reconstruction, rtol=1e-5, atol=1e-5
    )


def test_saescope_dictionary_folder_loads_in_raw_space(suite_run: Path, activations: torch.Tensor) -> None:
    loaded = load_sae(suite_run / "saes" / "res-a")
    assert loaded.source_format == "saescope"
    assert loaded.site == RES1
    assert loaded.metadata["l0"] == pytest.approx(14.2)
    assert loaded.metadata["norm_scale"] == NORM_SCALE
    assert not loaded.sae.config.apply_pre_encoder_bias
    reference = _entry(suite_run, "res-a").raw_space()
    assert torch.equal(loaded.sae.encode(activations), reference.encode(activations))


def test_loading_a_file_path_loads_its_folder(suite_run: Path, tmp_path: Path, activations: torch.Tensor) -> None:
    export_release(suite_run, tmp_path / "out", ["gemmascope"], model_name="gemma-3-270m")
    folder = tmp_path / "out/gemma-3-270m-res/layer_1/width_48/average_l0_17"
    by_file = load_sae(str(folder / "params.npz"))
    assert torch.equal(by_file.sae.encode(activations), load_sae(folder).sae.encode(activations))


def test_batchtopk_exports_as_jumprelu_with_its_inference_threshold(tmp_path: Path, activations: torch.Tensor) -> None:
    config = DictionaryConfig(d_in=D, width=WIDTH, architecture="batchtopk", k=4)
    sae = build_dictionary(config, generator=torch.Generator().manual_seed(5)).train()
    sae(activations / NORM_SCALE)  # one training-mode batch sets the inference threshold
    sae.eval()
    write_dictionary_folder(tmp_path / "run", "btk", sae, l0=4.0)
    topk = build_dictionary(DictionaryConfig(d_in=D, width=WIDTH, architecture="topk", k=4))
    write_dictionary_folder(tmp_path / "run", "topk", topk, l0=4.0)
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope"], model_name="m")
    assert [i.entry.name for i in summary.exported["gemmascope"]] == ["btk"]
    assert summary.skipped[0][:2] == ("topk", "gemmascope")
    loaded = load_sae(tmp_path / "out" / summary.exported["gemmascope"][0].path)
    expected = sae.fold_normalisation(NORM_SCALE).eval().encode(activations)
    torch.testing.assert_close(loaded.sae.encode(activations), expected, rtol=1e-6, atol=1e-6)


def test_a_real_trainer_run_exports_and_loads(tmp_path: Path) -> None:
    from saescope.data.arrays import ArrayActivations
    from saescope.train import SAESpec, TrainConfig, Trainer

    x = torch.randn(2048, D, generator=torch.Generator().manual_seed(0)) * 2 + 1
    spec = SAESpec("jr", RES1, DictionaryConfig(d_in=D, width=32, threshold_parameterisation="raw"), lr=1e-3)
    (trained,) = Trainer([spec], ArrayActivations({RES1: x}), TrainConfig(total_tokens=1024, batch_size=256,
                         progress=False), tmp_path / "run").run()  # fmt: skip
    summary = export_release(tmp_path / "run", tmp_path / "out", model_name="gemma-3-270m")
    for fid, items in summary.exported.items():
        loaded = load_sae(summary.format_dirs[fid] / items[0].path)
        expected = trained.sae.fold_normalisation(trained.norm_scale).encode(x[:128])
        assert torch.equal(loaded.sae.encode(x[:128]), expected), fid


# --- the release folder ------------------------------------------------------------------------------


def test_export_refuses_to_replace_a_folder_that_is_not_a_release(suite_run: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ReleaseExportError, match="not a saescope release"):
        export_release(suite_run, precious, ["saelens"])
    assert (precious / "notes.txt").read_text() == "keep me"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_format_is_added_beside_the_first(suite_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_release(suite_run, out, ["saelens"])
    first = _snapshot(out)
    summary = export_release(suite_run, out, ["gemmascope"], model_name="other")
    assert summary.added_to
    assert summary.format_dirs == {"gemmascope": out / "gemmascope"}
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k in first and k != "SAESCOPE_MANIFEST.json"} == {
        k: v for k, v in first.items() if k != "SAESCOPE_MANIFEST.json"
    }
    assert "gemmascope/other-res/layer_1/width_48/average_l0_14/params.npz" in after
    manifest = json.loads((out / "SAESCOPE_MANIFEST.json").read_text())
    assert manifest["formats"] == ["saelens", "gemmascope"]
    assert manifest["format_dirs"] == {"saelens": "", "gemmascope": "gemmascope"}
    assert set(manifest["files"]) == set(after) - {"SAESCOPE_MANIFEST.json"}
    # both load, each checked against the merged manifest
    assert load_sae(out / "res/layer_1/width_48/average_l0_14").source_format == "saelens"
    assert load_sae(out / "gemmascope/other-res/layer_1/width_48/average_l0_14").source_format == "gemmascope"


def test_an_export_that_would_replace_files_names_them_and_changes_nothing(suite_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_release(suite_run, out)
    (out / "my notes.txt").write_text("keep me")
    (out / "gemmascope2" / "mine.md").write_text("mine too")
    (out / "saelens/res/layer_1/width_48/average_l0_14/cfg.json").unlink()  # would be written again: not recreated
    before = _snapshot(out)
    with pytest.raises(ReleaseExportError, match="would replace") as error:
        export_release(suite_run, out)
    message = str(error.value)
    assert "gemmascope2/resid_post_all/layer_1_width_48_l0_small_1/params.safetensors" in message
    assert "\n  README.md\n" in message
    assert "saelens/res/layer_1/width_48/average_l0_14/cfg.json" not in message
    assert "--overwrite" in message
    assert _snapshot(out) == before
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left behind


def test_overwrite_replaces_what_it_writes_and_keeps_everything_else(suite_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_release(suite_run, out)
    (out / "my notes.txt").write_text("keep me")
    (out / "gemmascope2" / "mine.md").write_text("mine too")
    old_folder = out / "saelens/res/layer_9/width_48/average_l0_3"  # as if from an earlier run
    old_folder.mkdir(parents=True)
    (old_folder / "cfg.json").write_text("{}")
    card = out / "gemmascope/README.md"
    card.write_text("edited")
    summary = export_release(suite_run, out, overwrite=True)
    assert "gemmascope/README.md" in summary.replaced
    assert card.read_text().startswith("# Sparse autoencoders")
    assert (out / "my notes.txt").read_text() == "keep me"
    assert (out / "gemmascope2" / "mine.md").read_text() == "mine too"
    assert (old_folder / "cfg.json").read_text() == "{}"
    loaded = load_sae(out / "gemmascope2/resid_post_all/layer_1_width_48_l0_small_1")  # manifest up to date
    assert loaded.source_format == "gemmascope2"


def test_a_file_in_the_way_of_a_folder_stops_the_export_even_with_overwrite(suite_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_release(suite_run, out, ["saelens"])
    (out / "gemmascope2").write_text("a file where the new format's folder goes")
    before = _snapshot(out)
    with pytest.raises(ReleaseExportError, match=r"in the way.*\n  gemmascope2 \(a file where"):
        export_release(suite_run, out, ["gemmascope2"], overwrite=True)
    assert _snapshot(out) == before


def test_an_empty_folder_becomes_the_release(suite_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    summary = export_release(suite_run, out, ["saelens"])
    assert not summary.added_to
    assert (out / "res/layer_1/width_48/average_l0_14/cfg.json").is_file()
    assert json.loads((out / "SAESCOPE_MANIFEST.json").read_text())["format_dirs"] == {"saelens": ""}


def test_model_name_defaults_to_the_recorded_model_then_the_embedded_one(tmp_path: Path) -> None:
    sae = random_jumprelu(DictionaryConfig(d_in=D, width=WIDTH), 0)
    write_dictionary_folder(tmp_path / "run", "a", sae)
    assert export_release(tmp_path / "run", tmp_path / "o1", ["gemmascope"]).model_name == "gemma-3-270m"
    write_dictionary_folder(tmp_path / "run2", "a", sae, extra_config={"model": "google/gemma-2-2b"})
    summary = export_release(tmp_path / "run2", tmp_path / "o2", ["gemmascope"])
    assert summary.model_name == "google/gemma-2-2b"
    assert summary.exported["gemmascope"][0].path.as_posix().startswith("gemma-2-2b-res/")


def test_l0_comes_from_metrics_json_then_the_last_training_batch(tmp_path: Path) -> None:
    sae = random_jumprelu(DictionaryConfig(d_in=D, width=WIDTH), 0)
    write_dictionary_folder(tmp_path / "run", "nested", sae, l0=5.0, metrics={"reconstruction": {"l0": 40.4}})
    write_dictionary_folder(tmp_path / "run", "flat", sae, l0=5.0, metrics={"l0": 70.6})
    write_dictionary_folder(tmp_path / "run", "none", sae, l0=5.4)
    entries = {e.name: e for e in read_suite(tmp_path / "run")}
    assert {name: e.l0 for name, e in entries.items()} == {"nested": 40.4, "flat": 70.6, "none": 5.4}
    assert entries["none"].l0_source.startswith("last training batch")
    assert entries["flat"].l0_source.startswith("held-out evaluation")


def test_transcoder_target_defaults_to_the_mlp_output_and_skip_saes_stay_saes(
    tmp_path: Path, activations: torch.Tensor
) -> None:
    transcoder = random_jumprelu(DictionaryConfig(d_in=D, width=WIDTH, apply_pre_encoder_bias=False), 1)
    write_dictionary_folder(tmp_path / "run", "tc", transcoder, site="layer_3/mlp_in", l0=8.0)
    skip_sae = random_jumprelu(DictionaryConfig(d_in=D, width=WIDTH, apply_pre_encoder_bias=False, skip=True), 2)
    write_dictionary_folder(tmp_path / "run", "skip-sae", skip_sae, site="layer_3/res", l0=9.0)
    entries = {e.name: e for e in read_suite(tmp_path / "run")}
    assert entries["tc"].site_out == Site(3, SiteKind.MLP)
    assert entries["skip-sae"].site_out is None
    summary = export_release(tmp_path / "run", tmp_path / "out", ["gemmascope2", "saelens"], model_name="m")
    paths = {(fid, i.entry.name): i.path.as_posix() for fid, items in summary.exported.items() for i in items}
    assert paths[("gemmascope2", "tc")] == "transcoder_all/layer_3_width_48_l0_small"
    assert paths[("gemmascope2", "skip-sae")] == "resid_post_all/layer_3_width_48_l0_small_affine"
    for fid in ("gemmascope2", "saelens"):
        loaded = load_sae(tmp_path / "out" / fid / paths[(fid, "skip-sae")])
        assert loaded.site == Site(3, SiteKind.RES)
        assert loaded.site_out is None
        expected = entries["skip-sae"].raw_space()(activations).reconstruction
        torch.testing.assert_close(loaded.sae(activations).reconstruction, expected, rtol=0, atol=1e-6)
        assert load_sae(tmp_path / "out" / fid / paths[(fid, "tc")]).site_out == Site(3, SiteKind.MLP)

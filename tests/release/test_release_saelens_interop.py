"""Interoperability with SAELens itself (runs only where `sae-lens` is installed): both directions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from release_fixtures import D, random_jumprelu, write_dictionary_folder

from saescope.models.sites import Site, SiteKind
from saescope.release import export_release, load_sae, read_suite
from saescope.sae import DictionaryConfig

sae_lens = pytest.importorskip("sae_lens")

from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from sae_lens.saes.transcoder import (  # noqa: E402
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
)


def _x(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) + 0.3


def test_sae_lens_loads_our_export_with_the_same_codes(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["saelens"], model_name="gemma-3-270m")
    folder = tmp_path / "out/res/layer_1/width_48/average_l0_14"
    theirs = SAE.load_from_disk(folder)
    ours = load_sae(folder).sae
    assert isinstance(theirs, JumpReLUSAE)
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert theirs.cfg.apply_b_dec_to_input is False
    assert theirs.cfg.normalize_activations == "none"
    original = next(e for e in read_suite(suite_run) if e.name == "res-a").raw_space()
    x = _x(64, D)
    with torch.no_grad():
        codes = theirs.encode(x)
        assert torch.equal(codes, ours.encode(x))
        assert torch.equal(codes, original.encode(x))
        assert (codes > 0).any()
        torch.testing.assert_close(theirs.decode(codes), ours.decode(codes), rtol=0, atol=1e-6)


def test_sae_lens_reads_attention_sae_as_hook_z(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["saelens"], model_name="gemma-3-270m")
    folder = tmp_path / "out/att/layer_0/width_48/average_l0_75"
    theirs, ours = SAE.load_from_disk(folder), load_sae(folder)
    assert ours.site == Site(0, SiteKind.ATT)
    assert theirs.cfg.metadata.hook_name == "blocks.0.attn.hook_z"
    z = _x(32, 24).reshape(32, 4, 6)  # TransformerLens hook_z: (tokens, heads, head_dim)
    with torch.no_grad():
        assert torch.equal(theirs.encode(z), ours.sae.encode(z.reshape(32, 24)))


def test_sae_lens_loads_our_skip_transcoder(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["saelens"], model_name="gemma-3-270m")
    folder = tmp_path / "out/transcoder/layer_2/width_48/average_l0_33"
    theirs, ours = SAE.load_from_disk(folder), load_sae(folder).sae
    assert isinstance(theirs, JumpReLUSkipTranscoder)
    original = next(e for e in read_suite(suite_run) if e.name == "tc").raw_space()
    x = _x(40, D)
    with torch.no_grad():
        assert torch.equal(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs(x), ours(x).reconstruction, rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs(x), original(x).reconstruction, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("gs2_folder", "saelens_folder"),
    [
        ("transcoder_all/layer_2_width_48_l0_medium_affine", "transcoder/layer_2/width_48/average_l0_33"),
        ("resid_post_all/layer_1_width_48_l0_small_1", "res/layer_1/width_48/average_l0_14"),
        ("attn_out_all/layer_0_width_48_l0_big", "att/layer_0/width_48/average_l0_75"),
    ],
)
def test_our_saelens_hooks_are_those_sae_lens_gives_our_gs2_export(
    suite_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gs2_folder: str, saelens_folder: str
) -> None:
    """SAELens' own Gemma Scope 2 loader, reading our GS2 folder (its downloads pointed at it), names the hooks
    and holds the tensors of our SAELens folder: a transcoder reads ``blocks.L.hook_mlp_in``."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from safetensors import safe_open

    export_release(suite_run, tmp_path / "out", ["gemmascope2", "saelens"], model_name="gemma-3-270m")
    gs2 = tmp_path / "out/gemmascope2"

    def local_download(repo_id: str, filename: str, subfolder: str | None = None, **_: object) -> str:
        assert repo_id == "google/gemma-scope-2-270m-pt"
        return str(gs2 / subfolder / filename) if subfolder else str(gs2 / filename)

    def local_shapes(_repo_id: str, filename: str) -> dict[str, list[int]]:
        with safe_open(str(gs2 / filename), framework="pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118

    monkeypatch.setattr(loaders, "hf_hub_download", local_download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", local_shapes)
    cfg, state, _ = loaders.gemma_3_sae_huggingface_loader("google/gemma-scope-2-270m-pt", gs2_folder)
    ours = SAE.load_from_disk(tmp_path / "out/saelens" / saelens_folder)
    assert ours.cfg.metadata.hook_name == cfg["hook_name"]
    assert getattr(ours.cfg.metadata, "hook_name_out", None) == cfg.get("hook_name_out")
    assert ours.cfg.architecture() == cfg["architecture"]
    for key, value in state.items():
        assert torch.equal(getattr(ours, key).detach(), value), key


def test_sae_lens_loads_our_plain_transcoder(tmp_path: Path) -> None:
    """A transcoder without skip (mlp_in -> mlp, d_out != d_in) is SAELens' JumpReLUTranscoder with our outputs."""
    config = DictionaryConfig(d_in=D, width=40, d_out=D + 4, apply_pre_encoder_bias=False)
    write_dictionary_folder(tmp_path / "run", "tc", random_jumprelu(config, 9), site="layer_3/mlp_in", l0=20.0,
                            extra_config={"site_out": "layer_3/mlp"})  # fmt: skip
    export_release(tmp_path / "run", tmp_path / "out", ["saelens"], model_name="gemma-3-270m")
    folder = tmp_path / "out/transcoder/layer_3/width_40/average_l0_20"
    theirs = SAE.load_from_disk(folder)
    assert isinstance(theirs, JumpReLUTranscoder)
    assert not isinstance(theirs, JumpReLUSkipTranscoder)
    original = read_suite(tmp_path / "run")[0].raw_space()
    x = _x(40, D)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), original(x).reconstruction, rtol=0, atol=1e-5)


@pytest.mark.parametrize("apply_b_dec_to_input", [False, True])
def test_we_load_a_sae_lens_jumprelu_with_the_same_codes(tmp_path: Path, apply_b_dec_to_input: bool) -> None:
    config = JumpReLUSAEConfig(
        d_in=D, d_sae=40, apply_b_dec_to_input=apply_b_dec_to_input,
        metadata=SAEMetadata(hook_name="blocks.3.hook_mlp_out", model_name="gpt2"),
    )  # fmt: skip
    theirs = JumpReLUSAE(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in (theirs.W_enc, theirs.W_dec, theirs.b_enc, theirs.b_dec):
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
        theirs.threshold.copy_(0.2 + torch.rand(40, generator=generator))
    theirs.save_model(tmp_path / "sl")
    loaded = load_sae(tmp_path / "sl")
    assert loaded.source_format == "saelens"
    assert loaded.model_name == "gpt2"
    assert loaded.site == Site(3, SiteKind.MLP)
    x = _x(64, D, seed=2)
    with torch.no_grad():
        expected = theirs.encode(x)
        assert (expected > 0).any()
        if apply_b_dec_to_input:  # b_dec folded into b_enc on load: equal up to float32 rounding
            torch.testing.assert_close(loaded.sae.encode(x), expected, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(loaded.sae.encode(x), expected)
        torch.testing.assert_close(loaded.sae.decode(expected), theirs.decode(expected), rtol=0, atol=1e-6)


def test_we_load_a_sae_lens_skip_transcoder(tmp_path: Path) -> None:
    config = JumpReLUSkipTranscoderConfig(
        d_in=D, d_sae=32, d_out=20, apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name="blocks.2.ln2.hook_normalized", hook_name_out="blocks.2.hook_mlp_out"),
    )  # fmt: skip
    theirs = JumpReLUSkipTranscoder(config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in (theirs.W_enc, theirs.W_dec, theirs.b_enc, theirs.b_dec, theirs.W_skip):
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
        theirs.threshold.copy_(0.1 + torch.rand(32, generator=generator))
    theirs.save_model(tmp_path / "tc")
    loaded = load_sae(tmp_path / "tc")
    assert loaded.site == Site(2, SiteKind.MLP_IN)
    assert loaded.site_out == Site(2, SiteKind.MLP)
    x = _x(30, D, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded.sae.encode(x), theirs.encode(x))
        torch.testing.assert_close(loaded.sae(x).reconstruction, theirs(x), rtol=0, atol=1e-5)

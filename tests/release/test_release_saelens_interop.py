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

"""Our SAELens transcoder export spliced into a TransformerLens ``HookedTransformer`` (runs where transformer_lens
and sae-lens are installed): the same logits as saescope's own splice into the Hugging Face model.

The exported ``hook_name`` is ``blocks.L.hook_mlp_in`` (SAELens' name for Gemma Scope 2 transcoders). In a
``HookedTransformer`` that hook holds the MLP branch's input *before* ``ln2``; the transcoder reads ``ln2``'s
output with its gain (HF ``pre_feedforward_layernorm``). So the TransformerLens splice applies the block's own
``ln2`` to the hooked value, and the test pins that the raw hooked value is not the transcoder's input.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from release_fixtures import random_jumprelu, write_dictionary_folder
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from saescope.eval.splice import dictionary_taps
from saescope.models.hooks import capture, taps
from saescope.models.sites import Site, SiteKind
from saescope.release import export_release, read_suite
from saescope.sae import DictionaryConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning"),
]
transformer_lens = pytest.importorskip("transformer_lens")
pytest.importorskip("sae_lens")

from sae_lens import SAE  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights  # noqa: E402

D, D_MLP, N_LAYERS, HEADS, HEAD_DIM, VOCAB = 32, 64, 3, 4, 16, 100
LAYER = 1


def tiny_gemma3() -> torch.nn.Module:
    """A tiny Gemma 3 with non-trivial RMSNorm gains (a zero gain would hide a missing gain)."""
    config = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=1, head_dim=HEAD_DIM, sliding_window=8,
        query_pre_attn_scalar=HEAD_DIM, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    for name, parameter in model.named_parameters():
        if "norm" in name:
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def hooked_copy(hf_model: torch.nn.Module) -> HookedTransformer:
    """The same weights as a HookedTransformer (TransformerLens' own Gemma 3 conversion, no weight processing)."""
    config = HookedTransformerConfig(
        d_model=D, d_head=HEAD_DIM, n_heads=HEADS, d_mlp=D_MLP, n_layers=N_LAYERS, n_ctx=64, d_vocab=VOCAB,
        eps=hf_model.config.rms_norm_eps, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=HEAD_DIM, rotary_base=1_000_000, rotary_base_local=10_000,
        use_attn_scale=True, n_key_value_heads=1, gated_mlp=True, final_rms=True,
        use_normalization_before_and_after=True, use_qk_norm=True, window_size=8, use_local_attn=True,
        attn_types=["local", "global", "local"], original_architecture="Gemma3ForCausalLM", use_hook_mlp_in=True,
        dtype=torch.float32,
    )  # fmt: skip
    model = HookedTransformer(config)
    model.load_and_process_state_dict(
        convert_gemma_weights(hf_model, config), fold_ln=False, center_writing_weights=False,
        center_unembed=False, fold_value_biases=False, refactor_factored_attn_matrices=False,
    )  # fmt: skip
    return model.eval()


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "plain"])
def test_exported_transcoder_in_transformer_lens_matches_saescopes_splice(tmp_path: Path, skip: bool) -> None:
    hf_model = tiny_gemma3()
    tl_model = hooked_copy(hf_model)
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = 2
    with torch.no_grad():
        assert (tl_model(ids) - hf_model(ids).logits).abs().max() <= 1e-4  # one model in two implementations

    config = DictionaryConfig(d_in=D, width=40, apply_pre_encoder_bias=False, skip=skip)
    write_dictionary_folder(tmp_path / "run", "tc", random_jumprelu(config, 5), site=f"layer_{LAYER}/mlp_in",
                            norm_scale=1.0, l0=12.0, extra_config={"site_out": f"layer_{LAYER}/mlp"})  # fmt: skip
    export_release(tmp_path / "run", tmp_path / "out", ["saelens"])
    transcoder = SAE.load_from_disk(tmp_path / "out/transcoder/layer_1/width_40/average_l0_12")
    hook_in, hook_out = transcoder.cfg.metadata.hook_name, transcoder.cfg.metadata.hook_name_out
    assert (hook_in, hook_out) == (f"blocks.{LAYER}.hook_mlp_in", f"blocks.{LAYER}.hook_mlp_out")

    # saescope's splice into the HF model: read mlp_in, replace mlp (as evaluation does)
    entry = read_suite(tmp_path / "run")[0]
    keep = torch.ones(ids.shape, dtype=torch.bool)
    site_in, site_out = Site(LAYER, SiteKind.MLP_IN), Site(LAYER, SiteKind.MLP)
    with torch.no_grad(), taps(hf_model, dictionary_taps(entry.raw_space(), [site_in], [site_out], {0}, keep)):
        ours = hf_model(ids).logits

    # the exported transcoder at its hooks in TransformerLens: ln2 of hook_mlp_in in, hook_mlp_out replaced
    read: dict[str, torch.Tensor] = {}

    def take_input(value: torch.Tensor, hook: object) -> torch.Tensor:
        read["x"] = tl_model.blocks[LAYER].ln2(value)
        return value

    def replace_output(value: torch.Tensor, hook: object) -> torch.Tensor:
        return transcoder(read["x"])

    with torch.no_grad():
        theirs = tl_model.run_with_hooks(ids, fwd_hooks=[(hook_in, take_input), (hook_out, replace_output)])
        clean = hf_model(ids).logits
        _, cache = tl_model.run_with_cache(ids, names_filter=hook_in)
    assert (ours - clean).abs().max() > 1e-2  # the splice changes the output: the comparison is not vacuous
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
    mlp_input = capture(hf_model, [site_in], ids)[site_in]
    assert (cache[hook_in] - mlp_input).abs().max() > 1e-1  # the hooked value itself is ln2's input, not the MLP's

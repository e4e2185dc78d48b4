from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from saescope.models.hooks import capture, splice
from saescope.models.sites import Site, SiteKind, all_sites, architecture_of, decoder_layers

Tensors = dict[SiteKind, torch.Tensor]


def _gemma_block(layer: nn.Module, t: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
    # method §3.1: h_mid = h + PostAttnNorm(z @ W_O); h_out = h_mid + PostMLPNorm(MLP(PreMLPNorm(h_mid))).
    mid = t[SiteKind.RESID_PRE] + layer.post_attention_layernorm(layer.self_attn.o_proj(t[SiteKind.ATT]))
    return layer.pre_feedforward_layernorm(mid), mid + t[SiteKind.MLP]


def _llama_block(layer: nn.Module, t: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
    mid = t[SiteKind.RESID_PRE] + layer.self_attn.o_proj(t[SiteKind.ATT])
    return layer.post_attention_layernorm(mid), mid + t[SiteKind.MLP]


def _gpt2_block(layer: nn.Module, t: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
    mid = t[SiteKind.RESID_PRE] + layer.attn.c_proj(t[SiteKind.ATT])
    return layer.ln_2(mid), mid + t[SiteKind.MLP]


def _neox_block(layer: nn.Module, t: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
    # Parallel residual: attention and MLP both read the block input.
    attn = layer.attention.dense(t[SiteKind.ATT])
    return layer.post_attention_layernorm(t[SiteKind.RESID_PRE]), t[SiteKind.RESID_PRE] + attn + t[SiteKind.MLP]


#: Independent re-derivation of (mlp_in, res) from (resid_pre, att, mlp) using the layer's own modules.
BLOCK_ORACLES: dict[str, Callable[[nn.Module, Tensors], tuple[torch.Tensor, torch.Tensor]]] = {
    "gemma2": _gemma_block,
    "gemma3": _gemma_block,
    "llama": _llama_block,
    "gpt2": _gpt2_block,
    "gpt_neox": _neox_block,
}


def test_sites_reproduce_the_block(tiny_model: nn.Module, token_batch: torch.Tensor) -> None:
    n_layers = len(decoder_layers(tiny_model))
    captured = capture(tiny_model, all_sites(n_layers), token_batch)
    oracle = BLOCK_ORACLES[architecture_of(tiny_model).name]
    for layer_index, layer in enumerate(decoder_layers(tiny_model)):
        t = {site.kind: value for site, value in captured.items() if site.layer == layer_index}
        with torch.no_grad():
            mlp_in, res = oracle(layer, t)
        torch.testing.assert_close(mlp_in, t[SiteKind.MLP_IN], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res, t[SiteKind.RES], rtol=1e-5, atol=1e-5)
        if layer_index > 0:
            previous_res = captured[Site(layer_index - 1, SiteKind.RES)]
            torch.testing.assert_close(t[SiteKind.RESID_PRE], previous_res)


def test_res_equals_decoder_layer_output(tiny_model: nn.Module, token_batch: torch.Tensor) -> None:
    n_layers = len(decoder_layers(tiny_model))
    captured = capture(tiny_model, [Site(layer, SiteKind.RES) for layer in range(n_layers)], token_batch)
    with torch.no_grad():
        hidden = tiny_model(input_ids=token_batch, output_hidden_states=True).hidden_states
    # hidden_states[L + 1] is layer L's output, except the last one, which has the final norm applied.
    for layer in range(n_layers - 1):
        torch.testing.assert_close(captured[Site(layer, SiteKind.RES)], hidden[layer + 1])
    assert not torch.allclose(captured[Site(n_layers - 1, SiteKind.RES)], hidden[-1])


def test_early_stop_skips_later_layers_and_lm_head(tiny_model: nn.Module, token_batch: torch.Tensor) -> None:
    layers = decoder_layers(tiny_model)
    calls: list[str] = []
    watched = {"layer_2": layers[2], "lm_head": tiny_model.get_output_embeddings()}
    handles = [
        module.register_forward_hook(lambda *_args, name=name: calls.append(name)) for name, module in watched.items()
    ]
    sites = [Site(0, SiteKind.ATT), Site(1, SiteKind.MLP), Site(1, SiteKind.RES)]
    early = capture(tiny_model, sites, token_batch)
    assert calls == []
    full = capture(tiny_model, sites, token_batch, stop_early=False)
    assert calls == ["layer_2", "lm_head"]
    for handle in handles:
        handle.remove()
    for site in sites:
        torch.testing.assert_close(early[site], full[site], rtol=0, atol=0)


def test_capture_with_right_padding_matches_unpadded_sequences(tiny_gemma: nn.Module) -> None:
    generator = torch.Generator().manual_seed(2)
    long_ids = torch.randint(3, 90, (1, 10), generator=generator)
    short_ids = torch.randint(3, 90, (1, 6), generator=generator)
    padded = torch.zeros(2, 10, dtype=torch.long)
    padded[0], padded[1, :6] = long_ids[0], short_ids[0]
    mask = torch.zeros(2, 10, dtype=torch.long)
    mask[0], mask[1, :6] = 1, 1
    sites = [Site(1, SiteKind.RES), Site(1, SiteKind.ATT)]
    batched = capture(tiny_gemma, sites, padded, mask)
    alone_long = capture(tiny_gemma, sites, long_ids)
    alone_short = capture(tiny_gemma, sites, short_ids)
    for site in sites:
        torch.testing.assert_close(batched[site][0], alone_long[site][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched[site][1, :6], alone_short[site][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(SiteKind))
def test_identity_splice_keeps_logits_and_zero_splice_changes_them(
    tiny_model: nn.Module, token_batch: torch.Tensor, kind: SiteKind
) -> None:
    site = Site(1, kind)
    with torch.no_grad():
        clean = tiny_model(input_ids=token_batch).logits
        with splice(tiny_model, {site: lambda x: x.clone()}):
            identity = tiny_model(input_ids=token_batch).logits
        with splice(tiny_model, {site: torch.zeros_like}):
            zeroed = tiny_model(input_ids=token_batch).logits
        after = tiny_model(input_ids=token_batch).logits
    torch.testing.assert_close(identity, clean, rtol=0, atol=0)
    assert (zeroed - clean).abs().max() > 1e-3
    torch.testing.assert_close(after, clean, rtol=0, atol=0)  # hooks removed on exit


def test_splice_sees_the_captured_activation(tiny_gemma: nn.Module, token_batch: torch.Tensor) -> None:
    site = Site(1, SiteKind.ATT)
    expected = capture(tiny_gemma, [site], token_batch)[site]
    seen: list[torch.Tensor] = []
    with torch.no_grad(), splice(tiny_gemma, {site: lambda x: seen.append(x.clone()) or x}):
        tiny_gemma(input_ids=token_batch)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


def test_splice_rejects_a_wrong_shape(tiny_gemma: nn.Module, token_batch: torch.Tensor) -> None:
    with (
        pytest.raises(ValueError, match=r"layer_0/res returned shape"),
        splice(tiny_gemma, {Site(0, SiteKind.RES): lambda x: x[..., :3]}),
    ):
        tiny_gemma(input_ids=token_batch)

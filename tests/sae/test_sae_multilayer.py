"""Cross-layer transcoders and crosscoders (saescope.sae.multilayer): causality, the sparse kernel, folding."""

from __future__ import annotations

import pytest
import torch

from saescope.sae import CrossLayerDictionary, DictionaryConfig, JumpReLU, build_any_dictionary

D, WIDTH, N = 8, 32, 3


def _config(**changes: object) -> DictionaryConfig:
    fields: dict[str, object] = {
        "d_in": D, "width": WIDTH, "d_out": D, "apply_pre_encoder_bias": False, "n_layers": N,
        "threshold_parameterisation": "raw", "threshold_init": 0.05, "lambda_warmup_steps": 0,
    }  # fmt: skip
    fields.update(changes)
    return DictionaryConfig(**fields)  # type: ignore[arg-type]


def _clt(seed: int = 0, **changes: object) -> CrossLayerDictionary:
    clt = build_any_dictionary(_config(**changes), generator=torch.Generator().manual_seed(seed))
    assert isinstance(clt, CrossLayerDictionary)
    with torch.no_grad():  # trained cross decoders are not zero; biases neither
        generator = torch.Generator().manual_seed(seed + 1)
        for W in clt.W_cross:
            W.copy_(torch.randn(W.shape, generator=generator) * 0.3)
        for block in clt.blocks:
            assert isinstance(block, JumpReLU)
            block.b_dec_D.copy_(torch.randn(D, generator=generator) * 0.1)
            block.b_enc_F.copy_(torch.randn(WIDTH, generator=generator) * 0.1)
    return clt


def _data(rows: int = 64, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, N * D, generator=generator), torch.randn(rows, N * D, generator=generator)


def test_a_one_layer_multi_layer_config_builds_the_transcoder_itself() -> None:
    config = _config(n_layers=1)
    built = build_any_dictionary(config, generator=torch.Generator().manual_seed(0))
    reference = JumpReLU(config, generator=torch.Generator().manual_seed(0))
    assert isinstance(built, JumpReLU)
    x = torch.randn(16, D)
    assert torch.equal(built(x).reconstruction, reference(x).reconstruction)


def test_without_cross_decoders_each_layer_is_its_own_transcoder() -> None:
    clt = _clt()
    with torch.no_grad():
        for W in clt.W_cross:
            W.zero_()
    x, _ = _data()
    y_hat = clt(x).reconstruction
    for i, (x_i, y_i) in enumerate(zip(clt.split_inputs(x), clt.split_outputs(y_hat), strict=True)):
        assert torch.allclose(y_i, clt.block(i)(x_i).reconstruction, atol=1e-6)


def test_no_output_or_gradient_flows_from_a_later_layer_to_an_earlier_one() -> None:
    clt = _clt()
    x, _ = _data()
    x.requires_grad_(True)
    outputs = clt.split_outputs(clt(x).reconstruction)
    for j in range(N):
        (grad_x,) = torch.autograd.grad(outputs[j].square().sum(), x, retain_graph=True)
        for k, grad_k in enumerate(grad_x.split(D, dim=-1)):
            assert (grad_k.abs().sum() > 0) == (k <= j), (j, k)
    # a loss on layer 0's output alone reaches block 0's parameters and nothing of the later blocks
    clt.zero_grad()
    outputs[0].square().sum().backward()
    for i in range(1, N):
        assert all(p.grad is None or not p.grad.any() for p in clt.block(i).parameters())
    assert all(W.grad is None or not W.grad.any() for W in clt.W_cross)


@pytest.mark.parametrize("skip", [False, True])
def test_sparse_and_dense_kernels_give_the_same_loss_and_gradients(skip: bool) -> None:
    results = {}
    x, y = _data(rows=256)
    for kernel in ("dense", "sparse"):
        clt = _clt(skip=skip, step_kernel=kernel)
        out = clt.loss(x, y, step=10)
        out.total.backward()
        results[kernel] = (out, {name: p.grad.clone() for name, p in clt.named_parameters() if p.grad is not None})
    (dense, dense_grads), (sparse, sparse_grads) = results["dense"], results["sparse"]
    assert 0 < float(dense.l0) < N * WIDTH
    assert torch.allclose(dense.total, sparse.total, rtol=1e-5)
    assert torch.equal(dense.l0, sparse.l0)
    assert sorted(dense_grads) == sorted(sparse_grads)
    for name, grad in dense_grads.items():
        assert torch.allclose(grad, sparse_grads[name], rtol=1e-4, atol=1e-6), name
    assert torch.equal(dense.output.fired_latents(), sparse.output.fired_latents())


def test_decoder_constraint_holds_for_each_latents_whole_write() -> None:
    clt = _clt()
    x, y = _data()
    clt.loss(x, y).total.backward()
    clt.project_decoder_grad_()
    for i in range(N):
        own, grad_own = clt.block(i).W_dec_FD, clt.block(i).W_dec_FD.grad
        assert grad_own is not None
        dot = (grad_own * own).sum(-1)
        if i < N - 1:
            cross = clt.W_cross[i]
            assert cross.grad is not None
            dot = dot + (cross.grad * cross).sum((0, 2))
        assert torch.allclose(dot, torch.zeros_like(dot), atol=1e-5)
    clt.normalize_decoder_()
    for i in range(N):
        norm = clt.decoder(i).flatten(1).norm(dim=-1)
        assert torch.allclose(norm, torch.ones_like(norm), atol=1e-6)


def test_folded_weights_on_raw_activations_equal_the_training_space_function() -> None:
    clt = _clt(skip=True).eval()
    scales_in, scales_out = [2.0, 0.5, 3.0], [1.5, 4.0, 0.25]
    folded = clt.fold_normalisation(scales_in, scales_out)
    x, _ = _data()
    x_raw = torch.cat([x_i * s for x_i, s in zip(clt.split_inputs(x), scales_in, strict=True)], dim=-1)
    with torch.no_grad():
        y_train = clt.split_outputs(clt(x).reconstruction)
        y_raw = folded.split_outputs(folded(x_raw).reconstruction)
    for j in range(N):
        assert torch.allclose(y_raw[j], y_train[j] * scales_out[j], rtol=1e-5, atol=1e-5)


def test_multi_layer_configs_name_what_they_do_not_support() -> None:
    with pytest.raises(ValueError, match="apply_pre_encoder_bias"):
        _config(apply_pre_encoder_bias=True)
    with pytest.raises(ValueError, match="architecture"):
        _config(architecture="topk", k=4)
    with pytest.raises(ValueError, match="input width"):
        _clt().loss(torch.zeros(4, D), torch.zeros(4, N * D))


def test_a_state_dict_with_flat_cross_decoders_loads_into_the_target_major_layout() -> None:
    clt = _clt()
    flat = {
        key: (value.transpose(0, 1).reshape(WIDTH, -1) if key.startswith("W_cross.") else value)
        for key, value in clt.state_dict().items()
    }
    assert flat["W_cross.0"].shape == ((WIDTH, (N - 1) * D))
    loaded = build_any_dictionary(_config())
    loaded.load_state_dict(flat)
    x, _ = _data()
    with torch.no_grad():
        assert torch.equal(loaded(x).reconstruction, clt(x).reconstruction)


def test_absorbed_dimension_gains_give_the_same_map_with_unit_writes() -> None:
    clt = _clt(skip=True).eval()
    generator = torch.Generator().manual_seed(7)
    gains_in = [0.1 + 2 * torch.rand(D, generator=generator) for _ in range(N)]
    gains_out = [0.1 + 2 * torch.rand(D, generator=generator) for _ in range(N)]
    x, _ = _data()
    x_weighted = torch.cat([x_i / g for x_i, g in zip(clt.split_inputs(x), gains_in, strict=True)], dim=-1)
    with torch.no_grad():
        before = clt.split_outputs(clt(x_weighted).reconstruction)
        clt.absorb_dimension_gains_(gains_in, gains_out)
        after = clt.split_outputs(clt(x).reconstruction)
    for j in range(N):
        torch.testing.assert_close(after[j], before[j] * gains_out[j], rtol=1e-4, atol=1e-5)
        norm = clt.decoder(j).flatten(1).norm(dim=-1)
        torch.testing.assert_close(norm, torch.ones_like(norm))

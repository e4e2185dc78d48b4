"""The sparse training kernel (saescope.sae.sparse) against the dense reference, and the kernel switch."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from saescope.sae import BatchTopK, DictionaryConfig, JumpReLU, SparseDictionary, build_dictionary
from saescope.sae import sparse as sparse_module

EPS = 0.05  # a wide kernel window, so that many pre-activations fall inside it and θ gradients are not vacuous


def _randomised(config: DictionaryConfig, batch: int, firing_quantile: float, seed: int) -> tuple[Any, ...]:
    """A dense-kernel dictionary with random biases/encoder noise, its sparse-kernel twin, inputs and targets."""
    gen = torch.Generator().manual_seed(seed)
    dense = build_dictionary(config.replace(step_kernel="dense"), generator=gen)
    dtype = config.torch_dtype
    x_BD = (torch.randn(batch, config.d_in, generator=gen) / config.d_in**0.5).to(dtype)
    y_BD = (torch.randn(batch, config.d_target, generator=gen) / config.d_target**0.5).to(dtype)
    with torch.no_grad():
        dense.W_enc_DF.add_(0.3 * torch.randn(dense.W_enc_DF.shape, generator=gen).to(dtype))
        dense.b_enc_F.copy_(0.05 * torch.randn(config.width, generator=gen))
        dense.b_dec_D.copy_(0.1 * torch.randn(config.d_target, generator=gen))
        if dense.W_skip_DD is not None:
            dense.W_skip_DD.copy_(0.1 * torch.randn(dense.W_skip_DD.shape, generator=gen))
        if isinstance(dense, JumpReLU):
            pre_BF = dense.pre_activations(x_BD).float()
            dense.set_threshold_(pre_BF.quantile(firing_quantile, dim=0).clamp_min(0.01))
    sparse = copy.deepcopy(dense)
    sparse.config = config.replace(step_kernel="sparse")
    return dense, sparse, x_BD, y_BD


def _loss_and_grads(sae: SparseDictionary, x_BD: torch.Tensor, y_BD: torch.Tensor | None) -> tuple[Any, ...]:
    out = sae.loss(x_BD, y_BD, step=3)
    out.total.backward()
    grads = {name: param.grad for name, param in sae.named_parameters()}
    return out, grads


def _assert_same_step(dense: SparseDictionary, sparse: SparseDictionary, x_BD: torch.Tensor, y_BD: Any) -> None:
    assert not dense.uses_sparse_step(x_BD)
    assert sparse.uses_sparse_step(x_BD)
    out_d, grads_d = _loss_and_grads(dense, x_BD, y_BD)
    out_s, grads_s = _loss_and_grads(sparse, x_BD, y_BD)
    assert out_s.output.codes.layout == torch.sparse_csr
    for field in ("total", "reconstruction", "sparsity", "high_frequency", "l0"):
        torch.testing.assert_close(getattr(out_s, field), getattr(out_d, field), msg=field)
    assert out_s.sparsity_coefficient == out_d.sparsity_coefficient
    torch.testing.assert_close(out_s.output.reconstruction, out_d.output.reconstruction)
    # both kernels fire exactly the same latents with exactly the same codes
    assert torch.equal(out_s.output.codes.to_dense(), out_d.output.codes.detach())
    kept_pre = out_s.output.pre_activations
    rows = torch.repeat_interleave(torch.arange(x_BD.shape[0]), kept_pre.crow_indices().diff())
    assert torch.equal(kept_pre.values(), out_d.output.pre_activations.detach()[rows, kept_pre.col_indices()])
    assert torch.equal(out_s.output.fired_latents(), out_d.output.fired_latents())
    assert set(grads_s) == set(grads_d)
    for name, grad_d in grads_d.items():
        grad_s = grads_s[name]
        assert grad_d is not None, name
        assert grad_s is not None, name
        assert grad_s.shape == grad_d.shape, name
        assert grad_d.abs().max() > 0, f"{name}: the reference gradient is zero, the check is vacuous"
        torch.testing.assert_close(grad_s, grad_d, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("parameterisation", ["log", "raw"])
@pytest.mark.parametrize(
    ("width", "batch", "firing_quantile"),
    [(64, 96, 0.5), (64, 7, 0.9), (256, 128, 0.98), (256, 33, 0.995)],
)
def test_jumprelu_sparse_step_equals_dense(
    parameterisation: str, width: int, batch: int, firing_quantile: float
) -> None:
    config = DictionaryConfig(
        d_in=16, width=width, bandwidth=EPS, l0_coefficient=0.01, lambda_warmup_steps=0,
        threshold_parameterisation=parameterisation,
    )  # fmt: skip
    dense, sparse, x_BD, _ = _randomised(config, batch, firing_quantile, seed=width + batch)
    _assert_same_step(dense, sparse, x_BD, None)


@pytest.mark.parametrize(
    "changes",
    [
        {"sparsity": "quadratic_l0", "target_l0": 4.0},
        {"high_freq_coefficient": 0.3, "high_freq_omega": 0.05},
        {"high_freq_coefficient": 0.3, "high_freq_omega": 0.05, "high_freq_above_omega_only": True},
        {"d_out": 12, "apply_pre_encoder_bias": False},  # transcoder
        {"d_out": 12, "apply_pre_encoder_bias": False, "skip": True},  # skip transcoder
        {"apply_pre_encoder_bias": False},
        {"dtype": "float64"},
    ],
    ids=["quadratic_l0", "high_freq", "high_freq_above_omega", "transcoder", "skip_transcoder", "no_pre_bias", "f64"],
)
def test_jumprelu_sparse_step_equals_dense_for_every_penalty_and_shape(changes: dict[str, Any]) -> None:
    config = DictionaryConfig(d_in=16, width=128, bandwidth=EPS, l0_coefficient=0.02, lambda_warmup_steps=0)
    config = config.replace(**changes)
    dense, sparse, x_BD, y_BD = _randomised(config, 64, 0.9, seed=1)
    _assert_same_step(dense, sparse, x_BD, y_BD if config.d_out != config.d_in else None)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
@pytest.mark.parametrize(("width", "batch", "k"), [(64, 50, 1), (64, 8, 20), (512, 64, 8)])
def test_topk_sparse_step_equals_dense(architecture: str, width: int, batch: int, k: int) -> None:
    config = DictionaryConfig(d_in=16, width=width, architecture=architecture, k=k)
    dense, sparse, x_BD, _ = _randomised(config, batch, 0.0, seed=k)
    _assert_same_step(dense, sparse, x_BD, None)
    if isinstance(dense, BatchTopK):
        assert isinstance(sparse, BatchTopK)
        assert dense.threshold_is_set
        torch.testing.assert_close(sparse.inference_threshold, dense.inference_threshold)


def test_input_gradient_matches_when_inputs_require_grad() -> None:
    config = DictionaryConfig(d_in=16, width=128, bandwidth=EPS, l0_coefficient=0.01, lambda_warmup_steps=0)
    dense, sparse, x_BD, _ = _randomised(config, 40, 0.8, seed=2)
    grads = []
    for sae in (dense, sparse):
        x = x_BD.clone().requires_grad_(True)
        sae.loss(x).total.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_sparse_step_with_no_active_latent_is_the_bias_only_reconstruction() -> None:
    config = DictionaryConfig(d_in=16, width=64, bandwidth=0.001, l0_coefficient=0.01, step_kernel="sparse")
    sae = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    assert isinstance(sae, JumpReLU)
    sae.set_threshold_(torch.full((64,), 100.0))
    x_BD = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    out = sae.loss(x_BD)
    out.total.backward()
    assert out.l0.item() == 0.0
    assert out.output.codes.values().numel() == 0
    torch.testing.assert_close(out.output.reconstruction, sae.b_dec_D.detach().expand(8, 16))
    assert sae.W_enc_DF.grad is not None
    assert sae.W_enc_DF.grad.abs().max() == 0


# --- the switch --------------------------------------------------------------------------------------


def _large_sparse_batch(firing_quantile: float) -> tuple[JumpReLU, torch.Tensor]:
    """A batch big enough for "auto" to consider the sparse kernel (B·F >= SPARSE_MIN_ELEMENTS)."""
    width = 1024
    batch = -(-sparse_module.SPARSE_MIN_ELEMENTS // width)
    config = DictionaryConfig(d_in=16, width=width, bandwidth=0.001)
    sae = build_dictionary(config, generator=torch.Generator().manual_seed(0))
    assert isinstance(sae, JumpReLU)
    x_BD = torch.randn(batch, 16, generator=torch.Generator().manual_seed(1)) / 4
    with torch.no_grad():
        sae.set_threshold_(sae.pre_activations(x_BD[:256]).quantile(firing_quantile, dim=0).clamp_min(1e-3))
    return sae, x_BD


def test_auto_takes_the_sparse_kernel_for_a_large_sparse_batch() -> None:
    sae, x_BD = _large_sparse_batch(firing_quantile=0.995)
    assert sae.uses_sparse_step(x_BD)
    assert sae.loss(x_BD).output.codes.layout == torch.sparse_csr


def test_auto_takes_the_dense_kernel_for_a_dense_code() -> None:
    sae, x_BD = _large_sparse_batch(firing_quantile=0.5)  # half the latents fire
    assert not sae.uses_sparse_step(x_BD)
    assert sae.loss(x_BD).output.codes.layout == torch.strided


def test_auto_takes_the_dense_kernel_for_a_small_batch() -> None:
    sae, x_BD = _large_sparse_batch(firing_quantile=0.995)
    assert not sae.uses_sparse_step(x_BD[:8])


def test_auto_uses_k_over_width_as_the_topk_density() -> None:
    width = 2048
    batch = -(-sparse_module.SPARSE_MIN_ELEMENTS // width)
    x_BD = torch.randn(batch, 16)
    few = build_dictionary(DictionaryConfig(d_in=16, width=width, architecture="topk", k=4))
    many = build_dictionary(DictionaryConfig(d_in=16, width=width, architecture="batchtopk", k=width // 2))
    assert few.uses_sparse_step(x_BD)
    assert not many.uses_sparse_step(x_BD)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"matryoshka_prefixes": (16, 64)}, "Matryoshka"),
        ({"architecture": "relu", "sparsity": None}, "architecture 'relu'"),
        ({"dtype": "bfloat16"}, "bfloat16"),
    ],
)
def test_unsupported_configs_take_the_dense_kernel_and_refuse_a_forced_sparse_one(
    changes: dict[str, Any], reason: str
) -> None:
    config = DictionaryConfig(d_in=16, width=64).replace(**changes)
    assert config.sparse_kernel_unsupported is not None
    assert reason in config.sparse_kernel_unsupported
    sae = build_dictionary(config.replace(step_kernel="auto"))
    assert not sae.uses_sparse_step(torch.randn(70_000, 16))
    with pytest.raises(ValueError, match="step_kernel"):
        config.replace(step_kernel="sparse")


def test_step_kernel_is_validated() -> None:
    with pytest.raises(ValueError, match="step_kernel must be one of"):
        DictionaryConfig(d_in=4, width=8, step_kernel="fast")


def test_batchtopk_in_eval_mode_with_a_threshold_takes_the_dense_kernel() -> None:
    sae = build_dictionary(DictionaryConfig(d_in=16, width=64, architecture="batchtopk", k=4, step_kernel="sparse"))
    x_BD = torch.randn(32, 16)
    assert sae.uses_sparse_step(x_BD)
    sae.loss(x_BD)  # training mode: sets the inference threshold
    sae.eval()
    assert not sae.uses_sparse_step(x_BD)


# --- training either way ------------------------------------------------------------------------------


def _train(kernel: str, architecture: str, steps: int) -> tuple[float, float]:
    """Train on data with a sparse ground truth; the last 20 steps' mean L0 and FVU."""
    gen = torch.Generator().manual_seed(0)
    d_in, width, n_true = 24, 96, 64
    truth_TD = torch.nn.functional.normalize(torch.randn(n_true, d_in, generator=gen), dim=-1)
    extra: dict[str, Any] = {"k": 6} if architecture == "topk" else {"l0_coefficient": 2e-3, "bandwidth": 0.01}
    config = DictionaryConfig(
        d_in=d_in, width=width, architecture=architecture, step_kernel=kernel, lambda_warmup_steps=50,
        threshold_parameterisation="raw", **extra,
    )  # fmt: skip
    sae = build_dictionary(config, generator=gen)
    if isinstance(sae, JumpReLU):
        sae.set_threshold_(torch.full((width,), 0.05))
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3, betas=(0.0, 0.999))
    l0s, fvus = [], []
    for step in range(steps):
        active_BT = torch.rand(256, n_true, generator=gen) < 0.08
        x_BD = (active_BT * torch.rand(256, n_true, generator=gen)) @ truth_TD
        x_BD = x_BD + 0.01 * torch.randn(x_BD.shape, generator=gen)
        out = sae.loss(x_BD, step=step)
        out.total.backward()
        sae.project_decoder_grad_()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        if step >= steps - 20:
            residual = (x_BD - out.output.reconstruction.detach()).square().sum()
            l0s.append(out.l0.item())
            fvus.append((residual / (x_BD - x_BD.mean(0)).square().sum()).item())
    return sum(l0s) / len(l0s), sum(fvus) / len(fvus)


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_training_either_way_reaches_the_same_l0_and_fvu(architecture: str) -> None:
    l0_dense, fvu_dense = _train("dense", architecture, steps=200)
    l0_sparse, fvu_sparse = _train("sparse", architecture, steps=200)
    assert fvu_dense < 0.5  # it learned something, so the comparison means something
    assert l0_sparse == pytest.approx(l0_dense, rel=0.05)
    assert fvu_sparse == pytest.approx(fvu_dense, rel=0.05, abs=0.005)


def test_fired_latents_agree_for_dense_and_sparse_codes() -> None:
    config = DictionaryConfig(d_in=16, width=64, bandwidth=EPS)
    dense, sparse, x_BD, _ = _randomised(config, 32, 0.9, seed=3)
    for sae in (dense, sparse):
        assert isinstance(sae, JumpReLU)
        sae.set_threshold_(torch.where(torch.arange(64) < 32, sae.threshold_F.detach(), 100.0))  # half never fire
    fired_dense = dense.loss(x_BD).output.fired_latents()
    fired_sparse = sparse.loss(x_BD).output.fired_latents()
    assert 0 < int(fired_dense.sum()) < 64
    assert torch.equal(fired_sparse, fired_dense)


def test_extra_decoders_match_dense_products_and_an_unused_one_gets_a_zero_gradient() -> None:
    """The kernel's extra decoder tables (a CLT block's cross decoders): writes f @ W_extra[k], and gradients
    as autograd through dense codes gives them, with write 1 left out of the loss."""
    config = DictionaryConfig(
        d_in=16, width=64, apply_pre_encoder_bias=False, threshold_parameterisation="raw", bandwidth=EPS
    )
    dense, _, x_BD, _ = _randomised(config, batch=96, firing_quantile=0.8, seed=5)
    assert isinstance(dense, JumpReLU)
    W_extra_KFD = (0.2 * torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(6))).requires_grad_(True)
    targets = torch.randn(3, 96, 16, generator=torch.Generator().manual_seed(7))

    def loss(writes: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return (writes[0] - targets[0]).square().sum() + (writes[2] - targets[2]).square().sum()

    rule = dense.sparse_selection_rule()
    no_bias = torch.zeros(16)
    result = sparse_module.sparse_step(
        x_BD, dense.W_enc_DF, dense.b_enc_F, dense.W_dec_FD, no_bias, rule,
        subtract_decoder_bias=False, W_extra_KFD=W_extra_KFD,
    )  # fmt: skip
    loss(result.extra_reconstructions).backward()
    sparse_grads = (W_extra_KFD.grad.clone(), dense.W_enc_DF.grad.clone())  # type: ignore[union-attr]
    W_extra_KFD.grad, dense.W_enc_DF.grad = None, None

    f_BF = dense.activation(dense.pre_activations(x_BD))
    dense_writes = tuple(f_BF @ W for W in W_extra_KFD)
    for sparse_write, dense_write in zip(result.extra_reconstructions, dense_writes, strict=True):
        torch.testing.assert_close(sparse_write, dense_write)
    loss(dense_writes).backward()
    assert W_extra_KFD.grad is not None
    assert dense.W_enc_DF.grad is not None
    torch.testing.assert_close(sparse_grads[0], W_extra_KFD.grad)
    torch.testing.assert_close(sparse_grads[1], dense.W_enc_DF.grad)
    assert not sparse_grads[0][1].any()
    assert sparse_grads[0][0].any()

"""Sparse-aware training step: one dense encoder product, everything else on the active codes (method §1.4).

With L0 ≪ width almost all of a dense training step multiplies zeros. Only the encoder product
``π = x_in @ W_enc`` (B×d by d×F) has to be dense; the decoder forward, the decoder weight gradient, the
encoder weight and bias gradients and the threshold gradient involve only the *kept* entries of π:

* JumpReLU: the active entries (π > θ) and the few entries inside the threshold's kernel window
  |π − θ| < ε/2, which the θ pseudo-gradients need (method §1.4);
* TopK / BatchTopK: the selected entries.

So a step costs one dense product plus O(B·L0·d) work, instead of five or six dense products. The
functions here compute exactly what the dense reference (autograd through the modules' own forward)
computes, up to float32 summation order; ``tests/sae/test_sae_sparse_step.py`` checks every output and
every gradient against it.

How each part runs (chosen by timing on a 2-core CPU at B=4096, d=640, F=16384, L0≈50):

* the encoder product writes into a scratch buffer that is reused from step to step (a fresh B×F
  allocation costs more in page faults than the comparisons that read it); it stays allocated, one per
  thread, dtype and device, until :func:`release_scratch`;
* one comparison against a lower bound that covers every kept entry, then ``torch.where``: row-major
  (token, latent) pairs; π, the firing mask and the kernel window are then computed on those entries
  with exactly the reference's float operations, so both kernels fire the same latents;
* decoder forward: ``embedding_bag`` over each token's kept latents weighted by their codes;
* ∂L/∂f at the kept entries: a sampled dense-dense product (``torch.sparse.sampled_addmm``);
* decoder and encoder weight gradients: ``embedding_bag`` over each latent's tokens (a stable argsort of
  the latent indices gives that order);
* θ gradient: the window entries' JumpReLU pseudo-derivative plus the L0 step's, whose upstream gradient
  is the same for every token (every sparsity penalty is a function of batch firing frequencies), so it
  needs only each latent's window count.

Everything is device-agnostic torch (these ops exist on CUDA too); the sparse kernel is for float32 and
float64 parameters.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F_nn
from torch import Tensor

#: Values of ``DictionaryConfig.step_kernel``.
STEP_KERNELS: tuple[str, ...] = ("auto", "sparse", "dense")

#: Parameter dtypes the sparse kernel is tested for; other dtypes (bf16/fp16, which SAE training does not
#: use: method §2.1 trains in float32) always take the dense step.
SPARSE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)

#: "auto" takes the sparse step when the fraction of (token, latent) entries that fire is at most this: a little
#: below the density where the sparse step stops paying, which ``benchmarks/train_step.py --crossover`` measures
#: (docs/results/training-step.md). Both kernels scale linearly in the width, so the crossover does not depend
#: on it.
SPARSE_MAX_DENSITY = 0.25

#: "auto" takes the dense step for batches with fewer (token, latent) entries than this: on batches that small a
#: step is quick either way and the sparse step's extra small operations do not pay (measured as above).
SPARSE_MIN_ELEMENTS = 1 << 15

#: Rows of the batch whose pre-activations "auto" computes to estimate a JumpReLU's density before
#: choosing (a pure function of the batch and the parameters, so a resumed run chooses as the original).
DENSITY_PROBE_ROWS = 32


class SelectionRule(NamedTuple):
    """Which entries of π a dictionary keeps, as the sparse kernel needs to know it."""

    kind: str
    """``"jumprelu"`` (π > θ, plus the kernel window), ``"topk"`` (per token) or ``"batchtopk"`` (per batch)."""
    threshold_F: Tensor | None = None
    """θ (F,), float32, differentiable (JumpReLU only)."""
    bandwidth: float = 0.0
    """Kernel bandwidth ε (JumpReLU only)."""
    k: int = 0
    """Active latents per token (TopK) or mean per token over the batch (BatchTopK)."""


class Selection(NamedTuple):
    """The entries of π the sparse kernel keeps, in row-major (token, then latent) order."""

    rows_N: Tensor
    """Token index of each entry (int64, non-decreasing)."""
    latents_N: Tensor
    """Latent index of each entry (int64)."""
    pre_N: Tensor
    """π at each entry (parameter dtype), bitwise what the dense reference computes."""
    active_N: Tensor
    """Whether the entry's code is non-zero (bool): π > θ (JumpReLU), π > 0 (TopK/BatchTopK)."""
    window_N: Tensor | None
    """Whether the entry lies in the JumpReLU kernel window |π − θ| < ε/2 (bool); None for TopK."""


class SparseStepOutput(NamedTuple):
    """What the sparse kernel returns for one batch."""

    reconstruction: Tensor
    """``f @ W_dec + b_dec`` (B, d_out), differentiable (a skip path is added by the caller)."""
    extra_reconstructions: tuple[Tensor, ...]
    """``f @ W_extra[k]`` (B, d_out) for each extra decoder k (no bias), differentiable; empty without them."""
    frequency_1F: Tensor
    """Batch firing frequency f̂_i (1, F), float32; differentiable w.r.t. θ through the L0 step's
    pseudo-derivative (JumpReLU), like ``heaviside_step(π, θ, ε).mean(0, keepdim=True)``."""
    pre_activations: Tensor
    """π at the kept entries only, as a sparse CSR (B, F) tensor (detached)."""
    codes: Tensor
    """The non-zero codes f as a sparse CSR (B, F) tensor (detached)."""
    l0: Tensor
    """Mean number of non-zero codes per token (scalar, float32, detached)."""


# --------------------------------------------------------------------------------------------------
# Scratch buffers
# --------------------------------------------------------------------------------------------------


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.dtype, torch.device], Tensor] = {}


_SCRATCH = _Scratch()


def _scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reusable uninitialised buffer (one per dtype, device and thread; grown on demand).

    Only valid until the next call with the same dtype and device: callers copy out what they keep.
    """
    numel = 1
    for size in shape:
        numel *= size
    key = (dtype, device)
    buffer = _SCRATCH.buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        _SCRATCH.buffers.pop(key, None)  # free the old one before allocating the larger one
        buffer = torch.empty(numel, dtype=dtype, device=device)
        _SCRATCH.buffers[key] = buffer
    return buffer[:numel].view(shape)


def release_scratch() -> None:
    """Free the sparse kernel's scratch buffers of this thread (they are reallocated when needed)."""
    _SCRATCH.buffers.clear()


# --------------------------------------------------------------------------------------------------
# Selection of the kept entries
# --------------------------------------------------------------------------------------------------


def _row_pointers(rows_N: Tensor, n_rows: int) -> Tensor:
    """CSR row pointers (n_rows + 1,) of row-sorted entries: where each row's entries start."""
    return torch.searchsorted(rows_N, torch.arange(n_rows + 1, dtype=rows_N.dtype, device=rows_N.device))


def _select_jumprelu(mm_BF: Tensor, b_enc_F: Tensor, theta_F: Tensor, bandwidth: float) -> Selection:
    """Entries with π > θ (active) or inside the kernel window, from ``mm = x_in @ W_enc`` (π = mm + b_enc)."""
    with torch.no_grad():
        # A lower bound on mm below every kept entry: the window starts at θ − ε/2; the slack covers the
        # rounding of (mm + b_enc − θ)/ε (a few ulps of |θ| + |b_enc|), so no kept entry is missed. The
        # few entries between this bound and the window are dropped below by the reference's exact test.
        b_F = b_enc_F.to(theta_F.dtype)
        slack_F = 1e-5 * (theta_F.abs() + b_F.abs() + bandwidth)
        lower_F = (theta_F - b_F - 0.5 * bandwidth - slack_F).to(mm_BF.dtype)
        candidate_BF = _scratch(tuple(mm_BF.shape), torch.bool, mm_BF.device)
        torch.gt(mm_BF, lower_F, out=candidate_BF)
        rows_N, latents_N = torch.where(candidate_BF)
        # exactly the reference's float operations (SparseDictionary.pre_activations, JumpReLUFunction)
        pre_N = mm_BF.view(-1)[rows_N * mm_BF.shape[1] + latents_N] + b_enc_F[latents_N]
        theta_N = theta_F[latents_N]
        active_N = pre_N > theta_N
        u_N = (pre_N.float() - theta_N) / bandwidth
        window_N = (u_N > -0.5) & (u_N < 0.5)
        keep_N = active_N | window_N
        if not bool(keep_N.all()):
            keep_K = torch.nonzero(keep_N).squeeze(1)
            rows_N, latents_N, pre_N = rows_N[keep_K], latents_N[keep_K], pre_N[keep_K]
            active_N, window_N = active_N[keep_K], window_N[keep_K]
    return Selection(rows_N, latents_N, pre_N, active_N, window_N)


def _select_topk(mm_BF: Tensor, b_enc_F: Tensor, k: int, per_batch: bool) -> Selection:
    """The ``k`` largest π of each token (TopK), or the ``k·B`` largest of the batch (BatchTopK)."""
    with torch.no_grad():
        n_rows, width = mm_BF.shape
        pre_BF = mm_BF.add_(b_enc_F)  # in place in the scratch buffer: π, bitwise as the reference
        if per_batch:
            n_keep = min(k * n_rows, pre_BF.numel())
            flat_N = pre_BF.view(1, -1).topk(n_keep, dim=-1, sorted=False).indices.view(-1).sort().values
            rows_N, latents_N = flat_N // width, flat_N % width
            pre_N = pre_BF.view(-1)[flat_N]
        else:
            pre_BK, latents_BK = pre_BF.topk(k, dim=-1, sorted=False)
            rows_N = torch.arange(n_rows, device=mm_BF.device).repeat_interleave(k)
            latents_N, pre_N = latents_BK.reshape(-1), pre_BK.reshape(-1)
    return Selection(rows_N, latents_N, pre_N, pre_N > 0, None)


def select_entries(mm_BF: Tensor, b_enc_F: Tensor, rule: SelectionRule, theta_F: Tensor | None) -> Selection:
    """The entries of π = ``mm_BF`` + ``b_enc_F`` that ``rule`` keeps (``mm_BF`` may be overwritten)."""
    if rule.kind == "jumprelu":
        assert theta_F is not None
        return _select_jumprelu(mm_BF, b_enc_F, theta_F.detach(), rule.bandwidth)
    if rule.kind in ("topk", "batchtopk"):
        return _select_topk(mm_BF, b_enc_F, rule.k, per_batch=rule.kind == "batchtopk")
    raise ValueError(f"unknown selection rule {rule.kind!r}")


def estimate_density(x_in_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, rule: SelectionRule) -> float:
    """Fraction of (token, latent) entries ``rule`` keeps: exact for TopK/BatchTopK, for JumpReLU from
    the first :data:`DENSITY_PROBE_ROWS` tokens (about 1% of an encoder product at batch 4096)."""
    if rule.kind in ("topk", "batchtopk"):
        return min(1.0, rule.k / W_enc_DF.shape[1])
    assert rule.threshold_F is not None
    with torch.no_grad():
        probe_PF = x_in_BD[:DENSITY_PROBE_ROWS].to(W_enc_DF.dtype) @ W_enc_DF + b_enc_F
        return float((probe_PF > rule.threshold_F).float().mean())


# --------------------------------------------------------------------------------------------------
# The autograd function
# --------------------------------------------------------------------------------------------------


def _csr(row_pointers: Tensor, latents_N: Tensor, values_N: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR tensor, without the once-per-process "CSR support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(row_pointers, latents_N, values_N, shape, check_invariants=False)


def _sampled_products(grad_BD: Tensor, W_FD: Tensor, row_pointers: Tensor, latents_N: Tensor) -> Tensor:
    """``(grad @ W.T)[b, i]`` at each (b, i) entry of the CSR pattern: (N,)."""
    n_rows, width = grad_BD.shape[0], W_FD.shape[0]
    pattern = _csr(row_pointers, latents_N, grad_BD.new_zeros(latents_N.shape[0]), (n_rows, width))
    sampled: Tensor = torch.sparse.sampled_addmm(pattern, grad_BD, W_FD.t(), beta=0.0)
    return sampled.values()


def _bags(indices_N: Tensor, table_RD: Tensor, offsets: Tensor, weights_N: Tensor) -> Tensor:
    """``out[j] = Σ_{n in bag j} weights[n] · table[indices[n]]``: one bag per offset."""
    return F_nn.embedding_bag(indices_N, table_RD, offsets, mode="sum", per_sample_weights=weights_N)


class SparseStepFunction(torch.autograd.Function):
    """Encoder, sparsifying selection and decoder(s) of a sparse dictionary, with a sparse backward.

    Inputs: ``x_BD``, ``W_enc_DF``, ``b_enc_F``, ``W_dec_FD``, ``b_dec_D``, ``theta_F`` (or None),
    ``W_extra_KFD`` (or None: K more decoders of the same codes, a multi-layer dictionary's cross decoders),
    ``rule``, ``subtract_decoder_bias``. Outputs: the reconstruction ``f @ W_dec + b_dec`` (B, d_out),
    the firing frequency (1, F), the selection (rows, latents, π, active; not differentiable) and the K
    extra writes ``f @ W_extra[k]`` (B, d_out).

    Each decoder is a contiguous (F, d_out) table for ``embedding_bag``. Gathering one (F, K·d_out) table
    at once was twice as slow on this project's CPU once it no longer fit the cache (F 1,024, 40 latents
    per token, 1,024 tokens: 104 ms for one 1,024 × 11,520 table, 53 ms for 18 tables of 1,024 × 640).

    Gradients are the dense reference's: ∂L/∂π = ∂L/∂f at active entries (no STE term), the JumpReLU
    θ pseudo-derivative −(θ/ε)·K((π − θ)/ε)·∂L/∂f summed over tokens, and the L0 step's
    −(1/ε)·K((π − θ)/ε)·∂L/∂f̂ / B (method §1.4).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x_BD: Tensor,
        W_enc_DF: Tensor,
        b_enc_F: Tensor,
        W_dec_FD: Tensor,
        b_dec_D: Tensor,
        theta_F: Tensor | None,
        W_extra_KFD: Tensor | None,
        rule: SelectionRule,
        subtract_decoder_bias: bool,
    ) -> tuple[Tensor, ...]:
        n_rows, width = x_BD.shape[0], W_enc_DF.shape[1]
        x_in_BD = x_BD - b_dec_D if subtract_decoder_bias else x_BD
        mm_BF = _scratch((n_rows, width), W_enc_DF.dtype, W_enc_DF.device)
        torch.matmul(x_in_BD, W_enc_DF, out=mm_BF)
        rule = rule._replace(threshold_F=None)  # θ travels as an input (for its gradient), not in ctx.rule
        selection = select_entries(mm_BF, b_enc_F, rule, theta_F)
        rows_N, latents_N, pre_N, active_N, window_N = selection
        row_pointers = _row_pointers(rows_N, n_rows)
        f_N = pre_N * active_N.to(pre_N.dtype)
        y_hat_BD = _bags(latents_N, W_dec_FD, row_pointers[:-1], f_N) + b_dec_D
        extras = () if W_extra_KFD is None else tuple(_bags(latents_N, W, row_pointers[:-1], f_N) for W in W_extra_KFD)
        counts_F = torch.bincount(latents_N[active_N], minlength=width)
        frequency_1F = (counts_F.to(torch.float32) / n_rows).unsqueeze(0)

        ctx.save_for_backward(
            x_in_BD, W_enc_DF, W_dec_FD, theta_F, W_extra_KFD, rows_N, latents_N, row_pointers, f_N, active_N
        )
        ctx.window_N = window_N
        ctx.rule = rule
        ctx.subtract_decoder_bias = subtract_decoder_bias
        ctx.mark_non_differentiable(rows_N, latents_N, pre_N, active_N)
        return (y_hat_BD, frequency_1F, rows_N, latents_N, pre_N, active_N, *extras)

    @staticmethod
    def backward(ctx: Any, grad_y_BD: Tensor | None, grad_frequency_1F: Tensor | None, *grads: Any) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        x_in_BD, W_enc_DF, W_dec_FD, theta_F, W_extra_KFD, rows_N, latents_N, row_pointers, f_N, active_N = saved
        window_N: Tensor | None = ctx.window_N
        rule: SelectionRule = ctx.rule
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec, need_theta, need_W_extra = ctx.needs_input_grad[:7]
        n_rows, width = x_in_BD.shape[0], W_enc_DF.shape[1]
        if grad_y_BD is None:
            grad_y_BD = x_in_BD.new_zeros(n_rows, W_dec_FD.shape[1])
        grad_x = grad_W_enc = grad_b_enc = grad_W_dec = grad_b_dec = grad_theta = grad_W_extra = None
        # the extra writes' gradients (after the 4 non-differentiable selection outputs); None where unused
        grad_extras = [None if g is None else g.contiguous() for g in grads[4:]]

        grad_f_N = _sampled_products(grad_y_BD, W_dec_FD, row_pointers, latents_N)  # ∂L/∂f at kept entries
        for k, grad_extra_BD in enumerate(grad_extras):
            if grad_extra_BD is not None:
                grad_f_N = grad_f_N + _sampled_products(grad_extra_BD, W_extra_KFD[k], row_pointers, latents_N)
        grad_pre_N = grad_f_N * active_N.to(grad_f_N.dtype)  # ∂f/∂π = H(π − θ), no STE term (method §1.4)

        if need_W_enc or need_W_dec or need_W_extra:
            # per-latent order for the weight gradients (one bag of tokens per latent)
            order_N = torch.argsort(latents_N, stable=True)
            tokens_by_latent_N = rows_N[order_N]
            latent_offsets_F = _row_pointers(latents_N[order_N], width)[:-1]
            f_by_latent_N = f_N[order_N]
            if need_W_enc:  # xᵀ @ ∂L/∂π, computed as its (F, D) transpose
                grad_W_enc = _bags(tokens_by_latent_N, x_in_BD, latent_offsets_F, grad_pre_N[order_N]).t()
            if need_W_dec:  # fᵀ @ ∂L/∂ŷ
                grad_W_dec = _bags(tokens_by_latent_N, grad_y_BD, latent_offsets_F, f_by_latent_N)
            if need_W_extra:  # fᵀ @ ∂L/∂(extra write k), zero for an unused write
                grad_W_extra = torch.zeros_like(W_extra_KFD)
                for k, grad_extra_BD in enumerate(grad_extras):
                    if grad_extra_BD is not None:
                        grad_W_extra[k] = _bags(tokens_by_latent_N, grad_extra_BD, latent_offsets_F, f_by_latent_N)
        subtract = ctx.subtract_decoder_bias
        if need_b_enc or (need_b_dec and subtract):
            grad_b_enc = torch.zeros(width, dtype=grad_pre_N.dtype, device=grad_pre_N.device)
            grad_b_enc.index_add_(0, latents_N, grad_pre_N)
        if need_b_dec:
            grad_b_dec = grad_y_BD.sum(0)
            if subtract:  # x_in = x − b_dec: Σ_b ∂L/∂x_in = W_enc @ Σ_b ∂L/∂π
                assert grad_b_enc is not None
                grad_b_dec = grad_b_dec - W_enc_DF @ grad_b_enc
        if need_x:
            W_enc_FD = W_enc_DF.t().contiguous()
            grad_x = _bags(latents_N, W_enc_FD, row_pointers[:-1], grad_pre_N)
        if need_theta and rule.kind == "jumprelu":
            assert window_N is not None
            assert theta_F is not None
            grad_theta = _threshold_grad(
                theta_F, latents_N, window_N, grad_f_N, grad_frequency_1F, rule.bandwidth, n_rows
            )
        grad_b_enc = grad_b_enc if need_b_enc else None
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, grad_theta, grad_W_extra, None, None


def _threshold_grad(
    theta_F: Tensor,
    latents_N: Tensor,
    window_N: Tensor,
    grad_f_N: Tensor,
    grad_frequency_1F: Tensor | None,
    bandwidth: float,
    n_rows: int,
) -> Tensor:
    """θ gradient from the window entries: JumpReLU's −(θ/ε)·∂L/∂f plus the L0 step's −(1/ε)·∂L/∂f̂ / B."""
    window_W = torch.nonzero(window_N).squeeze(1)
    window_latents_W = latents_N[window_W]
    weight_W = -(theta_F[window_latents_W] / bandwidth) * grad_f_N[window_W].float()
    grad_theta_F = torch.zeros_like(theta_F).index_add_(0, window_latents_W, weight_W)
    if grad_frequency_1F is not None:
        window_count_F = torch.bincount(window_latents_W, minlength=theta_F.shape[0]).to(theta_F.dtype)
        grad_theta_F += grad_frequency_1F.reshape(-1).float() * (-1.0 / (bandwidth * n_rows)) * window_count_F
    return grad_theta_F


def sparse_step(
    x_BD: Tensor,
    W_enc_DF: Tensor,
    b_enc_F: Tensor,
    W_dec_FD: Tensor,
    b_dec_D: Tensor,
    rule: SelectionRule,
    *,
    subtract_decoder_bias: bool,
    W_extra_KFD: Tensor | None = None,
) -> SparseStepOutput:
    """Run the sparse kernel on ``x_BD`` (B, d_in) with the given parameters and selection rule;
    ``W_extra_KFD`` (K, F, d_out) are K more decoders of the same codes (a multi-layer block's cross decoders)."""
    x_BD = x_BD.to(W_enc_DF.dtype)
    n_rows, width = x_BD.shape[0], W_enc_DF.shape[1]
    outputs = SparseStepFunction.apply(
        x_BD, W_enc_DF, b_enc_F, W_dec_FD, b_dec_D, rule.threshold_F, W_extra_KFD, rule, subtract_decoder_bias
    )  # type: ignore[no-untyped-call]
    y_hat_BD, frequency_1F, rows_N, latents_N, pre_N, active_N, *extras = outputs
    row_pointers = _row_pointers(rows_N, n_rows)
    pre_activations = _csr(row_pointers, latents_N, pre_N, (n_rows, width))
    active_A = torch.nonzero(active_N).squeeze(1)
    codes = _csr(_row_pointers(rows_N[active_A], n_rows), latents_N[active_A], pre_N[active_A], (n_rows, width))
    l0 = torch.tensor(active_A.shape[0] / n_rows, dtype=torch.float32, device=x_BD.device)
    return SparseStepOutput(y_hat_BD, tuple(extras), frequency_1F, pre_activations, codes, l0)

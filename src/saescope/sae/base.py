"""Shared base of every sparse dictionary: SAEs, transcoders and skip transcoders (method §1, §2, §7.4).

A sparse dictionary reads ``x`` (width ``d_in``) and writes ``ŷ`` (width ``d_out``)::

    π = (x − b_dec) @ W_enc + b_enc      # "− b_dec" only with the pre-encoder bias (SAEs, method §1.2)
    f = σ(π)                             # architecture-specific sparsifying nonlinearity
    ŷ = f @ W_dec + b_dec [+ x @ W_skip] # skip path only for skip transcoders (method §7.4)

Shape letters: ``B`` batch, ``D`` model width (``d_in`` for ``x``, ``d_out`` for ``y``), ``F`` latents (M).
Subclasses implement :meth:`SparseDictionary.activation` (and optionally
:meth:`SparseDictionary.sparsity_terms`); everything else is shared.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saescope.sae.config import DictionaryConfig
from saescope.sae.matryoshka import matryoshka_reconstruction_loss, reconstruction_loss
from saescope.sae.sparse import (
    SPARSE_MAX_DENSITY,
    SPARSE_MIN_ELEMENTS,
    SelectionRule,
    estimate_density,
    sparse_step,
)


class ForwardOutput(NamedTuple):
    """What one forward pass produces.

    From :meth:`SparseDictionary.forward` and the dense training step every field is a dense tensor. In
    the :class:`LossOutput` of the sparse training step (``saescope.sae.sparse``) ``pre_activations`` and
    ``codes`` are detached sparse CSR tensors holding only the entries that step kept.
    """

    pre_activations: Tensor
    """Encoder pre-activations π (B, F), before the sparsifying nonlinearity (sparse step: only the kept
    entries, i.e. the active ones plus, for JumpReLU, those inside the threshold's kernel window)."""
    codes: Tensor
    """Sparse codes f (B, F): the feature activations (sparse step: a CSR tensor of the non-zero codes)."""
    reconstruction: Tensor
    """Reconstruction ŷ (B, d_out) of the target (of ``x`` itself for an SAE)."""

    def fired_latents(self) -> Tensor:
        """Which latents have a non-zero code in this batch: (F,) bool, from dense or sparse CSR codes."""
        return self.firing_counts() > 0

    def firing_counts(self) -> Tensor:
        """How many tokens of this batch each latent fires on: (F,) int64, from dense or sparse CSR codes."""
        codes = self.codes
        if codes.layout == torch.sparse_csr:
            return torch.bincount(codes.col_indices()[codes.values() != 0], minlength=codes.shape[-1])
        return (codes != 0).reshape(-1, codes.shape[-1]).sum(dim=0)


class SparsityTerms(NamedTuple):
    """The architecture-specific penalty part of the loss."""

    penalty: Tensor
    """Main sparsity penalty (λ_t·L0, quadratic target-L0, or weighted L1); scalar, float32."""
    high_frequency: Tensor
    """High-frequency penalty (method §7.2); scalar, zero when switched off."""
    coefficient: float
    """The warmed-up coefficient λ_t used at this step."""


class LossOutput(NamedTuple):
    """Training loss and its parts (all scalars except ``output``)."""

    total: Tensor
    """``reconstruction + sparsity + high_frequency``: what to backpropagate."""
    reconstruction: Tensor
    """Σ_d (y − ŷ)² averaged over tokens; with Matryoshka prefixes, the sum of that over prefixes."""
    sparsity: Tensor
    """Sparsity penalty, already multiplied by the warmed-up coefficient."""
    high_frequency: Tensor
    """High-frequency penalty (zero when off)."""
    l0: Tensor
    """Mean number of non-zero codes per token (detached, for logging)."""
    sparsity_coefficient: float
    """λ_t: the sparsity coefficient after warm-up at this step."""
    output: ForwardOutput
    """The forward pass the loss was computed from."""


def unit_rows_he_uniform(rows: int, cols: int, generator: torch.Generator | None = None) -> Tensor:
    """A (rows, cols) float32 matrix drawn He-uniform, then each row rescaled to unit L2 norm.

    method §2.1: decoder init. The He bound ``sqrt(6 / rows)`` (fan-in of ``f @ W_dec`` is the number of
    latents) does not matter after the row normalisation; only the uniform shape of the draw does.
    """
    bound = math.sqrt(6.0 / rows)
    W = (torch.rand(rows, cols, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * bound
    unit: Tensor = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit


class SparseDictionary(nn.Module, ABC):
    """Base class: parameters, encode/decode/forward/loss, decoder constraints and folding.

    Parameters (float ``config.dtype``): ``W_enc_DF`` (d_in, M), ``b_enc_F`` (M,), ``W_dec_FD`` (M, d_out),
    ``b_dec_D`` (d_out,), and ``W_skip_DD`` (d_in, d_out) when ``config.skip`` else ``None``.

    Initialisation (method §2.1): ``W_dec`` He-uniform with unit-norm rows; biases and ``W_skip`` zero;
    ``W_enc = W_decᵀ`` for SAEs (pre-encoder bias on, hence d_in == d_out). For transcoders GS does not
    give the init (method §2.6, §9 item 7): we draw ``W_enc`` independently in the same way (each latent's
    encoder vector a unit-norm He-uniform draw), since tying ``W_decᵀ`` across two different spaces has
    no meaning.
    """

    W_skip_DD: nn.Parameter | None

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        d_in, d_out, width, dtype = config.d_in, config.d_target, config.width, config.torch_dtype
        self.W_enc_DF = nn.Parameter(torch.empty(d_in, width, dtype=dtype))
        self.b_enc_F = nn.Parameter(torch.zeros(width, dtype=dtype))
        self.W_dec_FD = nn.Parameter(torch.empty(width, d_out, dtype=dtype))
        self.b_dec_D = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        if config.skip:
            self.W_skip_DD = nn.Parameter(torch.zeros(d_in, d_out, dtype=dtype))
        else:
            self.register_parameter("W_skip_DD", None)
        self._init_weights(generator)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        W_dec_FD = unit_rows_he_uniform(self.config.width, self.config.d_target, generator)
        self.W_dec_FD.copy_(W_dec_FD)
        if self.config.apply_pre_encoder_bias:  # SAE: W_enc = W_decᵀ (method §2.1)
            self.W_enc_DF.copy_(W_dec_FD.T)
        else:  # transcoder: independent draw (see class docstring)
            self.W_enc_DF.copy_(unit_rows_he_uniform(self.config.width, self.config.d_in, generator).T)

    # --- the three stages ---------------------------------------------------------------------------
    def pre_activations(self, x_BD: Tensor) -> Tensor:
        """π = (x − b_dec) @ W_enc + b_enc (the ``− b_dec`` only with the pre-encoder bias): (B, F)."""
        return self.encoder_input(x_BD) @ self.W_enc_DF + self.b_enc_F

    @abstractmethod
    def activation(self, pre_BF: Tensor) -> Tensor:
        """The sparsifying nonlinearity σ(π) → f, shape (B, F)."""

    def encode(self, x_BD: Tensor) -> Tensor:
        """Sparse codes f (B, F) of inputs x (B, d_in)."""
        return self.activation(self.pre_activations(x_BD))

    def decode(self, f_BF: Tensor, x_BD: Tensor | None = None) -> Tensor:
        """ŷ = f @ W_dec + b_dec (+ x @ W_skip): (B, d_out). ``x_BD`` is required iff the skip path exists."""
        y_hat_BD = f_BF.to(self.W_dec_FD.dtype) @ self.W_dec_FD + self.b_dec_D
        return y_hat_BD + self._skip_term(x_BD)

    def _skip_term(self, x_BD: Tensor | None) -> Tensor | int:
        if self.W_skip_DD is None:
            return 0
        if x_BD is None:
            raise ValueError("decode() needs x_BD: this dictionary has a skip connection (config.skip)")
        return x_BD.to(self.W_skip_DD.dtype) @ self.W_skip_DD

    def forward(self, x_BD: Tensor) -> ForwardOutput:
        """Encode then decode ``x_BD`` (B, d_in)."""
        pre_BF = self.pre_activations(x_BD)
        f_BF = self.activation(pre_BF)
        return ForwardOutput(pre_BF, f_BF, self.decode(f_BF, x_BD))

    # --- loss ---------------------------------------------------------------------------------------
    def sparsity_terms(self, output: ForwardOutput, step: int, coefficient_scale: float = 1.0) -> SparsityTerms:
        """Architecture-specific penalties at training step ``step``; default: none (TopK/BatchTopK).

        ``coefficient_scale`` multiplies the warmed-up sparsity coefficient λ_t; the trainer's target-L0
        controller uses it to steer λ without rebuilding the config.
        """
        zero = output.codes.new_zeros((), dtype=torch.float32)
        return SparsityTerms(zero, zero, 0.0)

    def frequency_sparsity_terms(
        self, frequency_1F: Tensor, step: int, coefficient_scale: float = 1.0
    ) -> SparsityTerms:
        """:meth:`sparsity_terms` from batch firing frequencies f̂ (1, F) instead of a forward pass.

        Every penalty here is a function of batch-mean firing indicators, so the (1, F) frequencies give
        the same value and θ gradient as the (B, F) indicators; the sparse step uses this. Default: none.
        """
        zero = frequency_1F.new_zeros((), dtype=torch.float32)
        return SparsityTerms(zero, zero, 0.0)

    # --- training step kernels (saescope.sae.sparse) ------------------------------------------------
    def sparse_selection_rule(self) -> SelectionRule | None:
        """How the sparse step picks the kept entries of π, or None when this dictionary (in its current
        mode) must take the dense step. Default: None."""
        return None

    def record_sparse_codes(self, codes_N: Tensor) -> None:
        """Hook called with the non-zero code values of a sparse training step (default: nothing)."""

    def uses_sparse_step(self, x_BD: Tensor) -> bool:
        """Whether :meth:`loss` on ``x_BD`` takes the sparse kernel (``config.step_kernel``; "auto" decides by
        size and density against :data:`~saescope.sae.sparse.SPARSE_MIN_ELEMENTS` and
        :data:`~saescope.sae.sparse.SPARSE_MAX_DENSITY`)."""
        kernel = self.config.step_kernel
        if kernel == "dense" or self.config.sparse_kernel_unsupported is not None or x_BD.dim() != 2:
            return False
        rule = self.sparse_selection_rule()
        if rule is None:
            return False
        if kernel == "sparse":
            return True
        if x_BD.shape[0] * self.config.width < SPARSE_MIN_ELEMENTS:
            return False
        return estimate_density(self.encoder_input(x_BD), self.W_enc_DF, self.b_enc_F, rule) <= SPARSE_MAX_DENSITY

    def encoder_input(self, x_BD: Tensor) -> Tensor:
        """What the encoder multiplies: x, less b_dec when the pre-encoder bias is on (SAEs), (B, d_in)."""
        x_BD = x_BD.to(self.W_enc_DF.dtype)
        return x_BD - self.b_dec_D if self.config.apply_pre_encoder_bias else x_BD

    def loss(
        self, x_BD: Tensor, y_BD: Tensor | None = None, *, step: int = 0, coefficient_scale: float = 1.0
    ) -> LossOutput:
        """Training loss on inputs ``x_BD`` and targets ``y_BD`` (default: ``x_BD``, i.e. an SAE).

        ``step`` is the optimiser step; warm-ups are pure functions of it (method §2.4), so a resumed run
        gets the same coefficients. With ``config.matryoshka_prefixes`` the reconstruction term is the
        Matryoshka sum over nested prefixes (method §7.3); the penalty is counted once. The step runs on
        the sparse or the dense kernel per :meth:`uses_sparse_step`; both give the same loss and
        gradients (to float rounding), the sparse one in a fraction of the time when codes are sparse.
        """
        if y_BD is None:
            if self.config.d_in != self.config.d_out:
                raise ValueError("loss() needs y_BD: d_out != d_in, so the target is not the input")
            y_BD = x_BD
        if self.uses_sparse_step(x_BD):
            return self._sparse_loss(x_BD, y_BD, step, coefficient_scale)
        output: ForwardOutput = self(x_BD)
        prefixes = self.config.matryoshka_prefixes
        if prefixes is None:
            recon = reconstruction_loss(output.reconstruction, y_BD)
        else:
            offset_BD = self.b_dec_D + self._skip_term(x_BD)
            recon = matryoshka_reconstruction_loss(output.codes, self.W_dec_FD, offset_BD, y_BD, prefixes)
        terms = self.sparsity_terms(output, step, coefficient_scale)
        l0 = (output.codes != 0).float().sum(dim=-1).mean().detach()
        total = recon + terms.penalty + terms.high_frequency
        return LossOutput(total, recon, terms.penalty, terms.high_frequency, l0, terms.coefficient, output)

    def _sparse_loss(self, x_BD: Tensor, y_BD: Tensor, step: int, coefficient_scale: float) -> LossOutput:
        """:meth:`loss` through the sparse kernel: same values and gradients, a fraction of the work."""
        rule = self.sparse_selection_rule()
        assert rule is not None
        result = sparse_step(
            x_BD, self.W_enc_DF, self.b_enc_F, self.W_dec_FD, self.b_dec_D, rule,
            subtract_decoder_bias=self.config.apply_pre_encoder_bias,
        )  # fmt: skip
        self.record_sparse_codes(result.codes.values())
        y_hat_BD = result.reconstruction + self._skip_term(x_BD)
        recon = reconstruction_loss(y_hat_BD, y_BD)
        terms = self.frequency_sparsity_terms(result.frequency_1F, step, coefficient_scale)
        total = recon + terms.penalty + terms.high_frequency
        output = ForwardOutput(result.pre_activations, result.codes, y_hat_BD)
        return LossOutput(total, recon, terms.penalty, terms.high_frequency, result.l0, terms.coefficient, output)

    # --- decoder constraint (method §2.1) -------------------------------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row (latent direction) to unit L2 norm, in place."""
        # In place: .float() is the parameter itself when float32 (a float32 copy otherwise), so no F×D
        # temporaries are allocated (a fresh one costs more in page faults than the arithmetic).
        W_FD = self.W_dec_FD.float()
        W_FD.div_(torch.linalg.vector_norm(W_FD, dim=-1, keepdim=True).clamp_min(1e-12))
        self.W_dec_FD.copy_(W_FD)  # a no-op when W_FD is the parameter

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each decoder row's gradient its component along the row: g_i ← g_i − (g_i·d̂_i) d̂_i.

        Call between ``backward()`` and the optimiser step (method §2.1); a no-op without a gradient.
        """
        grad_FD = self.W_dec_FD.grad
        if grad_FD is None:
            return
        # g − (g·d̂)d̂ written as g − ((g·W)/‖W‖²)·W, in place like normalize_decoder_.
        W_FD = self.W_dec_FD.float()
        g_FD = grad_FD.float()
        norm_sq_F = torch.linalg.vector_norm(W_FD, dim=-1).clamp_min(1e-12).square()
        dot_F = torch.einsum("fd,fd->f", g_FD, W_FD)  # a batched product: no F×D temporary, unlike vecdot
        g_FD.addcmul_(W_FD, (dot_F / norm_sq_F).unsqueeze(-1), value=-1.0)
        grad_FD.copy_(g_FD)  # a no-op when g_FD is the gradient itself

    # --- raw-space weights (method §2.7) --------------------------------------------------------------
    @torch.no_grad()
    def fold_normalisation(self, scale_in: float, scale_out: float | None = None) -> SparseDictionary:
        """A copy that runs on raw activations, with the normalisation and pre-encoder bias folded in.

        Training saw ``x = x_raw / scale_in`` and targets ``y = y_raw / scale_out`` (``scale_out``
        defaults to ``scale_in``: an SAE, or a GS1 transcoder whose input and target share the input's
        scale, method §2.2). The returned dictionary maps ``x_raw`` to ``ŷ_raw = scale_out · ŷ`` and its
        codes are ``f' = scale_out · f``, so decoder rows stay unchanged (unit norm)::

            W_enc' = (scale_out/scale_in)·W_enc    b_enc' = scale_out·(b_enc − b_dec @ W_enc)
            b_dec' = scale_out·b_dec               W_skip' = (scale_out/scale_in)·W_skip
            θ'     = scale_out·θ  (JumpReLU; BatchTopK's inference threshold likewise)

        (``− b_dec @ W_enc`` only if the pre-encoder bias was on; it is off in the result.) With
        ``scale_in == scale_out == C`` this is exactly method §2.7. Every nonlinearity here is positively
        homogeneous once its threshold is scaled too, so ``σ'(s·π) = s·σ(π)`` with ``s = scale_out``.
        """
        s_out = scale_in if scale_out is None else scale_out
        for name, value in (("scale_in", scale_in), ("scale_out", s_out)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"fold_normalisation: {name} must be a finite float > 0; got {value!r}")
        ratio = s_out / scale_in
        folded = copy.deepcopy(self)
        folded.zero_grad(set_to_none=True)
        W_enc_DF = self.W_enc_DF.double()
        b_enc_F = self.b_enc_F.double()
        if self.config.apply_pre_encoder_bias:
            b_enc_F = b_enc_F - self.b_dec_D.double() @ W_enc_DF
        folded.W_enc_DF.copy_(ratio * W_enc_DF)
        folded.b_enc_F.copy_(s_out * b_enc_F)
        folded.b_dec_D.copy_(s_out * self.b_dec_D.double())
        if self.W_skip_DD is not None and folded.W_skip_DD is not None:
            folded.W_skip_DD.copy_(ratio * self.W_skip_DD.double())
        folded.config = self.config.replace(apply_pre_encoder_bias=False)
        folded.scale_thresholds_(s_out)
        return folded

    @torch.no_grad()
    def scale_codes_(self, scale: float | Tensor) -> None:
        """Multiply every code by ``scale`` > 0 without changing which latents fire: ``W_enc``, ``b_enc`` and
        the thresholds all scale by it (the nonlinearities are positively homogeneous, as in folding).

        ``scale`` is one factor for all latents, or one per latent (F,) where
        :attr:`per_latent_code_scaling` holds."""
        if isinstance(scale, Tensor):
            if not self.per_latent_code_scaling:
                raise ValueError(f"{self.config.architecture}: codes can only be scaled by one common factor")
            if scale.shape != (self.config.width,) or not bool((torch.isfinite(scale) & (scale > 0)).all()):
                raise ValueError(f"scale_codes_: need {self.config.width} finite factors > 0")
            factor: float | Tensor = scale.to(device=self.W_enc_DF.device)
        elif math.isfinite(scale) and scale > 0:
            factor = scale
        else:
            raise ValueError(f"scale_codes_: scale must be a finite float > 0; got {scale!r}")
        # In place in the parameters' dtype: no upcast copy of W_enc.
        self.W_enc_DF.mul_(factor.to(self.W_enc_DF.dtype) if isinstance(factor, Tensor) else factor)
        self.b_enc_F.mul_(factor.to(self.b_enc_F.dtype) if isinstance(factor, Tensor) else factor)
        self.scale_thresholds_(factor)

    def scale_thresholds_(self, scale: float | Tensor) -> None:
        """Multiply architecture-specific thresholds by ``scale`` (a float, or (F,) per latent where
        :attr:`per_latent_code_scaling` holds); used by folding; default: none."""

    #: Whether each latent's code can be scaled by a factor of its own without changing which latents fire:
    #: true for JumpReLU (its own θ scales with it) and ReLU; not for TopK/BatchTopK, which rank latents
    #: against each other.
    per_latent_code_scaling = False

    @torch.no_grad()
    def absorb_dimension_gains_(self, gain_in_D: Tensor, gain_out_D: Tensor, *, renormalise: bool = True) -> None:
        """In place: a dictionary trained on ``x / g_in`` with targets ``y / g_out`` becomes the same map on
        ``x`` and ``y`` themselves, ``new(x) = g_out ⊙ old(x / g_in)``::

            W_enc ← diag(1/g_in) W_enc    W_dec ← W_dec diag(g_out)    b_dec ← g_out ⊙ b_dec
            W_skip ← diag(1/g_in) W_skip diag(g_out)

        The pre-encoder bias subtracts ``b_dec`` from the input, which stays right only when ``g_in == g_out``
        (an SAE); otherwise it is folded into ``b_enc`` and turned off. With ``renormalise``, and where
        :attr:`per_latent_code_scaling` holds, each decoder row goes back to unit norm and its latent's code
        carries the norm (the trainer's per-dimension gains, see ``TrainConfig.dimension_gain_power``).
        Absorbing ``1/g`` undoes absorbing ``g``.
        """
        for name, gain in (("gain_in_D", gain_in_D), ("gain_out_D", gain_out_D)):
            width = self.config.d_in if name == "gain_in_D" else self.config.d_target
            if gain.shape != (width,) or not bool((torch.isfinite(gain) & (gain > 0)).all()):
                raise ValueError(f"absorb_dimension_gains_: {name} must hold {width} finite values > 0")
        # In place in the parameters' dtype, like the decoder constraint: no upcast copies of F×D weights.
        g_in_D1 = gain_in_D.to(self.W_enc_DF.device, self.W_enc_DF.dtype).unsqueeze(-1)
        g_out_D = gain_out_D.to(self.W_dec_FD.device, self.W_dec_FD.dtype)
        if self.config.apply_pre_encoder_bias and not torch.equal(gain_in_D, gain_out_D):
            self.b_enc_F.sub_(self.b_dec_D @ self.W_enc_DF)
            self.config = self.config.replace(apply_pre_encoder_bias=False)
        self.W_enc_DF.div_(g_in_D1)
        self.W_dec_FD.mul_(g_out_D)
        self.b_dec_D.mul_(g_out_D)
        if self.W_skip_DD is not None:
            self.W_skip_DD.div_(g_in_D1).mul_(g_out_D)
        if renormalise and self.per_latent_code_scaling:
            norm_F = torch.linalg.vector_norm(self.W_dec_FD, dim=-1).clamp_min(1e-12)
            self.W_dec_FD.div_(norm_F.unsqueeze(-1))
            self.scale_codes_(norm_F)

    # --- the same shape as a multi-layer dictionary -------------------------------------------------
    def layer_blocks(self) -> list[SparseDictionary]:
        """The single-layer dictionaries it is made of: itself (a multi-layer dictionary has one per layer)."""
        return [self]

    def split_inputs(self, x_BD: Tensor) -> tuple[Tensor, ...]:
        """The input of each block, in layer order: ``(x_BD,)`` for a single layer."""
        return (x_BD,)

    def split_outputs(self, y_BD: Tensor) -> tuple[Tensor, ...]:
        """The target of each block, in layer order: ``(y_BD,)`` for a single layer."""
        return (y_BD,)

    def absorb_layer_gains_(self, gains_in: Sequence[Tensor], gains_out: Sequence[Tensor]) -> None:
        """:meth:`absorb_dimension_gains_` with one gain per layer, as a multi-layer dictionary takes them."""
        if len(gains_in) != 1 or len(gains_out) != 1:
            raise ValueError("absorb_layer_gains_ needs 1 input and 1 output gain for a single-layer dictionary")
        self.absorb_dimension_gains_(gains_in[0], gains_out[0])

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"architecture={c.architecture!r}, d_in={c.d_in}, d_out={c.d_out}, width={c.width}, "
            f"pre_encoder_bias={c.apply_pre_encoder_bias}, skip={c.skip}"
        )

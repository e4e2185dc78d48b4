"""Least-squares decoder refit: the final phase that sets a trained dictionary's decoder to the best linear
read-out of its own codes (a saescope addition to the Gemma Scope recipe).

Given the codes ``f`` the finished encoder gives, the reconstruction ``ŷ = f @ W_dec + b_dec`` is linear in
``(W_dec, b_dec)``, so the decoder that minimises the squared error over a set of tokens solves one ridge
regression::

    [W_dec; b_dec] = (Zᵀ Z + ρ I)⁻¹ (Zᵀ Y + ρ [W_dec⁰; b_dec⁰]),   Z = [f, 1]  (N, F + 1)

``ρ`` = ``RIDGE`` × the mean of diag(Zᵀ Z) pulls a latent that rarely fires towards its trained decoder row
(one that never fires keeps it exactly). The regression separates by output dimension, so the solution is
the same whatever weight each dimension's error gets: it lowers the plain FVU and the per-dimension FVU at
once. The codes do not change: which latents fire, L0, θ and the encoder are the trained ones (an SAE's
pre-encoder bias subtracts ``b_dec``, so ``b_enc`` absorbs its change). Why: a decoder trained beside a moving
encoder is not the best one for the final codes, and this fit is (docs/results/fidelity.md has its ablation).

Single-layer dictionaries only (SAEs, transcoders, skip transcoders, whose skip path stays as trained); a
Matryoshka dictionary is left alone, as one joint fit would undo its nested prefixes, and so is one too wide
for its (F+1)² normal equations to fit ``PASS_MEMORY_BYTES``.
"""

from __future__ import annotations

import warnings
from typing import TypeGuard

import torch

from saescope.sae import AnyDictionary, SparseDictionary

#: ρ relative to the mean diagonal of ZᵀZ. The fit depends little on it (a hundredfold range gave the same
#: held-out delta loss); it is there to keep rare latents well posed.
RIDGE = 1e-3
#: The normal equations of one refit pass stay under this; more dictionaries take more passes over the data.
PASS_MEMORY_BYTES = 2 << 30


def accumulator_bytes(sae: SparseDictionary) -> int:
    """Memory of one dictionary's normal equations (float32 ZᵀZ and ZᵀY)."""
    rows = sae.config.width + 1
    return 4 * rows * (rows + sae.config.d_target)


def refittable(sae: AnyDictionary) -> TypeGuard[SparseDictionary]:
    """Whether the refit applies: a single-layer dictionary without Matryoshka prefixes whose normal equations
    fit one pass (up to about 23k latents; wider ones keep their trained decoder)."""
    return (
        isinstance(sae, SparseDictionary)
        and sae.config.matryoshka_prefixes is None
        and accumulator_bytes(sae) <= PASS_MEMORY_BYTES
    )


class DecoderRefit:
    """The normal equations of one dictionary's decoder, accumulated batch by batch, then solved in place."""

    def __init__(self, sae: SparseDictionary) -> None:
        if not refittable(sae):
            raise ValueError(
                f"{sae.config.architecture}: the decoder refit needs a single-layer, non-Matryoshka dictionary"
            )
        self.sae = sae
        rows, device = sae.config.width + 1, sae.W_dec_FD.device
        self.gram_RR = torch.zeros(rows, rows, dtype=torch.float32, device=device)  # R = F + 1 (the bias column)
        self.cross_RD = torch.zeros(rows, sae.config.d_target, dtype=torch.float32, device=device)
        # For the FVUs before and after: Σ‖t‖² of the decoder's target t (y less any skip path), Σ y and Σ‖y‖².
        self.target_squares = 0.0
        self.y_sum_D = torch.zeros(sae.config.d_target, dtype=torch.float64, device=device)
        self.y_squares = 0.0
        self.n_tokens = 0

    @torch.no_grad()
    def update(self, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        """Add one batch: inputs ``x`` and targets ``y`` in the space the dictionary was trained in."""
        sae = self.sae
        training = sae.training
        sae.eval()  # the codes inference gives (BatchTopK: its threshold, which training mode would also update)
        try:
            codes_BF = sae.encode(x_BD).float()
        finally:
            sae.train(training)
        z_BR = torch.cat([codes_BF, codes_BF.new_ones(codes_BF.shape[0], 1)], dim=1)
        target_BD = y_BD.float()
        self.y_sum_D += target_BD.double().sum(0)
        self.y_squares += float(target_BD.double().square().sum())
        if sae.W_skip_DD is not None:  # the skip path stays as trained; the decoder fits what it leaves
            target_BD = target_BD - x_BD.to(sae.W_skip_DD.dtype) @ sae.W_skip_DD
        # Codes are sparse (L0 ≪ F): a CSR Zᵀ costs nnz·F per product where a dense one costs N·F².
        with warnings.catch_warnings():  # torch's once-per-process "sparse CSR support is in beta" note
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            z_RB = z_BR.T.to_sparse_csr()
        self.gram_RR += z_RB @ z_BR
        self.cross_RD += z_RB @ target_BD
        self.target_squares += float(target_BD.double().square().sum())
        self.n_tokens += x_BD.shape[0]

    def _fvu(self, decoder_RD: torch.Tensor, gram_RR: torch.Tensor) -> float:
        """FVU of the decoder [W_dec; b_dec] on the accumulated tokens, from the normal equations alone
        (``gram_RR``: ZᵀZ in float64)."""
        fit = float((decoder_RD * (gram_RR @ decoder_RD - 2 * self.cross_RD.double())).sum())
        variance = self.y_squares - float(self.y_sum_D.square().sum()) / self.n_tokens
        return (self.target_squares + fit) / max(variance, 1e-30)

    @torch.no_grad()
    def solve_(self) -> tuple[float, float]:
        """Set the decoder to the ridge least-squares fit (float64 solve), keeping the codes unchanged; returns
        the FVU on the accumulated tokens before and after."""
        if self.n_tokens == 0:
            raise ValueError("the decoder refit saw no tokens")
        sae = self.sae
        width = sae.config.width
        trained_RD = torch.cat([sae.W_dec_FD.detach(), sae.b_dec_D.detach().unsqueeze(0)]).double()
        # One float64 ZᵀZ serves the solve and both FVUs, and the float32 one goes first: at width F the solve
        # holds this copy and the solver's own, (F+1)² float64 numbers each, and nothing more of that size.
        gram_RR = self.gram_RR.double()
        self.gram_RR = torch.empty(0)
        fvu_before = self._fvu(trained_RD, gram_RR)
        diagonal_R = gram_RR.diagonal().clone()
        ridge = RIDGE * float(diagonal_R[:width].mean().clamp_min(1e-12))
        gram_RR.diagonal().add_(ridge)
        solution_RD = torch.linalg.solve(gram_RR, self.cross_RD.double() + ridge * trained_RD)
        gram_RR.diagonal().copy_(diagonal_R)  # the exact ZᵀZ again, for the FVU after
        fvus = fvu_before, self._fvu(solution_RD, gram_RR)
        b_dec_old_D = sae.b_dec_D.detach().clone()
        sae.W_dec_FD.copy_(solution_RD[:width].to(sae.W_dec_FD.dtype))
        sae.b_dec_D.copy_(solution_RD[width].to(sae.b_dec_D.dtype))
        if sae.config.apply_pre_encoder_bias:  # the encoder reads x − b_dec: keep what it reads
            sae.b_enc_F.add_((sae.b_dec_D - b_dec_old_D) @ sae.W_enc_DF)
        if sae.per_latent_code_scaling:  # unit decoder rows again, each code carrying its row's norm
            norm_F = torch.linalg.vector_norm(sae.W_dec_FD, dim=-1).clamp_min(1e-12)
            sae.W_dec_FD.div_(norm_F.unsqueeze(-1))
            sae.scale_codes_(norm_F)
        return fvus


def refit_passes(saes: list[SparseDictionary], budget_bytes: int = PASS_MEMORY_BYTES) -> list[list[int]]:
    """Indices of `saes` grouped into passes whose normal equations fit `budget_bytes` (at least one each)."""
    passes: list[list[int]] = []
    used = budget_bytes
    for index, sae in enumerate(saes):
        size = accumulator_bytes(sae)
        if used + size > budget_bytes:
            passes.append([])
            used = 0
        passes[-1].append(index)
        used += size
    return passes

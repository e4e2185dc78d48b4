"""Multi-layer sparse dictionaries: cross-layer transcoders (CLTs) and weakly causal crosscoders (SPEC §7.5).

A multi-layer dictionary spans ``n`` layers. It reads ``n`` input sites and writes ``n`` output sites, and is
made of ``n`` **blocks**, block ``i`` being an ordinary single-layer dictionary (a JumpReLU transcoder, skip
transcoder or SAE-shaped dictionary: its own encoder, threshold, decoder to output ``i``, bias ``b_dec`` of
output ``i`` and optional affine skip ``x_i @ W_skip_i``) plus **cross decoders** ``W_cross_i`` that send the
same codes to the later outputs ``i+1 .. n-1``. Nothing is ever written to an earlier layer::

    f_i   = JumpReLU(x_i @ W_enc_i + b_enc_i)                       # block i's codes, (B, F)
    ŷ_j   = b_dec_j [+ x_j @ W_skip_j] + Σ_{i ≤ j} f_i @ W_dec_{i→j}  # W_dec_{i→i} is block i's own decoder

* **CLT**: inputs ``mlp_in`` of every layer, outputs ``mlp`` of the same layers (GS2's per-layer affine skip
  is the blocks' own skip path, layer ℓ input → layer ℓ output only).
* **Crosscoder**: inputs and outputs the residual stream of a set of layers (GS2: {5, 9, 12, 15} on 270M).
* A 1-layer multi-layer dictionary *is* its block: a transcoder (``tests/sae/test_sae_multilayer.py``).

Inputs and targets travel as the concatenation of the layers, ``x`` (B, n·d_in) and ``y`` (B, n·d_out), so
the trainer, its checkpoints and the evaluation treat every dictionary alike. Cross decoders start at zero
(the dictionary starts as ``n`` independent transcoders); the decoder constraint of SPEC §2.1 holds for each
latent's whole write, i.e. the row ``[W_dec_{i→i} | W_cross_i]`` has unit norm. There is no pre-encoder bias:
``b_dec_j`` is the bias of output ``j``, which several blocks write into.

The training step costs ``n`` dense encoder products and decodes only the active latents: each block runs the
sparse kernel (:mod:`saescope.sae.sparse`) with its decoder and cross decoders side by side, so the work that
grows with layers² is ``O(B · L0 · d)`` per (block, later layer) pair, never ``O(B · F · d)``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from saescope.sae.base import ForwardOutput, LossOutput, SparseDictionary
from saescope.sae.config import DictionaryConfig
from saescope.sae.jumprelu import JumpReLU
from saescope.sae.matryoshka import reconstruction_loss
from saescope.sae.sparse import sparse_step


class CrossLayerDictionary(nn.Module):
    """``config.n_layers`` JumpReLU blocks (``blocks[i]``) and their cross decoders (``W_cross[i]``, shape
    (F, (n−1−i)·d_out), for i < n−1). ``config`` is the whole dictionary's; each block's is
    ``config.replace(n_layers=1)``."""

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if config.n_layers < 2:
            raise ValueError(f"CrossLayerDictionary needs config.n_layers >= 2; got {config.n_layers}")
        self.config = config
        n, width, d_out = config.n_layers, config.width, config.d_target
        block_config = config.replace(n_layers=1)
        self.blocks = nn.ModuleList(JumpReLU(block_config, generator=generator) for _ in range(n))
        self.W_cross = nn.ParameterList(
            nn.Parameter(torch.zeros(width, (n - 1 - i) * d_out, dtype=config.torch_dtype)) for i in range(n - 1)
        )

    # --- shapes -------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def block(self, i: int) -> JumpReLU:
        block = self.blocks[i]
        assert isinstance(block, JumpReLU)
        return block

    def split_inputs(self, x_BX: Tensor) -> tuple[Tensor, ...]:
        """(B, n·d_in) -> n tensors (B, d_in)."""
        return self._split(x_BX, self.config.d_in, "input")

    def split_outputs(self, y_BY: Tensor) -> tuple[Tensor, ...]:
        """(B, n·d_out) -> n tensors (B, d_out)."""
        return self._split(y_BY, self.config.d_target, "output")

    def _split(self, t: Tensor, d: int, what: str) -> tuple[Tensor, ...]:
        if t.shape[-1] != self.n_layers * d:
            raise ValueError(f"{what} width {t.shape[-1]} != n_layers × d = {self.n_layers} × {d}")
        return tuple(torch.split(t, d, dim=-1))

    def decoder(self, i: int) -> Tensor:
        """Block i's whole write ``[W_dec_{i→i} | W_cross_i]``: (F, (n−i)·d_out)."""
        own = self.block(i).W_dec_FD
        return own if i == self.n_layers - 1 else torch.cat([own, self.W_cross[i]], dim=1)

    def decoder_to(self, i: int, j: int) -> Tensor:
        """``W_dec_{i→j}`` (F, d_out): zero-width views are never made, j must be ≥ i."""
        if not 0 <= i <= j < self.n_layers:
            raise ValueError(f"block {i} writes to layers {i}..{self.n_layers - 1}, not {j}")
        if i == j:
            return self.block(i).W_dec_FD
        d = self.config.d_target
        cross: Tensor = self.W_cross[i]
        return cross[:, (j - i - 1) * d : (j - i) * d]

    # --- forward ------------------------------------------------------------------------------------
    def encode(self, x_BX: Tensor) -> Tensor:
        """Codes of every block side by side: (B, n·F)."""
        return torch.cat([self.block(i).encode(x) for i, x in enumerate(self.split_inputs(x_BX))], dim=-1)

    def decode(self, f_BZ: Tensor, x_BX: Tensor | None = None) -> Tensor:
        """ŷ (B, n·d_out) from codes (B, n·F); ``x_BX`` is needed iff the blocks have a skip path."""
        xs = self.split_inputs(x_BX) if x_BX is not None else (None,) * self.n_layers
        writes = [f @ self.decoder(i).to(f.dtype) for i, f in enumerate(torch.split(f_BZ, self.config.width, dim=-1))]
        return self._assemble(writes, xs)

    def _assemble(self, writes: Sequence[Tensor], xs: Sequence[Tensor | None]) -> Tensor:
        """Sum block writes (block i: (B, (n−i)·d_out), no bias) into the n outputs, adding b_dec and skips."""
        d = self.config.d_target
        outputs = []
        for j in range(self.n_layers):
            block = self.block(j)
            y_j = writes[0][:, j * d : (j + 1) * d]
            for i in range(1, j + 1):
                y_j = y_j + writes[i][:, (j - i) * d : (j - i + 1) * d]
            outputs.append(y_j + block.b_dec_D + block._skip_term(xs[j]))
        return torch.cat(outputs, dim=-1)

    def forward(self, x_BX: Tensor) -> ForwardOutput:
        xs = self.split_inputs(x_BX)
        pres, codes, writes = [], [], []
        for i, x in enumerate(xs):
            pre = self.block(i).pre_activations(x)
            f = self.block(i).activation(pre)
            pres.append(pre)
            codes.append(f)
            writes.append(f @ self.decoder(i))
        return ForwardOutput(torch.cat(pres, dim=-1), torch.cat(codes, dim=-1), self._assemble(writes, xs))

    # --- loss ---------------------------------------------------------------------------------------
    def loss(
        self, x_BX: Tensor, y_BY: Tensor | None = None, *, step: int = 0, coefficient_scale: float = 1.0
    ) -> LossOutput:
        """Σ_j ‖y_j − ŷ_j‖² per token + Σ_i λ·L0_i: the single-layer loss summed over layers. Each block takes
        the sparse or the dense kernel on its own (:meth:`SparseDictionary.uses_sparse_step`); both give the
        same loss and gradients."""
        if y_BY is None:
            raise ValueError("a multi-layer dictionary's loss needs its targets y (B, n·d_out)")
        xs = tuple(x.contiguous() for x in self.split_inputs(x_BX))  # the sparse kernel gathers rows of x
        self.split_outputs(y_BY)  # validates the width
        pres, codes, writes, l0 = [], [], [], torch.zeros((), dtype=torch.float32, device=x_BX.device)
        penalty = high_frequency = torch.zeros((), dtype=torch.float32, device=x_BX.device)
        coefficient = 0.0
        for i, x in enumerate(xs):
            block = self.block(i)
            if block.uses_sparse_step(x):
                W_BZ = self.decoder(i)
                bias = W_BZ.new_zeros(W_BZ.shape[1])  # b_dec and the skip path are added in _assemble
                rule = block.sparse_selection_rule()
                result = sparse_step(x, block.W_enc_DF, block.b_enc_F, W_BZ, bias, rule, subtract_decoder_bias=False)
                terms = block.frequency_sparsity_terms(result.frequency_1F, step, coefficient_scale)
                pres.append(result.pre_activations)
                codes.append(result.codes)
                writes.append(result.reconstruction)
                l0 = l0 + result.l0
            else:
                pre = block.pre_activations(x)
                f = block.activation(pre)
                terms = block.sparsity_terms(ForwardOutput(pre, f, f), step, coefficient_scale)
                pres.append(pre)
                codes.append(f)
                writes.append(f @ self.decoder(i))
                l0 = l0 + (f != 0).float().sum(dim=-1).mean().detach()
            penalty = penalty + terms.penalty
            high_frequency = high_frequency + terms.high_frequency
            coefficient = terms.coefficient
        y_hat_BY = self._assemble(writes, xs)
        recon = reconstruction_loss(y_hat_BY, y_BY)
        output = ForwardOutput(_side_by_side(pres), _side_by_side(codes), y_hat_BY)
        total = recon + penalty + high_frequency
        return LossOutput(total, recon, penalty, high_frequency, l0, coefficient, output)

    # --- decoder constraint (SPEC §2.1, for each latent's whole write) ------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        for i in range(self.n_layers):
            if i == self.n_layers - 1:
                self.block(i).normalize_decoder_()
                continue
            own, cross = self.block(i).W_dec_FD, self.W_cross[i]
            norm_sq_F1 = own.float().square().sum(-1, keepdim=True) + cross.float().square().sum(-1, keepdim=True)
            norm_F1 = norm_sq_F1.sqrt().clamp_min(1e-12)
            own.div_(norm_F1.to(own.dtype))
            cross.div_(norm_F1.to(cross.dtype))

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        for i in range(self.n_layers):
            if i == self.n_layers - 1:
                self.block(i).project_decoder_grad_()
                continue
            own, cross = self.block(i).W_dec_FD, self.W_cross[i]
            if own.grad is None and cross.grad is None:
                continue
            g_own = own.grad if own.grad is not None else torch.zeros_like(own)
            g_cross = cross.grad if cross.grad is not None else torch.zeros_like(cross)
            norm_sq_F = (own.float().square().sum(-1) + cross.float().square().sum(-1)).clamp_min(1e-12)
            dot_F = torch.einsum("fd,fd->f", g_own.float(), own.float()) + torch.einsum(
                "fd,fd->f", g_cross.float(), cross.float()
            )
            coefficient_F1 = (dot_F / norm_sq_F).unsqueeze(-1)
            own.grad = (g_own.float() - coefficient_F1 * own.float()).to(own.dtype)
            cross.grad = (g_cross.float() - coefficient_F1 * cross.float()).to(cross.dtype)

    # --- raw-space weights (SPEC §2.7, per layer) ---------------------------------------------------
    @torch.no_grad()
    def fold_normalisation(
        self, scales_in: Sequence[float], scales_out: Sequence[float] | None = None
    ) -> CrossLayerDictionary:
        """A copy on raw activations: block i folded with its layer's scales (codes ``s_out_i · f_i``), and
        the cross decoders rescaled so that raw output j gets ``s_out_j ·`` its training-space value:
        ``W_{i→j}' = (s_out_j / s_out_i) · W_{i→j}``."""
        s_in = [float(s) for s in scales_in]
        s_out = s_in if scales_out is None else [float(s) for s in scales_out]
        if len(s_in) != self.n_layers or len(s_out) != self.n_layers:
            raise ValueError(f"fold_normalisation needs {self.n_layers} input and output scales")
        if not all(math.isfinite(s) and s > 0 for s in (*s_in, *s_out)):
            raise ValueError(f"fold_normalisation: scales must be finite and > 0; got {s_in}, {s_out}")
        folded = copy.deepcopy(self)
        folded.zero_grad(set_to_none=True)
        for i in range(self.n_layers):
            folded.blocks[i] = self.block(i).fold_normalisation(s_in[i], s_out[i])
        d = self.config.d_target
        for i in range(self.n_layers - 1):
            for j in range(i + 1, self.n_layers):
                ratio = s_out[j] / s_out[i]
                folded.W_cross[i][:, (j - i - 1) * d : (j - i) * d].mul_(ratio)
        return folded

    def extra_repr(self) -> str:
        c = self.config
        return f"n_layers={c.n_layers}, d_in={c.d_in}, d_out={c.d_out}, width per layer={c.width}, skip={c.skip}"


#: Any sparse dictionary the trainer, evaluation and release handle.
AnyDictionary = SparseDictionary | CrossLayerDictionary


def build_any_dictionary(config: DictionaryConfig, *, generator: torch.Generator | None = None) -> AnyDictionary:
    """A fresh dictionary for ``config``: single-layer (``build_dictionary``) or multi-layer (n_layers > 1)."""
    from saescope.sae import build_dictionary

    if config.n_layers > 1:
        return CrossLayerDictionary(config, generator=generator)
    return build_dictionary(config, generator=generator)


def dictionary_blocks(sae: AnyDictionary) -> list[SparseDictionary]:
    """The single-layer dictionaries a dictionary is made of: its blocks, or itself."""
    if isinstance(sae, CrossLayerDictionary):
        return [block for block in sae.blocks if isinstance(block, SparseDictionary)]
    return [sae]


def single_layer(sae: AnyDictionary, what: str) -> SparseDictionary:
    """``sae`` itself when it is a single-layer dictionary; ValueError saying ``what`` cannot take a multi-layer one."""
    if isinstance(sae, CrossLayerDictionary):
        raise ValueError(
            f"{what} takes single-layer dictionaries; this one spans {sae.n_layers} layers (a CLT or crosscoder)"
        )
    return sae


def layer_output(sae: AnyDictionary, j: int, codes: Sequence[Tensor], x_j: Tensor) -> Tensor:
    """Output ``j`` from the codes of blocks ``0..j`` (``codes[i]``, any leading dims) and input ``j``:
    ``Σ_{i ≤ j} f_i @ W_dec_{i→j} + b_dec_j (+ x_j @ W_skip_j)``; for a single-layer dictionary its decode."""
    if not isinstance(sae, CrossLayerDictionary):
        return sae.decode(codes[0], x_j)
    block = sae.block(j)
    y = block.decode(codes[j], x_j)
    for i in range(j):
        y = y + codes[i].to(block.W_dec_FD.dtype) @ sae.decoder_to(i, j)
    return y


def _side_by_side(parts: Sequence[Tensor]) -> Tensor:
    """Per-block (B, F) tensors side by side as (B, n·F): dense stays dense, sparse CSR stays sparse CSR."""
    if all(part.layout == torch.strided for part in parts):
        return torch.cat([part.to_dense() if part.is_sparse else part for part in parts], dim=-1)
    width = parts[0].shape[-1]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # torch's "sparse CSR is beta" notes
        coo = [part.to_sparse(layout=torch.sparse_coo) for part in parts]
        indices = torch.cat(
            [c.indices() + torch.tensor([[0], [i * width]], device=c.device) for i, c in enumerate(coo)], dim=1
        )
        values = torch.cat([c.values() for c in coo])
        rows = parts[0].shape[0]
        return torch.sparse_coo_tensor(indices, values, (rows, width * len(parts))).coalesce().to_sparse_csr()

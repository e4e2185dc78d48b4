"""Multi-layer sparse dictionaries: cross-layer transcoders (CLTs) and weakly causal crosscoders (method §7.5).

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
(the dictionary starts as ``n`` independent transcoders); the decoder constraint of method §2.1 holds for each
latent's whole write, i.e. the row ``[W_dec_{i→i} | W_cross_i]`` has unit norm. There is no pre-encoder bias:
``b_dec_j`` is the bias of output ``j``, which several blocks write into.

The training step costs ``n`` dense encoder products and decodes only the active latents: each block runs the
sparse kernel (:mod:`saescope.sae.sparse`) with its own decoder and its cross decoders as extra decoder tables,
so the work that grows with layers² is ``O(B · L0 · d)`` per (block, later layer) pair, never ``O(B · F · d)``.
That part is inherent to a CLT: every active latent writes to every later layer, so with a fixed L0 per
layer the decode work is ``B · L0 · d · n(n+1)/2``. So is the optimiser's, ``F · d`` per pair: in a batch of a
thousand tokens nearly every latent fires, so a row-sparse update would skip almost nothing.
``benchmarks/clt_step.py`` measures how the step grows with the number of layers.
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
    (n−1−i, F, d_out), for i < n−1: ``W_cross[i][k]`` is ``W_dec_{i→i+1+k}``). ``config`` is the whole
    dictionary's; each block's is ``config.replace(n_layers=1)``.

    The cross decoders are stored target-major so that each ``W_dec_{i→j}`` is one contiguous (F, d_out)
    table: the sparse kernel gathers rows from each table separately, which keeps a table in cache."""

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if config.n_layers < 2:
            raise ValueError(f"CrossLayerDictionary needs config.n_layers >= 2; got {config.n_layers}")
        self.config = config
        n, width, d_out = config.n_layers, config.width, config.d_target
        block_config = config.replace(n_layers=1)
        self.blocks = nn.ModuleList(JumpReLU(block_config, generator=generator) for _ in range(n))
        self.W_cross = nn.ParameterList(
            nn.Parameter(torch.zeros(n - 1 - i, width, d_out, dtype=config.torch_dtype)) for i in range(n - 1)
        )
        self.register_load_state_dict_pre_hook(_read_flat_cross_decoders)  # type: ignore[no-untyped-call]

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
        """Block i's whole write ``W_dec_{i→i..n−1}``: (F, n−i, d_out), a copy."""
        own = self.block(i).W_dec_FD.unsqueeze(1)
        return own if i == self.n_layers - 1 else torch.cat([own, self.W_cross[i].transpose(0, 1)], dim=1)

    def decoder_to(self, i: int, j: int) -> Tensor:
        """``W_dec_{i→j}`` (F, d_out), a view; j must be ≥ i."""
        if not 0 <= i <= j < self.n_layers:
            raise ValueError(f"block {i} writes to layers {i}..{self.n_layers - 1}, not {j}")
        if i == j:
            return self.block(i).W_dec_FD
        cross: Tensor = self.W_cross[i]
        return cross[j - i - 1]

    # --- forward ------------------------------------------------------------------------------------
    def encode(self, x_BX: Tensor) -> Tensor:
        """Codes of every block side by side: (B, n·F)."""
        return torch.cat([self.block(i).encode(x) for i, x in enumerate(self.split_inputs(x_BX))], dim=-1)

    def decode(self, f_BZ: Tensor, x_BX: Tensor | None = None) -> Tensor:
        """ŷ (B, n·d_out) from codes (B, n·F); ``x_BX`` is needed iff the blocks have a skip path."""
        xs = self.split_inputs(x_BX) if x_BX is not None else (None,) * self.n_layers
        return self._assemble(self._dense_writes(torch.split(f_BZ, self.config.width, dim=-1)), xs)

    def _dense_writes(self, codes: Sequence[Tensor]) -> list[list[Tensor]]:
        """``writes[j]``: every block's write into output j, ``f_i @ W_dec_{i→j}`` for i ≤ j (dense codes)."""
        return [
            [codes[i] @ self.decoder_to(i, j).to(codes[i].dtype) for i in range(j + 1)] for j in range(self.n_layers)
        ]

    def _assemble(self, writes: Sequence[Sequence[Tensor]], xs: Sequence[Tensor | None]) -> Tensor:
        """The n outputs side by side (B, n·d_out): output j sums ``writes[j]`` and adds b_dec_j and its skip."""
        outputs = []
        for j, writes_j in enumerate(writes):
            block = self.block(j)
            y_j = writes_j[0]
            for write in writes_j[1:]:
                y_j = y_j + write
            outputs.append(y_j + block.b_dec_D + block._skip_term(xs[j]))
        return torch.cat(outputs, dim=-1)

    def forward(self, x_BX: Tensor) -> ForwardOutput:
        xs = self.split_inputs(x_BX)
        pres = [self.block(i).pre_activations(x) for i, x in enumerate(xs)]
        codes = [self.block(i).activation(pre) for i, pre in enumerate(pres)]
        y_hat_BY = self._assemble(self._dense_writes(codes), xs)
        return ForwardOutput(torch.cat(pres, dim=-1), torch.cat(codes, dim=-1), y_hat_BY)

    # --- loss ---------------------------------------------------------------------------------------
    def loss(
        self, x_BX: Tensor, y_BY: Tensor | None = None, *, step: int = 0, coefficient_scale: float = 1.0
    ) -> LossOutput:
        """Σ_j ‖y_j − ŷ_j‖² per token + Σ_i λ·L0_i: the single-layer loss summed over layers. Each block takes
        the sparse or the dense kernel on its own (:meth:`SparseDictionary.uses_sparse_step`); both give the
        same loss and gradients. The sparse kernel decodes block i's active latents into its own output and,
        through its cross decoders, into every later one."""
        if y_BY is None:
            raise ValueError("a multi-layer dictionary's loss needs its targets y (B, n·d_out)")
        xs = tuple(x.contiguous() for x in self.split_inputs(x_BX))  # the sparse kernel gathers rows of x
        self.split_outputs(y_BY)  # validates the width
        n = self.n_layers
        writes: list[list[Tensor]] = [[] for _ in range(n)]
        pres, codes, l0 = [], [], torch.zeros((), dtype=torch.float32, device=x_BX.device)
        penalty = high_frequency = torch.zeros((), dtype=torch.float32, device=x_BX.device)
        coefficient = 0.0
        for i, x in enumerate(xs):
            block = self.block(i)
            if block.uses_sparse_step(x):
                no_bias = block.b_dec_D.new_zeros(block.b_dec_D.shape)  # b_dec and the skip path: _assemble
                cross = self._cross_or_none(i)
                rule = block.sparse_selection_rule()
                result = sparse_step(
                    x, block.W_enc_DF, block.b_enc_F, block.W_dec_FD, no_bias, rule,
                    subtract_decoder_bias=False, W_extra_KFD=cross,
                )  # fmt: skip
                terms = block.frequency_sparsity_terms(result.frequency_1F, step, coefficient_scale)
                pres.append(result.pre_activations)
                codes.append(result.codes)
                for j, write in enumerate((result.reconstruction, *result.extra_reconstructions), start=i):
                    writes[j].append(write)
                l0 = l0 + result.l0
            else:
                pre = block.pre_activations(x)
                f = block.activation(pre)
                terms = block.sparsity_terms(ForwardOutput(pre, f, f), step, coefficient_scale)
                pres.append(pre)
                codes.append(f)
                for j in range(i, n):
                    writes[j].append(f @ self.decoder_to(i, j))
                l0 = l0 + (f != 0).float().sum(dim=-1).mean().detach()
            penalty = penalty + terms.penalty
            high_frequency = high_frequency + terms.high_frequency
            coefficient = terms.coefficient
        y_hat_BY = self._assemble(writes, xs)
        recon = reconstruction_loss(y_hat_BY, y_BY)
        output = ForwardOutput(_side_by_side(pres), _side_by_side(codes), y_hat_BY)
        total = recon + penalty + high_frequency
        return LossOutput(total, recon, penalty, high_frequency, l0, coefficient, output)

    # --- decoder constraint (method §2.1, for each latent's whole write) ------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        for i in range(self.n_layers):
            tables = _tables(self.block(i).W_dec_FD, self._cross_or_none(i))
            norm_F1 = _row_dots(tables, tables).sqrt().clamp_min(1e-12).unsqueeze(-1)
            for table in tables:
                table.div_(norm_F1.to(table.dtype))

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each latent's write gradient its component along the write, in place and one (F, d_out)
        table at a time (a block's cross decoders are up to n−1 tables: no whole-tensor temporaries)."""
        for i in range(self.n_layers):
            own, cross = self.block(i).W_dec_FD, self._cross_or_none(i)
            if own.grad is None and (cross is None or cross.grad is None):
                continue
            own_grad = own.grad if own.grad is not None else torch.zeros_like(own)
            cross_grad = None if cross is None else cross.grad if cross.grad is not None else torch.zeros_like(cross)
            own.grad = own_grad
            if cross is not None:
                cross.grad = cross_grad
            tables, grads = _tables(own, cross), _tables(own_grad, cross_grad)
            coefficient_F1 = (_row_dots(grads, tables) / _row_dots(tables, tables).clamp_min(1e-12)).unsqueeze(-1)
            for grad, table in zip(grads, tables, strict=True):
                grad.addcmul_(table, coefficient_F1.to(grad.dtype), value=-1.0)

    @torch.no_grad()
    def absorb_dimension_gains_(self, gains_in: Sequence[Tensor], gains_out: Sequence[Tensor]) -> None:
        """:meth:`SparseDictionary.absorb_dimension_gains_` for each layer (``gains_in[i]`` of input i,
        ``gains_out[j]`` of output j, which ``W_{i→j}`` writes), then each latent's whole write
        ``[W_dec_{i→i} | W_cross_i]`` back to unit norm, its code carrying the norm."""
        if len(gains_in) != self.n_layers or len(gains_out) != self.n_layers:
            raise ValueError(f"absorb_dimension_gains_ needs {self.n_layers} input and output gains")
        for i in range(self.n_layers):
            block, cross = self.block(i), self._cross_or_none(i)
            block.absorb_dimension_gains_(gains_in[i], gains_out[i], renormalise=False)
            tables = _tables(block.W_dec_FD, cross)
            for k, table in enumerate(tables[1:]):
                table.mul_(gains_out[i + 1 + k].to(table.device, table.dtype))
            norm_F = _row_dots(tables, tables).sqrt().clamp_min(1e-12)
            for table in tables:
                table.div_(norm_F.unsqueeze(-1).to(table.dtype))
            block.scale_codes_(norm_F)

    def absorb_layer_gains_(self, gains_in: Sequence[Tensor], gains_out: Sequence[Tensor]) -> None:
        """:meth:`absorb_dimension_gains_`, under the name every dictionary answers to."""
        self.absorb_dimension_gains_(gains_in, gains_out)

    def layer_blocks(self) -> list[SparseDictionary]:
        """The single-layer dictionaries it is made of, one per layer."""
        return [self.block(i) for i in range(self.n_layers)]

    def _cross_or_none(self, i: int) -> Tensor | None:
        """Block i's cross decoders (n−1−i, F, d_out), None for the last block."""
        return self.W_cross[i] if i < self.n_layers - 1 else None

    # --- raw-space weights (method §2.7, per layer) ---------------------------------------------------
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
        for i in range(self.n_layers - 1):
            for j in range(i + 1, self.n_layers):
                folded.W_cross[i][j - i - 1].mul_(s_out[j] / s_out[i])
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
    return sae.layer_blocks()


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


def _read_flat_cross_decoders(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook: dictionaries saved before the target-major layout hold ``W_cross.{i}`` as
    (F, (n−1−i)·d_out); reshape them to (n−1−i, F, d_out)."""
    assert isinstance(module, CrossLayerDictionary)
    for i in range(module.n_layers - 1):
        key = f"{prefix}W_cross.{i}"
        value = state_dict.get(key)
        if value is not None and value.dim() == 2:
            state_dict[key] = value.reshape(value.shape[0], -1, module.config.d_target).transpose(0, 1).contiguous()


def _tables(own_FD: Tensor, cross_KFD: Tensor | None) -> list[Tensor]:
    """A block's decoder tables (F, d_out), own first, as views."""
    return [own_FD, *(cross_KFD.unbind(0) if cross_KFD is not None else ())]


def _row_dots(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """``Σ_k (a[k] * b[k]).sum(-1)`` over tables (F, d), in float32: (F,)."""
    total_F = torch.zeros(a[0].shape[0], dtype=torch.float32, device=a[0].device)
    for a_FD, b_FD in zip(a, b, strict=True):
        total_F += torch.linalg.vecdot(a_FD, b_FD).float()
    return total_F


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

"""Configuration of one sparse dictionary (SAE, transcoder, skip transcoder).

A sparse dictionary reads an input vector ``x`` (``d_in``) and writes a target ``y`` (``d_out``).
An SAE is the case ``y = x``.  Every field is plain data (str, int, float, bool, tuple) so a config
survives a JSON round trip through :meth:`DictionaryConfig.to_dict` / :meth:`DictionaryConfig.from_dict`.

Section numbers (§) refer to ``docs/method.md`` (the method as saescope implements it).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from saescope.sae.sparse import SPARSE_DTYPES, STEP_KERNELS

#: Architectures known to :func:`saescope.sae.build_dictionary` (its registry must list exactly these).
ARCHITECTURES: tuple[str, ...] = ("jumprelu", "topk", "batchtopk", "relu")

#: Sparsity penalties each architecture accepts; the first entry is its default.
SPARSITY_BY_ARCHITECTURE: dict[str, tuple[str, ...]] = {
    "jumprelu": ("l0", "quadratic_l0"),
    "relu": ("l1",),
    "topk": ("none",),
    "batchtopk": ("none",),
}

#: Architectures the sparse training kernel handles (ReLU codes are too dense for it to pay).
SPARSE_ARCHITECTURES: tuple[str, ...] = ("jumprelu", "topk", "batchtopk")

THRESHOLD_PARAMETERISATIONS: tuple[str, ...] = ("log", "raw")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def _fail(name: str, allowed: str, value: object) -> ValueError:
    return ValueError(f"DictionaryConfig.{name} must be {allowed}; got {value!r}")


@dataclass(frozen=True)
class DictionaryConfig:
    """Shape, architecture and loss settings of one sparse dictionary.

    ``None`` in ``d_out`` and ``sparsity`` means "derive it": ``d_out`` becomes ``d_in`` (an SAE) and
    ``sparsity`` becomes the architecture's default (``l0`` for JumpReLU, ``l1`` for ReLU, ``none`` for
    TopK/BatchTopK).  The resolved values are stored, so ``to_dict`` always writes explicit values.
    """

    # --- shape (§1.1) -------------------------------------------------------------------------------
    d_in: int
    width: int  # number of latents M
    d_out: int | None = None  # target width; None -> d_in (an SAE). Transcoders: §2.6, §7.4.
    architecture: str = "jumprelu"  # one of ARCHITECTURES; JumpReLU is the Gemma Scope one (§1)
    # Subtract b_dec from x before encoding (§1.2). True for Gemma Scope SAEs; transcoders use False
    # (§2.6). Needs d_in == d_out. fold_normalisation() returns a module with this switched off (§2.7).
    apply_pre_encoder_bias: bool = True
    skip: bool = False  # affine skip path y_hat += x @ W_skip, W_skip (d_in, d_out) (§7.4, GS2)
    dtype: str = "float32"  # parameter dtype; GS trains in float32 (§2.1). θ is float32 regardless.
    # Layers a multi-layer dictionary spans (§7.5): 1 is a single-layer dictionary (SAE, transcoder); n > 1
    # is a cross-layer transcoder or weakly causal crosscoder (saescope.sae.multilayer) of n blocks shaped
    # by the fields above (d_in, width and d_out per layer), block i writing to layers i..n-1.
    n_layers: int = 1

    # --- JumpReLU (§1.2, §1.4, §2.1) ---------------------------------------------------------------
    # "log": the paper's trainable log θ (JR App. J, §1.1). "raw": a raw θ parameter clamped to be
    # positive -- a deviation (SAELens PR #718 / dictionary_learning) for short runs where Adam barely
    # moves log θ (§8 item 6, §7.9).
    threshold_parameterisation: str = "log"
    threshold_init: float = 0.001  # θ at init, normalised units (§2.1)
    bandwidth: float = 0.001  # STE rectangle-kernel bandwidth ε, normalised units (§1.4)

    # --- TopK / BatchTopK (not Gemma Scope; common baselines) ---------------------------------------
    k: int | None = None  # active latents per token (TopK) or mean per token over the batch (BatchTopK)
    # BatchTopK inference threshold: running average of the smallest selected activation,
    # t <- decay * t + (1 - decay) * batch_min (the first batch sets it directly).
    batchtopk_threshold_decay: float = 0.999

    # --- sparsity penalty (§1.3, §7.2) --------------------------------------------------------------
    # "l0": λ·L0 (GS1, §1.3). "quadratic_l0": λ·(c/L0*)·(L̄0 − L0*)² (GS2 eq. 5 as recommended in §7.2:
    # batch-mean L0 before squaring, prefactor c configurable). "l1": ReLU SAE penalty
    # λ·Σ_i f_i·‖W_dec,i‖. "none": TopK/BatchTopK. None -> the architecture's default.
    sparsity: str | None = None
    # λ for "l0"/"quadratic_l0". Default 6e-4 gives L0 ≈ 50 on Gemma 2 9B L20 residuals (§1.3).
    l0_coefficient: float = 6e-4
    l1_coefficient: float = 1.0  # λ for "l1" (ReLU SAEs only; not part of Gemma Scope)
    # Linear warm-up 0 -> λ (and 0 -> λ_freq) over this many steps: GS1 10,000; GS2 50,000 (§2.1, §7.2).
    lambda_warmup_steps: int = 10_000
    target_l0: float | None = None  # L0* for "quadratic_l0" (§7.2); required there, unused elsewhere
    quadratic_prefactor: float = 2.0  # c in λ·(c/L0*)·(L̄0 − L0*)²; printed GS2 value is 2 (§7.2)
    # High-frequency penalty (λ_freq/ω)·Σ_i f̂_i² on batch firing frequencies (§7.2; form is our
    # recommendation, GS2's exact form is unpublished). 0 switches it off. JumpReLU only.
    high_freq_coefficient: float = 0.0
    high_freq_omega: float = 0.1  # ω: frequency scale; PU2 targeted latents firing on >~10% of tokens
    high_freq_above_omega_only: bool = False  # penalise only latents with f̂_i > ω (§7.2 "optionally")

    # --- Matryoshka (§7.3) --------------------------------------------------------------------------
    # Nested prefix sizes m_1 < ... < m_K = width; None -> plain reconstruction loss. GS2 does not
    # publish its prefixes; the method (docs/method.md §7.3) suggests geometric, e.g. (M/64, M/16, M/4, M).
    matryoshka_prefixes: tuple[int, ...] | None = field(default=None)

    # --- training step kernel (how, not what: both kernels compute the same loss and gradients) -----
    # "dense": autograd through forward(), the reference. "sparse": one dense encoder product, then only
    # the kept entries of the codes (saescope.sae.sparse; JumpReLU, TopK, BatchTopK without Matryoshka,
    # float32/float64). "auto": sparse when supported and the batch is large and sparse enough to pay.
    step_kernel: str = "auto"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: resolve derived defaults in place
        if self.architecture not in ARCHITECTURES:
            raise _fail("architecture", f"one of {ARCHITECTURES}", self.architecture)
        for name in ("d_in", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(name, "a positive int", value)
        if self.d_out is None:
            set_(self, "d_out", self.d_in)
        if isinstance(self.d_out, bool) or not isinstance(self.d_out, int) or self.d_out < 1:
            raise _fail("d_out", "a positive int or None (= d_in)", self.d_out)
        for name in ("apply_pre_encoder_bias", "skip", "high_freq_above_omega_only"):
            if not isinstance(getattr(self, name), bool):
                raise _fail(name, "a bool", getattr(self, name))
        if self.apply_pre_encoder_bias and self.d_out != self.d_in:
            raise _fail(
                "apply_pre_encoder_bias",
                f"False when d_out ({self.d_out}) != d_in ({self.d_in}) (b_dec is subtracted from x)",
                self.apply_pre_encoder_bias,
            )
        if self.dtype not in DTYPES:
            raise _fail("dtype", f"one of {tuple(DTYPES)}", self.dtype)
        if self.threshold_parameterisation not in THRESHOLD_PARAMETERISATIONS:
            raise _fail(
                "threshold_parameterisation",
                f"one of {THRESHOLD_PARAMETERISATIONS}",
                self.threshold_parameterisation,
            )
        for name in ("threshold_init", "bandwidth", "quadratic_prefactor"):
            if not _finite_positive(getattr(self, name)):
                raise _fail(name, "a finite float > 0", getattr(self, name))
        for name in ("l0_coefficient", "l1_coefficient", "high_freq_coefficient"):
            value = getattr(self, name)
            if not _finite_number(value) or value < 0:
                raise _fail(name, "a finite float >= 0", value)
        if not _finite_positive(self.high_freq_omega) or self.high_freq_omega > 1:
            raise _fail("high_freq_omega", "a float in (0, 1]", self.high_freq_omega)
        decay = self.batchtopk_threshold_decay
        if not _finite_number(decay) or not 0 <= decay < 1:
            raise _fail("batchtopk_threshold_decay", "a float in [0, 1)", decay)
        if (
            isinstance(self.lambda_warmup_steps, bool)
            or not isinstance(self.lambda_warmup_steps, int)
            or self.lambda_warmup_steps < 0
        ):
            raise _fail("lambda_warmup_steps", "an int >= 0", self.lambda_warmup_steps)

        if self.architecture in ("topk", "batchtopk"):
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.width:
                raise _fail("k", f"an int in [1, width={self.width}] for architecture {self.architecture!r}", self.k)
        elif self.k is not None:
            raise _fail("k", f"None for architecture {self.architecture!r} (only topk/batchtopk use it)", self.k)

        allowed_sparsity = SPARSITY_BY_ARCHITECTURE[self.architecture]
        if self.sparsity is None:
            set_(self, "sparsity", allowed_sparsity[0])
        if self.sparsity not in allowed_sparsity:
            raise _fail("sparsity", f"one of {allowed_sparsity} for architecture {self.architecture!r}", self.sparsity)
        if self.sparsity == "quadratic_l0":
            if not _finite_positive(self.target_l0):
                raise _fail("target_l0", "a float > 0 when sparsity='quadratic_l0'", self.target_l0)
        elif self.target_l0 is not None:
            raise _fail(
                "target_l0",
                f"None unless sparsity='quadratic_l0' (sparsity={self.sparsity!r})",
                self.target_l0,
            )
        if self.high_freq_coefficient > 0 and self.architecture != "jumprelu":
            raise _fail(
                "high_freq_coefficient",
                f"0 for architecture {self.architecture!r} (it needs the JumpReLU step STE)",
                self.high_freq_coefficient,
            )

        if self.matryoshka_prefixes is not None:
            prefixes = self.matryoshka_prefixes
            if isinstance(prefixes, list):
                prefixes = tuple(prefixes)
                set_(self, "matryoshka_prefixes", prefixes)
            ok = (
                isinstance(prefixes, tuple)
                and len(prefixes) >= 1
                and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in prefixes)
                and all(a < b for a, b in itertools.pairwise(prefixes))
                and prefixes[-1] == self.width
            )
            if not ok:
                raise _fail(
                    "matryoshka_prefixes",
                    f"None or a strictly increasing tuple of positive ints ending at width={self.width}",
                    self.matryoshka_prefixes,
                )

        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise _fail("n_layers", "a positive int", self.n_layers)
        if self.n_layers > 1:
            needs = {"architecture": "jumprelu", "sparsity": "l0", "apply_pre_encoder_bias": False,
                     "matryoshka_prefixes": None}  # fmt: skip
            for name, value in needs.items():
                if getattr(self, name) != value:
                    raise _fail(name, f"{value!r} for a multi-layer dictionary (n_layers={self.n_layers})",
                                getattr(self, name))  # fmt: skip

        if self.step_kernel not in STEP_KERNELS:
            raise _fail("step_kernel", f"one of {STEP_KERNELS}", self.step_kernel)
        if self.step_kernel == "sparse" and (reason := self.sparse_kernel_unsupported) is not None:
            raise _fail("step_kernel", f"'auto' or 'dense' here: the sparse kernel does not handle {reason}", "sparse")

    # ------------------------------------------------------------------------------------------------
    @property
    def sparse_kernel_unsupported(self) -> str | None:
        """Why this dictionary always takes the dense training step, or None if the sparse one applies."""
        if self.architecture not in SPARSE_ARCHITECTURES:
            return f"architecture {self.architecture!r} (only {SPARSE_ARCHITECTURES})"
        if self.matryoshka_prefixes is not None:
            return "Matryoshka prefixes"
        if self.torch_dtype not in SPARSE_DTYPES:
            return f"dtype {self.dtype!r} (only float32 and float64)"
        return None

    @property
    def d_target(self) -> int:
        """``d_out`` as a plain int (always resolved after ``__post_init__``)."""
        assert self.d_out is not None
        return self.d_out

    @property
    def torch_dtype(self) -> torch.dtype:
        """The parameter dtype as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    @property
    def is_sae(self) -> bool:
        """True for the Gemma Scope SAE shape: target = input, pre-encoder bias, no skip."""
        return self.d_out == self.d_in and self.apply_pre_encoder_bias and not self.skip and self.n_layers == 1

    @property
    def total_width(self) -> int:
        """Latents over all layers: ``width × n_layers`` (Gemma Scope 2 names CLTs by this)."""
        return self.width * self.n_layers

    def replace(self, **changes: Any) -> DictionaryConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        if out["matryoshka_prefixes"] is not None:
            out["matryoshka_prefixes"] = list(out["matryoshka_prefixes"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictionaryConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DictionaryConfig has no field(s) {unknown}; known fields: {sorted(known)}")
        kwargs = dict(data)
        if kwargs.get("matryoshka_prefixes") is not None:
            kwargs["matryoshka_prefixes"] = tuple(kwargs["matryoshka_prefixes"])
        return cls(**kwargs)


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite_positive(value: object) -> bool:
    return _finite_number(value) and value > 0  # type: ignore[operator]

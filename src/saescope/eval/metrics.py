"""Reconstruction metrics of a sparse dictionary, accumulated over a stream of token batches (method §4.2).

All sums are float64. FVU uses the conventional denominator, the variance about the per-dimension
mean of the evaluation set: FVU = Σ‖x − x̂‖² / Σ‖x − μ‖², with Σ‖x − μ‖² = Σ‖x‖² − N‖μ‖² (some peers
shipped the variance about zero instead, which flatters SAEs on sites with a large mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

#: A latent is "dense" above these firing densities (GS1 §4.3 / JR: > 10% is the usual alarm).
DENSE_THRESHOLDS = (0.01, 0.1)
#: log10-density histogram bins for the latents that fired at least once.
DENSITY_BIN_EDGES = tuple(float(e) for e in range(-8, 1))


def mean_and_stderr(total: float, total_sq: float, count: int) -> tuple[float, float]:
    """Mean and its standard error from running sums of x and x² (sample variance, n − 1)."""
    if count == 0:
        return math.nan, math.nan
    mean = total / count
    if count == 1:
        return mean, math.nan
    variance = max(total_sq / count - mean * mean, 0.0) * count / (count - 1)
    return mean, math.sqrt(variance / count)


class ReconstructionAccumulator:
    """Streaming reconstruction statistics of one dictionary at one site.

    Feed it (x, x̂, codes, positions) batches of raw activations; `result()` gives the metrics.
    """

    def __init__(self, d_out: int, width: int, max_position: int) -> None:
        self.n = 0
        self.sum_x_D = torch.zeros(d_out, dtype=torch.float64)
        self.sum_x_sq = 0.0
        self.sum_err_sq = 0.0
        self.sum_x_sq_D = torch.zeros(d_out, dtype=torch.float64)
        self.sum_err_sq_D = torch.zeros(d_out, dtype=torch.float64)
        self.l0_sum = self.l0_sq_sum = 0.0
        self.cos_sum = self.cos_sq_sum = 0.0
        self.l2_ratio_sum = 0.0
        self.fired_F = torch.zeros(width, dtype=torch.int64)
        self.err_by_position = torch.zeros(max_position, dtype=torch.float64)
        self.count_by_position = torch.zeros(max_position, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x_ND: torch.Tensor, x_hat_ND: torch.Tensor, f_NF: torch.Tensor, positions_N: torch.Tensor) -> None:
        x, x_hat = x_ND.double(), x_hat_ND.double()
        err_sq_N = (x - x_hat).square().sum(-1)
        x_sq_N = x.square().sum(-1)
        l0_N = (f_NF != 0).sum(-1).double()
        cos_N = torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12)
        self.n += x.shape[0]
        self.sum_x_D += x.sum(0).cpu()
        self.sum_x_sq_D += x.square().sum(0).cpu()
        self.sum_err_sq_D += (x - x_hat).square().sum(0).cpu()
        self.sum_x_sq += float(x_sq_N.sum())
        self.sum_err_sq += float(err_sq_N.sum())
        self.l0_sum += float(l0_N.sum())
        self.l0_sq_sum += float(l0_N.square().sum())
        self.cos_sum += float(cos_N.sum())
        self.cos_sq_sum += float(cos_N.square().sum())
        self.l2_ratio_sum += float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum())
        self.fired_F += (f_NF != 0).sum(0).cpu()
        positions = positions_N.cpu()
        self.err_by_position.index_add_(0, positions, err_sq_N.cpu())
        self.count_by_position.index_add_(0, positions, torch.ones_like(positions))

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no tokens were evaluated")
        mean_D = self.sum_x_D / self.n
        total_variance = self.sum_x_sq - self.n * float(mean_D.square().sum())
        fvu = self.sum_err_sq / total_variance
        # Each dimension's own FVU, averaged with equal weights: on a site with a massive dimension (Gemma 3's
        # residual stream has one holding most of the variance) the plain FVU measures that dimension only.
        variance_D = self.sum_x_sq_D - self.n * mean_D.square()
        varying_D = variance_D > 1e-12 * float(variance_D.max().clamp_min(1e-300))
        fvu_per_dimension = float((self.sum_err_sq_D[varying_D] / variance_D[varying_D]).mean())
        l0, l0_se = mean_and_stderr(self.l0_sum, self.l0_sq_sum, self.n)
        cos, cos_se = mean_and_stderr(self.cos_sum, self.cos_sq_sum, self.n)
        density_F = self.fired_F.double() / self.n
        alive = density_F[density_F > 0]
        histogram = torch.histogram(alive.log10().float(), bins=torch.tensor(DENSITY_BIN_EDGES)).hist
        # Per position: mean squared error at that position over the mean variance per token of the whole
        # set, so the curve averages (token-weighted) to the FVU.
        variance_per_token = total_variance / self.n
        return {
            "n_tokens": self.n,
            "l0": l0,
            "l0_stderr": l0_se,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "fvu_mean_over_dimensions": fvu_per_dimension,
            "mse_per_token": self.sum_err_sq / self.n,
            "cosine_similarity": cos,
            "cosine_similarity_stderr": cos_se,
            "l2_ratio": self.l2_ratio_sum / self.n,
            "dead_fraction": float((self.fired_F == 0).double().mean()),
            "dead_definition": f"never fired in the {self.n} evaluated tokens",
            **{f"dense_fraction_above_{t:g}": float((density_F > t).double().mean()) for t in DENSE_THRESHOLDS},
            "log10_density_histogram": {
                "bin_edges": list(DENSITY_BIN_EDGES),
                "counts": [int(c) for c in histogram.tolist()],
                "dead": int((self.fired_F == 0).sum()),
            },
            "fvu_by_position": [
                float(e / c / variance_per_token) if c else None
                for e, c in zip(self.err_by_position, self.count_by_position, strict=True)
            ],
        }


@dataclass
class LossAccumulator:
    """Per-token next-token cross-entropies of the clean, zero-ablated and spliced model (method §4.2)."""

    max_position: int
    #: Also return every prediction's delta loss and KL, in evaluation order (see `paired_difference`).
    keep_deltas: bool = False
    n: int = 0
    clean_sum: float = 0.0
    delta_sum: float = 0.0
    delta_sq_sum: float = 0.0
    zero_sum: float = 0.0
    kl_sum: float = 0.0
    kl_sq_sum: float = 0.0

    def __post_init__(self) -> None:
        self.delta_by_position = torch.zeros(self.max_position, dtype=torch.float64)
        self.count_by_position = torch.zeros(self.max_position, dtype=torch.int64)
        self.deltas: list[torch.Tensor] = []
        self.kls: list[torch.Tensor] = []

    def update(
        self,
        clean_N: torch.Tensor,
        spliced_N: torch.Tensor,
        zero_N: torch.Tensor,
        kl_N: torch.Tensor,
        positions_N: torch.Tensor,
    ) -> None:
        delta_N = (spliced_N - clean_N).double()
        self.n += int(delta_N.shape[0])
        self.clean_sum += float(clean_N.double().sum())
        self.zero_sum += float(zero_N.double().sum())
        self.delta_sum += float(delta_N.sum())
        self.delta_sq_sum += float(delta_N.square().sum())
        self.kl_sum += float(kl_N.double().sum())
        self.kl_sq_sum += float(kl_N.double().square().sum())
        self.delta_by_position.index_add_(0, positions_N.cpu(), delta_N.cpu())
        self.count_by_position.index_add_(0, positions_N.cpu(), torch.ones_like(positions_N.cpu()))
        if self.keep_deltas:
            self.deltas.append(delta_N.float().cpu())
            self.kls.append(kl_N.float().cpu())

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise ValueError("no next-token predictions were evaluated")
        clean = self.clean_sum / self.n
        zero = self.zero_sum / self.n
        delta, delta_se = mean_and_stderr(self.delta_sum, self.delta_sq_sum, self.n)
        kl, kl_se = mean_and_stderr(self.kl_sum, self.kl_sq_sum, self.n)
        spliced = clean + delta
        return {
            "loss_n_predictions": self.n,
            "ce_loss_clean": clean,
            "ce_loss_spliced": spliced,
            "ce_loss_zero_ablation": zero,
            "delta_lm_loss": delta,
            "delta_lm_loss_stderr": delta_se,
            "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else math.nan,
            "kl_clean_to_spliced": kl,
            "kl_clean_to_spliced_stderr": kl_se,
            "delta_lm_loss_by_position": [
                float(d / c) if c else None for d, c in zip(self.delta_by_position, self.count_by_position, strict=True)
            ],
            **(
                {
                    "delta_lm_loss_per_prediction": torch.cat(self.deltas).tolist(),
                    "kl_per_prediction": torch.cat(self.kls).tolist(),
                }
                if self.keep_deltas
                else {}
            ),
        }


def paired_difference(deltas_a: Sequence[float], deltas_b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of (a − b) over the same predictions: two dictionaries' delta losses per
    prediction (``delta_lm_loss_per_prediction``), or their KLs (``kl_per_prediction``), from evaluations of
    the same windows.

    Why: the hard tokens are hard for both, so the per-prediction deltas of two good dictionaries are strongly
    correlated, and the standard error of their difference is several times smaller than either one's own.
    KL is the delta loss's expectation over the clean model's own next-token distribution, so it carries no
    sampling noise from the observed token: where delta losses are near zero (attention outputs), a paired KL
    difference resolves margins that a paired delta-loss difference cannot.
    """
    if len(deltas_a) != len(deltas_b) or not deltas_a:
        raise ValueError(
            f"paired_difference needs per-prediction deltas of the same predictions; got {len(deltas_a)} and "
            f"{len(deltas_b)} (evaluate both with the same corpus and EvalConfig)"
        )
    diff_N = torch.tensor(deltas_a, dtype=torch.float64) - torch.tensor(deltas_b, dtype=torch.float64)
    return mean_and_stderr(float(diff_N.sum()), float(diff_N.square().sum()), int(diff_N.numel()))

"""Logistic-regression probes in torch (no scikit-learn): full-batch L-BFGS on standardised features with
balanced class weights and a small L2 penalty, one or several binary targets at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: Features whose standard deviation is below this are treated as constant (scaled by 1, not divided by ~0).
_MIN_STD = 1e-6


@dataclass(frozen=True)
class LogisticProbe:
    """``score = x @ weight_KC + bias_C`` in the features' own (raw) units; ``score > 0`` predicts the class."""

    weight_KC: torch.Tensor
    bias_C: torch.Tensor

    def scores(self, x_NK: torch.Tensor) -> torch.Tensor:
        return x_NK.float() @ self.weight_KC + self.bias_C

    def predict(self, x_NK: torch.Tensor) -> torch.Tensor:
        """(N, C) bool."""
        return self.scores(x_NK) > 0


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Probe fits are many small products: extra torch threads only add synchronisation, which stalls badly on
    a busy CPU, so each fit runs on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_logistic(x_NK: torch.Tensor, y_NC: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 100) -> LogisticProbe:
    """One-vs-rest logistic regression for each column of the 0/1 targets ``y_NC`` (or a 1-D ``y_N``, C = 1).

    Positives and negatives weigh equally in each target's loss (balanced), so a rare class is not ignored;
    ``l2`` is the penalty on the standardised weights. Deterministic: full-batch L-BFGS from zero weights.
    """
    x_NK = x_NK.detach().float()
    y_NC = y_NC.detach().float()
    if y_NC.ndim == 1:
        y_NC = y_NC.unsqueeze(1)
    if x_NK.ndim != 2 or y_NC.shape[0] != x_NK.shape[0]:
        raise ValueError(f"fit_logistic needs x (N, K) and y (N, C) with equal N; got {tuple(x_NK.shape)}, "
                         f"{tuple(y_NC.shape)}")  # fmt: skip
    mean_K = x_NK.mean(0)
    std_K = x_NK.std(0, unbiased=False)
    std_K = torch.where(std_K < _MIN_STD, torch.ones_like(std_K), std_K)
    z_NK = (x_NK - mean_K) / std_K
    positives_C = y_NC.sum(0).clamp_min(1.0)
    negatives_C = (1 - y_NC).sum(0).clamp_min(1.0)
    sample_weight_NC = y_NC / (2 * positives_C) + (1 - y_NC) / (2 * negatives_C)
    weight_KC = torch.zeros(x_NK.shape[1], y_NC.shape[1], requires_grad=True)
    bias_C = torch.zeros(y_NC.shape[1], requires_grad=True)
    optimiser = torch.optim.LBFGS([weight_KC, bias_C], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits_NC = z_NK @ weight_KC + bias_C
        losses_NC = torch.nn.functional.binary_cross_entropy_with_logits(logits_NC, y_NC, reduction="none")
        loss = (losses_NC * sample_weight_NC).sum() + l2 * weight_KC.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad(), _one_thread():
        optimiser.step(closure)  # type: ignore[no-untyped-call]
    # Fold the standardisation back so the probe reads raw features.
    raw_weight_KC = weight_KC.detach() / std_K.unsqueeze(1)
    raw_bias_C = bias_C.detach() - mean_K @ raw_weight_KC
    return LogisticProbe(raw_weight_KC, raw_bias_C)


def accuracy(predicted_N: torch.Tensor, truth_N: torch.Tensor) -> float:
    return float((predicted_N.bool() == truth_N.bool()).float().mean()) if truth_N.numel() else float("nan")


def f1_score(predicted_N: torch.Tensor, truth_N: torch.Tensor) -> float:
    """F1 of the positive class; 0 when nothing is predicted or nothing is positive."""
    predicted_N, truth_N = predicted_N.bool(), truth_N.bool()
    true_positives = int((predicted_N & truth_N).sum())
    denominator = int(predicted_N.sum()) + int(truth_N.sum())
    return 2 * true_positives / denominator if denominator else 0.0


#: Penalties tried by ``fit_logistic_cv``: from nearly none (many samples, few features) to strong (few samples,
#: many features, where the probe tends to the class-mean difference).
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def fit_logistic_cv(
    x_NK: torch.Tensor, y_N: torch.Tensor, *, folds: int = 3, grid: tuple[float, ...] = L2_GRID
) -> LogisticProbe:
    """A single-target probe whose L2 penalty is chosen by ``folds``-fold cross-validated accuracy on the given
    (training) rows (folds by row index modulo ``folds``; ties go to the stronger penalty), refit on all rows."""
    fold_N = torch.arange(x_NK.shape[0]) % folds
    best_l2, best_accuracy = grid[-1], -1.0
    for l2 in reversed(grid):
        correct = 0
        for fold in range(folds):
            held_N = fold_N == fold
            if held_N.all() or not held_N.any():
                continue
            probe = fit_logistic(x_NK[~held_N], y_N[~held_N], l2=l2)
            correct += int((probe.predict(x_NK[held_N])[:, 0] == y_N[held_N].bool()).sum())
        if correct > best_accuracy:
            best_l2, best_accuracy = l2, correct
    return fit_logistic(x_NK, y_N, l2=best_l2)

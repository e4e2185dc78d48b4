"""A causal LM's next-token predictions, computed in parts: the body's final hidden states, the LM head applied in
chunks of positions (so the positions × vocabulary logits never exist at once), which predictions of a batch count,
and the KL of a prediction to the clean model's.

Evaluation (delta LM loss) and KL finetuning both splice dictionaries into the model and compare its predictions
with the clean ones through these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from saescope.models.sites import text_config

#: Positions per LM-head chunk: 128 x 262,144 float32 logits is 128 MiB.
DEFAULT_CHUNK = 128


def final_hidden(model: nn.Module, ids_BT: torch.Tensor) -> torch.Tensor:
    """(B, T, D) hidden states after the final norm: everything but the LM head."""
    body = cast(nn.Module, model.base_model)
    output = body(input_ids=ids_BT, use_cache=False)
    hidden: torch.Tensor = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    return hidden


def logits_from_hidden(model: nn.Module, h_ND: torch.Tensor) -> torch.Tensor:
    """(N, V) float32 next-token logits, with the final logit soft-capping of Gemma 2 where configured."""
    get_head = cast(Callable[[], nn.Module], model.get_output_embeddings)
    head = get_head()
    logits: torch.Tensor = head(h_ND).float()
    cap = getattr(text_config(model), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass(frozen=True)
class Predictions:
    """Which next-token predictions of a batch of windows are counted."""

    rows_B: torch.Tensor  # window index of each counted prediction
    cols_T: torch.Tensor  # position of the input token
    targets_N: torch.Tensor  # the token to predict

    @classmethod
    def select(cls, ids_BT: torch.Tensor, keep_BT: torch.Tensor, stride: int = 1, offset: int = 0) -> Predictions:
        """Predictions whose input and target are both kept; with `stride` > 1 only every stride-th
        position (from `offset`) is counted, which divides the LM-head cost and leaves the mean unbiased."""
        valid_BT = keep_BT[:, :-1] & keep_BT[:, 1:]
        if stride > 1:
            positions_T = torch.arange(valid_BT.shape[1], device=valid_BT.device)
            valid_BT = valid_BT & ((positions_T - offset) % stride == 0)
        rows, cols = valid_BT.nonzero(as_tuple=True)
        return cls(rows, cols, ids_BT[rows, cols + 1])


def chunked_predictions(
    model: nn.Module, h_ND: torch.Tensor, predictions: Predictions, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """The counted predictions from their final hidden states ``h_ND``, ``chunk`` at a time: per chunk, its rows
    (a slice of N), the log-probabilities (n, V) float32 and the cross-entropy of each target (n,)."""
    for start in range(0, h_ND.shape[0], chunk):
        rows = slice(start, start + chunk)
        log_probs = torch.log_softmax(logits_from_hidden(model, h_ND[rows]), dim=-1)
        yield rows, log_probs, -log_probs.gather(1, predictions.targets_N[rows][:, None]).squeeze(1)


@torch.no_grad()
def clean_log_probs(
    model: nn.Module, ids_BT: torch.Tensor, predictions: Predictions, chunk: int = DEFAULT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean cross-entropy per counted prediction (N,) and the clean log-probabilities (N, V) in bfloat16
    (kept for the KL of each spliced pass; bfloat16 halves the memory of a 262k vocabulary)."""
    h_ND = final_hidden(model, ids_BT)[predictions.rows_B, predictions.cols_T]
    ce_parts, log_prob_parts = [], []
    for _, log_probs, ce in chunked_predictions(model, h_ND, predictions, chunk):
        ce_parts.append(ce)
        log_prob_parts.append(log_probs.to(torch.bfloat16))
    if not ce_parts:  # no countable prediction in this batch
        return h_ND.new_zeros(0, dtype=torch.float32), h_ND.new_zeros(0, 0, dtype=torch.bfloat16)
    return torch.cat(ce_parts), torch.cat(log_prob_parts)


def kl_to_clean(clean_log_probs_NV: torch.Tensor, log_probs_NV: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ other) per prediction (N,), float32, from stored (bfloat16) clean log-probabilities.

    The clean distribution is renormalised after rounding: bfloat16 log-probabilities sum to 1 only to within
    their rounding, which shifts a prediction's KL by an error of either sign that is not small beside the whole
    KL of a good SAE. Renormalised, the KL is a true one (never negative, near zero for an exact splice).
    """
    clean_NV = clean_log_probs_NV.float()
    clean_NV = clean_NV - torch.logsumexp(clean_NV, dim=-1, keepdim=True)
    return (clean_NV.exp() * (clean_NV - log_probs_NV.float())).sum(-1)

"""TopK and BatchTopK dictionaries (baselines; not part of Gemma Scope).

* TopK keeps, per token, the ``k`` largest pre-activations (then a ReLU): at most ``k`` active latents,
  exactly ``k`` whenever the k-th largest pre-activation is positive.
* BatchTopK keeps the ``k·B`` largest pre-activations over the whole batch in training mode (same
  caveat about non-positive values), so L0 is ``k`` on average. In eval mode it applies a single global
  threshold instead, so codes no longer depend on the rest of the batch: the threshold is a running
  average of the smallest selected activation seen in training (buffer ``inference_threshold``; the first
  training batch sets it, later ones blend with ``config.batchtopk_threshold_decay``). Before any training
  batch has set it (value < 0), eval mode falls back to the batch selection.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.sae.base import SparseDictionary
from saescope.sae.config import DictionaryConfig
from saescope.sae.sparse import SelectionRule


def _keep_topk(pre_BF: Tensor, k: int) -> Tensor:
    """Zero everything but the ``k`` largest entries of the last dim, then ReLU."""
    values_BK, indices_BK = pre_BF.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BF).scatter(-1, indices_BK, values_BK.relu())


class TopK(SparseDictionary):
    """Per-token TopK dictionary: f = ReLU(TopK_k(π))."""

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        if config.architecture != "topk":
            raise ValueError(f"TopK needs config.architecture='topk'; got {config.architecture!r}")
        super().__init__(config, generator=generator)

    def activation(self, pre_BF: Tensor) -> Tensor:
        assert self.config.k is not None
        return _keep_topk(pre_BF, self.config.k)

    def sparse_selection_rule(self) -> SelectionRule:
        assert self.config.k is not None
        return SelectionRule("topk", k=self.config.k)


class BatchTopK(SparseDictionary):
    """BatchTopK dictionary: top ``k·B`` over the batch in training, a learned global threshold in eval."""

    inference_threshold: Tensor

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        if config.architecture != "batchtopk":
            raise ValueError(f"BatchTopK needs config.architecture='batchtopk'; got {config.architecture!r}")
        super().__init__(config, generator=generator)
        self.register_buffer("inference_threshold", torch.tensor(-1.0, dtype=torch.float32))

    @property
    def threshold_is_set(self) -> bool:
        """Whether a training batch has estimated the inference threshold yet."""
        return bool(self.inference_threshold >= 0)

    def activation(self, pre_BF: Tensor) -> Tensor:
        if not self.training and self.threshold_is_set:
            keep_BF = pre_BF.float() > self.inference_threshold
            return pre_BF * keep_BF.to(pre_BF.dtype)
        f_BF = self._batch_select(pre_BF)
        if self.training:
            self._update_threshold_(f_BF)
        return f_BF

    def sparse_selection_rule(self) -> SelectionRule | None:
        # Eval mode with a learned threshold selects by that threshold: the dense step handles it.
        if not self.training and self.threshold_is_set:
            return None
        assert self.config.k is not None
        return SelectionRule("batchtopk", k=self.config.k)

    def record_sparse_codes(self, codes_N: Tensor) -> None:
        if self.training:
            self._update_threshold_(codes_N)

    def _batch_select(self, pre_BF: Tensor) -> Tensor:
        assert self.config.k is not None
        width = pre_BF.shape[-1]
        n_keep = min(self.config.k * pre_BF[..., 0].numel(), pre_BF.numel())
        return _keep_topk(pre_BF.reshape(1, -1), n_keep).reshape((*pre_BF.shape[:-1], width))

    @torch.no_grad()
    def _update_threshold_(self, f_BF: Tensor) -> None:
        """Blend in the smallest positive code of ``f_BF`` (any shape: dense codes or the sparse step's values)."""
        positive = f_BF[f_BF > 0]
        if positive.numel() == 0:
            return
        batch_min = positive.min().float()
        if self.threshold_is_set:
            decay = self.config.batchtopk_threshold_decay
            self.inference_threshold.mul_(decay).add_((1.0 - decay) * batch_min)
        else:
            self.inference_threshold.copy_(batch_min)

    @torch.no_grad()
    def scale_thresholds_(self, scale: float | Tensor) -> None:
        if self.threshold_is_set:
            self.inference_threshold.mul_(scale)

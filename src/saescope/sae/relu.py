"""ReLU dictionary with an L1 penalty weighted by decoder row norms (baseline; not Gemma Scope).

``f = ReLU(π)``, penalty ``λ_t · mean_b Σ_i f_bi ‖W_dec,i‖`` with the same linear λ warm-up as JumpReLU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.sae.base import ForwardOutput, SparseDictionary, SparsityTerms
from saescope.sae.config import DictionaryConfig
from saescope.sae.penalties import decoder_weighted_l1_penalty, warmed_coefficient


class ReLU(SparseDictionary):
    """ReLU sparse dictionary: f = ReLU(π), decoder-norm-weighted L1 penalty."""

    def __init__(self, config: DictionaryConfig, *, generator: torch.Generator | None = None) -> None:
        if config.architecture != "relu":
            raise ValueError(f"ReLU needs config.architecture='relu'; got {config.architecture!r}")
        super().__init__(config, generator=generator)

    per_latent_code_scaling = True

    def activation(self, pre_BF: Tensor) -> Tensor:
        return torch.relu(pre_BF)

    def sparsity_terms(self, output: ForwardOutput, step: int, coefficient_scale: float = 1.0) -> SparsityTerms:
        c = self.config
        coefficient = warmed_coefficient(c.l1_coefficient, step, c.lambda_warmup_steps) * coefficient_scale
        penalty = decoder_weighted_l1_penalty(output.codes, self.W_dec_FD, coefficient)
        return SparsityTerms(penalty, penalty.new_zeros(()), coefficient)

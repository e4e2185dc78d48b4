"""Learning-rate schedule and the target-L0 controller: pure functions of the step (so resume is exact)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def learning_rate(
    step: int, *, peak: float, warmup_steps: int, warmup_start_fraction: float, total_steps: int, decay_fraction: float
) -> float:
    """Cosine warm-up from `warmup_start_fraction`·peak to peak (method §2.1), constant, then optional decay.

    Gemma Scope describes no decay (method §9 item 1): `decay_fraction` = 0 is the paper. With
    `decay_fraction` = f > 0 the rate falls linearly to 0 over the last f of the run.
    """
    if warmup_steps > 0 and step < warmup_steps:
        progress = step / warmup_steps
        start = warmup_start_fraction * peak
        return start + (peak - start) * 0.5 * (1.0 - math.cos(math.pi * progress))
    decay_steps = round(decay_fraction * total_steps)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return peak * max(0.0, (total_steps - step) / decay_steps)
    return peak


@dataclass
class TargetL0Controller:
    """Integral control of the sparsity coefficient so that L0 settles on a target (saescope addition).

    After each step past the λ warm-up, `log_scale += gain · (L0_batch / target − 1)`: λ grows while the
    SAE fires too often and shrinks while it fires too rarely. L0 is monotone in λ, so the integral term
    removes the steady-state offset that a fixed λ or the GS2 quadratic penalty alone leaves.
    """

    target_l0: float
    gain: float = 0.02
    log_scale: float = 0.0
    max_log_scale: float = 9.0  # λ may move by at most e^9 ≈ 8000× either way

    @property
    def scale(self) -> float:
        return math.exp(self.log_scale)

    def update(self, batch_l0: float) -> None:
        error = batch_l0 / self.target_l0 - 1.0
        self.log_scale = min(self.max_log_scale, max(-self.max_log_scale, self.log_scale + self.gain * error))

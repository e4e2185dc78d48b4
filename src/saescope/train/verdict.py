"""Whether a finished training run's dictionaries look trained: one judgement for `saescope train` and `run`.

A run can finish without any error and still hand back garbage: a dictionary worse than predicting the mean
(FVU > 1), or one whose L0 ended far from the target it was steered to. Such a run must not end in silence;
`implausible_dictionaries` names them, from each dictionary's final metrics, and `implausible_warning` words
the warning both commands print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A final FVU above this is worse than reconstructing every token as the batch mean.
MAX_PLAUSIBLE_FVU = 1.0
#: A final L0 outside [LOW × target, HIGH × target] is far from its target.
L0_TARGET_RANGE = (0.5, 2.0)
#: `saescope train`'s exit status when it trained and kept the weights but some dictionaries are implausible.
IMPLAUSIBLE_EXIT_CODE = 3


@dataclass(frozen=True)
class FinalMetrics:
    """A trained dictionary's last metrics and the L0 it was steered to (None: no target)."""

    name: str
    fvu: float
    l0: float
    target_l0: float | None

    @classmethod
    def from_metrics(cls, name: str, metrics: Mapping[str, Any], target_l0: float | None) -> FinalMetrics:
        """From a trainer's last metrics; after a decoder refit, its FVU is the final one."""
        fvu = metrics.get("refit_fvu", metrics.get("fvu", float("nan")))
        return cls(name, float(fvu), float(metrics.get("l0", float("nan"))), target_l0)


def implausible_dictionaries(results: Iterable[FinalMetrics]) -> list[str]:
    """One line per implausible dictionary saying why (empty when every dictionary looks trained).

    Implausible: an FVU above `MAX_PLAUSIBLE_FVU` or not a number, or, with a target L0, a final L0 outside
    `L0_TARGET_RANGE` times the target.
    """
    low, high = L0_TARGET_RANGE
    lines = []
    for result in results:
        reasons = []
        if not result.fvu <= MAX_PLAUSIBLE_FVU:
            reasons.append(f"FVU {result.fvu:.3g} > {MAX_PLAUSIBLE_FVU:g} (worse than predicting the mean)")
        target = result.target_l0
        if target is not None and not low * target <= result.l0 <= high * target:
            reasons.append(
                f"L0 {result.l0:.3g}, outside [{low * target:.3g}, {high * target:.3g}] around its target {target:g}"
            )
        if reasons:
            lines.append(f"{result.name}: {'; '.join(reasons)}")
    return lines


def implausible_warning(lines: list[str], weights_folder: Path) -> str:
    """The warning printed when `implausible_dictionaries` found some."""
    listed = "\n".join(f"  {line}" for line in lines)
    return (
        f"warning: {len(lines)} dictionar{'y' if len(lines) == 1 else 'ies'} ended with implausible final metrics "
        f"(last training batch; weights kept in {weights_folder}):\n{listed}\n"
        "Check the activations (their scale, NaN or huge rows) and the settings (learning rate, tokens, target L0) "
        "before using them."
    )


def read_final_metrics(train_dir: Path) -> list[FinalMetrics]:
    """The final metrics of every dictionary saved under ``train_dir/saes/`` (from each ``config.json``)."""
    results = []
    for config_path in sorted((train_dir / "saes").glob("*/config.json")):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        metrics, target = config.get("final_batch_metrics"), config.get("target_l0")
        if metrics:  # a dictionary without recorded metrics has nothing to judge
            name = str(config.get("name", config_path.parent.name))
            results.append(FinalMetrics.from_metrics(name, metrics, None if target is None else float(target)))
    return results

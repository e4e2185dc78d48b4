"""Interpretability metrics of a dictionary, beside the reconstruction ones: first-letter feature absorption and
sparse probing (one module each). ``INTERP_METRICS`` maps each name ``saescope eval --interp`` accepts to a
function ``(target, loaded model, options) -> result`` whose ``to_dict()`` goes into metrics.json under
``interp.<name>`` and whose ``summary()`` gives the printed table's columns."""

from __future__ import annotations

from collections.abc import Callable

from saescope.eval.evaluate import EvalTarget
from saescope.eval.interp.absorption import AbsorptionConfig, AbsorptionResult, evaluate_absorption
from saescope.eval.interp.common import InterpOptions, InterpResult, ProbeDataSpec
from saescope.eval.interp.probing import ProbingConfig, ProbingResult, evaluate_probing
from saescope.models.loading import LoadedModel

InterpMetric = Callable[[EvalTarget, LoadedModel, InterpOptions], InterpResult]


def _is_transcoder(target: EvalTarget) -> bool:
    return target.site_out not in (None, target.site)


def run_absorption(target: EvalTarget, loaded: LoadedModel, options: InterpOptions) -> InterpResult:
    return evaluate_absorption(target.sae, target.site, loaded, transcoder=_is_transcoder(target), options=options)


def run_probing(target: EvalTarget, loaded: LoadedModel, options: InterpOptions) -> InterpResult:
    return evaluate_probing(target.sae, target.site, loaded, options=options)


#: Every interpretability metric by the name `saescope eval --interp` takes.
INTERP_METRICS: dict[str, InterpMetric] = {
    "absorption": run_absorption,
    "probing": run_probing,
}

__all__ = [
    "INTERP_METRICS",
    "AbsorptionConfig",
    "AbsorptionResult",
    "InterpMetric",
    "InterpOptions",
    "InterpResult",
    "ProbeDataSpec",
    "ProbingConfig",
    "ProbingResult",
    "evaluate_absorption",
    "evaluate_probing",
]

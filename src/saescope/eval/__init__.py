"""Evaluation: reconstruction and delta-LM-loss metrics for every dictionary of a suite, tables, plots, report."""

from saescope.eval.evaluate import EvalConfig, EvalTarget, evaluate

__all__ = ["EvalConfig", "EvalTarget", "evaluate"]

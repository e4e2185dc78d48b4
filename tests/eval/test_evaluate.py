"""Evaluation's sample of the held-out split."""

from __future__ import annotations

from saescope.eval.evaluate import EvalConfig


def test_the_sample_holds_the_reconstruction_tokens_and_the_loss_windows() -> None:
    assert EvalConfig(tokens=1_000, loss_windows=2).sample_windows(context_size=256) == 4  # 255 tokens a window
    assert EvalConfig(tokens=10, loss_windows=9).sample_windows(context_size=256) == 9

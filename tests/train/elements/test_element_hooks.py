"""The training loop calls every element's hooks at the points `RecipeElement` states, whatever the element."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from element_fixtures import jumprelu_spec, sparse_tokens, trainer_for

from saescope.models.sites import Site
from saescope.sae import AnyDictionary
from saescope.train.elements import Member, RecipeElement, TrainingRun

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(RecipeElement):
    """Records each hook call as (hook, step or member name)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.run: TrainingRun | None = None

    def on_first_run_batch(self, batch: Mapping[Site, torch.Tensor], norm_scales: Mapping[Site, float]) -> None:
        self.calls.append(("on_first_run_batch", sorted(site.id for site in batch)))

    def on_first_batch(self, member: Member, x_BD: torch.Tensor, y_BD: torch.Tensor) -> None:
        self.calls.append(("on_first_batch", member.spec.name))

    def after_step(self, member: Member, x_BD: torch.Tensor, firing_counts_F: torch.Tensor) -> None:
        self.calls.append(("after_step", member.spec.name))

    def at_end(self, run: TrainingRun) -> None:
        self.calls.append(("at_end", run.step))

    def on_save(self, member: Member, sae: AnyDictionary) -> None:
        self.calls.append(("on_save", member.spec.name))


def test_each_hook_is_called_at_its_point_of_the_loop_and_the_first_batch_hooks_not_on_resume(tmp_path: Path) -> None:
    specs = [jumprelu_spec(), dataclasses.replace(jumprelu_spec(), name="b")]
    trainer = trainer_for(specs, tmp_path, sparse_tokens(4 * 512, 0), total_tokens=3 * 512, checkpoint_every_steps=2)
    recorder = Recorder()
    trainer.elements.append(recorder)
    trainer.run(max_steps=2)
    assert recorder.calls == [
        ("on_first_run_batch", ["layer_0/res"]),
        ("on_first_batch", "jr"), ("after_step", "jr"), ("on_first_batch", "b"), ("after_step", "b"),
        ("after_step", "jr"), ("after_step", "b"),
        ("at_end", 2), ("on_save", "jr"), ("on_save", "b"),
    ]  # fmt: skip
    resumed = trainer_for(specs, tmp_path, sparse_tokens(4 * 512, 0), total_tokens=3 * 512, checkpoint_every_steps=2)
    recorder = Recorder()
    resumed.elements.append(recorder)
    resumed.run()
    assert recorder.calls == [
        ("after_step", "jr"), ("after_step", "b"), ("at_end", 3), ("on_save", "jr"), ("on_save", "b"),
    ]  # fmt: skip

"""Golden pin of the named recipes on a tiny random model: what `saescope run`'s training stage produces, bit for
bit (weights, final metrics, saved settings), so that moving recipe code around cannot change it unnoticed.

See tests/golden_pins.py for how to regenerate the pins when a change is meant to change training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden_pins import check_against_golden
from saescope.pipeline import RunConfig, SuiteRun
from tiny_models import build_tiny_model, build_tiny_tokenizer

GOLDEN = Path(__file__).parent / "golden"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("golden")
    model_dir = root / "tiny-gemma3"
    build_tiny_model("gemma3").save_pretrained(model_dir)
    build_tiny_tokenizer().save_pretrained(model_dir)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(f"w{(7 * i + j * j) % 90}" for j in range(30))}) + "\n"
                              for i in range(2000)))  # fmt: skip
    return model_dir, corpus


@pytest.mark.parametrize("recipe", ["saescope", "gemma-scope"])
def test_training_with_a_named_recipe_matches_its_golden_pin(
    recipe: str, tiny_setup: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, corpus = tiny_setup
    config = RunConfig(
        model=str(model_dir), corpus=str(corpus), kinds="sae,transcoder", sites="1/res+att+mlp", widths="32",
        target_l0=4, recipe=recipe, context_size=16, tokens=2048, batch_size=256, batch_windows=4, norm_tokens=256,
        shuffle_buffer_tokens=512, checkpoint_every_steps=4, seed=3,
    )  # fmt: skip
    folder = tmp_path / "run"
    SuiteRun.create(folder, config, log=lambda _: None).execute(until="train")
    check_against_golden(folder / "train", GOLDEN / f"tiny-{recipe}.json")

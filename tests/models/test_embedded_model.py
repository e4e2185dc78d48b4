"""Integration tests on the real embedded Gemma 3 270M (slow: converts the GGUF once, ~1 min)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from saescope.models import loading
from saescope.models.hooks import capture
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import SiteKind, select_sites

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty saescope cache, so the GGUF conversion itself is exercised."""
    cache = tmp_path_factory.mktemp("saescope-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(loading.CACHE_ENV, str(cache))
        yield cache


@pytest.fixture(scope="module")
def gemma(fresh_cache: Path) -> LoadedModel:
    first = load_model("gemma-3-270m")
    assert first.info.source == "embedded (GGUF, converted now)"
    assert (fresh_cache / "models" / "gemma-3-270m" / "model.safetensors").is_file()
    return first


def test_second_load_reads_the_converted_cache(gemma: LoadedModel) -> None:
    second = load_model("gemma-3-270m")
    assert second.info.source == "embedded (converted cache)"
    first_params = dict(gemma.model.named_parameters())
    for name, value in second.model.named_parameters():
        assert torch.equal(value, first_params[name]), name


def test_model_facts(gemma: LoadedModel) -> None:
    info = gemma.info
    assert (info.architecture, info.n_layers, info.d_model, info.d_attn, info.vocab_size) == (
        "Gemma3ForCausalLM", 18, 640, 1024, 262144
    )  # fmt: skip
    assert (info.bos_token_id, info.eos_token_id, info.pad_token_id) == (2, 1, 0)


def test_knows_the_capital_of_france(gemma: LoadedModel) -> None:
    tokenizer, model = gemma.tokenizer, gemma.model
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    assert prompt["input_ids"][0, 0].item() == 2  # the tokenizer prepends BOS
    with torch.no_grad():
        next_logits = model(**prompt).logits[0, -1]
    top3 = [tokenizer.decode(int(i)).strip() for i in next_logits.topk(3).indices]
    assert "Paris" in top3
    # The Q4_K_M base model's single greedy choice after "is" is " the" ("...is the capital of the
    # country of France"), so the greedy check names the city one step later.
    prompt = tokenizer("The capital of France is the city of", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :])


def test_all_54_sites_have_the_gemma_scope_widths(gemma: LoadedModel) -> None:
    sites = select_sites("all", 18)
    ids = gemma.tokenizer(["Sparse autoencoders on every layer."], return_tensors="pt")
    captured = capture(gemma.model, sites, ids["input_ids"], ids["attention_mask"])
    expected = {SiteKind.RES: 640, SiteKind.ATT: 1024, SiteKind.MLP: 640}
    assert len(captured) == 54
    for site, value in captured.items():
        assert value.shape == (1, ids["input_ids"].shape[1], expected[site.kind]), site
        assert torch.isfinite(value).all(), site

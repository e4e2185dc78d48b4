"""Shared fixtures: tiny randomly initialised models of every supported architecture (fast, seeded)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 96


def _gemma2() -> PretrainedConfig:
    return Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=8, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, attn_implementation="eager",
    )  # fmt: skip


def _gemma3() -> PretrainedConfig:
    # head_dim * heads (64) differs from hidden_size (32), as in the real 270M (1024 vs 640).
    return Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention",
        "sliding_attention"],
    )  # fmt: skip


def _llama() -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip


def _qwen2() -> PretrainedConfig:
    return Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip


def _gpt2() -> PretrainedConfig:
    return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)


def _gpt_neox() -> PretrainedConfig:
    return GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
    )  # fmt: skip


TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "llama": _llama,
    "qwen2": _qwen2,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}


def build_tiny_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(TINY_CONFIGS[name]())
    return model.eval().requires_grad_(False)


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_model(request: pytest.FixtureRequest) -> nn.Module:
    return build_tiny_model(request.param)


@pytest.fixture(params=["gemma2", "gemma3"])
def tiny_gemma(request: pytest.FixtureRequest) -> nn.Module:
    return build_tiny_model(request.param)


@pytest.fixture
def token_batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (2, 12), generator=generator)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a fixed vocabulary, with Gemma's special-token ids (pad 0, eos 1, bos 2)."""
    words = ["<pad>", "<eos>", "<bos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 4)]
    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A local model folder (tiny Gemma 3 + tokenizer), as a user's own checkpoint would look."""
    folder = tmp_path / "tiny-gemma3"
    build_tiny_model("gemma3").save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A .txt corpus of the tiny tokenizer's words (as one document, cut at paragraph breaks)."""
    rng = random.Random(0)
    paragraphs = [" ".join(f"w{rng.randrange(90)}" for _ in range(rng.randrange(20, 60))) for _ in range(80)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Path:
    """400 short documents of the tiny tokenizer's words: enough for a held-out split (2%, ~8 documents)."""
    rng = random.Random(1)
    lines = [json.dumps({"text": " ".join(f"w{rng.randrange(90)}" for _ in range(40))}) for _ in range(400)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: tiny matmuls gain nothing from threads, and oversubscribed threads stall
    badly on a busy CPU (`pytestmark = pytest.mark.usefixtures("one_thread")` in a module)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Tiny instruction-tuned stand-ins: a word-level tokenizer with Gemma's turn tokens and a chat template,
and model folders built from the tiny Gemma 3 of conftest (shared by the chat, rollout and PT/IT tests)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from tiny_models import VOCAB, build_tiny_model

START, END, USER, MODEL = 4, 5, 6, 7  # ids of <start_of_turn>, <end_of_turn>, user, model
SPECIAL = (0, 1, 2)  # pad, eos, bos
N_WORDS = VOCAB - 8  # w0 ... w87
#: Gemma's turn format written the way an IT tokenizer ships it (not saescope's built-in copy).
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (m['content'] | trim) + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def build_chat_tokenizer(*, with_template: bool = True) -> PreTrainedTokenizerFast:
    """Gemma's special ids (pad 0, eos 1, bos 2), the turn tokens as added special tokens (absent from
    ``all_special_ids``, as in Gemma's tokenizer), the words ``user`` and ``model``, then w0..w87."""
    words = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "user", "model"]
    words += [f"w{i}" for i in range(N_WORDS)]
    backend = Tokenizer(WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.add_tokens([AddedToken("<start_of_turn>", special=True), AddedToken("<end_of_turn>", special=True)])
    if with_template:
        tokenizer.chat_template = TEMPLATE
    return tokenizer


def chat_model_dir(folder: Path, *, seed: int = 0, with_template: bool = True, architecture: str = "gemma3") -> Path:
    """A local model folder: a tiny model of conftest (weights from ``seed``) and the chat tokenizer."""
    build_tiny_model(architecture, seed=seed).save_pretrained(folder)
    build_chat_tokenizer(with_template=with_template).save_pretrained(folder)
    return folder


def random_text(rng: random.Random, n_words: int) -> str:
    return " ".join(f"w{rng.randrange(N_WORDS)}" for _ in range(n_words))


def write_prompts(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` prompts of 3-8 random words as a .jsonl file with a ``prompt`` field."""
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"prompt": random_text(rng, rng.randrange(3, 9))}) + "\n" for _ in range(n)))
    return path


def write_conversations(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` user/assistant exchanges as a .jsonl file with a ``messages`` field (rollouts' layout)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        messages = [
            {"role": "user", "content": random_text(rng, rng.randrange(4, 12))},
            {"role": "assistant", "content": random_text(rng, rng.randrange(8, 20))},
        ]
        lines.append(json.dumps({"messages": messages}) + "\n")
    path.write_text("".join(lines))
    return path

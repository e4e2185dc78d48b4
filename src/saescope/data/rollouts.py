"""Rollouts: a model's sampled responses to prompts, stored as conversations (method §3.5, §7.6).

Gemma Scope 1 evaluated its IT SAEs on rollouts of the IT model sampled at temperature 1.0; Gemma Scope 2
finetuned its IT SAEs on rollouts. :func:`generate_rollouts` makes them for any causal LM with a chat
template:

* each prompt is rendered with the chat template (a user turn, then the model-turn prefix) and the response
  is sampled at ``temperature`` (plain sampling: no top-k or top-p; 0 means greedy) for at most
  ``max_new_tokens`` tokens, stopping at EOS or at the template's end-of-turn token;
* each prompt's tokens are drawn from its own generator, seeded by (seed, prompt index): its random draws
  do not depend on the other prompts of its batch, and a resumed run writes the same rollouts;
* prompts go through the model in left-padded batches; each finished batch is written atomically to
  ``shards/batch_NNNNN.jsonl`` and ``manifest.json`` pins the settings, so a killed run resumes at the first
  missing batch (and refuses other settings);
* when every batch is done, ``rollouts.jsonl`` holds one conversation per prompt, in prompt order::

      {"id": "rollout-000012", "prompt_index": 12, "finish_reason": "stop" | "length", "response_tokens": 87,
       "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}

  It is a corpus like any other: ``--corpus DIR/rollouts.jsonl --text-field messages --chat`` trains or
  evaluates on it with the chat mask (the user-turn prefix and special tokens dropped).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from saescope.atomic import atomic_write_json, atomic_write_text
from saescope.data.chat import TOKENIZER_TEMPLATE, ChatFormat, ChatMessage, conversation_chat, parse_messages
from saescope.models.loading import LoadedModel

ROLLOUTS_FILE = "rollouts.jsonl"
MANIFEST = "manifest.json"
SHARDS = "shards"
FORMAT = "saescope-rollouts-v1"
#: Upper bound of ``max_new_tokens``: a rollout is one model turn, not a whole document.
MAX_NEW_TOKENS_LIMIT = 8192


class RolloutError(ValueError):
    """Bad prompts, settings, or an output folder made with other settings; the message says what to do."""


@dataclass(frozen=True)
class RolloutConfig:
    """How responses are sampled; every field is pinned in the output's manifest."""

    temperature: float = 1.0  # Gemma Scope 1's rollouts; 0 = greedy
    max_new_tokens: int = 256
    batch_size: int = 8
    seed: int = 0
    chat_template: str = TOKENIZER_TEMPLATE  # "tokenizer", "gemma" or a Jinja template file

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise RolloutError(f"temperature must be a finite number >= 0 (0 = greedy); got {self.temperature!r}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise RolloutError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS_LIMIT}]; got {self.max_new_tokens!r}")
        if self.batch_size < 1:
            raise RolloutError(f"batch_size must be >= 1; got {self.batch_size!r}")
        if self.seed < 0:
            raise RolloutError(f"seed must be >= 0; got {self.seed!r}")


@dataclass(frozen=True)
class RolloutReport:
    path: Path  # rollouts.jsonl
    n_rollouts: int
    generated_now: int  # prompts sampled by this call (the rest came from earlier, interrupted calls)
    seconds: float


def read_prompts(path: Path, field: str = "prompt") -> list[tuple[ChatMessage, ...]]:
    """Prompts from a ``.txt`` file (one per non-empty line) or a ``.jsonl`` file whose ``field`` holds a
    string (one user message) or a ``messages`` list ending with a user message (a conversation to continue)."""
    if not path.is_file():
        raise RolloutError(f"prompt file {path} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts: list[tuple[ChatMessage, ...]]
    if path.suffix.lower() == ".txt":
        prompts = [(ChatMessage("user", line.strip()),) for line in lines if line.strip()]
    elif path.suffix.lower() == ".jsonl":
        prompts = [
            _jsonl_prompt(line, f"{path}:{number}", field) for number, line in enumerate(lines, 1) if line.strip()
        ]
    else:
        raise RolloutError(f"{path}: prompts must be a .txt file (one per line) or a .jsonl file")
    if not prompts:
        raise RolloutError(f"{path} holds no prompt")
    return prompts


def _jsonl_prompt(line: str, where: str, field: str) -> tuple[ChatMessage, ...]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise RolloutError(f"{where} is not valid JSON ({error})") from error
    if not isinstance(record, dict) or field not in record:
        raise RolloutError(f"{where} has no field {field!r}; set the prompt field (--prompt-field)")
    value = record[field]
    if isinstance(value, str):
        if not value.strip():
            raise RolloutError(f"{where}: empty prompt")
        return (ChatMessage("user", value),)
    messages = parse_messages(value, where)
    if messages[-1].role != "user":
        raise RolloutError(f"{where}: a prompt conversation must end with a user message")
    return messages


def _prompt_seed(seed: int, index: int) -> int:
    """A 63-bit seed for prompt ``index``: the same on every machine and for every batch composition."""
    return int.from_bytes(hashlib.sha256(f"saescope-rollout:{seed}:{index}".encode()).digest()[:8], "big") >> 1


class _SeededSampler(LogitsProcessor):
    """Draws each row's next token from softmax(logits / T) with that row's own generator, then leaves only
    that token possible, so greedy decoding emits it: sampling stays per prompt inside a batch."""

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.generators: list[torch.Generator] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.generators:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        if self.temperature == 0:
            picks_B = scores.argmax(dim=-1)
        else:
            probs_BV = torch.softmax(scores.float() / self.temperature, dim=-1)
            picks_B = torch.cat(
                [torch.multinomial(p, 1, generator=g) for p, g in zip(probs_BV, self.generators, strict=True)]
            )
        forced_BV = torch.full_like(scores, float("-inf"))
        forced_BV[torch.arange(scores.shape[0], device=scores.device), picks_B] = 0.0
        return forced_BV  # type: ignore[return-value]


def _stop_ids(loaded: LoadedModel, chat: ChatFormat) -> list[int]:
    """EOS of the model's generation config and of the tokenizer, and the template's end-of-turn token."""
    configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, list) else [configured]
    ids += [loaded.tokenizer.eos_token_id, *chat.stop_token_ids()]
    return sorted({int(i) for i in ids if isinstance(i, int)})


def _left_padded(sequences: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask, padded on the left so that every prompt ends where generation starts."""
    length = max(len(ids) for ids in sequences)
    ids_BT = torch.full((len(sequences), length), pad, dtype=torch.long)
    attention_BT = torch.zeros_like(ids_BT)
    for row, ids in enumerate(sequences):
        ids_BT[row, length - len(ids) :] = torch.tensor(ids)
        attention_BT[row, length - len(ids) :] = 1
    return ids_BT, attention_BT


@torch.no_grad()
def _sample_batch(
    loaded: LoadedModel, chat: ChatFormat, prompts: Sequence[tuple[ChatMessage, ...]], first_index: int,
    config: RolloutConfig, stops: list[int],
) -> list[dict[str, Any]]:  # fmt: skip
    """One generate call for ``prompts`` (prompt indices from ``first_index``): their rollout records."""
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else stops[0]
    ids_BT, attention_BT = _left_padded([e.ids for e in chat.encode(map(conversation_chat, prompts))], pad)
    seeds = [_prompt_seed(config.seed, first_index + i) for i in range(len(prompts))]
    generation = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=config.max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad
    )
    device = next(loaded.model.parameters()).device
    generate = getattr(loaded.model, "generate")  # noqa: B009 (untyped transformers mixin method)
    output_BT = generate(
        input_ids=ids_BT.to(device), attention_mask=attention_BT.to(device), generation_config=generation,
        logits_processor=LogitsProcessorList([_SeededSampler(seeds, config.temperature)]),
    )  # fmt: skip
    records = []
    for row, messages in enumerate(prompts):
        new = [int(t) for t in output_BT[row, ids_BT.shape[1] :].tolist()]
        end = next((i for i, token in enumerate(new) if token in stops), None)
        response = new if end is None else new[:end]
        text = loaded.tokenizer.decode(response, skip_special_tokens=True).strip()
        index = first_index + row
        records.append({
            "id": f"rollout-{index:06d}", "prompt_index": index,
            "finish_reason": "length" if end is None else "stop", "response_tokens": len(response),
            "messages": [m.to_dict() for m in messages] + [{"role": "assistant", "content": text}],
        })  # fmt: skip
    return records


def _shard_path(out_dir: Path, batch: int) -> Path:
    return out_dir / SHARDS / f"batch_{batch:05d}.jsonl"


def _open_manifest(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    path = out_dir / MANIFEST
    if path.exists():
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        differences = [
            f"{key}: folder has {manifest['settings'].get(key)!r}, asked for {value!r}"
            for key, value in settings.items()
            if manifest.get("settings", {}).get(key) != value
        ]
        if differences:
            raise RolloutError(
                f"{out_dir} holds rollouts made with other settings ({'; '.join(differences)}). "
                "Choose another output folder, or delete this one to start again."
            )
        return manifest
    manifest = {"format": FORMAT, "settings": settings, "complete": False}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)
    return manifest


def generate_rollouts(
    loaded: LoadedModel,
    prompts: Sequence[tuple[ChatMessage, ...]],
    out_dir: Path,
    config: RolloutConfig,
    *,
    progress: bool = True,
) -> RolloutReport:
    """Sample one response per prompt into ``out_dir`` (see the module docstring); resumes a partial folder."""
    started = time.perf_counter()
    if not prompts:
        raise RolloutError("no prompt to answer")
    chat = ChatFormat(loaded.tokenizer, config.chat_template)
    prompts_json = json.dumps([[m.to_dict() for m in p] for p in prompts], sort_keys=True).encode("utf-8")
    settings = {
        "model": loaded.info.name,
        "n_prompts": len(prompts),
        "prompts_sha256": hashlib.sha256(prompts_json).hexdigest(),
        **asdict(config),
    }
    manifest = _open_manifest(out_dir, settings)
    final = out_dir / ROLLOUTS_FILE
    if manifest["complete"] and final.is_file():
        return RolloutReport(final, len(prompts), 0, time.perf_counter() - started)
    stops = _stop_ids(loaded, chat)
    n_batches = -(-len(prompts) // config.batch_size)
    todo = [b for b in range(n_batches) if not _shard_path(out_dir, b).is_file()]
    done_prompts = len(prompts) - sum(len(prompts[b * config.batch_size : (b + 1) * config.batch_size]) for b in todo)
    with tqdm(total=len(prompts), initial=done_prompts, unit="prompt", disable=not progress, desc="rollouts") as bar:
        for batch in todo:
            first = batch * config.batch_size
            chunk = prompts[first : first + config.batch_size]
            records = _sample_batch(loaded, chat, chunk, first, config, stops)
            atomic_write_text(_shard_path(out_dir, batch), "".join(json.dumps(r) + "\n" for r in records))
            bar.update(len(chunk))
    text = "".join(_shard_path(out_dir, b).read_text(encoding="utf-8") for b in range(n_batches))
    atomic_write_text(final, text)
    atomic_write_json(out_dir / MANIFEST, {**manifest, "complete": True, "n_rollouts": len(prompts)})
    generated = sum(len(prompts[b * config.batch_size : (b + 1) * config.batch_size]) for b in todo)
    return RolloutReport(final, len(prompts), generated, time.perf_counter() - started)

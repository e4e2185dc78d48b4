"""The model at work behind the explorer's live pages: search by text and steering.

The model and the dictionaries load on the first request that needs them (a few seconds for Gemma 3 270M),
under a lock; every later request reuses them. One request at a time runs the model, because steering hooks
are installed on the shared model for the duration of a generation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from saescope.data.windows import special_token_ids, special_token_mask
from saescope.explore.sources import Dictionary, read_dictionaries
from saescope.explore.store import short_float
from saescope.models.hooks import capture, splice
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import Site

#: Longest prompt (in tokens, BOS included) that search and steering accept.
MAX_PROMPT_TOKENS = 256
#: Most bytes a search answer may take in JSON, bounded before the model runs (:func:`search_answer_bytes`).
MAX_SEARCH_ANSWER_BYTES = 16 * 1024 * 1024
#: Upper bounds of one JSON entry of a search answer: a per-token latent (``{"latent": 2147483647, "value":
#: -1.234567e-05}, ``) and one activation value of a listed latent (``-1.234567e-05, ``).
_PER_TOKEN_ENTRY_BYTES = 50
_VALUE_BYTES = 15


class LiveUnavailableError(RuntimeError):
    """The model or the dictionaries cannot be loaded for live pages; the message says why."""


class PromptTooLongError(ValueError):
    """The prompt has more tokens than :data:`MAX_PROMPT_TOKENS`."""


class SearchTooLargeError(ValueError):
    """A search would answer with more than its byte bound; the message says what to ask for instead."""


def search_answer_bytes(n_dictionaries: int, n_tokens: int, per_token: int, features: int) -> int:
    """An upper bound of the JSON size of a search answer's latents: per dictionary and token, ``per_token``
    entries and one activation value for each of its ``features`` listed latents."""
    return n_dictionaries * n_tokens * (per_token * _PER_TOKEN_ENTRY_BYTES + features * _VALUE_BYTES)


@dataclass(frozen=True)
class Intervention:
    """Add ``coefficient`` times a latent's decoder directions where its dictionary writes (for a block of a
    multi-layer dictionary: at its own output site and, through its cross decoders, at every later one)."""

    sae: str
    latent: int
    coefficient: float


class LiveModel:
    """The model and the suite's dictionaries, loaded on first use; see the module docstring."""

    def __init__(
        self,
        model_name: str,
        dictionaries: Path,
        *,
        load: Callable[[str], LoadedModel] = load_model,
    ) -> None:
        """``load`` turns ``model_name`` into a loaded model (default: :func:`saescope.models.load_model` on
        the CPU in float32); ``dictionaries`` is the run or release the index was built from."""
        self.model_name = model_name
        self.dictionaries_path = dictionaries
        self._load = load
        self._lock = threading.Lock()
        self._loaded: LoadedModel | None = None
        self._dictionaries: dict[str, Dictionary] = {}

    def _ensure_loaded(self) -> tuple[LoadedModel, dict[str, Dictionary]]:
        """Call with the lock held."""
        if self._loaded is None:
            try:
                loaded = self._load(self.model_name)
                found = read_dictionaries(self.dictionaries_path).dictionaries
            except Exception as error:  # any load failure becomes one clear 503 for the pages
                raise LiveUnavailableError(
                    f"live search needs the model {self.model_name!r} and the dictionaries in "
                    f"{self.dictionaries_path}, which could not be loaded: {error}"
                ) from error
            device = next(loaded.model.parameters()).device
            self._dictionaries = {d.name: d.to(device) for d in found}
            self._loaded = loaded
        return self._loaded, self._dictionaries

    def _prompt(self, loaded: LoadedModel, text: str) -> torch.Tensor:
        tokenizer = loaded.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        ids = ([bos] if isinstance(bos, int) else []) + list(ids)
        if len(ids) > MAX_PROMPT_TOKENS:
            raise PromptTooLongError(f"the prompt has {len(ids)} tokens; the limit is {MAX_PROMPT_TOKENS}")
        device = next(loaded.model.parameters()).device
        return torch.tensor([ids], dtype=torch.long, device=device)

    def _chosen(self, dictionaries: dict[str, Dictionary], names: Sequence[str]) -> list[Dictionary]:
        missing = [name for name in names if name not in dictionaries]
        if missing:
            raise KeyError(f"unknown dictionaries {missing}")
        return [dictionaries[name] for name in names] if names else list(dictionaries.values())

    @torch.no_grad()
    def search(
        self, text: str, names: Sequence[str], *, per_token: int, features: int,
        max_bytes: int = MAX_SEARCH_ANSWER_BYTES,
    ) -> dict[str, Any]:  # fmt: skip
        """Per token, the top latents of every chosen dictionary (each named once however often it is asked
        for; all when ``names`` is empty); per dictionary, its most active latents with their activation on
        every token. BOS and other special tokens never activate anything here. Raises
        :class:`SearchTooLargeError`, before running the model, when the answer could exceed ``max_bytes``."""
        with self._lock:
            loaded, dictionaries = self._ensure_loaded()
            chosen = self._chosen(dictionaries, list(dict.fromkeys(names)))
            ids_BT = self._prompt(loaded, text)
            bound = search_answer_bytes(len(chosen), ids_BT.shape[1], per_token, features)
            if bound > max_bytes:
                raise SearchTooLargeError(
                    f"searching {len(chosen)} dictionaries over {ids_BT.shape[1]} tokens with per_token={per_token} "
                    f"and features={features} could answer with {bound / 1e6:.1f} MB; the limit is "
                    f"{max_bytes / 1e6:.1f} MB: choose fewer dictionaries (saes), lower per_token or features, or "
                    "shorten the prompt"
                )
            acts = capture(loaded.model, sorted({d.site for d in chosen}), ids_BT)
            keep_T1 = special_token_mask(ids_BT, special_token_ids(loaded.tokenizer))[0].unsqueeze(1)
            results = []
            for d in chosen:
                codes_TF = d.sae.encode(acts[d.site][0].float()) * keep_T1
                results.append({"sae": d.name, "site": d.site.id, **_search_result(codes_TF, per_token, features)})
            token_ids = ids_BT[0].tolist()
            return {"tokens": _token_texts(loaded, token_ids), "token_ids": token_ids, "saes": results}

    @torch.no_grad()
    def steer(
        self,
        text: str,
        interventions: Sequence[Intervention],
        *,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> dict[str, Any]:
        """The default and the steered continuation of ``text``, generated with the same seed."""
        with self._lock:
            loaded, dictionaries = self._ensure_loaded()
            chosen = self._chosen(dictionaries, [i.sae for i in interventions])
            vectors: dict[Site, torch.Tensor] = {}
            for d, intervention in zip(chosen, interventions, strict=True):
                if not 0 <= intervention.latent < d.sae.config.width:
                    raise KeyError(f"{d.name} has no latent {intervention.latent}")
                for site, W_dec_FD in d.writes:  # a CLT latent writes to its own and every later layer
                    direction_D = W_dec_FD[intervention.latent].detach()
                    total_D = vectors.get(site, torch.zeros_like(direction_D))
                    vectors[site] = total_D + intervention.coefficient * direction_D
            ids_BT = self._prompt(loaded, text)
            default_ids = _generate(loaded, ids_BT, {}, max_new_tokens, temperature, seed)
            steered_ids = _generate(loaded, ids_BT, vectors, max_new_tokens, temperature, seed)
            return {
                "prompt_tokens": _token_texts(loaded, ids_BT[0].tolist()),
                "default": loaded.tokenizer.decode(default_ids, skip_special_tokens=True),
                "steered": loaded.tokenizer.decode(steered_ids, skip_special_tokens=True),
                "default_tokens": _token_texts(loaded, default_ids),
                "steered_tokens": _token_texts(loaded, steered_ids),
            }


def _token_texts(loaded: LoadedModel, token_ids: list[int]) -> list[str]:
    texts: list[str] = loaded.tokenizer.batch_decode([[i] for i in token_ids])
    return texts


def _search_result(codes_TF: torch.Tensor, per_token: int, features: int) -> dict[str, Any]:
    top = codes_TF.topk(min(per_token, codes_TF.shape[1]), dim=1)
    per_token_lists = [
        [{"latent": int(j), "value": short_float(v)} for v, j in zip(values, latents, strict=True) if v > 0]
        for values, latents in zip(top.values, top.indices, strict=True)
    ]
    max_F, argmax_F = codes_TF.max(dim=0)
    best = max_F.topk(min(features, len(max_F)))
    return {
        "per_token": per_token_lists,
        "features": [
            {
                "latent": int(j), "max_value": short_float(v), "max_index": int(argmax_F[j]),
                "values": [short_float(a) for a in codes_TF[:, j].tolist()],
            }
            for v, j in zip(best.values, best.indices, strict=True)
            if v > 0
        ],
    }  # fmt: skip


def _generate(
    loaded: LoadedModel,
    ids_BT: torch.Tensor,
    vectors: dict[Site, torch.Tensor],
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[int]:
    """Generate after ``ids_BT`` with ``vectors`` added at their sites on every position but BOS."""

    def adder(vector_D: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def add(x_BTD: torch.Tensor) -> torch.Tensor:
            steered = x_BTD + vector_D.to(x_BTD.dtype)
            if x_BTD.shape[1] == ids_BT.shape[1]:  # the prompt's own forward: leave BOS alone
                steered[:, 0] = x_BTD[:, 0]
            return steered

        return add

    torch.manual_seed(seed)
    sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {}
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate = cast(Callable[..., torch.Tensor], loaded.model.generate)
    with splice(loaded.model, {site: adder(v) for site, v in vectors.items()}):
        out = generate(
            input_ids=ids_BT, attention_mask=torch.ones_like(ids_BT), max_new_tokens=max_new_tokens,
            min_new_tokens=1, pad_token_id=pad, **({"do_sample": False} | sampling),
        )  # fmt: skip
    new_ids: list[int] = out[0, ids_BT.shape[1] :].tolist()
    return new_ids

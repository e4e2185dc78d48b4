"""Automated interpretability: an explainer LLM explains latents, a scorer LLM checks the explanations.

For a sample of a dictionary's live latents, stratified by firing frequency (equal-width bins of log10 density,
drawn round-robin so rare and frequent latents are both represented), from a feature index
(:mod:`saescope.explore.store`):

1. **Explanation.** The explainer reads the latent's top-activating contexts and uniformly sampled firing
   contexts (the index's interval samples), its firing tokens marked ``<<like this>>``, and writes one short
   explanation.
2. **Detection scoring** (EleutherAI's detection score; Gemma Scope 2 reports autointerp this way). The scorer is
   shown the explanation and, one at a time, held-out activating contexts (firing contexts the explainer did
   not see) and as many non-activating contexts, and answers whether the latent fires somewhere in the text.
   The latent's score is the accuracy over those balanced contexts: 0.5 is chance, 1.0 is perfect.

Non-activating contexts come from the index alone: contexts of the same dictionary's other latents, taken from
windows in which the index recorded no firing of this latent. The index does not hold every activation, so a
context of ``n`` tokens of a latent with density ``d`` may still hold an unrecorded firing, with probability
at most about ``n · d``: for the densest latents the score is slightly pessimistic.

**Summary per dictionary**: the mean detection accuracy over the scored latents, and the frequency-weighted
mean, ``sum_i d_i · a_i / sum_i d_i`` with ``d_i`` the latent's firing density and ``a_i`` its accuracy: the
expected accuracy on the latent behind a firing picked at random, which is what Gemma Scope 2 recommends
reporting, since a rarely firing latent matters less to what a reader of the dictionary sees.

The LLMs are pluggable behind :class:`LanguageModel` (``complete(prompt, max_new_tokens) -> str``): a local
Hugging Face causal LM (:class:`HuggingFaceLM`: the model's chat template when it has one, and yes/no answers
read from the log-probabilities of "Yes" and "No" rather than sampled), or an OpenAI-compatible endpoint
(:class:`OpenAICompatibleLM`, plain ``urllib``). Real explanations need a capable instruction-tuned model: the
embedded Gemma 3 270M base model runs the whole pipeline offline, but its explanations are mostly noise and its
detection scores sit near chance.

Results are cached in the index (tables ``explanations`` and ``detection_scores``, added in place when missing):
a rerun skips latents already scored with the same explainer and scorer, and reuses the explanations of the same
explainer for a new scorer.
"""

from __future__ import annotations

import json
import math
import random
import re
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tqdm import tqdm

from saescope.checks import check_at_least
from saescope.explore.store import AUTOINTERP_SCHEMA, IndexReader, SaeRow

#: Mark around a firing token in the explainer's contexts.
MARK_OPEN, MARK_CLOSE = "<<", ">>"
DEFAULT_STRATA = 5


# ------------------------------------------------------------------------------------------------
# Language models
# ------------------------------------------------------------------------------------------------


@runtime_checkable
class LanguageModel(Protocol):
    """An LLM that continues a prompt; ``name`` identifies it in the cache (same name = same answers)."""

    name: str

    def complete(self, prompt: str, max_new_tokens: int) -> str: ...


@runtime_checkable
class YesNoModel(Protocol):
    """An LLM that can say how much more likely it answers "Yes" than "No" (a local model's log-probabilities)."""

    def yes_log_odds(self, prompt: str) -> float: ...


def answers_yes(model: LanguageModel, prompt: str) -> bool:
    """The model's yes/no answer to ``prompt``: from the log-probabilities of "Yes" and "No" when it gives them
    (:class:`YesNoModel`), else from the first word it writes."""
    if isinstance(model, YesNoModel):
        return model.yes_log_odds(prompt) > 0
    return parse_yes(model.complete(prompt, 3))


def parse_yes(text: str) -> bool:
    """True when an answer starts with "yes" (any case, after spaces and punctuation)."""
    return re.sub(r"^[\s\"'*`.:,-]+", "", text).lower().startswith("yes")


class HuggingFaceLM:
    """A local Hugging Face causal LM (a :class:`saescope.models.loading.LoadedModel`): greedy completions, the
    tokenizer's chat template when it has one, and yes/no log-odds from the next-token distribution."""

    def __init__(self, loaded: Any, name: str) -> None:
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.name = name
        self._answers: dict[str, list[int]] = {}

    def _input_ids(self, prompt: str) -> Any:
        import torch

        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding in newer transformers
                ids = ids["input_ids"]
        else:
            ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        device = next(self.model.parameters()).device
        return torch.tensor([list(ids)], dtype=torch.long, device=device)

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        import torch

        input_ids = self._input_ids(prompt)
        with torch.no_grad():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )  # fmt: skip
        return str(self.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))

    def yes_log_odds(self, prompt: str) -> float:
        """log P(yes) - log P(no) for the next token, each the best of its spellings (" Yes", "Yes", " yes"...)."""
        import torch

        input_ids = self._input_ids(prompt)
        with torch.no_grad():
            logits_V = self.model(input_ids).logits[0, -1].float()
        log_probs_V = torch.log_softmax(logits_V, dim=-1)
        return float(log_probs_V[self._answer_ids("yes")].max() - log_probs_V[self._answer_ids("no")].max())

    def _answer_ids(self, word: str) -> list[int]:
        """The first token of each spelling of ``word`` (computed once per word)."""
        if word in self._answers:
            return self._answers[word]
        ids = set()
        for spelling in (word, word.capitalize(), " " + word, " " + word.capitalize()):
            encoded = self.tokenizer(spelling, add_special_tokens=False)["input_ids"]
            if encoded:
                ids.add(int(encoded[0]))
        self._answers[word] = sorted(ids)
        return self._answers[word]


def load_local_lm(model: str, *, device: str = "cpu", online: bool | None = None) -> HuggingFaceLM:
    """A local Hugging Face causal LM by name, folder or Hub id (default loader of saescope; the embedded
    Gemma 3 270M by its name)."""
    from saescope.models.loading import load_model

    return HuggingFaceLM(load_model(model, device=device, online=online), name=model)


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint refused or failed a request; the message names the URL and the cause."""


@dataclass
class OpenAICompatibleLM:
    """An OpenAI-compatible chat-completions endpoint (``POST {url}/chat/completions``), called with ``urllib``."""

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--explainer-url {self.url!r} must start with http:// or https://")
        self.name = f"{self.model}@{self.url}"

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        body = {
            "model": self.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_new_tokens, "temperature": 0,
        }  # fmt: skip
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        endpoint = self.url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise EndpointError(f"{endpoint} answered HTTP {error.code}: {error.read()[:300]!r}") from error
        except (urllib.error.URLError, TimeoutError, ValueError) as error:
            raise EndpointError(f"{endpoint} could not be used: {error}") from error
        try:
            return str(answer["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as error:
            raise EndpointError(f"{endpoint} answered without choices[0].message.content: {answer!r:.300}") from error


# ------------------------------------------------------------------------------------------------
# Contexts from the index
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """A span of text: its tokens and the latent's activation on each (zeros for a non-activating context)."""

    window: int
    position: int
    tokens: tuple[str, ...]
    acts: tuple[float, ...]

    def text(self) -> str:
        return "".join(self.tokens).replace("\n", " ")

    def marked(self) -> str:
        """The text with every firing token marked ``<<token>>``."""
        return "".join(
            f"{MARK_OPEN}{token}{MARK_CLOSE}" if act > 0 else token
            for token, act in zip(self.tokens, self.acts, strict=True)
        ).replace("\n", " ")


@dataclass(frozen=True)
class LatentContexts:
    """What the explainer sees and what the scorer is tested on, for one latent."""

    latent: int
    density: float
    explain: tuple[Context, ...]
    activating: tuple[Context, ...]
    non_activating: tuple[Context, ...]


def _context(example: dict[str, Any]) -> Context:
    return Context(example["window"], example["position"], tuple(example["tokens"]), tuple(example["acts"]))


def latent_contexts(
    reader: IndexReader, sae: SaeRow, latent: int, *, n_explain_top: int, n_explain_random: int, n_score: int,
    rng: random.Random, candidates: Sequence[tuple[int, int, int]] | None = None,
) -> LatentContexts:  # fmt: skip
    """The contexts of one latent: the explainer gets up to ``n_explain_top`` top examples and
    ``n_explain_random`` random interval samples; the scorer gets up to ``n_score`` other firing contexts and as
    many non-activating ones (see the module docstring), balanced. ``candidates`` are the dictionary's
    :func:`negative_candidates` (read here when not given; pass them when scoring many latents)."""
    feature = reader.feature(sae, latent)
    if feature is None:
        raise ValueError(f"{sae.name} has no latent {latent}")
    top = _unique([_context(e) for e in feature["top_examples"]])
    sampled = _unique([_context(e) for interval in feature["intervals"] for e in interval["examples"]])
    rng.shuffle(sampled)
    explain = top[:n_explain_top]
    seen = {(c.window, c.position) for c in explain}
    random_shown = [c for c in sampled if (c.window, c.position) not in seen][:n_explain_random]
    seen |= {(c.window, c.position) for c in random_shown}
    held_out = [c for c in sampled + top[n_explain_top:] if (c.window, c.position) not in seen]
    activating = held_out[:n_score]
    own_windows = {c.window for c in top + sampled}
    if candidates is None:
        candidates = negative_candidates(reader, sae)
    non_activating = _non_activating(reader, latent, own_windows, len(activating), rng, candidates)
    activating = activating[: len(non_activating)]
    return LatentContexts(latent, float(feature["density"]), tuple(explain + random_shown), tuple(activating),
                          tuple(non_activating))  # fmt: skip


def _unique(contexts: list[Context]) -> list[Context]:
    found: dict[tuple[int, int], Context] = {}
    for context in contexts:
        found.setdefault((context.window, context.position), context)
    return list(found.values())


def negative_candidates(reader: IndexReader, sae: SaeRow) -> list[tuple[int, int, int]]:
    """(latent, window, position) of every top example of ``sae``: where non-activating contexts are drawn from."""
    return sorted({(latent, window, position) for latent, _r, window, position, _v in reader.top_example_rows(sae)})


def _non_activating(
    reader: IndexReader, latent: int, own_windows: set[int], n: int, rng: random.Random,
    candidates: Sequence[tuple[int, int, int]],
) -> list[Context]:  # fmt: skip
    """Up to ``n`` contexts of other latents' top examples, from windows without a recorded firing of ``latent``."""
    allowed = sorted({(w, p) for f, w, p in candidates if f != latent and w not in own_windows})
    rng.shuffle(allowed)
    chosen = allowed[:n]
    windows = reader.window_tokens(w for w, _ in chosen)
    settings = reader.meta["settings"]
    before, after = int(settings["context_before"]), int(settings["context_after"])
    spans = {(w, p): windows[w][max(0, p - before) : p + after + 1] for w, p in chosen}
    texts = reader.token_texts(int(i) for ids in spans.values() for i in ids)
    return [
        Context(w, p, tuple(texts.get(int(i), "") for i in spans[w, p]), (0.0,) * len(spans[w, p])) for w, p in chosen
    ]


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------


def explanation_prompt(contexts: Sequence[Context]) -> str:
    lines = [
        "We are studying a feature (a latent) of a language model. It activates on some tokens of a text.",
        f"Below are texts where it activates; the tokens it activates on are marked {MARK_OPEN}like this{MARK_CLOSE}.",
        "",
    ]
    lines += [f"Text {i + 1}: {context.marked()}" for i, context in enumerate(contexts)]
    lines += ["", "In a few words, what does the feature detect? Answer with one short phrase.", "Explanation:"]
    return "\n".join(lines)


def clean_explanation(text: str) -> str:
    """The first non-empty line of the explainer's answer, without quotes or a leading label."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(explanation\s*:)?\s*", "", line, flags=re.IGNORECASE).strip().strip("\"'` ")
        if line:
            return line[:300]
    return ""


def detection_prompt(explanation: str, context: Context) -> str:
    return "\n".join([
        "A feature of a language model activates on text described as: " + explanation,
        "",
        "Text: " + context.text(),
        "",
        "Does the feature activate on any token of this text? Answer Yes or No.",
        "Answer:",
    ])  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Sampling latents
# ------------------------------------------------------------------------------------------------


def stratified_latents(densities: Sequence[float], n: int, *, strata: int = DEFAULT_STRATA, seed: int = 0) -> list[int]:
    """Up to ``n`` latents (indices into ``densities``) among those that fire, stratified by frequency:
    ``strata`` equal-width bins of log10 density, each shuffled with ``seed``, drawn from round-robin, so every
    bin that has latents is represented. The result is sorted."""
    alive = [i for i, d in enumerate(densities) if d > 0]
    if not alive or n <= 0:
        return []
    logs = {i: math.log10(densities[i]) for i in alive}
    low, high = min(logs.values()), max(logs.values())
    span = (high - low) or 1.0
    bins: list[list[int]] = [[] for _ in range(strata)]
    for i in alive:
        bins[min(strata - 1, int((logs[i] - low) / span * strata))].append(i)
    rng = random.Random(seed)
    for members in bins:
        rng.shuffle(members)
    chosen: list[int] = []
    while len(chosen) < min(n, len(alive)):
        for members in bins:
            if members and len(chosen) < n:
                chosen.append(members.pop())
    return sorted(chosen)


# ------------------------------------------------------------------------------------------------
# Scores and summaries
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentScore:
    sae: str
    latent: int
    density: float
    explanation: str
    accuracy: float
    n_activating: int
    n_non_activating: int
    true_positives: int
    true_negatives: int

    @property
    def n_contexts(self) -> int:
        return self.n_activating + self.n_non_activating

    @property
    def n_correct(self) -> int:
        return self.true_positives + self.true_negatives


def frequency_weighted_mean(scores: Sequence[LatentScore]) -> float:
    """``sum_i d_i · a_i / sum_i d_i``: accuracies weighted by firing density (NaN without scores)."""
    total = sum(s.density for s in scores)
    return sum(s.density * s.accuracy for s in scores) / total if total > 0 else math.nan


@dataclass(frozen=True)
class DictionaryAutointerp:
    """The detection scores of one dictionary's sampled latents, with their means."""

    sae: str
    scores: tuple[LatentScore, ...]
    skipped: int
    """Sampled latents without enough contexts to score (no held-out firing or no non-activating context)."""

    @property
    def mean_accuracy(self) -> float:
        return sum(s.accuracy for s in self.scores) / len(self.scores) if self.scores else math.nan

    @property
    def frequency_weighted_accuracy(self) -> float:
        return frequency_weighted_mean(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sae": self.sae, "n_scored": len(self.scores), "skipped": self.skipped,
            "mean_detection": self.mean_accuracy, "frequency_weighted_detection": self.frequency_weighted_accuracy,
        }  # fmt: skip


@dataclass(frozen=True)
class AutointerpSettings:
    """How many contexts each step uses; validated at construction."""

    n_explain_top: int = 10
    n_explain_random: int = 5
    n_score: int = 10
    explanation_tokens: int = 40
    strata: int = DEFAULT_STRATA
    seed: int = 0

    def __post_init__(self) -> None:
        check_at_least(
            self, ("n_explain_top", "n_score", "explanation_tokens", "strata"), 1, owner="autointerp setting "
        )
        check_at_least(self, ("n_explain_random",), 0, owner="autointerp setting ")


# ------------------------------------------------------------------------------------------------
# The cache (tables of the feature index)
# ------------------------------------------------------------------------------------------------


def open_for_scores(index_path: Path) -> sqlite3.Connection:
    """A writable connection to the index, with the autointerp tables created if missing (the migration)."""
    IndexReader(index_path)  # refuses a missing, damaged or foreign file before anything is written
    db = sqlite3.connect(index_path, timeout=30.0)
    db.executescript(AUTOINTERP_SCHEMA)
    return db


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cached_explanation(db: sqlite3.Connection, sae_id: int, latent: int, explainer: str) -> str | None:
    row = db.execute(
        "SELECT explanation FROM explanations WHERE sae_id = ? AND latent = ? AND explainer = ?",
        (sae_id, latent, explainer),
    ).fetchone()
    return str(row[0]) if row else None


def cached_score(db: sqlite3.Connection, sae: SaeRow, latent: int, density: float, explainer: str,
                 scorer: str) -> LatentScore | None:  # fmt: skip
    row = db.execute(
        "SELECT e.explanation, d.accuracy, d.n_activating, d.n_non_activating, d.true_positives, d.true_negatives "
        "FROM detection_scores AS d JOIN explanations AS e ON e.sae_id = d.sae_id AND e.latent = d.latent AND "
        "e.explainer = d.explainer WHERE d.sae_id = ? AND d.latent = ? AND d.explainer = ? AND d.scorer = ?",
        (sae.sae_id, latent, explainer, scorer),
    ).fetchone()
    if row is None:
        return None
    explanation, accuracy, n_pos, n_neg, tp, tn = row
    return LatentScore(sae.name, latent, density, str(explanation), float(accuracy), n_pos, n_neg, tp, tn)


def _store_explanation(db: sqlite3.Connection, sae_id: int, latent: int, explainer: str, explanation: str) -> None:
    with db:
        db.execute(
            "INSERT OR REPLACE INTO explanations (sae_id, latent, explainer, explanation, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (sae_id, latent, explainer, explanation, _now()),
        )


def _store_score(db: sqlite3.Connection, sae_id: int, score: LatentScore, explainer: str, scorer: str) -> None:
    with db:
        db.execute(
            "INSERT OR REPLACE INTO detection_scores (sae_id, latent, explainer, scorer, accuracy, n_activating, "
            "n_non_activating, true_positives, true_negatives, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sae_id, score.latent, explainer, scorer, score.accuracy, score.n_activating, score.n_non_activating,
             score.true_positives, score.true_negatives, _now()),
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------


def detection_score(
    scorer: LanguageModel, explanation: str, activating: Sequence[Context], non_activating: Sequence[Context]
) -> tuple[int, int]:
    """(true positives, true negatives): the scorer's correct answers on the activating and the non-activating
    contexts."""
    true_positives = sum(answers_yes(scorer, detection_prompt(explanation, c)) for c in activating)
    true_negatives = sum(not answers_yes(scorer, detection_prompt(explanation, c)) for c in non_activating)
    return true_positives, true_negatives


def _score_latent(
    db: sqlite3.Connection, reader: IndexReader, sae: SaeRow, latent: int, explainer: LanguageModel,
    scorer: LanguageModel, settings: AutointerpSettings, candidates: Sequence[tuple[int, int, int]],
) -> LatentScore | None:  # fmt: skip
    rng = random.Random(f"{settings.seed}/{sae.name}/{latent}")
    contexts = latent_contexts(
        reader, sae, latent, n_explain_top=settings.n_explain_top, n_explain_random=settings.n_explain_random,
        n_score=settings.n_score, rng=rng, candidates=candidates,
    )  # fmt: skip
    if not contexts.activating or not contexts.explain:
        return None
    explanation = cached_explanation(db, sae.sae_id, latent, explainer.name)
    if explanation is None:
        explanation = clean_explanation(
            explainer.complete(explanation_prompt(contexts.explain), settings.explanation_tokens)
        )
        _store_explanation(db, sae.sae_id, latent, explainer.name, explanation)
    true_positives, true_negatives = detection_score(scorer, explanation, contexts.activating, contexts.non_activating)
    n_pos, n_neg = len(contexts.activating), len(contexts.non_activating)
    accuracy = (true_positives + true_negatives) / (n_pos + n_neg)
    score = LatentScore(
        sae.name, latent, contexts.density, explanation, accuracy, n_pos, n_neg, true_positives, true_negatives
    )
    _store_score(db, sae.sae_id, score, explainer.name, scorer.name)
    return score


def run_autointerp(
    index_path: Path,
    explainer: LanguageModel,
    scorer: LanguageModel,
    n_latents: int,
    *,
    saes: Sequence[str] = (),
    settings: AutointerpSettings | None = None,
    progress: bool = True,
) -> list[DictionaryAutointerp]:
    """Explain and detection-score ``n_latents`` latents per dictionary of the index (all dictionaries, or
    those named in ``saes``), stratified by firing frequency; results cached in the index (module docstring).

    Raises :class:`saescope.explore.store.FeatureIndexError` for an unusable index and ``ValueError`` for an
    unknown dictionary name or a bad setting, before anything is written."""
    settings = settings or AutointerpSettings()
    if n_latents < 1:
        raise ValueError(f"--latents must be at least 1, got {n_latents}")
    reader = IndexReader(Path(index_path))
    unknown = [name for name in saes if reader.sae(name) is None]
    if unknown:
        known = ", ".join(s.name for s in reader.saes)
        raise ValueError(f"{index_path} has no dictionary named {', '.join(unknown)}; it has: {known}")
    chosen = [s for s in reader.saes if not saes or s.name in saes]
    plans = [(sae, _sample(reader, sae, n_latents, settings)) for sae in chosen]
    db = open_for_scores(Path(index_path))
    try:
        bar = tqdm(total=sum(len(latents) for _, latents in plans), desc="autointerp", disable=not progress)
        results = []
        for sae, latents in plans:
            scores, skipped = [], 0
            candidates: list[tuple[int, int, int]] | None = None  # read once, when a latent needs scoring
            for latent, density in latents:
                bar.set_postfix_str(f"{sae.name}/{latent}")
                score = cached_score(db, sae, latent, density, explainer.name, scorer.name)
                if score is None:
                    candidates = negative_candidates(reader, sae) if candidates is None else candidates
                    score = _score_latent(db, reader, sae, latent, explainer, scorer, settings, candidates)
                if score is None:
                    skipped += 1
                else:
                    scores.append(score)
                bar.update(1)
            results.append(DictionaryAutointerp(sae.name, tuple(scores), skipped))
        bar.close()
    finally:
        db.close()
    return results


def _sample(reader: IndexReader, sae: SaeRow, n: int, settings: AutointerpSettings) -> list[tuple[int, float]]:
    """(latent, density) of the stratified sample of one dictionary."""
    densities = [density for density, _top, _bottom in reader.latent_summaries(sae)]
    latents = stratified_latents(densities, n, strata=settings.strata, seed=settings.seed)
    return [(latent, densities[latent]) for latent in latents]


def summary_table(results: Sequence[DictionaryAutointerp]) -> str:
    """A Markdown table: per dictionary, scored latents, mean and frequency-weighted detection accuracy."""
    lines = [
        "| dictionary | scored | skipped | detection (mean) | detection (frequency-weighted) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        lines.append(
            f"| {result.sae} | {len(result.scores)} | {result.skipped} | {result.mean_accuracy:.3f} | "
            f"{result.frequency_weighted_accuracy:.3f} |"
        )
    return "\n".join(lines)


__all__ = [
    "AutointerpSettings",
    "Context",
    "DictionaryAutointerp",
    "EndpointError",
    "HuggingFaceLM",
    "LanguageModel",
    "LatentScore",
    "OpenAICompatibleLM",
    "YesNoModel",
    "answers_yes",
    "detection_score",
    "frequency_weighted_mean",
    "load_local_lm",
    "run_autointerp",
    "stratified_latents",
    "summary_table",
]

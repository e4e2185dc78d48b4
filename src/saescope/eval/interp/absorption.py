"""First-letter feature absorption (Chanin et al., arXiv 2409.14507; SAEBench's absorption eval is the method
reference, reimplemented here).

The model's own vocabulary gives the words: tokens that are a leading space (``▁``/``Ġ``) followed by ASCII
letters. Each word is read at the site in a short fixed prompt ending with it. A logistic-regression probe per
first letter (one-vs-rest, on a train split of the words) gives the direction the model uses for "starts with
<letter>". Per dictionary and letter:

* main latents: among the latents whose direction (an SAE's decoder row, a transcoder's encoder column) is most
  cosine-aligned with the letter's probe, greedily the set whose "any of them fires" best predicts the letter on
  the train words, growing while each addition raises that F1 by at least ``split_f1_jump``; more than one is a
  *splitting* letter;
* on the test words that start with the letter and that the probe gets right, a word's *absorption fraction* is
  the share of the probe projection ``x · p`` (``p`` the unit probe direction; a latent carries ``code · (d · p)``,
  ``d`` its decoder row) carried by up to ``max_absorbing_latents`` other latents aligned
  with the probe (cosine >= ``absorbing_cosine``) rather than by the main latents (zero unless those others carry
  at least ``projection_share`` of it); *full absorption* is a word on which no main latent fires and the latent
  with the largest probe projection is aligned with the probe (cosine >= ``full_absorbing_cosine``) and carries
  at least ``projection_share`` of it.

Per dictionary: the mean absorption fraction and full-absorption rate over letters, the number of letters
with a splitting latent, and the mean F1 of the main latents as letter detectors on the test words (absorption is
measured against those latents: where they hardly detect their letter, a low absorption says nothing). The
definitions presume a sparse dictionary: in an untrained or dense one, many latents fire on every word and some
are aligned with the probe by chance, which reads as absorption; compare dictionaries at similar L0. The model
part (words, activations, probes) is computed once per site and shared by every dictionary reading it.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from saescope.checks import check_at_least
from saescope.data.windows import special_token_ids
from saescope.eval.interp.common import InterpOptions, dictionary_for, encode_rows, in_test_split, latent_directions
from saescope.eval.interp.probes import LogisticProbe, f1_score, fit_logistic
from saescope.models.hooks import capture
from saescope.models.loading import LoadedModel
from saescope.models.sites import Site
from saescope.sae import AnyDictionary, SparseDictionary

#: Token-string prefixes that mark a leading space: SentencePiece's ``▁`` and byte-level BPE's ``Ġ``.
SPACE_MARKERS = ("\u2581", "\u0120")
#: A latent "fires" when its code exceeds this.
FIRING_EPS = 1e-8


@dataclass(frozen=True)
class AbsorptionConfig:
    #: Words drawn from the vocabulary (a fixed pseudo-random sample when it holds more).
    max_words: int = 3000
    #: Text before each word in its prompt; the site is read at the word.
    prompt_prefix: str = "The word"
    test_fraction: float = 0.3
    batch_size: int = 64
    #: Letters with fewer words than this are left out (too few to train and test a probe).
    min_words_per_letter: int = 20
    #: A letter's probe must get at least this many of its test words right for the letter to count.
    min_probe_true_positives: int = 5
    #: Latents most aligned with a letter's probe that may become its main latents.
    main_candidates: int = 10
    #: A further main latent is added while it raises the train F1 by at least this (SAEBench: 0.03).
    split_f1_jump: float = 0.03
    absorbing_cosine: float = 0.1
    full_absorbing_cosine: float = 0.025
    projection_share: float = 0.4
    max_absorbing_latents: int = 3

    def __post_init__(self) -> None:
        counts = ("max_words", "batch_size", "min_words_per_letter", "main_candidates", "max_absorbing_latents")
        check_at_least(self, counts, 1, owner="AbsorptionConfig.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"AbsorptionConfig.test_fraction must be in (0, 1); got {self.test_fraction!r}")


@dataclass(frozen=True)
class LetterWords:
    """The words of one site's absorption task, their activations at the site and the letter probes."""

    words: tuple[str, ...]
    letters: tuple[str, ...]  # the classes: first letters with enough words
    label_N: torch.Tensor  # (N,) int64 index into letters
    acts_ND: torch.Tensor  # (N, d) float32, the site at each word
    test_N: torch.Tensor  # (N,) bool
    probe: LogisticProbe  # (d -> len(letters)), trained on the train words

    def probe_test_f1(self) -> dict[str, float]:
        predicted_NC = self.probe.predict(self.acts_ND[self.test_N])
        labels = self.label_N[self.test_N]
        return {letter: f1_score(predicted_NC[:, c], labels == c) for c, letter in enumerate(self.letters)}


@dataclass(frozen=True)
class LetterAbsorption:
    letter: str
    words: int
    probe_true_positives: int
    main_latents: tuple[int, ...]
    mean_absorption_fraction: float
    full_absorptions: int
    #: F1 of "a main latent fires" for the letter on the test words: whether the dictionary has the letter's
    #: latent at all (absorption is only defined against one; a low value makes low absorption meaningless).
    main_latent_f1: float = float("nan")

    @property
    def full_absorption_rate(self) -> float:
        return self.full_absorptions / self.probe_true_positives if self.probe_true_positives else 0.0

    @property
    def splitting(self) -> bool:
        return len(self.main_latents) > 1


@dataclass(frozen=True)
class AbsorptionResult:
    letters: tuple[LetterAbsorption, ...]  # the letters that count (enough probe true positives)
    probe_test_f1: float  # mean over those letters: how well the model itself encodes first letters
    config: AbsorptionConfig

    @property
    def mean_absorption_fraction(self) -> float:
        return _mean([letter.mean_absorption_fraction for letter in self.letters])

    @property
    def full_absorption_rate(self) -> float:
        return _mean([letter.full_absorption_rate for letter in self.letters])

    @property
    def letters_with_splitting(self) -> int:
        return sum(letter.splitting for letter in self.letters)

    @property
    def main_latent_f1(self) -> float:
        return _mean([letter.main_latent_f1 for letter in self.letters])

    def summary(self) -> dict[str, float]:
        return {
            "mean_absorption_fraction": self.mean_absorption_fraction,
            "full_absorption_rate": self.full_absorption_rate,
            "letters_with_splitting": float(self.letters_with_splitting),
            "main_latent_f1": self.main_latent_f1,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "first-letter absorption (Chanin et al. 2409.14507; SAEBench's definitions)",
            **self.summary(),
            "letters_evaluated": len(self.letters),
            "probe_test_f1": self.probe_test_f1,
            "per_letter": [
                {
                    **asdict(letter),
                    "main_latents": list(letter.main_latents),
                    "full_absorption_rate": letter.full_absorption_rate,
                }
                for letter in self.letters
            ],
            "config": asdict(self.config),
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------
# The model side: words, activations, probes (once per site)
# ------------------------------------------------------------------------------------------------


def vocabulary_words(tokenizer: Any) -> list[tuple[int, str]]:
    """(token id, word) for every token that is a leading space followed by ASCII letters only (two or more),
    special tokens excluded, in token-id order."""
    special = special_token_ids(tokenizer)
    words = []
    for token, token_id in tokenizer.get_vocab().items():
        if token_id in special or not token.startswith(SPACE_MARKERS):
            continue
        word = token[1:]
        if len(word) >= 2 and word.isascii() and word.isalpha():
            words.append((int(token_id), word))
    return sorted(words)


def _sample(words: list[tuple[int, str]], limit: int, seed: int) -> list[tuple[int, str]]:
    """At most ``limit`` words: a fixed pseudo-random choice (by hash, so independent of the vocabulary order)."""
    if len(words) <= limit:
        return words

    def key(item: tuple[int, str]) -> bytes:
        return hashlib.sha256(f"{seed}:{item[1]}:{item[0]}".encode()).digest()

    return sorted(sorted(words, key=key)[:limit])


def _prompt_prefix_ids(tokenizer: Any, prefix: str) -> list[int]:
    ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    return [int(i) for i in ids]


@torch.no_grad()
def word_activations(
    loaded: LoadedModel, site: Site, token_ids: Sequence[int], config: AbsorptionConfig, *, progress: bool = False
) -> torch.Tensor:
    """(N, d) float32: the site's activation at each word token, read at the end of ``prefix + word``."""
    prefix = _prompt_prefix_ids(loaded.tokenizer, config.prompt_prefix)
    device = next(loaded.model.parameters()).device
    parts = []
    batches = range(0, len(token_ids), config.batch_size)
    for start in tqdm(batches, disable=not progress, desc=f"absorption: words at {site.id}", unit="batch"):
        chunk = token_ids[start : start + config.batch_size]
        ids_BT = torch.tensor([[*prefix, token_id] for token_id in chunk], dtype=torch.long, device=device)
        parts.append(capture(loaded.model, [site], ids_BT)[site][:, -1, :].float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def choose_words(
    loaded: LoadedModel, config: AbsorptionConfig, *, seed: int = 0
) -> tuple[list[tuple[int, str]], tuple[str, ...]]:
    """The sampled (token id, word) pairs whose first letter has enough words, and those letters. Raises
    ValueError when the vocabulary has too few words (a tokenizer without leading-space word tokens)."""
    vocabulary = vocabulary_words(loaded.tokenizer)
    words = _sample(vocabulary, config.max_words, seed)
    by_letter: dict[str, int] = {}
    for _, word in words:
        if word[0].lower() in string.ascii_lowercase:
            by_letter[word[0].lower()] = by_letter.get(word[0].lower(), 0) + 1
    letters = tuple(sorted(letter for letter, count in by_letter.items() if count >= config.min_words_per_letter))
    if len(letters) < 2:
        raise ValueError(
            f"{loaded.info.name}'s vocabulary has too few word tokens for the absorption evaluation ({len(vocabulary)} "
            f"tokens of a leading space and letters; letters with >= {config.min_words_per_letter} of them among "
            f"the sample: {list(letters)}): it needs a tokenizer with whole-word tokens (SentencePiece or byte-level "
            "BPE), or a smaller AbsorptionConfig.min_words_per_letter"
        )
    return [(i, w) for i, w in words if w[0].lower() in letters], letters


def letter_words(
    loaded: LoadedModel, site: Site, config: AbsorptionConfig, *, seed: int = 0, progress: bool = False
) -> LetterWords:
    """The words (``choose_words``), their activations at ``site`` and the trained letter probes."""
    words, letters = choose_words(loaded, config, seed=seed)
    acts_ND = word_activations(loaded, site, [i for i, _ in words], config, progress=progress)
    label_N = torch.tensor([letters.index(w[0].lower()) for _, w in words], dtype=torch.long)
    return letter_words_from_activations(tuple(w for _, w in words), letters, label_N, acts_ND, config, seed=seed)


def letter_words_from_activations(
    words: tuple[str, ...],
    letters: tuple[str, ...],
    label_N: torch.Tensor,
    acts_ND: torch.Tensor,
    config: AbsorptionConfig,
    *,
    seed: int = 0,
    test_N: torch.Tensor | None = None,
) -> LetterWords:
    """Train the letter probes on given activations (``test_N``: the test split; default by hash of the word)."""
    if test_N is None:
        test_N = in_test_split(list(words), config.test_fraction, seed)
    train_N = ~test_N
    y_NC = torch.nn.functional.one_hot(label_N, len(letters)).float()
    probe = fit_logistic(acts_ND[train_N], y_NC[train_N])
    return LetterWords(words, letters, label_N, acts_ND.float(), test_N, probe)


# ------------------------------------------------------------------------------------------------
# The dictionary side
# ------------------------------------------------------------------------------------------------


def _main_latents(
    codes_NF: torch.Tensor, is_letter_N: torch.Tensor, candidates: torch.Tensor, jump: float
) -> list[int]:
    """Greedily, the candidates whose "any fires" best predicts the letter, while each raises F1 by >= jump."""
    fires_NF = codes_NF[:, candidates] > FIRING_EPS
    chosen: list[int] = []
    any_fires_N = torch.zeros_like(is_letter_N, dtype=torch.bool)
    best_f1 = 0.0
    while len(chosen) < len(candidates):
        remaining = [j for j in range(len(candidates)) if j not in chosen]
        scores = [f1_score(any_fires_N | fires_NF[:, j], is_letter_N) for j in remaining]
        top = max(range(len(remaining)), key=scores.__getitem__)
        if chosen and scores[top] - best_f1 < jump:
            break
        chosen.append(remaining[top])
        any_fires_N |= fires_NF[:, remaining[top]]
        best_f1 = max(best_f1, scores[top])
    return [int(candidates[j]) for j in chosen]


def _absorption_fractions(
    act_proj_T: torch.Tensor, proj_TF: torch.Tensor, cos_F: torch.Tensor, main: list[int], config: AbsorptionConfig
) -> torch.Tensor:
    """(T,) each word's absorption fraction (SAEBench's definition)."""
    main_proj_T = proj_TF[:, main].sum(1)
    absorber_F = (cos_F >= config.absorbing_cosine).clone()
    absorber_F[main] = False
    candidates_TF = torch.where(absorber_F & (proj_TF > 0), proj_TF, torch.zeros_like(proj_TF))
    k = min(config.max_absorbing_latents, candidates_TF.shape[1])
    absorbed_T = candidates_TF.topk(k, dim=1).values.sum(1)
    safe_T = torch.where(act_proj_T > 0, act_proj_T, torch.ones_like(act_proj_T))
    none_T = (act_proj_T <= 0) | (main_proj_T >= act_proj_T) | (absorbed_T / safe_T < config.projection_share)
    partial_T = torch.minimum(absorbed_T, act_proj_T - main_proj_T)
    share_T = (partial_T / (partial_T + main_proj_T).clamp_min(1e-12)).clamp(0.0, 1.0)
    fraction_T = torch.where(main_proj_T <= 0, torch.ones_like(share_T), share_T)
    return torch.where(none_T, torch.zeros_like(fraction_T), fraction_T)


def _full_absorptions(
    act_proj_T: torch.Tensor, codes_TF: torch.Tensor, proj_TF: torch.Tensor, cos_F: torch.Tensor, main: list[int],
    config: AbsorptionConfig,
) -> torch.Tensor:  # fmt: skip
    """(T,) bool: no main latent fires, and the top probe-projecting latent is aligned and carries enough."""
    main_silent_T = (codes_TF[:, main] <= FIRING_EPS).all(1)
    top_proj_T, top_F_T = proj_TF.max(1)
    aligned_T = cos_F[top_F_T] >= config.full_absorbing_cosine
    safe_T = torch.where(act_proj_T > 0, act_proj_T, torch.ones_like(act_proj_T))
    carries_T = (act_proj_T > 0) & (top_proj_T / safe_T >= config.projection_share)
    return main_silent_T & aligned_T & carries_T


def _write_along(
    directions_FD: torch.Tensor, unit_D: torch.Tensor, cos_F: torch.Tensor, *, transcoder: bool
) -> torch.Tensor:
    """(F,) how far a unit code of each latent moves the activation along the probe: its decoder row's component
    along the probe, so that a latent with a long or short decoder row is counted by what it writes, not by its
    code (SAEBench presumes unit-norm decoder rows, where the two agree). A transcoder's latents write another
    space: their encoder column's cosine stands in."""
    return cos_F if transcoder else directions_FD @ unit_D


def absorption_of(
    sae: SparseDictionary, data: LetterWords, config: AbsorptionConfig, *, transcoder: bool = False
) -> AbsorptionResult:
    """The absorption metrics of one dictionary on a site's words (``letter_words``)."""
    codes_NF = encode_rows(sae, data.acts_ND)
    directions_FD = latent_directions(sae, transcoder=transcoder).cpu()
    train_N, test_N = ~data.test_N, data.test_N
    scores_NC = data.probe.scores(data.acts_ND)
    probe_f1 = data.probe_test_f1()
    results = []
    for c, letter in enumerate(data.letters):
        probe_D = data.probe.weight_KC[:, c]
        unit_D = probe_D / probe_D.norm().clamp_min(1e-12)
        cos_F = torch.nn.functional.cosine_similarity(directions_FD, unit_D.unsqueeze(0), dim=1)
        is_letter_N = data.label_N == c
        candidates = cos_F.topk(min(config.main_candidates, cos_F.numel())).indices
        main = _main_latents(codes_NF[train_N], is_letter_N[train_N], candidates, config.split_f1_jump)
        true_positive_N = test_N & is_letter_N & (scores_NC[:, c] > 0)
        positives = int(true_positive_N.sum())
        if positives < config.min_probe_true_positives:
            continue
        act_proj_T = data.acts_ND[true_positive_N] @ unit_D
        codes_TF = codes_NF[true_positive_N]
        proj_TF = codes_TF * _write_along(directions_FD, unit_D, cos_F, transcoder=transcoder)
        fractions_T = _absorption_fractions(act_proj_T, proj_TF, cos_F, main, config)
        full_T = _full_absorptions(act_proj_T, codes_TF, proj_TF, cos_F, main, config)
        main_fires_N = (codes_NF[:, main] > FIRING_EPS).any(1)
        results.append(
            LetterAbsorption(
                letter, int(is_letter_N.sum()), positives, tuple(main), float(fractions_T.mean()), int(full_T.sum()),
                f1_score(main_fires_N[test_N], is_letter_N[test_N]),
            )
        )  # fmt: skip
    counted_f1 = [probe_f1[r.letter] for r in results]
    return AbsorptionResult(tuple(results), _mean(counted_f1), config)


def evaluate_absorption(
    dictionary: AnyDictionary,
    site: Site,
    loaded: LoadedModel,
    config: AbsorptionConfig | None = None,
    *,
    transcoder: bool = False,
    options: InterpOptions | None = None,
) -> AbsorptionResult:
    """First-letter absorption of ``dictionary`` (reading ``site`` of ``loaded``). ``options.shared`` keeps the
    site's words and probes for the next dictionary reading the same site."""
    config = config or AbsorptionConfig()
    options = options or InterpOptions(progress=False)
    sae = dictionary_for(dictionary, "absorption")
    key = ("absorption", site, config, options.seed)
    if key not in options.shared:
        options.shared[key] = letter_words(loaded, site, config, seed=options.seed, progress=options.progress)
    data: LetterWords = options.shared[key]
    return absorption_of(sae, data, config, transcoder=transcoder)

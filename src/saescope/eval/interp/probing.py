"""Sparse probing (Gao et al. 2024; Kantamneni et al., arXiv 2502.16681; SAEBench's sparse_probing is the method
reference, reimplemented here).

Binary tasks from labelled text: each label against the rest, balanced (as many negatives, drawn evenly from the
other labels, as positives). Each sample is the mean over its non-special positions of the site's activations
(the dense ceiling) and of the dictionary's codes. A logistic probe on the ``k`` latents with the largest
train-set class-mean difference (in absolute value), for each ``k`` in ``ks``, against a logistic probe on the
raw activations (each probe's L2 penalty chosen by cross-validation on the train samples); accuracy on a
held-out test split of the samples. The model part (samples, pooled activations, the dense probes) is computed
once per site and shared by every dictionary reading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from saescope.checks import check_at_least
from saescope.data.windows import special_token_ids, special_token_mask
from saescope.eval.interp.common import (
    ENCODE_CHUNK,
    InterpOptions,
    ProbeDataSpec,
    dictionary_for,
    encode_rows,
    in_test_split,
)
from saescope.eval.interp.labelled import LabelledSample, file_samples, genre_samples
from saescope.eval.interp.probes import fit_logistic_cv
from saescope.models.hooks import capture
from saescope.models.loading import LoadedModel
from saescope.models.sites import Site
from saescope.sae import AnyDictionary, SparseDictionary


@dataclass(frozen=True)
class ProbingConfig:
    ks: tuple[int, ...] = (1, 2, 5, 10, 20)
    #: Tokens per sample (a chunk of a held-out document, or the start of a user's text).
    max_tokens: int = 64
    #: Samples per label (genre) at most.
    per_label: int = 64
    #: Labels with fewer samples than this get no task.
    min_per_label: int = 10
    #: At most this many tasks (the most frequent labels) from a user's file.
    max_tasks: int = 8
    test_fraction: float = 0.3
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ProbingConfig.ks must be positive numbers of latents; got {self.ks!r}")
        counts = ("max_tokens", "per_label", "min_per_label", "max_tasks", "batch_size")
        check_at_least(self, counts, 1, owner="ProbingConfig.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"ProbingConfig.test_fraction must be in (0, 1); got {self.test_fraction!r}")


@dataclass(frozen=True)
class ProbeTask:
    name: str  # the positive label
    samples_S: torch.Tensor  # (S,) int64: indices into the pooled rows, positives then negatives
    positive_S: torch.Tensor  # (S,) bool
    test_S: torch.Tensor  # (S,) bool


@dataclass(frozen=True)
class PooledSamples:
    """A site's probing data: each sample's token activations (flattened), their sample index, the mean-pooled
    activations, the tasks and each task's dense (raw-activation) test accuracy."""

    source: str
    tokens_ND: torch.Tensor  # (N tokens, d) float32
    sample_of_token_N: torch.Tensor  # (N,) int64
    pooled_SD: torch.Tensor  # (samples, d)
    tasks: tuple[ProbeTask, ...]
    dense_accuracy: dict[str, float]


@dataclass(frozen=True)
class TaskProbing:
    task: str
    train: int
    test: int
    dense_accuracy: float
    sparse_accuracy: dict[int, float]  # k -> test accuracy
    top_latents: tuple[int, ...]  # the max(ks) latents, largest class-mean difference first
    #: k -> whether each test sample (in the task's order) was classified right: two dictionaries probed on the
    #: same site's tasks can be compared sample by sample (a paired difference).
    test_correct: dict[int, tuple[bool, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbingResult:
    source: str
    tasks: tuple[TaskProbing, ...]
    config: ProbingConfig

    @property
    def dense_accuracy(self) -> float:
        return _mean([task.dense_accuracy for task in self.tasks])

    def sparse_accuracy(self, k: int) -> float:
        return _mean([task.sparse_accuracy[k] for task in self.tasks if k in task.sparse_accuracy])

    def summary(self) -> dict[str, float]:
        return {
            "dense_accuracy": self.dense_accuracy,
            **{f"top_{k}_accuracy": self.sparse_accuracy(k) for k in self.config.ks},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "sparse probing on mean-pooled codes, top-k latents by class-mean difference (SAEBench)",
            "data": self.source,
            **self.summary(),
            "per_task": [
                {
                    **asdict(task),
                    "sparse_accuracy": {str(k): v for k, v in task.sparse_accuracy.items()},
                    "test_correct": {str(k): [int(c) for c in v] for k, v in task.test_correct.items()},
                    "top_latents": list(task.top_latents),
                }
                for task in self.tasks
            ],
            "config": asdict(self.config),
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


# ------------------------------------------------------------------------------------------------
# The model side (once per site)
# ------------------------------------------------------------------------------------------------


def probe_tasks(labels: Sequence[str], keys: Sequence[str], config: ProbingConfig, seed: int = 0) -> list[ProbeTask]:
    """Each label (the ``max_tasks`` most frequent with >= ``min_per_label`` samples; one task when there are
    only two labels) against an equal number of the others, drawn round-robin over the other labels."""
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    eligible = sorted((label for label in by_label if len(by_label[label]) >= config.min_per_label),
                      key=lambda label: (-len(by_label[label]), label))  # fmt: skip
    names = eligible[:1] if len(by_label) == 2 else eligible[: config.max_tasks]
    test_all = in_test_split(list(keys), config.test_fraction, seed)
    tasks = []
    for name in names:
        positives = by_label[name]
        others = [by_label[label] for label in sorted(by_label) if label != name]
        negatives: list[int] = []
        for depth in range(max((len(o) for o in others), default=0)):
            negatives += [group[depth] for group in others if depth < len(group)]
        negatives = negatives[: len(positives)]
        if len(negatives) < config.min_per_label:
            continue
        samples_S = torch.tensor(positives + negatives, dtype=torch.long)
        positive_S = torch.tensor([True] * len(positives) + [False] * len(negatives))
        tasks.append(ProbeTask(name, samples_S, positive_S, test_all[samples_S]))
    return tasks


@torch.no_grad()
def sample_activations(
    loaded: LoadedModel, site: Site, samples: Sequence[LabelledSample], batch_size: int, *, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's activations at ``site`` at its non-special positions: (N tokens, d) float32 and the
    sample index of each token (N,)."""
    special = special_token_ids(loaded.tokenizer)
    pad = next(iter(sorted(special)), 0)
    device = next(loaded.model.parameters()).device
    tokens, owners = [], []
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress, desc=f"probing: texts at {site.id}"):
        batch = samples[start : start + batch_size]
        length = max(len(sample.token_ids) for sample in batch)
        ids_BT = torch.full((len(batch), length), pad, dtype=torch.long)
        attention_BT = torch.zeros(len(batch), length, dtype=torch.long)
        for row, sample in enumerate(batch):
            ids_BT[row, : len(sample.token_ids)] = torch.tensor(sample.token_ids)
            attention_BT[row, : len(sample.token_ids)] = 1
        keep_BT = special_token_mask(ids_BT, special) & attention_BT.bool()
        acts_BTD = capture(loaded.model, [site], ids_BT.to(device), attention_BT.to(device))[site].float().cpu()
        tokens.append(acts_BTD[keep_BT])
        owners.append((torch.arange(len(batch)) + start).unsqueeze(1).expand(-1, length)[keep_BT])
    return torch.cat(tokens), torch.cat(owners)


def mean_pool(rows_NX: torch.Tensor, sample_of_row_N: torch.Tensor, n_samples: int) -> torch.Tensor:
    """(samples, X): the mean of each sample's rows (zero for a sample without rows)."""
    total_SX = torch.zeros(n_samples, rows_NX.shape[1]).index_add_(0, sample_of_row_N, rows_NX.float())
    count_S = torch.zeros(n_samples).index_add_(0, sample_of_row_N, torch.ones(len(sample_of_row_N)))
    return total_SX / count_S.clamp_min(1).unsqueeze(1)


def _test_correct(x_SK: torch.Tensor, task: ProbeTask) -> torch.Tensor:
    """(test samples,) bool: a probe fit on the task's train samples, right or wrong on each test sample."""
    train_S, test_S = ~task.test_S, task.test_S
    probe = fit_logistic_cv(x_SK[train_S], task.positive_S[train_S])
    return probe.predict(x_SK[test_S])[:, 0].bool() == task.positive_S[test_S].bool()


def _share_right(correct_T: torch.Tensor) -> float:
    return float(correct_T.float().mean()) if correct_T.numel() else float("nan")


def _split_accuracy(x_SK: torch.Tensor, task: ProbeTask) -> float:
    return _share_right(_test_correct(x_SK, task))


def pooled_from_tokens(
    source: str, tokens_ND: torch.Tensor, sample_of_token_N: torch.Tensor, tasks: Sequence[ProbeTask], n_samples: int
) -> PooledSamples:
    """Pool the token activations and fit each task's dense probe."""
    pooled_SD = mean_pool(tokens_ND, sample_of_token_N, n_samples)
    dense = {task.name: _split_accuracy(pooled_SD[task.samples_S], task) for task in tasks}
    return PooledSamples(source, tokens_ND, sample_of_token_N, pooled_SD, tuple(tasks), dense)


def probing_samples(
    loaded: LoadedModel, site: Site, config: ProbingConfig, *, probe_data: ProbeDataSpec | None = None,
    seed: int = 0, progress: bool = False,
) -> PooledSamples:  # fmt: skip
    """The site's probing data: the embedded corpus's genres, or ``probe_data``'s labels."""
    if probe_data is None:
        source = "embedded corpus genres, held-out split (each genre against the rest)"
        samples = genre_samples(loaded.tokenizer, max_tokens=config.max_tokens, per_genre=config.per_label, seed=seed)
    else:
        source = f"{probe_data.path} ({probe_data.text_field!r} labelled by {probe_data.label_field!r})"
        samples = file_samples(loaded.tokenizer, probe_data, max_tokens=config.max_tokens, per_label=config.per_label,
                               seed=seed)  # fmt: skip
    tasks = probe_tasks([s.label for s in samples], [s.key for s in samples], config, seed)
    if not tasks:
        raise ValueError(
            f"sparse probing found no task in {source}: it needs at least two labels with >= {config.min_per_label} "
            "texts each"
        )
    tokens_ND, owners_N = sample_activations(loaded, site, samples, config.batch_size, progress=progress)
    return pooled_from_tokens(source, tokens_ND, owners_N, tasks, len(samples))


# ------------------------------------------------------------------------------------------------
# The dictionary side
# ------------------------------------------------------------------------------------------------


def top_latents_by_mean_difference(codes_SF: torch.Tensor, positive_S: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` latents whose mean code differs most (in absolute value) between the classes, largest first."""
    difference_F = codes_SF[positive_S].mean(0) - codes_SF[~positive_S].mean(0)
    return difference_F.abs().topk(min(k, difference_F.numel())).indices


def pooled_codes(sae: SparseDictionary, data: PooledSamples) -> torch.Tensor:
    """(samples, F): each sample's mean code, encoded chunk by chunk so the token-by-latent codes of all samples
    are never held at once."""
    n_samples = data.pooled_SD.shape[0]
    total_SF = torch.zeros(n_samples, sae.config.width)
    for start in range(0, data.tokens_ND.shape[0], ENCODE_CHUNK):
        owners_N = data.sample_of_token_N[start : start + ENCODE_CHUNK]
        total_SF.index_add_(0, owners_N, encode_rows(sae, data.tokens_ND[start : start + ENCODE_CHUNK]))
    count_S = torch.zeros(n_samples).index_add_(0, data.sample_of_token_N, torch.ones(len(data.sample_of_token_N)))
    return total_SF / count_S.clamp_min(1).unsqueeze(1)


def probing_of(sae: SparseDictionary, data: PooledSamples, config: ProbingConfig) -> ProbingResult:
    """Sparse-probing accuracy of one dictionary on a site's pooled samples (``probing_samples``)."""
    pooled_SF = pooled_codes(sae, data)
    results = []
    for task in data.tasks:
        codes_TF = pooled_SF[task.samples_S]
        train_T = ~task.test_S
        ranked = top_latents_by_mean_difference(codes_TF[train_T], task.positive_S[train_T], max(config.ks))
        correct = {k: _test_correct(codes_TF[:, ranked[:k]], task) for k in config.ks}
        sparse = {k: _share_right(right_T) for k, right_T in correct.items()}
        results.append(
            TaskProbing(
                task.name,
                int(train_T.sum()),
                int(task.test_S.sum()),
                data.dense_accuracy[task.name],
                sparse,
                tuple(int(i) for i in ranked),
                {k: tuple(bool(r) for r in right_T) for k, right_T in correct.items()},
            )
        )
    return ProbingResult(data.source, tuple(results), config)


def evaluate_probing(
    dictionary: AnyDictionary,
    site: Site,
    loaded: LoadedModel,
    config: ProbingConfig | None = None,
    *,
    options: InterpOptions | None = None,
) -> ProbingResult:
    """Sparse probing of ``dictionary`` (reading ``site`` of ``loaded``) on ``options.probe_data`` or the
    embedded corpus's genres. ``options.shared`` keeps the site's pooled samples for the next dictionary."""
    config = config or ProbingConfig()
    options = options or InterpOptions(progress=False)
    sae = dictionary_for(dictionary, "sparse probing")
    key = ("probing", site, config, options.seed, options.probe_data)
    if key not in options.shared:
        options.shared[key] = probing_samples(
            loaded, site, config, probe_data=options.probe_data, seed=options.seed, progress=options.progress
        )
    data: PooledSamples = options.shared[key]
    return probing_of(sae, data, config)

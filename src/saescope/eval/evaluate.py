"""Evaluate every dictionary of a suite on the held-out split: one streaming pass for reconstruction
metrics (all sites in one model forward), then the delta-LM-loss passes (SPEC §4)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saescope.atomic import atomic_write_json
from saescope.data.activations import stack_windows, stream_token_activations
from saescope.data.chat import CHAT_MASK_DESCRIPTION
from saescope.data.corpus import (
    CorpusConfig,
    Split,
    corpus_windows,
    mask_policy,
    special_token_ids,
    special_token_mask,
    window_token_ids,
)
from saescope.eval.metrics import LossAccumulator, ReconstructionAccumulator
from saescope.eval.splice import Predictions, clean_log_probs, spliced_losses
from saescope.models.loading import LoadedModel
from saescope.models.sites import Site
from saescope.sae import SparseDictionary

METRICS_FILE = "metrics.json"
MASK_POLICY = (
    "special tokens (BOS, EOS, pad and every other special id of the tokenizer) are excluded from "
    "reconstruction metrics and never spliced; a next-token prediction is counted when its input and its "
    "target are both ordinary tokens"
)


@dataclass(frozen=True)
class EvalTarget:
    """A dictionary to evaluate, in raw activation space (normalisation folded in)."""

    name: str
    site: Site
    sae: SparseDictionary
    folder: Path | None = None  # metrics.json is written here when set


@dataclass(frozen=True)
class EvalConfig:
    #: Held-out tokens for the reconstruction metrics (GS evaluates 2,048 x 1,024; CPU defaults are smaller).
    tokens: int = 50_000
    #: Held-out windows for delta LM loss; each costs (1 + sites + dictionaries) model passes.
    loss_windows: int = 4
    #: Count every n-th prediction in the loss passes: divides the LM-head cost, keeps the mean unbiased.
    loss_position_stride: int = 4
    batch_windows: int = 4
    lm_head_chunk: int = 128

    def __post_init__(self) -> None:
        for name in ("tokens", "batch_windows", "lm_head_chunk", "loss_position_stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1; got {getattr(self, name)!r}")
        if self.loss_windows < 0:
            raise ValueError(f"EvalConfig.loss_windows must be >= 0; got {self.loss_windows!r}")


def _heldout_batches(
    loaded: LoadedModel, corpus: CorpusConfig, batch_windows: int, split: Split = "heldout"
) -> Iterator[torch.Tensor]:
    return stack_windows(corpus_windows(corpus, loaded.tokenizer, split), batch_windows)


def _mask_policy_text(corpus: CorpusConfig) -> str:
    """What metrics.json says about masking: the policy's name, then what it drops."""
    name = mask_policy(corpus.chat_template)
    return f"{name}: {CHAT_MASK_DESCRIPTION}; {MASK_POLICY}" if corpus.chat_template is not None else MASK_POLICY


@torch.no_grad()
def reconstruction_metrics(
    loaded: LoadedModel,
    targets: Sequence[EvalTarget],
    corpus: CorpusConfig,
    config: EvalConfig,
    *,
    progress: bool = True,
    split: Split = "heldout",
) -> dict[str, dict[str, Any]]:
    """L0, FVU, cosine, L2 ratio, density statistics and per-position FVU for every target."""
    sites = sorted({target.site for target in targets})
    accumulators = {
        t.name: ReconstructionAccumulator(t.sae.config.d_target, t.sae.config.width, corpus.context_size)
        for t in targets
    }
    device = next(loaded.model.parameters()).device
    batches = _heldout_batches(loaded, corpus, config.batch_windows, split)
    stream = stream_token_activations(loaded.model, sites, batches, special_token_ids(loaded.tokenizer))
    seen = 0
    with tqdm(
        total=config.tokens, unit="tok", unit_scale=True, disable=not progress, desc="eval: reconstruction"
    ) as bar:
        for token_acts in stream:
            take = min(token_acts.n_tokens, config.tokens - seen)
            positions_N = token_acts.positions_N[:take]
            for target in targets:
                x_ND = token_acts.acts[target.site][:take].float()
                out = target.sae.to(device)(x_ND)
                accumulators[target.name].update(x_ND, out.reconstruction, out.codes, positions_N)
            seen += take
            bar.update(take)
            if seen >= config.tokens:
                break
    if seen == 0:
        raise ValueError("the held-out split produced no tokens; use a larger corpus or a larger heldout_fraction")
    return {name: accumulator.result() for name, accumulator in accumulators.items()}


def _reconstruction_of(sae: SparseDictionary) -> Callable[[torch.Tensor], torch.Tensor]:
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        reconstruction: torch.Tensor = sae(x.float()).reconstruction
        return reconstruction

    return reconstruct


@torch.no_grad()
def loss_metrics(
    loaded: LoadedModel,
    targets: Sequence[EvalTarget],
    corpus: CorpusConfig,
    config: EvalConfig,
    *,
    progress: bool = True,
    split: Split = "heldout",
) -> dict[str, dict[str, Any]]:
    """Delta LM loss, zero-ablation loss, loss recovered and KL for every target (shared clean and
    zero-ablation passes)."""
    model, special = loaded.model, special_token_ids(loaded.tokenizer)
    by_site: dict[Site, list[EvalTarget]] = {}
    for target in targets:
        by_site.setdefault(target.site, []).append(target)
    accumulators = {t.name: LossAccumulator(corpus.context_size) for t in targets}
    device = next(model.parameters()).device
    loss_batch = min(config.batch_windows, config.loss_windows)
    n_batches = -(-config.loss_windows // loss_batch)
    batches = itertools.islice(_heldout_batches(loaded, corpus, loss_batch, split), n_batches)
    passes_per_batch = 1 + len(by_site) + len(targets)
    with tqdm(total=n_batches * passes_per_batch, unit="pass", disable=not progress, desc="eval: delta LM loss") as bar:
        for batch_index, ids_BT in enumerate(batches):
            ids_BT = ids_BT.to(device)
            keep_BT = special_token_mask(ids_BT, special)  # also drops positions a chat mask policy marks
            ids_BT = window_token_ids(ids_BT)
            predictions = Predictions.select(ids_BT, keep_BT, config.loss_position_stride, offset=batch_index)
            ce_clean, log_probs_clean = clean_log_probs(model, ids_BT, predictions, config.lm_head_chunk)
            bar.update(1)
            for site, site_targets in by_site.items():
                ce_zero, _ = spliced_losses(
                    model, ids_BT, keep_BT, site, torch.zeros_like, predictions, chunk=config.lm_head_chunk
                )
                bar.update(1)
                for target in site_targets:
                    ce_sae, kl = spliced_losses(
                        model, ids_BT, keep_BT, site, _reconstruction_of(target.sae.to(device)),
                        predictions, log_probs_clean, config.lm_head_chunk,
                    )  # fmt: skip
                    assert kl is not None
                    accumulators[target.name].update(ce_clean, ce_sae, ce_zero, kl, predictions.cols_T)
                    bar.update(1)
    return {name: accumulator.result() for name, accumulator in accumulators.items()}


def evaluate(
    loaded: LoadedModel,
    targets: Sequence[EvalTarget],
    corpus: CorpusConfig,
    config: EvalConfig,
    *,
    progress: bool = True,
    split: Split = "heldout",
) -> dict[str, dict[str, Any]]:
    """Every metric for every target; writes `metrics.json` into each target's folder.

    `split` is the corpus split evaluated on: "heldout" (default), or "all" for data never trained on
    (e.g. rollouts kept for evaluation)."""
    if not targets:
        raise ValueError("nothing to evaluate")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation target names must be unique; got {names}")
    started = time.perf_counter()
    reconstruction = reconstruction_metrics(loaded, targets, corpus, config, progress=progress, split=split)
    reconstruction_seconds = time.perf_counter() - started
    losses = (
        loss_metrics(loaded, targets, corpus, config, progress=progress, split=split) if config.loss_windows else {}
    )
    results = {}
    for target in targets:
        results[target.name] = {
            "format": "saescope-metrics-v1",
            "name": target.name,
            "site": target.site.id,
            "architecture": target.sae.config.architecture,
            "width": target.sae.config.width,
            "model": loaded.info.name,
            "dataset": {**corpus.to_dict(), "split": split},
            "mask_policy": _mask_policy_text(corpus),
            "eval_config": asdict(config),
            "seconds": {
                "reconstruction_pass_all_targets": reconstruction_seconds,
                "total_all_targets": time.perf_counter() - started,
            },
            "reconstruction": reconstruction[target.name],
            "lm_loss": losses.get(target.name),
        }
        if target.folder is not None:
            atomic_write_json(target.folder / METRICS_FILE, results[target.name])
    return results

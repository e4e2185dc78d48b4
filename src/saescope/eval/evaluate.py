"""Evaluate every dictionary of a suite on the held-out split: one streaming pass for reconstruction
metrics (all sites in one model forward), then the delta-LM-loss passes (method §4)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saescope.checks import check_at_least, check_unique_names
from saescope.data.activations import heldout_token_budget, stream_token_activations
from saescope.data.chat import CHAT_MASK_DESCRIPTION
from saescope.data.corpus import CorpusConfig, corpus_windows, mask_policy
from saescope.data.split import Split
from saescope.data.windows import (
    SAMPLE_POOL_FACTOR,
    WindowBatch,
    special_token_ids,
    spread_windows,
    stack_windows,
    windows_for_tokens,
)
from saescope.dictionaries.folder import METRICS, TrainedSAE, write_metrics
from saescope.dictionaries.sites import DictionarySites, HoldsSites
from saescope.eval.metrics import LossAccumulator, ReconstructionAccumulator
from saescope.eval.splice import dictionary_taps, tapped_losses
from saescope.models.hooks import Tap
from saescope.models.loading import LoadedModel
from saescope.models.predictions import Predictions, clean_log_probs
from saescope.models.sites import Site, site_widths
from saescope.sae import AnyDictionary

METRICS_FILE = METRICS
MASK_POLICY = (
    "special tokens (BOS, EOS, pad and every other special id of the tokenizer) are excluded from "
    "reconstruction metrics and never spliced; a next-token prediction is counted when its input and its "
    "target are both ordinary tokens"
)

_SAMPLE_TEXT = (
    f"windows of the split's first {SAMPLE_POOL_FACTOR}x as many as needed (all of a small split), taken in "
    "spread order (van der Corput), so that any prefix covers the pool evenly; the loss windows are the first"
)


@dataclass(frozen=True)
class EvalTarget(HoldsSites):
    """A dictionary to evaluate, in raw activation space (normalisation folded in), and where it reads and writes."""

    name: str
    sites: DictionarySites
    sae: AnyDictionary
    #: Where its metrics.json is written (its run's eval folder, `saescope.dictionaries.eval_folder`); None: not
    #: written.
    folder: Path | None = None

    @property
    def dictionary_kind(self) -> str:
        """sae, transcoder, skip_transcoder, clt, skip_clt or crosscoder (train.specs.DICTIONARY_KINDS)."""
        return self.sites.kind(skip=self.sae.config.skip)

    def splices(self) -> list[tuple[str, tuple[int, ...]]]:
        """The delta-LM-loss conditions: (label, indices of the outputs replaced). One for a single-layer
        dictionary; for a multi-layer one, every layer alone and then all at once (the replacement model)."""
        n = len(self.output_sites)
        if n == 1:
            return [("", (0,))]
        return [*((self.output_sites[j].id, (j,)) for j in range(n)), ("", tuple(range(n)))]


def trained_target(entry: TrainedSAE, folder: Path | None = None) -> EvalTarget:
    """A trained dictionary as an evaluation target, in raw space, its metrics going to ``folder`` (default: its
    run's eval folder, never the training folder)."""
    return EvalTarget(entry.name, entry.sites, entry.raw_space(), folder or entry.eval_folder)


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
    #: Also return each prediction's delta loss and KL (``lm_loss.delta_lm_loss_per_prediction``,
    #: ``lm_loss.kl_per_prediction``), for paired comparisons of dictionaries evaluated on the same windows
    #: (`saescope.eval.metrics.paired_difference`).
    keep_prediction_deltas: bool = False

    def __post_init__(self) -> None:
        check_at_least(
            self, ("tokens", "batch_windows", "lm_head_chunk", "loss_position_stride"), 1, owner="EvalConfig."
        )
        check_at_least(self, ("loss_windows",), 0, owner="EvalConfig.")

    def sample_windows(self, context_size: int) -> int:
        """Windows the reconstruction and loss passes need; both read one spread sample of the split."""
        return max(windows_for_tokens(self.tokens, context_size), self.loss_windows)


def heldout_batches(
    loaded: LoadedModel, corpus: CorpusConfig, config: EvalConfig, batch_windows: int, split: Split = "heldout"
) -> Iterator[WindowBatch]:
    """The windows (in batches of `batch_windows`) that the evaluation reads: the split's windows spread over its
    first SAMPLE_POOL_FACTOR x needed (not its first few documents)."""
    windows = corpus_windows(corpus, loaded.tokenizer, split)
    return stack_windows(spread_windows(windows, config.sample_windows(corpus.context_size)), batch_windows)


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
    sites = sorted({site for t in targets for site in (*t.input_sites, *t.output_sites)})
    accumulators = {
        t.name: ReconstructionAccumulator(
            t.sae.config.d_target * len(t.output_sites), t.sae.config.total_width, corpus.context_size
        )
        for t in targets
    }
    per_layer = {  # a multi-layer dictionary's metrics at each output site, from that layer's block
        (t.name, j): ReconstructionAccumulator(t.sae.config.d_target, t.sae.config.width, corpus.context_size)
        for t in targets
        if len(t.output_sites) > 1
        for j in range(len(t.output_sites))
    }
    device = next(loaded.model.parameters()).device
    batches = heldout_batches(loaded, corpus, config, config.batch_windows, split)
    stream = stream_token_activations(loaded.model, sites, batches, special_token_ids(loaded.tokenizer))
    budget = heldout_token_budget(stream, config.tokens, desc="eval: reconstruction", progress=progress)
    for token_acts, take in budget:
        positions_N = token_acts.positions_N[:take]
        for target in targets:
            x_ND = _side_by_side([token_acts.acts[site][:take] for site in target.input_sites])
            y_ND = _side_by_side([token_acts.acts[site][:take] for site in target.output_sites])
            out = target.sae.to(device)(x_ND)
            accumulators[target.name].update(y_ND, out.reconstruction, out.codes, positions_N)
            n = len(target.output_sites)
            if n > 1:
                y_parts = torch.tensor_split(y_ND, n, dim=-1)
                y_hat_parts = torch.tensor_split(out.reconstruction, n, dim=-1)
                code_parts = torch.tensor_split(out.codes, n, dim=-1)
                for j in range(n):
                    per_layer[target.name, j].update(y_parts[j], y_hat_parts[j], code_parts[j], positions_N)
    results = {name: accumulator.result() for name, accumulator in accumulators.items()}
    for target in targets:
        if len(target.output_sites) > 1:
            results[target.name]["by_output_site"] = {
                site.id: per_layer[target.name, j].result() for j, site in enumerate(target.output_sites)
            }
    return results


def _side_by_side(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0].float() if len(parts) == 1 else torch.cat([part.float() for part in parts], dim=-1)


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
    zero-ablation passes). A multi-layer dictionary gets one result per layer spliced alone and, as its
    headline, the replacement model's (every output replaced at once), ablated against zeroing them all."""
    model, special = loaded.model, special_token_ids(loaded.tokenizer)
    # Conditions grouped by the sites they replace: one zero-ablation pass per group.
    by_sites: dict[tuple[Site, ...], list[tuple[EvalTarget, str, tuple[int, ...]]]] = {}
    for target in targets:
        for label, replaced in target.splices():
            sites = tuple(target.output_sites[j] for j in replaced)
            by_sites.setdefault(sites, []).append((target, label, replaced))
    accumulators = {
        (t.name, label): LossAccumulator(corpus.context_size, config.keep_prediction_deltas)
        for t in targets
        for label, _ in t.splices()
    }
    device = next(model.parameters()).device
    loss_batch = min(config.batch_windows, config.loss_windows)
    n_batches = -(-config.loss_windows // loss_batch)
    batches = itertools.islice(heldout_batches(loaded, corpus, config, loss_batch, split), n_batches)
    passes_per_batch = 1 + len(by_sites) + len(accumulators)
    with tqdm(total=n_batches * passes_per_batch, unit="pass", disable=not progress, desc="eval: delta LM loss") as bar:
        for batch_index, windows in enumerate(batches):
            windows = windows.to(device)
            ids_BT, keep_BT = windows.ids_BT, windows.kept_positions(special)
            predictions = Predictions.select(ids_BT, keep_BT, config.loss_position_stride, offset=batch_index)
            ce_clean, log_probs_clean = clean_log_probs(model, ids_BT, predictions, config.lm_head_chunk)
            bar.update(1)
            keep_BT1 = keep_BT.unsqueeze(-1)
            for sites, conditions in by_sites.items():
                zero_taps: dict[Site, Tap] = {site: _zeroing(keep_BT1) for site in sites}
                ce_zero, _ = tapped_losses(model, ids_BT, zero_taps, predictions, chunk=config.lm_head_chunk)
                bar.update(1)
                for target, label, replaced in conditions:
                    site_taps = dictionary_taps(
                        target.sae.to(device), target.input_sites, target.output_sites, replaced, keep_BT
                    )
                    ce_sae, kl = tapped_losses(
                        model, ids_BT, site_taps, predictions, log_probs_clean, config.lm_head_chunk
                    )
                    assert kl is not None
                    accumulators[target.name, label].update(ce_clean, ce_sae, ce_zero, kl, predictions.cols_T)
                    bar.update(1)
    results: dict[str, dict[str, Any]] = {}
    for target in targets:
        results[target.name] = accumulators[target.name, ""].result()
        by_site = {label: accumulators[target.name, label].result() for label, _ in target.splices() if label}
        if by_site:
            results[target.name]["splice"] = "replacement model: every output site replaced at once"
            results[target.name]["by_output_site"] = by_site
    return results


def _zeroing(keep_BT1: torch.Tensor) -> Tap:
    def zero(x_BTD: torch.Tensor) -> torch.Tensor:
        return torch.where(keep_BT1.to(x_BTD.device), torch.zeros_like(x_BTD), x_BTD)

    return zero


def check_targets_fit(loaded: LoadedModel, targets: Sequence[EvalTarget]) -> None:
    """Refuse, before any pass, a dictionary made for another model: one whose sites the model does not have, or
    whose input or output width differs from the model's at its sites. The error names the dictionary, the
    site, both widths and the model, instead of a shape error from deep inside the passes."""
    model, n_layers = loaded.info.name, loaded.info.n_layers
    advice = "it was made for another model: evaluate it on that one (--model)"
    for target in targets:
        for site in (*target.input_sites, *target.output_sites):
            if site.layer >= n_layers:
                raise ValueError(
                    f"dictionary {target.name} uses {site.id}, but {model} has {n_layers} layers (0-{n_layers - 1}): "
                    f"{advice}"
                )
    sites = sorted({site for target in targets for site in (*target.input_sites, *target.output_sites)})
    widths = site_widths(loaded.model, sites)
    for target in targets:
        config = target.sae.config
        ends = [("reads", site, config.d_in) for site in target.input_sites]
        ends += [("writes", site, config.d_target) for site in target.output_sites]
        for verb, site, width in ends:
            if widths[site] != width:
                raise ValueError(
                    f"dictionary {target.name} {verb} vectors of width {width} at {site.id}, but {model} has width "
                    f"{widths[site]} there (its d_model is {loaded.info.d_model}): {advice}"
                )


def evaluate(
    loaded: LoadedModel,
    targets: Sequence[EvalTarget],
    corpus: CorpusConfig,
    config: EvalConfig,
    *,
    progress: bool = True,
    split: Split = "heldout",
) -> dict[str, dict[str, Any]]:
    """Every metric for every target; writes `metrics.json` into each target's folder (`write_metrics`).

    `split` is the corpus split evaluated on: "heldout" (default), or "all" for data never trained on
    (e.g. rollouts kept for evaluation)."""
    if not targets:
        raise ValueError("nothing to evaluate")
    check_unique_names([t.name for t in targets], what="evaluation target")
    check_targets_fit(loaded, targets)
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
            **({"site_out": target.site_out.id} if target.site_out not in (None, target.site) else {}),
            **({"layers": list(target.layers)} if target.layers else {}),
            "dictionary_kind": target.dictionary_kind,
            "architecture": target.sae.config.architecture,
            "width": target.sae.config.total_width,
            "model": loaded.info.name,
            "dataset": {**corpus.to_dict(), "split": split, "sample": _SAMPLE_TEXT},
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
            write_metrics(target.folder, results[target.name])
    return results

"""End-to-end KL finetuning of a trained dictionary (Gemma Scope 2, method §7.6): an optional final phase.

The dictionary's reconstruction is spliced into the model at its site (special positions untouched, as in
evaluation) and the loss mixes reconstruction with the KL divergence between the clean and the spliced
next-token distributions::

    L = (MSE + α·β·KL(p_clean ‖ p_spliced)) / (1 + β) + sparsity,     α = MSE / (KL + 1e-8), held constant

α carries no gradient: it only rescales KL to MSE's magnitude, so β alone sets the mix (β = 0 is plain
MSE). The sparsity term is the dictionary's own penalty at full strength, so L0 stays where training
left it. KL targets delta LM loss directly, which reconstruction does not: on Gemma 3's residual stream
the squared error is dominated by one massive dimension. The model stays frozen; gradients flow through
its later layers into the dictionary. Steps follow the trainer's (decoder-gradient projection, Adam with
β1 = 0, decoder rows renormalised).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.windows import WindowBatch, special_token_ids, stack_windows
from saescope.dictionaries.folder import read_trained_sae, write_dictionary_folder
from saescope.models.hooks import splice
from saescope.models.loading import LoadedModel
from saescope.models.predictions import Predictions, clean_log_probs, final_hidden, kl_to_clean, logits_from_hidden
from saescope.models.sites import Site
from saescope.sae import JumpReLU, SparseDictionary, single_layer
from saescope.sae.base import LossOutput
from saescope.train.elements import threshold_steering_factor

#: Added to KL in α = MSE / (KL + ε) so that α stays finite when the spliced model is exact (method §7.6).
ALPHA_EPSILON = 1e-8


def kl_finetune_loss(mse: torch.Tensor, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """``(MSE + α·β·KL) / (1 + β)`` with ``α = MSE / (KL + 1e-8)`` detached (method §7.6): a scalar."""
    if beta < 0 or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number >= 0; got {beta!r}")
    alpha = (mse / (kl + ALPHA_EPSILON)).detach()
    return (mse + alpha * beta * kl) / (1.0 + beta)


@dataclass(frozen=True)
class KLFinetuneConfig:
    """Settings of the KL phase."""

    tokens: int  # training tokens (kept, non-special positions) to finetune on
    beta: float = 1.0
    lr: float = 1e-4
    batch_windows: int = 4
    #: Count every n-th next-token prediction in the KL (divides the 262k-vocabulary LM-head cost).
    position_stride: int = 4
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.batch_windows < 1 or self.position_stride < 1:
            raise ValueError("KLFinetuneConfig.tokens, batch_windows and position_stride must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.beta < 0:
            raise ValueError(f"KLFinetuneConfig needs lr > 0 and beta >= 0; got lr={self.lr!r}, beta={self.beta!r}")


@dataclass(frozen=True)
class KLStep:
    """What one finetuning step measured."""

    loss: float
    mse: float
    kl: float
    l0: float


def spliced_kl_step(
    loaded: LoadedModel,
    sae: SparseDictionary,
    site: Site,
    norm_scale: float,
    windows: WindowBatch,
    beta: float,
    *,
    position_stride: int = 1,
    step: int = 0,
    coefficient_scale: float = 1.0,
) -> tuple[torch.Tensor, KLStep]:
    """The KL-finetune loss (with its graph) of `sae`, trained on activations divided by `norm_scale`, on
    one batch of windows as the corpus yields them (special tokens and a chat corpus's excluded positions are
    left out); the caller backpropagates it."""
    model = loaded.model
    ids_BT, keep_BT = windows.ids_BT, windows.kept_positions(special_token_ids(loaded.tokenizer))
    predictions = Predictions.select(ids_BT, keep_BT, position_stride)
    with torch.no_grad():
        _, clean_NV = clean_log_probs(model, ids_BT, predictions, chunk=max(1, predictions.targets_N.numel()))
    parts: list[LossOutput] = []

    def replace(x_BTD: torch.Tensor) -> torch.Tensor:
        x_ND = x_BTD[keep_BT].float() / norm_scale
        out = sae.loss(x_ND, step=step, coefficient_scale=coefficient_scale)
        parts.append(out)
        spliced_BTD = x_BTD.clone()
        spliced_BTD[keep_BT] = (out.output.reconstruction * norm_scale).to(x_BTD.dtype)
        return spliced_BTD

    with splice(model, {site: replace}):
        h_ND = final_hidden(model, ids_BT)[predictions.rows_B, predictions.cols_T]
    (out,) = parts
    log_probs_NV = torch.log_softmax(logits_from_hidden(model, h_ND), dim=-1)
    kl = kl_to_clean(clean_NV, log_probs_NV).mean()
    total = kl_finetune_loss(out.reconstruction, kl, beta) + out.sparsity + out.high_frequency
    return total, KLStep(float(total.detach()), float(out.reconstruction.detach()), float(kl.detach()), float(out.l0))


def _window_batches(loaded: LoadedModel, corpus: CorpusConfig, batch_windows: int) -> Iterator[WindowBatch]:
    for epoch in itertools.count():
        yield from stack_windows(corpus_windows(corpus, loaded.tokenizer, "train", epoch=epoch), batch_windows)


def kl_finetune(
    loaded: LoadedModel,
    sae: SparseDictionary,
    site: Site,
    norm_scale: float,
    corpus: CorpusConfig,
    config: KLFinetuneConfig,
    *,
    sparsity_step: int = 10**9,
    coefficient_scale: float = 1.0,
    target_l0: float | None = None,
    threshold_controller_gain: float = 0.0,
) -> list[KLStep]:
    """Finetune `sae` (training space: inputs divided by `norm_scale`) in place on the training split of
    `corpus`, for `config.tokens` kept tokens; returns what each step measured.

    `sparsity_step` is the step the dictionary's own λ warm-up is evaluated at (default: past any warm-up)
    and `coefficient_scale` multiplies λ (pass the trainer's final controller scale to keep L0 in place).
    With `target_l0` and a `threshold_controller_gain` > 0, a JumpReLU's θ is steered after every step as
    in training (`saescope.train.elements.threshold_steering_factor`): without it the KL term pulls L0 below
    the target.
    """
    steer = target_l0 is not None and threshold_controller_gain > 0 and isinstance(sae, JumpReLU)
    device = next(loaded.model.parameters()).device
    sae.to(device).train()
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.0, 0.999), eps=1e-8)
    special = special_token_ids(loaded.tokenizer)
    history: list[KLStep] = []
    seen = 0
    with tqdm(total=config.tokens, unit="tok", unit_scale=True, disable=not config.progress, desc="KL finetune") as bar:
        for windows in _window_batches(loaded, corpus, config.batch_windows):
            if seen >= config.tokens:
                break
            windows = windows.to(device)
            total, measured = spliced_kl_step(
                loaded, sae, site, norm_scale, windows, config.beta,
                position_stride=config.position_stride, step=sparsity_step, coefficient_scale=coefficient_scale,
            )  # fmt: skip
            if not math.isfinite(measured.loss):
                raise FloatingPointError(f"KL finetuning of {site}: the loss is {measured.loss}; lower the lr")
            total.backward()  # type: ignore[no-untyped-call]
            sae.project_decoder_grad_()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sae.normalize_decoder_()
            if steer and target_l0 is not None:
                sae.scale_thresholds_(threshold_steering_factor(measured.l0, target_l0, threshold_controller_gain))
            history.append(measured)
            kept = int(windows.kept_positions(special).sum())
            seen += kept
            bar.update(kept)
            bar.set_postfix_str(f"MSE {measured.mse:.3f} KL {measured.kl:.3f} L0 {measured.l0:.1f}", refresh=False)
    sae.eval()
    return history


def finetune_trained_folder(
    loaded: LoadedModel, source: Path, destination: Path, corpus: CorpusConfig, config: KLFinetuneConfig
) -> dict[str, Any]:
    """KL-finetune the trained dictionary in folder `source` (``sae.safetensors`` + ``config.json`` as the
    trainer writes them) and write the result as the same kind of folder at `destination` (may be `source`).

    λ stays at the value training ended with (the controller's last scale, read from ``config.json``), so
    L0 stays where training left it. Returns the phase's summary, also recorded in ``config.json``.
    """
    entry = read_trained_sae(source)
    sae = single_layer(entry.training_space(), "KL finetuning")
    for parameter in sae.parameters():
        parameter.requires_grad_(True)
    final_lambda = entry.config.get("final_batch_metrics", {}).get("lambda")
    base_lambda = entry.dictionary.l0_coefficient if entry.dictionary.sparsity in ("l0", "quadratic_l0") else 0.0
    scale = float(final_lambda) / base_lambda if final_lambda and base_lambda > 0 else 1.0
    target = entry.config.get("target_l0")
    gain = float(entry.config.get("training", {}).get("threshold_controller_gain", 0.0))
    started = time.perf_counter()
    history = kl_finetune(
        loaded, sae, entry.site, entry.norm_scale, corpus, config, coefficient_scale=scale,
        target_l0=float(target) if target is not None else None, threshold_controller_gain=gain,
    )  # fmt: skip
    summary = {
        **asdict(config),
        "steps": len(history),
        "seconds": time.perf_counter() - started,
        "coefficient_scale": scale,
        "target_l0": target,
        "threshold_controller_gain": gain,
        "first": asdict(history[0]) if history else None,
        "last": asdict(history[-1]) if history else None,
    }
    write_dictionary_folder(destination, sae, {**entry.config, "kl_finetune": summary})
    return summary

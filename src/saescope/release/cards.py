"""Model cards: a README.md per release saying what is in it, how it was made and how to use it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saescope.atomic import atomic_write_text
from saescope.dictionaries.folder import L0_FROM_METRICS, TrainedSAE
from saescope.release.common import l0_label
from saescope.release.suite import ExportedSAE
from saescope.sae.widths import width_name
from saescope.versions import SCHEMA_VERSION

#: Release format id -> (title, layout line) for the card.
FORMAT_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "gemmascope": (
        "Gemma Scope 1 layout",
        "`<model>-<res|att|mlp|transcoders>/layer_{L}/width_{W}/average_l0_{N}/params.npz` (float32 `W_enc`, "
        "`W_dec`, `b_enc`, `b_dec`, `threshold`)",
    ),
    "gemmascope2": (
        "Gemma Scope 2 layout",
        "`<resid_post|attn_out|mlp_out|transcoder>_all/layer_{L}_width_{W}_l0_{small|medium|big}[_affine]/` with "
        "`params.safetensors` (float32 `w_enc`, `w_dec`, `b_enc`, `b_dec`, `threshold`[, `affine_skip_connection`]) "
        "and `config.json`; cross-layer transcoders in `clt/width_{W}_l0_{label}[_affine]/` and crosscoders in "
        "`crosscoder/layer_{a}_{b}_..._width_{W}_l0_{label}/`, one `params_layer_{k}.safetensors` per spanned layer "
        "(k: the model layer in a CLT, the block index in a crosscoder) "
        "(`w_dec` of block i is (width per layer, n, d_out): its writes to layers i..n−1, zero rows for the "
        "layers before i) and `config.json`",
    ),
    "saelens": (
        "SAELens format",
        "`<res|att|mlp|transcoder>/layer_{L}/width_{W}/average_l0_{N}/` with `cfg.json` and "
        "`sae_weights.safetensors` (load with `sae_lens.SAE.load_from_disk(folder)`)",
    ),
}

#: Metrics the card's evaluation table shows, in this order, when metrics.json has them (other metrics
#: are only shown when none of these is present).
_PREFERRED_METRICS = (
    "l0",
    "fvu",
    "explained_variance",
    "delta_lm_loss",
    "loss_recovered",
    "kl_clean_to_spliced",
    "cosine_similarity",
    "dead_fraction",
    "dense_fraction_above_0.1",
)
#: metrics.json groups whose numbers are metrics (``saescope-metrics-v1``: reconstruction, lm_loss).
_METRIC_GROUPS = ("reconstruction", "lm_loss", "metrics")
_MAX_METRIC_COLUMNS = 10


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def _width_text(width: int) -> str:
    name = width_name(width)
    return f"{width:,}" + (f" ({name})" if name != str(width) else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numeric_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Scalar metrics of a metrics.json: top-level numbers and those of its metric groups."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if _is_number(value) and key != "format":
            out[key] = float(value)
        elif key in _METRIC_GROUPS and isinstance(value, dict):
            out.update({sub: float(v) for sub, v in value.items() if _is_number(v)})
    return out


def _metric_columns(entries: Sequence[TrainedSAE]) -> list[str]:
    present = set().union(*(_numeric_metrics(e.metrics) for e in entries))
    preferred = [m for m in _PREFERRED_METRICS if m in present]
    return (preferred or sorted(present))[:_MAX_METRIC_COLUMNS]


def _evaluation_notes(entries: Sequence[TrainedSAE]) -> list[str]:
    """One line on the evaluation data and masking, from the first metrics.json that records them."""
    for e in entries:
        metrics = e.metrics or {}
        dataset, policy = metrics.get("dataset"), metrics.get("mask_policy")
        if isinstance(dataset, dict) or isinstance(policy, str):
            parts = []
            if isinstance(dataset, dict):
                described = ", ".join(
                    f"{k} {v}" for k, v in dataset.items() if isinstance(v, (str, int, float)) and k != SCHEMA_VERSION
                )
                parts.append(f"Evaluation data: {described}.")
            if isinstance(policy, str):
                parts.append(f"Masking: {policy}.")
            return [" ".join(parts), ""]
    return []


def _training_rows(entries: Sequence[TrainedSAE]) -> list[list[object]]:
    rows: list[list[object]] = []
    for e in entries:
        training = e.config.get("training") if isinstance(e.config.get("training"), dict) else {}
        assert isinstance(training, dict)
        d = e.dictionary
        sparsity = f"{d.sparsity} λ={d.l0_coefficient:g}" if d.sparsity in ("l0", "quadratic_l0") else str(d.sparsity)
        rows.append([
            e.name, e.site.id, d.architecture, sparsity, e.config.get("target_l0"), training.get("tokens_seen"),
            training.get("batch_size"), training.get("steps_done"), e.config.get("lr"), e.norm_scale,
        ])  # fmt: skip
    return rows


def _parent_lines(entries: Sequence[TrainedSAE]) -> list[str]:
    """Dictionaries trained from a parent (`saescope train --init-from`, e.g. PT→IT finetuning)."""
    pairs = [(e.name, e.config["init_from"]) for e in entries if isinstance(e.config.get("init_from"), str)]
    if not pairs:
        return []
    described = "; ".join(f"`{name}` from `{parent}`" for name, parent in pairs)
    return [f"* **Initialised from a trained dictionary** (finetuned, as Gemma Scope 2's IT SAEs): {described}."]


def render_model_card(
    exported: Mapping[str, Sequence[ExportedSAE]],
    *,
    model_name: str,
    training_data: str | None = None,
) -> str:
    """The README.md text of a release holding ``exported`` (format id -> what was written in it)."""
    by_name: dict[str, TrainedSAE] = {}
    for items in exported.values():
        for item in items:
            by_name.setdefault(item.entry.name, item.entry)
    entries = sorted(by_name.values(), key=lambda e: (e.site, e.width, e.l0, e.name))
    sites = sorted({e.site for e in entries})
    widths = sorted({e.width for e in entries})
    l0_sources = sorted({e.l0_source for e in entries})
    l0s = [e.l0 for e in entries] or [0.0]
    lines: list[str] = [
        f"# Sparse autoencoders for {model_name} (saescope)",
        "",
        f"{len(entries)} JumpReLU sparse dictionar{'y' if len(entries) == 1 else 'ies'} trained with saescope, a "
        "reimplementation of Gemma Scope (Lieberum et al. 2024) and Gemma Scope 2, on activations of "
        f"`{model_name}`.",
        "",
        f"* **Sites** ({len(sites)}): {', '.join(f'`{s.id}`' for s in sites)}",
        f"* **Widths**: {', '.join(_width_text(w) for w in widths)}",
        f"* **L0** (mean active latents per token): {_fmt(round(min(l0s), 1))} to {_fmt(round(max(l0s), 1))}",
        f"* **L0 measured on**: {'; '.join(l0_sources)}",
        "",
        "## Files",
        "",
    ]
    for format_id in exported:
        title, layout = FORMAT_DESCRIPTIONS[format_id]
        prefix = f"{format_id}/" if len(exported) > 1 else ""
        lines += [f"**{title}** (`{prefix}`): {layout}." if prefix else f"**{title}**: {layout}.", ""]
    header = ["dictionary", "site", "width", "L0", "GS2 label", *(f"{fid} folder" for fid in exported)]
    paths = {fid: {item.entry.name: item.path.as_posix() for item in items} for fid, items in exported.items()}
    rows = [
        [e.name, _site_text(e), e.width, round(e.l0, 1), l0_label(e.l0 / e.dictionary.n_layers),
         *(f"`{paths[fid].get(e.name, '—')}`" for fid in exported)]
        for e in entries
    ]  # fmt: skip
    lines += [*_table(header, rows), ""]
    lines += ["## Evaluation", ""]
    columns = _metric_columns(entries)
    if columns:
        metric_rows = [[e.name, *(_numeric_metrics(e.metrics).get(c) for c in columns)] for e in entries]
        lines += [
            "Held-out metrics written by saescope's evaluation (`metrics.json` in the run's eval folder). Empty "
            "cells: not measured for that dictionary.",
            "",
            *_evaluation_notes(entries),
            *_table(["dictionary", *columns], metric_rows),
            "",
        ]
    else:
        lines += ["No evaluation metrics (`metrics.json`) were found when this release was written.", ""]
    if any(e.l0_source != L0_FROM_METRICS for e in entries):
        lines += [
            "Some L0 values (and the folder names built from them) come from the last training batch, not a "
            "held-out evaluation; rerun the export after evaluating to name folders by held-out L0.",
            "",
        ]
    lines += [
        "## Training",
        "",
        f"* **Data**: {training_data or 'not recorded in the run folder (see the run that produced it)'}.",
        "* **Recipe**: Gemma Scope 1: activations divided by one scalar C per site so that E‖x‖² = 1, "
        "Adam(β1 = 0, β2 = 0.999), unit-norm decoder rows, JumpReLU with straight-through-estimator "
        "threshold gradients. C and the pre-encoder bias are folded into the released weights.",
        *_parent_lines(entries),
        "",
        *_table(
            ["dictionary", "site", "architecture", "sparsity", "target L0", "tokens", "batch", "steps", "lr", "C"],
            _training_rows(entries),
        ),
        "",
    ]
    lines += _INFERENCE + (_MULTI_LAYER_INFERENCE if any(e.is_multi_layer for e in entries) else [])
    lines += _licence(model_name)
    return "\n".join(lines).rstrip() + "\n"


def _site_text(entry: TrainedSAE) -> str:
    """``layer_3/mlp_in → layer_3/mlp``; a multi-layer dictionary: ``layers 0, 1, 2: mlp_in → mlp``."""
    if entry.is_multi_layer:
        kinds = entry.site.kind.value + (
            f" → {entry.site_out.kind.value}" if entry.is_transcoder and entry.site_out else ""
        )
        return f"layers {', '.join(str(layer) for layer in entry.layers)}: {kinds}"
    return entry.site.id + (f" → {entry.site_out.id}" if entry.is_transcoder and entry.site_out else "")


_MULTI_LAYER_INFERENCE = [
    "* **Cross-layer transcoders and crosscoders** (`clt/`, `crosscoder/`): block i reads layer i's input with "
    "its own `w_enc`, `b_enc`, `threshold`; output j is `b_dec` of block j (+ `x_j @ affine_skip_connection` of "
    "block j) plus, for every block i ≤ j, `f_i @ w_dec_i[:, j - i, :]`. No latent writes to an earlier layer. "
    "The GS2 L0 label of these folders is that of the L0 per layer (total L0 / layers).",
    "",
]


_INFERENCE = [
    "## How to use",
    "",
    "The weights are in **raw activation space**: apply them to the model's activations as they are, with no "
    "normalisation and **no subtraction of `b_dec` before encoding** (it is already folded into `b_enc`):",
    "",
    "```python",
    "pre = x @ W_enc + b_enc                 # x: (tokens, d_in) raw activations at the site",
    "f = (pre > threshold) * relu(pre)       # JumpReLU feature activations (tokens, width)",
    "x_hat = f @ W_dec + b_dec               # reconstruction (+ x @ W_skip for skip transcoders)",
    "```",
    "",
    "* **Skip the BOS position** (and padding): training excluded BOS, EOS and pad tokens, whose activations "
    "have a very different norm; encoding them gives meaningless features.",
    "* Sites (Hugging Face Gemma naming): `res` = output of decoder layer L (`model.layers.L` output, TransformerLens "
    "`blocks.L.hook_resid_post`); `att` = the concatenated per-head attention outputs entering `o_proj`; `mlp` "
    "= the output of `post_feedforward_layernorm`. Use a forward hook on the layer, not `output_hidden_states`, "
    "for the last layer (HF applies the final norm there).",
    "* Feature activations are C× the training-time ones (C = the per-site scale in the table above).",
    "* Load any of these folders with `saescope.release.load_sae(folder)`; the SAELens folders also with "
    "`sae_lens.SAE.load_from_disk(folder)`.",
    "",
]


def _licence(model_name: str) -> list[str]:
    lines = [
        "## Licence notes",
        "",
        f"* These dictionaries are derived from activations of `{model_name}`. Dictionaries derived from a Gemma "
        "model are governed by the **Gemma Terms of Use** (as model derivatives) and the Gemma Prohibited Use "
        "Policy: their use and redistribution must follow those terms, and a copy of the terms should travel with "
        "them. For other models, that model's licence applies. (Google's own Gemma Scope weights are released "
        "under CC-BY-4.0; that licence does not carry over to these.)",
        "* The training text keeps its own licences. saescope's embedded default corpus is made of:",
        "",
    ]
    try:
        from saescope.data.embedded import SOURCES
    except ImportError:  # pragma: no cover - the corpus module is part of saescope
        return lines
    lines += _table(
        ["source", "package", "licence", "attribution"],
        [[s.name, f"{s.package}=={s.version}", s.licence, s.attribution] for s in SOURCES.values()],
    )
    return [*lines, ""]


def write_model_card(
    path: Path,
    exported: Mapping[str, Sequence[ExportedSAE]],
    *,
    model_name: str,
    training_data: str | None = None,
) -> None:
    """Write :func:`render_model_card` to ``path`` (a README.md), atomically."""
    atomic_write_text(path, render_model_card(exported, model_name=model_name, training_data=training_data))

"""PT SAEs vs IT SAEs, as in Gemma Scope 1 §4.5 (method §3.5): delta LM loss and FVU of SAEs trained on a
pretrained (PT) model and of SAEs trained or finetuned for its instruction-tuned (IT) counterpart, each
evaluated under every condition:

* ``it-rollouts``: spliced into the IT model, on the IT model's rollouts rendered with its chat template and
  the chat mask (user-turn prefix and special tokens dropped) -- the paper's comparison: PT SAEs raise the IT
  model's loss almost as little as IT SAEs, while their FVU gap is larger;
* ``pt-text``: spliced into the PT model, on held-out pretraining-style text -- what finetuning costs on the
  original distribution.

Both models must share one architecture (the same SAEs read both). Every (condition, SAE) pair is evaluated
by :func:`saescope.eval.evaluate` (its metrics.json, with the mask policy, under
``metrics/<condition>/<family>-<name>/``), and :func:`write_comparison` writes ``comparison.csv``,
``comparison.md``, ``comparison.json`` and the plot ``comparison.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.atomic import atomic_write_bytes
from saescope.data.corpus import CorpusConfig, mask_policy
from saescope.data.split import Split
from saescope.eval.evaluate import EvalConfig, EvalTarget, evaluate
from saescope.eval.report import format_cell
from saescope.models.loading import LoadedModel, ModelInfo
from saescope.models.sites import site_width

#: SAE family label -> plot colour.
FAMILY_COLOURS = {"PT": "#4C72B0", "IT": "#DD8452"}
COLUMNS = (
    "condition", "family", "name", "site", "width", "l0", "fvu", "delta_lm_loss", "delta_lm_loss_stderr",
    "kl_clean_to_spliced", "n_tokens", "loss_n_predictions", "model", "mask_policy",
)  # fmt: skip
#: What must match for the same SAEs to read both models.
_ARCHITECTURE_FIELDS = ("family", "n_layers", "d_model", "d_attn", "d_mlp")


@dataclass(frozen=True)
class Condition:
    """One evaluation setting: a model and the data it is evaluated on."""

    name: str
    description: str
    model: str  # model name, folder or Hub id, loaded by the caller's `load`
    corpus: CorpusConfig
    split: Split = "heldout"


def _check_same_architecture(reference: ModelInfo | None, info: ModelInfo) -> None:
    if reference is None:
        return
    differences = [
        f"{field} {getattr(reference, field)!r} vs {getattr(info, field)!r}"
        for field in _ARCHITECTURE_FIELDS
        if getattr(reference, field) != getattr(info, field)
    ]
    if differences:
        raise ValueError(
            f"{reference.name} and {info.name} do not share one architecture ({'; '.join(differences)}): the PT and "
            "IT models must be the same network (e.g. google/gemma-3-270m and google/gemma-3-270m-it)"
        )


def _targets_for(loaded: LoadedModel, condition: Condition, families: Mapping[str, Sequence[EvalTarget]],
                 out_dir: Path) -> tuple[list[EvalTarget], dict[str, tuple[str, EvalTarget]]]:  # fmt: skip
    """Every SAE of every family, renamed ``<family>:<name>`` with its metrics folder under this condition."""
    targets, origin = [], {}
    for family, members in families.items():
        for target in members:
            if target.site.layer >= loaded.info.n_layers:
                raise ValueError(f"{family} SAE {target.name} reads {target.site}; {loaded.info.name} has "
                                 f"{loaded.info.n_layers} layers")  # fmt: skip
            width = site_width(loaded.model, target.site.kind)
            if target.sae.config.d_in != width:
                raise ValueError(
                    f"{family} SAE {target.name} reads {target.sae.config.d_in} dimensions but {target.site} of "
                    f"{loaded.info.name} has {width}"
                )
            folder = out_dir / "metrics" / condition.name / f"{family}-{target.name}"
            renamed = dataclasses.replace(target, name=f"{family}:{target.name}", folder=folder)
            folder.mkdir(parents=True, exist_ok=True)
            targets.append(renamed)
            origin[renamed.name] = (family, target)
    return targets, origin


def compare_pt_it(
    conditions: Sequence[Condition],
    families: Mapping[str, Sequence[EvalTarget]],
    config: EvalConfig,
    out_dir: Path,
    *,
    load: Callable[[str], LoadedModel],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every SAE of ``families`` ({"PT": [...], "IT": [...]}) under every condition, loading one
    model at a time; returns one row per (condition, SAE) and writes the comparison files into ``out_dir``."""
    if not any(families.values()):
        raise ValueError("no SAE to compare: give PT SAEs, IT SAEs or both")
    rows: list[dict[str, Any]] = []
    reference: ModelInfo | None = None
    for condition in conditions:
        loaded = load(condition.model)
        _check_same_architecture(reference, loaded.info)
        reference = reference or loaded.info
        targets, origin = _targets_for(loaded, condition, families, out_dir)
        results = evaluate(loaded, targets, condition.corpus, config, progress=progress, split=condition.split)
        for name, result in results.items():
            family, target = origin[name]
            losses = result.get("lm_loss") or {}
            rows.append({
                "condition": condition.name, "family": family, "name": target.name, "site": target.site.id,
                "width": target.sae.config.width, "l0": result["reconstruction"]["l0"],
                "fvu": result["reconstruction"]["fvu"], "delta_lm_loss": losses.get("delta_lm_loss"),
                "delta_lm_loss_stderr": losses.get("delta_lm_loss_stderr"),
                "kl_clean_to_spliced": losses.get("kl_clean_to_spliced"),
                "n_tokens": result["reconstruction"]["n_tokens"],
                "loss_n_predictions": losses.get("loss_n_predictions"), "model": loaded.info.name,
                "mask_policy": mask_policy(condition.corpus.chat_template),
            })  # fmt: skip
        del loaded, targets, origin
        gc.collect()  # one model in memory at a time
    write_comparison(rows, conditions, out_dir)
    return rows


def _sorted(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["condition"], r["site"], r["family"], r["name"]))


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One line per (condition, SAE): L0, FVU and delta LM loss ± its standard error."""
    header = ("condition", "site", "family", "SAE", "L0", "FVU", "delta LM loss (nats)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in _sorted(rows):
        delta = format_cell(row["delta_lm_loss"])
        if row["delta_lm_loss_stderr"] is not None:
            delta += f" ± {format_cell(row['delta_lm_loss_stderr'])}"
        cells = (row["condition"], row["site"], row["family"], row["name"], format_cell(row["l0"]),
                 format_cell(row["fvu"]), delta)  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(_sorted(rows))
    return buffer.getvalue()


def _plot(rows: Sequence[dict[str, Any]], conditions: Sequence[Condition]) -> bytes:
    """Bars per SAE, grouped by site, coloured by family: delta LM loss (with its standard error) and FVU,
    one column per condition (Gemma Scope 1 §4.5's comparison)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("delta_lm_loss", "delta LM loss (nats)"), ("fvu", "FVU"))
    figure, axes = plt.subplots(2, len(conditions), figsize=(1.5 + 4.5 * len(conditions), 6.5), squeeze=False)
    for column, condition in enumerate(conditions):
        members = [r for r in _sorted(rows) if r["condition"] == condition.name]
        positions, ticks, tick_labels, x = [], [], [], 0.0
        for site in sorted({r["site"] for r in members}):
            at_site = [r for r in members if r["site"] == site]
            start = x
            for _ in at_site:
                positions.append(x)
                x += 1.0
            ticks.append((start + x - 1.0) / 2)
            tick_labels.append(site)
            x += 0.8  # gap between sites
        for row_index, (metric, label) in enumerate(metrics):
            ax = axes[row_index][column]
            for family, colour in FAMILY_COLOURS.items():
                chosen = [(p, r) for p, r in zip(positions, members, strict=True) if r["family"] == family]
                chosen = [(p, r) for p, r in chosen if r[metric] is not None]
                if not chosen:
                    continue
                errors = [r["delta_lm_loss_stderr"] or 0.0 for _, r in chosen] if metric == "delta_lm_loss" else None
                ax.bar([p for p, _ in chosen], [r[metric] for _, r in chosen], width=0.85, color=colour,
                       yerr=errors, capsize=3, label=f"{family} SAEs")  # fmt: skip
            ax.set_xticks(ticks, tick_labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(label)
            ax.axhline(0.0, color="black", linewidth=0.6)
            if row_index == 0:
                ax.set_title(f"{condition.name}\n{condition.description}", fontsize=9)
        axes[0][column].legend(fontsize=8)
    figure.suptitle("PT vs IT SAEs: delta LM loss and FVU (Gemma Scope 1 §4.5)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _summary(rows: Sequence[dict[str, Any]], conditions: Sequence[Condition]) -> dict[str, Any]:
    described = [
        {**dataclasses.asdict(c), "corpus": c.corpus.to_dict(), "mask_policy": mask_policy(c.corpus.chat_template)}
        for c in conditions
    ]
    return {"format": "saescope-pt-it-comparison-v1", "conditions": described, "rows": _sorted(rows)}


def write_comparison(rows: Sequence[dict[str, Any]], conditions: Sequence[Condition], out_dir: Path) -> list[Path]:
    """comparison.csv, comparison.md, comparison.json (rows and conditions) and comparison.png, atomically."""
    files = {
        "comparison.csv": _csv_text(rows).encode("utf-8"),
        "comparison.md": comparison_markdown(rows).encode("utf-8"),
        "comparison.json": (json.dumps(_summary(rows, conditions), indent=2) + "\n").encode("utf-8"),
        "comparison.png": _plot(rows, conditions),
    }
    paths = []
    for name, data in files.items():
        atomic_write_bytes(out_dir / name, data)
        paths.append(out_dir / name)
    return paths

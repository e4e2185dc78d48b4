"""Run the chosen interpretability metrics on evaluation targets: one result dictionary per target (what
metrics.json holds under ``interp``), its seconds per metric, and a short printed table."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from saescope.eval.evaluate import EvalTarget
from saescope.eval.interp.absorption import AbsorptionConfig, choose_words
from saescope.eval.interp.common import InterpOptions
from saescope.models.loading import LoadedModel

AUTOINTERP = "autointerp"
#: Automated interpretability is not an `--interp` metric: it needs an explainer LLM and the run's feature index,
#: not only the model and the dictionary.
AUTOINTERP_IS_A_COMMAND = (
    "autointerp is its own command, since it needs an explainer LLM and the run's feature index: run "
    "`saescope autointerp RUN --explainer MODEL` (see `saescope autointerp --help`)"
)


def parse_interp_names(text: str, known: Sequence[str]) -> list[str]:
    """``"absorption,probing"`` -> the names, in order, without repeats; ValueError naming an unknown one and
    listing the known ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--interp needs at least one metric name; choose from {', '.join(known)}")
    if AUTOINTERP in names and AUTOINTERP not in known:
        raise ValueError(AUTOINTERP_IS_A_COMMAND)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--interp: unknown metric {unknown[0]!r}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def check_interp_request(loaded: LoadedModel, names: Sequence[str], options: InterpOptions) -> None:
    """What can be checked before any pass: absorption needs word tokens in the model's vocabulary."""
    if "absorption" in names:
        choose_words(loaded, AbsorptionConfig(), seed=options.seed)


def run_interp(
    loaded: LoadedModel,
    targets: Sequence[EvalTarget],
    metrics: Mapping[str, Any],
    options: InterpOptions,
) -> dict[str, dict[str, Any]]:
    """For every target, ``{metric: result.to_dict() | {"seconds": ...}}``. A multi-layer dictionary (CLT,
    crosscoder) gets ``{"skipped": reason}`` per metric: the metrics read one site. Targets are taken site by
    site: the first dictionary of a site also pays for the site's model activations, shared with the others of
    that site and dropped before the next site."""
    results: dict[str, dict[str, Any]] = {}
    current_site = None
    for target in sorted(targets, key=lambda t: t.site):
        if target.site != current_site:  # the previous site's shared activations are not needed again
            options.shared.clear()
            current_site = target.site
        entry: dict[str, Any] = {}
        for name, metric in metrics.items():
            if target.layers:
                entry[name] = {"skipped": "interpretability metrics read single-layer dictionaries (one site)"}
                continue
            started = time.perf_counter()
            result = metric(target, loaded, options)
            entry[name] = {**result.to_dict(), "summary": result.summary(), "seconds": time.perf_counter() - started}
        results[target.name] = entry
    options.shared.clear()
    return {target.name: results[target.name] for target in targets}


def interp_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table: one row per dictionary, one column per headline number of each metric."""
    columns: list[tuple[str, str]] = []
    for entry in results.values():
        for metric, result in entry.items():
            for key in result.get("summary", {}):
                if (metric, key) not in columns:
                    columns.append((metric, key))
    header = ["dictionary", *(f"{metric}: {key}" for metric, key in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in results.items():
        cells = [name]
        for metric, key in columns:
            value = entry.get(metric, {}).get("summary", {}).get(key)
            cells.append("" if value is None else f"{value:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

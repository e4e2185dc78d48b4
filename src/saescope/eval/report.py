"""Suite tables (CSV, Markdown), the plots a researcher expects, and an HTML report (method §4.3).

Input: the per-dictionary metrics dictionaries written by `saescope.eval.evaluate` (metrics.json).
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.atomic import atomic_write_bytes, atomic_write_text
from saescope.models.sites import Site

COLUMNS = (
    "name", "site", "layer", "kind", "architecture", "width", "l0", "fvu", "explained_variance",
    "cosine_similarity", "l2_ratio", "dead_fraction", "dense_fraction_above_0.1", "delta_lm_loss",
    "delta_lm_loss_stderr", "loss_recovered", "kl_clean_to_spliced", "kl_clean_to_spliced_stderr", "n_tokens",
    "loss_n_predictions", "absorption_fraction", "full_absorption_rate", "letter_latent_f1", "probing_top_1",
    "probing_top_5", "probing_dense",
)  # fmt: skip
#: Interpretability columns (``saescope eval --interp``): column -> (metric, key of its summary in metrics.json).
INTERP_COLUMNS = {
    "absorption_fraction": ("absorption", "mean_absorption_fraction"),
    "full_absorption_rate": ("absorption", "full_absorption_rate"),
    # how well each letter's main latents detect it: absorption means little where they hardly do
    "letter_latent_f1": ("absorption", "main_latent_f1"),
    "probing_top_1": ("probing", "top_1_accuracy"),
    "probing_top_5": ("probing", "top_5_accuracy"),
    "probing_dense": ("probing", "dense_accuracy"),
}
#: A mean closer to zero than this many standard errors is marked as not resolved (it cannot be told from zero).
RESOLVED_STDERRS = 2.0
#: The mark after a figure that is not resolved.
UNRESOLVED_MARK = "~"
#: The Markdown table's columns; the two loss figures carry their standard error, KL first: on a short evaluation
#: the delta loss of the attention and MLP sites is mostly noise, while the per-prediction KL, which is never
#: negative and varies less between predictions, is resolved.
_SHOWN = (
    "site",
    "kind",
    "architecture",
    "width",
    "l0",
    "fvu",
    "kl",
    "delta_lm_loss",
    "loss_recovered",
    "dead_fraction",
)
_WITH_STDERR = {"kl": "kl_clean_to_spliced", "delta_lm_loss": "delta_lm_loss"}
TABLE_LEGEND = (
    "kl: mean KL(clean || spliced) per counted next-token prediction (nats) ± its standard error; delta_lm_loss: "
    f"spliced minus clean cross-entropy (nats) ± its standard error; {UNRESOLVED_MARK} after a figure: not resolved, "
    f"it lies within {RESOLVED_STDERRS:g} standard errors of zero."
)
_KIND_ORDER = ("res", "att", "mlp", "transcoder", "skip_transcoder", "clt", "skip_clt", "crosscoder")


def result_group(result: dict[str, Any]) -> str:
    """What a result is compared with: its site kind for an SAE, else its dictionary kind (transcoder, ...)."""
    kind = str(result.get("dictionary_kind", "sae"))
    return Site.parse(result["site"]).kind.value if kind == "sae" else kind


@dataclass(frozen=True)
class ReportFiles:
    table_csv: Path
    table_markdown: Path
    plots: list[Path]
    html: Path


def suite_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per dictionary, sorted by layer, kind, width and L0. ``site`` is the site reconstructed
    (a transcoder's output), so dictionaries that replace the same site line up. A multi-layer dictionary
    has a row for its replacement model (every layer at once, ``layer`` its first) and one per layer spliced
    alone (kind ``<kind>@layer``, its own block's L0)."""
    rows = []
    for result in results:
        site = Site.parse(result.get("site_out") or result["site"])
        row: dict[str, Any] = {
            "name": result["name"], "site": site.id, "layer": site.layer, "kind": result_group(result),
            "architecture": result["architecture"], "width": result["width"],
        }  # fmt: skip
        row.update({k: v for k, v in result["reconstruction"].items() if k in COLUMNS})
        row.update({k: v for k, v in (result.get("lm_loss") or {}).items() if k in COLUMNS})
        row.update(_interp_cells(result))
        if "layers" in result:
            row["site"] = f"layers {result['layers'][0]}-{result['layers'][-1]} (all at once)"
        rows.append(row)
        per_layer_loss = (result.get("lm_loss") or {}).get("by_output_site", {})
        for site_id, reconstruction in result["reconstruction"].get("by_output_site", {}).items():
            layer_site = Site.parse(site_id)
            layer_row = {**row, "site": site_id, "layer": layer_site.layer, "kind": f"{row['kind']}@layer"}
            layer_row.update({k: v for k, v in reconstruction.items() if k in COLUMNS})
            layer_row.update({k: v for k, v in per_layer_loss.get(site_id, {}).items() if k in COLUMNS})
            rows.append(layer_row)
    kind_rank = {kind: i for i, kind in enumerate(_KIND_ORDER)}
    return sorted(rows, key=lambda r: (r["layer"], kind_rank.get(r["kind"], 9), r["width"], r["l0"]))


def _interp_cells(result: dict[str, Any]) -> dict[str, Any]:
    """The interpretability figures a result carries (none unless `saescope eval --interp` ran)."""
    interp = result.get("interp") or {}
    cells = {}
    for column, (metric, key) in INTERP_COLUMNS.items():
        value = (interp.get(metric) or {}).get(key)
        if isinstance(value, (int, float)):
            cells[column] = float(value)
    return cells


def format_cell(value: Any) -> str:
    """A table cell: empty for None, 4 significant digits for a float ("nan" for NaN), else ``str(value)``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def resolved(value: float, stderr: float | None) -> bool:
    """Whether a mean is told apart from zero: |value| >= RESOLVED_STDERRS standard errors (no error: yes)."""
    if stderr is None or math.isnan(stderr):
        return True
    return abs(value) >= RESOLVED_STDERRS * stderr


def format_with_stderr(value: Any, stderr: Any) -> str:
    """``value ± stderr``, with the not-resolved mark when the value lies within 2 standard errors of zero."""
    text = format_cell(value)
    if value is None or stderr is None:
        return text
    mark = "" if resolved(float(value), float(stderr)) else f" {UNRESOLVED_MARK}"
    return f"{text} ± {format_cell(stderr)}{mark}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The suite as a Markdown table, the per-prediction KL leading the loss figures (and the interpretability
    figures when any dictionary has them), then the legend line."""
    shown = [*_SHOWN, *(c for c in INTERP_COLUMNS if any(c in row for row in rows))]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = []
        for column in shown:
            key = _WITH_STDERR.get(column)
            cells.append(
                format_with_stderr(row.get(key), row.get(f"{key}_stderr")) if key else format_cell(row.get(column))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + TABLE_LEGEND + "\n"


def kind_comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """Delta LM loss (and L0) per layer, one column per kind, when the suite has several kinds at one layer:
    e.g. MLP-output SAEs vs transcoders vs skip transcoders vs a CLT's layer spliced alone (Gemma Scope 1 and
    2 compare them this way). Several widths or L0s of one kind at a layer share a cell. Empty otherwise."""
    kinds = _kinds(rows)
    layers = sorted({row["layer"] for row in rows})
    if len(kinds) < 2:
        return ""
    lines = ["| layer | " + " | ".join(kinds) + " |", "|" + "---|" * (len(kinds) + 1)]
    for layer in layers:
        cells = []
        for kind in kinds:
            members = [r for r in rows if r["layer"] == layer and r["kind"] == kind]
            cells.append("; ".join(f"{_delta_loss_cell(r)} (L0 {format_cell(r.get('l0'))})" for r in members))
        if sum(bool(cell) for cell in cells) >= 2:
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return ""
    caption = (
        f"Delta LM loss (nats; L0 in brackets; {UNRESOLVED_MARK}: within {RESOLVED_STDERRS:g} standard errors of "
        "zero) per layer and kind:"
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _delta_loss_cell(row: dict[str, Any]) -> str:
    """A delta loss without its error, marked when it is not resolved."""
    value, stderr = row.get("delta_lm_loss"), row.get("delta_lm_loss_stderr")
    if value is None or stderr is None or resolved(float(value), float(stderr)):
        return format_cell(value)
    return f"{format_cell(value)} {UNRESOLVED_MARK}"


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _png_and_close(figure: Any, plt: Any) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open figure alive)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _label_one_panel(axes: Any, *, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, a log-scaled x axis with readable ticks, the legend and the title of a one-panel plot."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    readable_log_x(axes)
    axes.legend(fontsize=8)
    axes.set_title(title)


def readable_log_x(axes: Any) -> None:
    """Put a log scale on ``axes``' x axis (call it once the data are plotted), labelled with plain numbers at
    1-2-5 steps when the data span a few decades at most, else at powers of ten only. Matplotlib's default labels
    the minor ticks too when the data span less than a decade (L0 20 to 60, say), and those labels overlap into
    an unreadable smear."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axes.set_xscale("log")
    low, high = axes.get_xlim()
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)))
    axes.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())


def _kinds(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {row["kind"] for row in rows}
    return [k for k in _KIND_ORDER if k in present] + sorted(present - set(_KIND_ORDER))


def _plot_fidelity_vs_l0(rows: Sequence[dict[str, Any]], plt: Any) -> bytes:
    """The paper's sparsity-fidelity figures: delta loss and FVU against L0, one line per (layer, width)."""
    kinds = _kinds(rows)
    figure, axes = plt.subplots(2, len(kinds), figsize=(4.2 * len(kinds), 7), squeeze=False)
    n_layers = max(row["layer"] for row in rows) + 1
    colormap = plt.get_cmap("viridis")
    for column, kind in enumerate(kinds):
        groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for row in rows:
            if row["kind"] == kind:
                groups.setdefault((row["layer"], row["width"]), []).append(row)
        for (layer, width), members in sorted(groups.items()):
            members.sort(key=lambda r: r["l0"])
            color = colormap(layer / max(n_layers - 1, 1))
            for row_index, metric in enumerate(("delta_lm_loss", "fvu")):
                points = [(r["l0"], r[metric]) for r in members if r.get(metric) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    axes[row_index][column].plot(xs, ys, "o-", color=color, ms=4, label=f"L{layer} w{width}")
        axes[0][column].set_title(f"{kind}")
        axes[0][column].set_ylabel("delta LM loss (nats)")
        axes[1][column].set_ylabel("FVU")
        for row_index in range(2):
            axes[row_index][column].set_xlabel("L0")
            readable_log_x(axes[row_index][column])
    scalar = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(0, max(n_layers - 1, 1)))
    figure.colorbar(scalar, ax=axes, label="layer", shrink=0.6)
    figure.suptitle("Sparsity-fidelity (held-out)")
    return _png_and_close(figure, plt)


def _plot_by_layer(rows: Sequence[dict[str, Any]], plt: Any) -> bytes:
    metrics = (("l0", "L0"), ("fvu", "FVU"), ("delta_lm_loss", "delta LM loss"), ("dead_fraction", "dead fraction"))
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for column, (metric, label) in enumerate(metrics):
        for kind in _kinds(rows):
            for width in sorted({r["width"] for r in rows if r["kind"] == kind}):
                points = sorted(
                    (r["layer"], r[metric])
                    for r in rows
                    if r["kind"] == kind and r["width"] == width and r.get(metric) is not None
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    axes[0][column].plot(xs, ys, "o-", ms=3, label=f"{kind} w{width}")
        axes[0][column].set_xlabel("layer")
        axes[0][column].set_ylabel(label)
    axes[0][0].legend(fontsize=7)
    figure.suptitle("Metrics by layer")
    return _png_and_close(figure, plt)


def _plot_density(results: Sequence[dict[str, Any]], plt: Any) -> bytes:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_kind.setdefault(result_group(result), []).append(result)
    kinds = [k for k in _KIND_ORDER if k in by_kind] + sorted(set(by_kind) - set(_KIND_ORDER))
    figure, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    colormap = plt.get_cmap("viridis")
    n_layers = max(Site.parse(r["site"]).layer for r in results) + 1
    for column, kind in enumerate(kinds):
        for result in by_kind[kind]:
            histogram = result["reconstruction"]["log10_density_histogram"]
            edges, counts = histogram["bin_edges"], histogram["counts"]
            total = max(sum(counts) + histogram["dead"], 1)
            centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
            layer = Site.parse(result["site"]).layer
            axes[0][column].plot(centers, [c / total for c in counts], color=colormap(layer / max(n_layers - 1, 1)))
        axes[0][column].set_title(kind)
        axes[0][column].set_xlabel("log10 firing density")
        axes[0][column].set_ylabel("fraction of latents")
    figure.suptitle("Latent density (colour: layer)")
    return _png_and_close(figure, plt)


def _geometric_bins(values: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """Average a per-position curve over geometric position bins (1, 2, 3-4, 5-8, ...) to tame noise."""
    xs, ys = [], []
    start = 1
    while start < len(values):
        end = min(2 * start, len(values))
        chunk = [v for v in values[start:end] if v is not None and not math.isnan(v)]
        if chunk:
            xs.append(math.sqrt(start * max(end - 1, start)))
            ys.append(sum(chunk) / len(chunk))
        start = end
    return xs, ys


def _plot_by_position(results: Sequence[dict[str, Any]], plt: Any) -> bytes:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
    for kind in _KIND_ORDER:
        members = [r for r in results if result_group(r) == kind]
        for column, (section, key) in enumerate(
            (("reconstruction", "fvu_by_position"), ("lm_loss", "delta_lm_loss_by_position"))
        ):
            curves = [r[section][key] for r in members if r.get(section)]
            if not curves:
                continue
            mean_curve = [
                (sum(v for v in values if v is not None) / n) if (n := sum(v is not None for v in values)) else None
                for values in zip(*curves, strict=True)
            ]
            xs, ys = _geometric_bins(mean_curve)
            axes[0][column].plot(xs, ys, "o-", ms=3, label=kind)
    axes[0][0].set_ylabel("FVU at position")
    axes[0][1].set_ylabel("delta LM loss at position")
    for column in range(2):
        readable_log_x(axes[0][column])
        axes[0][column].set_xlabel("token position")
        axes[0][column].legend(fontsize=8)
    figure.suptitle("By token position (mean over layers)")
    return _png_and_close(figure, plt)


_KIND_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")
#: The interpretability plots, by the metric whose results they need.
INTERP_PLOTS = {"absorption": "absorption_vs_l0.png", "probing": "probing_vs_k.png"}


def _kind_colours(kinds: Sequence[str]) -> dict[str, str]:
    """One colour per site kind (dictionary kind), in the report's kind order."""
    return {kind: _KIND_COLOURS[i % len(_KIND_COLOURS)] for i, kind in enumerate(kinds)}


def _interp_metric(result: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """A result's figures of one interpretability metric; None when it was not run or was skipped."""
    figures = (result.get("interp") or {}).get(metric)
    return figures if isinstance(figures, dict) and "skipped" not in figures else None


def probing_curve(figures: dict[str, Any]) -> list[tuple[int, float]]:
    """(k, top-k accuracy) for every k a probing result holds, by k."""
    points = []
    for key, value in figures.items():
        match = re.fullmatch(r"top_(\d+)_accuracy", key)
        if match and isinstance(value, (int, float)) and not math.isnan(value):
            points.append((int(match.group(1)), float(value)))
    return sorted(points)


def _absorption_points(results: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """(L0, mean absorption fraction) of every dictionary with an absorption result, by site kind."""
    points: dict[str, list[tuple[float, float]]] = {}
    for result in results:
        fraction = (_interp_metric(result, "absorption") or {}).get("mean_absorption_fraction")
        if isinstance(fraction, (int, float)) and not math.isnan(fraction):
            points.setdefault(result_group(result), []).append((result["reconstruction"]["l0"], float(fraction)))
    return points


def _probing_results(results: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(result, its probing figures) of every dictionary with a top-k probing curve."""
    return [(r, figures) for r in results if (figures := _interp_metric(r, "probing")) and probing_curve(figures)]


def _plot_absorption_vs_l0(points: dict[str, list[tuple[float, float]]], plt: Any) -> bytes:
    """Mean absorption fraction against L0: one point per dictionary, one colour per site kind."""
    kinds = _kinds([{"kind": kind} for kind in points])
    colours = _kind_colours(kinds)
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for kind in kinds:
        xs, ys = zip(*sorted(points[kind]), strict=True)
        axes.plot(xs, ys, "o", color=colours[kind], label=kind)
    _label_one_panel(
        axes,
        xlabel="L0",
        ylabel="mean absorption fraction (lower is better)",
        title="First-letter absorption against L0",
    )
    return _png_and_close(figure, plt)


def _plot_probing_vs_k(probed: Sequence[tuple[dict[str, Any], dict[str, Any]]], plt: Any) -> bytes:
    """Sparse-probing accuracy against k: one line per dictionary (colour: site kind), and each site's dense probe
    (the ceiling) dashed."""
    colours = _kind_colours(_kinds([{"kind": result_group(r)} for r, _ in probed]))
    figure, axes = plt.subplots(figsize=(5.5, 4))
    labelled: set[str] = set()
    ceilings: dict[str, tuple[float, str]] = {}
    for result, figures in probed:
        kind = result_group(result)
        xs, ys = zip(*probing_curve(figures), strict=True)
        axes.plot(xs, ys, "o-", ms=3, color=colours[kind], label=None if kind in labelled else kind)
        labelled.add(kind)
        dense = figures.get("dense_accuracy")
        if isinstance(dense, (int, float)) and not math.isnan(dense):
            ceilings[result["site"]] = (float(dense), colours[kind])
    for dense, colour in ceilings.values():
        axes.axhline(dense, linestyle="--", linewidth=1, color=colour, alpha=0.7)
    if ceilings:
        axes.plot([], [], "k--", linewidth=1, label="dense probe (one per site)")
    _label_one_panel(axes, xlabel="k (latents in the probe)", ylabel="test accuracy", title="Sparse probing against k")
    return _png_and_close(figure, plt)


def interp_plots(results: Sequence[dict[str, Any]], plt: Any) -> dict[str, bytes]:
    """The interpretability plots (file name -> PNG) of the metrics some result carries; none when `saescope eval
    --interp` did not run: absorption fraction against L0, probing accuracy against k."""
    plots = {}
    if points := _absorption_points(results):
        plots[INTERP_PLOTS["absorption"]] = _plot_absorption_vs_l0(points, plt)
    if probed := _probing_results(results):
        plots[INTERP_PLOTS["probing"]] = _plot_probing_vs_k(probed, plt)
    return plots


def write_report(results: Sequence[dict[str, Any]], out_dir: Path, *, title: str = "saescope suite") -> ReportFiles:
    """Write suite.csv, suite.md, the PNG plots and report.html into `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = suite_rows(results)
    csv_path, md_path = out_dir / "suite.csv", out_dir / "suite.md"
    atomic_write_text(csv_path, _csv_text(rows))
    comparison = kind_comparison_table(rows)
    plots = {
        "fidelity_vs_l0.png": _plot_fidelity_vs_l0(rows, plt),
        "metrics_by_layer.png": _plot_by_layer(rows, plt),
        "density_histograms.png": _plot_density(results, plt),
        "by_position.png": _plot_by_position(results, plt),
        **interp_plots(results, plt),
    }
    links = [name for name in INTERP_PLOTS.values() if name in plots]
    interp_links = "\nInterpretability plots: " + ", ".join(f"[{n}]({n})" for n in links) + "\n" if links else ""
    atomic_write_text(md_path, markdown_table(rows) + (f"\n{comparison}" if comparison else "") + interp_links)
    plot_paths = []
    for name, data in plots.items():
        atomic_write_bytes(out_dir / name, data)
        plot_paths.append(out_dir / name)
    html_path = out_dir / "report.html"
    atomic_write_text(html_path, _html(rows, list(plots), title, comparison))
    return ReportFiles(csv_path, md_path, plot_paths, html_path)


def _html(rows: Sequence[dict[str, Any]], plot_names: Sequence[str], title: str, comparison: str = "") -> str:
    header = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(row.get(c)))}</td>" for c in COLUMNS) + "</tr>" for row in rows
    )
    images = "".join(f'<figure><img src="{html.escape(n)}" alt="{html.escape(n)}"></figure>' for n in plot_names)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
th {{ background: #f0f0f0; position: sticky; top: 0; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} dictionaries, evaluated on the held-out split. FVU uses the variance about the mean; delta LM loss
is the next-token cross-entropy with the site replaced by the reconstruction minus the clean one (nats); BOS, EOS and
padding are never spliced nor counted. Full metrics: <code>metrics.json</code> per dictionary in the run's eval
folder, and <a href="suite.csv">suite.csv</a>.</p>
<p>{html.escape(TABLE_LEGEND)}</p>
{_markdown_table_html(comparison)}
{images}
<h2>All dictionaries</h2>
<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>
</body></html>
"""


def _markdown_table_html(text: str) -> str:
    """The kind comparison (a caption line and a Markdown table) as HTML; empty for empty text."""
    if not text:
        return ""
    caption, _, table = text.partition("\n\n")
    body = [line.strip("|").split(" | ") for line in table.strip().splitlines() if not line.startswith("|---")]
    head = "".join(f"<th>{html.escape(cell.strip())}</th>" for cell in body[0])
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell.strip())}</td>" for cell in row) + "</tr>" for row in body[1:]
    )
    table_html = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f"<h2>By kind</h2><p>{html.escape(caption)}</p>{table_html}"

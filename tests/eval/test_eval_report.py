from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from saescope.eval.report import (
    TABLE_LEGEND,
    UNRESOLVED_MARK,
    kind_comparison_table,
    markdown_table,
    probing_curve,
    readable_log_x,
    suite_rows,
    write_report,
)


def fake_result(layer: int, kind: str, l0: float, width: int = 4096) -> dict[str, Any]:
    positions = [None] + [0.1 + 0.01 * p for p in range(1, 16)]
    return {
        "name": f"layer_{layer}-{kind}-{width}-{l0:g}",
        "site": f"layer_{layer}/{kind}",
        "architecture": "jumprelu",
        "width": width,
        "reconstruction": {
            "n_tokens": 1000, "l0": l0, "fvu": 0.1 + 0.01 * layer, "explained_variance": 0.9 - 0.01 * layer,
            "cosine_similarity": 0.95, "l2_ratio": 0.9, "dead_fraction": 0.05, "dense_fraction_above_0.1": 0.0,
            "log10_density_histogram": {"bin_edges": list(range(-8, 1)), "counts": [0, 1, 2, 5, 3, 1, 0, 0], "dead": 1},
            "fvu_by_position": positions,
        },
        "lm_loss": {
            "delta_lm_loss": 0.05 * l0 / 50, "delta_lm_loss_stderr": 0.01, "loss_recovered": 0.9,
            "kl_clean_to_spliced": 0.04, "kl_clean_to_spliced_stderr": 0.005, "loss_n_predictions": 500,
            "delta_lm_loss_by_position": positions,
        },
    }  # fmt: skip


def test_report_writes_tables_plots_and_html(tmp_path: Path) -> None:
    results = [fake_result(layer, kind, l0) for layer in range(3) for kind in ("mlp", "res", "att") for l0 in (20, 60)]
    files = write_report(results, tmp_path, title="test suite")
    with files.table_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18
    assert [r["site"] for r in rows[:6]] == ["layer_0/res"] * 2 + ["layer_0/att"] * 2 + ["layer_0/mlp"] * 2
    assert float(rows[0]["l0"]) == 20.0
    for plot in files.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files.html.read_text()
    assert "test suite" in page
    assert all(plot.name in page for plot in files.plots)


def test_markdown_table_leads_with_kl_and_shows_both_standard_errors() -> None:
    table = markdown_table(suite_rows([fake_result(0, "res", 50)]))
    header = "| site | kind | architecture | width | l0 | fvu | kl | delta_lm_loss | loss_recovered | dead_fraction |"
    assert header in table
    assert "| layer_0/res | res | jumprelu | 4096 | 50 | 0.1 | 0.04 ± 0.005 | 0.05 ± 0.01 | 0.9 | 0.05 |" in table
    assert table.rstrip().endswith(TABLE_LEGEND)


def test_markdown_table_marks_figures_within_two_standard_errors_of_zero() -> None:
    result = fake_result(0, "att", 60)
    result["lm_loss"].update(delta_lm_loss=-0.03, delta_lm_loss_stderr=0.02)  # |value| < 2 s.e.: noise
    result["lm_loss"].update(kl_clean_to_spliced=0.011, kl_clean_to_spliced_stderr=0.005)  # 2.2 s.e.: resolved
    row = next(line for line in markdown_table(suite_rows([result])).splitlines() if "layer_0/att" in line)
    assert f"| 0.011 ± 0.005 | -0.03 ± 0.02 {UNRESOLVED_MARK} |" in row


def test_markdown_table_without_loss_metrics_leaves_the_loss_cells_empty() -> None:
    result = fake_result(0, "res", 50)
    result["lm_loss"] = None
    row = next(line for line in markdown_table(suite_rows([result])).splitlines() if "layer_0/res" in line)
    assert "| 0.1 |  |  | " in row


def test_kind_comparison_puts_the_kinds_of_each_layer_side_by_side() -> None:
    results = [fake_result(layer, kind, 40) for layer in range(2) for kind in ("mlp", "res")]
    results[0]["lm_loss"]["delta_lm_loss"] = 0.25  # layer 0, mlp
    table = kind_comparison_table(suite_rows(results))
    lines = table.splitlines()
    assert "| layer | res | mlp |" in lines
    layer_0 = next(line for line in lines if line.startswith("| 0 |"))
    assert layer_0.split(" | ")[2] == "0.25 (L0 40) |"  # the mlp column
    assert kind_comparison_table(suite_rows([fake_result(0, "res", 40)])) == ""  # one kind: nothing to compare


def test_kind_comparison_marks_unresolved_delta_losses() -> None:
    results = [fake_result(0, kind, 40) for kind in ("mlp", "res")]
    results[0]["lm_loss"].update(delta_lm_loss=0.015, delta_lm_loss_stderr=0.01)  # mlp: 1.5 s.e.
    layer_0 = next(line for line in kind_comparison_table(suite_rows(results)).splitlines() if line.startswith("| 0 |"))
    assert layer_0 == f"| 0 | 0.04 (L0 40) | 0.015 {UNRESOLVED_MARK} (L0 40) |"


@pytest.mark.parametrize("span", [(18.0, 62.0), (20.0, 150.0), (35.0, 70.0), (3.0, 900.0), (1.0, 1000.0)])
def test_log_scaled_axes_label_ticks_without_overlap(span: tuple[float, float]) -> None:
    """A report panel's width (about 3 inches): matplotlib's own labels overlap under two decades of L0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(3.0, 3.0))
    axes.plot(np.geomspace(*span, 12), np.linspace(0.0, 1.0, 12), "o-")
    readable_log_x(axes)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    labels = [t for t in axes.get_xticklabels(minor=True) + axes.get_xticklabels() if t.get_text()]
    left, right = axes.get_xlim()
    shown = [t for t in labels if left <= t.get_position()[0] <= right]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda box: box.x0)
    assert len(boxes) >= 2  # the axis says where it is
    assert all(a.x1 <= b.x0 for a, b in itertools.pairwise(boxes))
    plt.close(figure)


def test_interpretability_figures_become_columns_only_when_present(tmp_path: Path) -> None:
    plain = fake_result(1, "res", 20.0)
    probed = {
        **fake_result(1, "res", 60.0),
        "interp": {
            "absorption": {"mean_absorption_fraction": 0.125, "full_absorption_rate": 0.25},
            "probing": {"top_1_accuracy": 0.75, "top_5_accuracy": 0.875, "dense_accuracy": 1.0},
        },
    }
    assert "absorption_fraction" not in markdown_table(suite_rows([plain]))
    rows = suite_rows([plain, probed])
    assert rows[1]["absorption_fraction"] == 0.125
    assert rows[1]["probing_top_5"] == 0.875
    assert "absorption_fraction" not in rows[0]
    header, _, first, second = markdown_table(rows).splitlines()[:4]
    assert header.endswith(
        "| absorption_fraction | full_absorption_rate | probing_top_1 | probing_top_5 | probing_dense |"
    )
    assert first.endswith("|  |  |  |  |  |")
    assert second.endswith("| 0.125 | 0.25 | 0.75 | 0.875 | 1 |")
    files = write_report([plain, probed], tmp_path)
    with files.table_csv.open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [r["probing_top_1"] for r in csv_rows] == ["", "0.75"]


def probed_result(layer: int, kind: str, l0: float) -> dict[str, Any]:
    """A result carrying the figures `saescope eval --interp absorption,probing` writes into metrics.json."""
    return {
        **fake_result(layer, kind, l0),
        "interp": {
            "absorption": {"mean_absorption_fraction": 0.1 * layer, "full_absorption_rate": 0.05},
            "probing": {"dense_accuracy": 0.95, **{f"top_{k}_accuracy": 0.5 + 0.02 * k for k in (1, 2, 5, 10, 20)}},
        },
    }


def test_report_with_interpretability_figures_plots_absorption_and_probing(tmp_path: Path) -> None:
    results = [probed_result(layer, kind, l0) for layer in (0, 1) for kind in ("res", "mlp") for l0 in (20, 60)]
    files = write_report(results, tmp_path)
    names = [plot.name for plot in files.plots]
    assert "absorption_vs_l0.png" in names
    assert "probing_vs_k.png" in names
    for name in ("absorption_vs_l0.png", "probing_vs_k.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}"' in files.html.read_text()
        assert f"({name})" in files.table_markdown.read_text()


def test_report_without_interpretability_figures_has_no_interpretability_plots(tmp_path: Path) -> None:
    skipped = {**fake_result(1, "res", 40), "interp": {"absorption": {"skipped": "a CLT"}, "probing": {"skipped": "x"}}}
    files = write_report([fake_result(0, "res", 20), skipped], tmp_path)
    assert {plot.name for plot in files.plots}.isdisjoint({"absorption_vs_l0.png", "probing_vs_k.png"})
    assert not (tmp_path / "absorption_vs_l0.png").exists()
    assert "Interpretability plots" not in files.table_markdown.read_text()


def test_report_plots_only_the_interpretability_metric_that_ran(tmp_path: Path) -> None:
    only_probing = {**probed_result(0, "res", 20)}
    only_probing["interp"] = {"probing": only_probing["interp"]["probing"]}
    files = write_report([only_probing], tmp_path)
    names = {plot.name for plot in files.plots}
    assert "probing_vs_k.png" in names
    assert "absorption_vs_l0.png" not in names


def test_probing_curve_reads_every_k_in_order() -> None:
    figures = {"top_10_accuracy": 0.9, "top_1_accuracy": 0.6, "top_2_accuracy": float("nan"), "dense_accuracy": 1.0}
    assert probing_curve(figures) == [(1, 0.6), (10, 0.9)]


def test_the_letter_latents_f1_is_a_column_beside_absorption_when_measured() -> None:
    measured = {**fake_result(0, "res", 40), "interp": {"absorption": {"mean_absorption_fraction": 0.0,
                                                                       "main_latent_f1": 0.25}}}  # fmt: skip
    header, _, row = markdown_table(suite_rows([measured])).splitlines()[:3]
    assert header.endswith("| absorption_fraction | letter_latent_f1 |")
    assert row.endswith("| 0 | 0.25 |")

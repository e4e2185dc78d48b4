"""SAE quality against the training budget: every system of ``fidelity.py`` at several token budgets.

``fidelity.py`` measures one operating point (one budget). This sibling trains every (site, width, target L0,
system) at each budget of ``--tokens`` on the same fresh tokens and evaluates every cell on the same held-out
sample, with paired differences against the default recipe:

1. **one activation stream per site**, cached and extended run by run: ``<out>/stream/layer_6-res.npy`` etc. The
   stream is the training split's windows in order (drawn from the corpus' window shuffle buffer, as ``saescope run``
   draws them), cut into chunks of ``--chunk-tokens``; each chunk's rows are shuffled within the chunk (seeded by
   the chunk's index) and appended. A budget B trains on the stream's first B rows, so every system sees exactly the
   same tokens in the same order at a budget, a larger budget sees the smaller one's tokens followed by new ones,
   and nobody repeats a token below the stream's length. The forward stops at ``--layer`` (nothing after it is
   read). The largest budget decides how far the stream is extended; a later run with a larger budget continues it
   where it stopped. Should the corpus end before a budget, that budget's saescope systems repeat the stream (the
   report says so) and the peers are not run.
2. trains the cells in priority order, so that the most useful cells land first on a slow machine: (a) res and mlp
   at the middle target L0, the first width, the budgets below the largest, for the default recipe, the faithful
   Gemma Scope recipe and sparsify; (b) the same at the other widths; (c) att likewise; (d) the largest budget;
   (e) the other target L0s and systems (``priority``);
3. evaluates each (site, budget)'s new cells together with ``fidelity.py``'s evaluation (one path for every
   system) on the same held-out windows, keeping every prediction's delta loss and KL;
4. writes ``budget-sweep.md`` (delta loss, paired differences of delta loss and KL against the default recipe, KL,
   FVU, L0, dead and dense latents against the budget, per site, width and target L0; the exact command and date),
   ``budget-sweep-results.json`` and one ``budget-sweep-<site>.png`` per site (delta loss against tokens, log x, one
   line per system, one panel per width and target L0) into ``--docs``.

Every finished piece (each stream chunk, each trained system, each evaluation) is saved atomically under ``--out``
(``<out>/budget-<B>/`` holds a budget's cells in ``fidelity.py``'s layout); a rerun skips what is done, so an
interrupted run resumes, and ``--report-only`` rewrites the report from the saved results. The peers are set up as
``fidelity.py``'s docstring says.

    .venv/bin/python benchmarks/budget_sweep.py        # the whole grid, in priority order
    .venv/bin/python benchmarks/budget_sweep.py --report-only

Every figure it writes is measured in the run that wrote it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import itertools
import json
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fidelity  # the sibling script: its systems, cells, training, peers and evaluation
import numpy as np
import torch
from tqdm import tqdm

from saescope.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from saescope.data.activations import SiteBatch, window_activations
from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS, corpus_windows
from saescope.data.windows import WindowBatch, special_token_ids, stack_windows
from saescope.eval.metrics import paired_difference
from saescope.eval.report import readable_log_x
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import Site, select_sites
from saescope.train.recipes import GEMMA_SCOPE

#: The stream file's row capacity: its header's shape. The file is sparse on disk (only written rows take space);
#: rows past the stream's length (``rows`` in its record) are never read.
STREAM_CAPACITY_ROWS = 16 * 1024 * 1024

#: The systems of the sweep (fidelity.py's names).
SWEEP_SYSTEMS = (
    "saescope-jumprelu,gemma-scope-jumprelu,saescope-topk,saescope-batchtopk,saescope-matryoshka,sparsify-topk,"
    "saelens-jumprelu-quadratic"
)
#: The systems of the first priority stages: the default recipe, the faithful recipe and the strongest peer.
CORE_SYSTEMS = ("saescope-jumprelu", "gemma-scope-jumprelu", "sparsify-topk")


# ------------------------------------------------------------------------------------------------
# the stream: one growing, chunk-shuffled activation file per site
# ------------------------------------------------------------------------------------------------


def stream_path(out: Path, site: Site) -> Path:
    return out / "stream" / f"layer_{site.layer}-{site.kind.value}.npy"


def stream_record_path(out: Path) -> Path:
    return out / "stream" / "stream.json"


def read_stream_record(out: Path) -> dict[str, Any]:
    """The stream's record: its settings, each chunk's windows, each site's rows and norm scale."""
    path = stream_record_path(out)
    return json.loads(path.read_text()) if path.exists() else {}


def stream_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What decides the stream's rows: a stream made with other settings cannot be extended or reused."""
    return {
        "model": "gemma-3-270m", "layer": args.layer, "context_size": args.context_size,
        "window_shuffle_tokens": args.window_shuffle_tokens, "chunk_tokens": args.chunk_tokens, "seed": args.seed,
    }  # fmt: skip


def check_stream_settings(args: argparse.Namespace) -> None:
    """Refuse a work folder whose stream was made with other settings, before anything is written."""
    held = read_stream_record(args.out).get("settings")
    if held is not None and held != stream_settings(args):
        raise SystemExit(
            f"{stream_record_path(args.out)} holds a stream made with {held}, not {stream_settings(args)}: pass the "
            "same --layer/--context-size/--window-shuffle-tokens/--chunk-tokens/--seed, or another --out"
        )


class WindowCursor:
    """(B, T) batches of the training split's windows from a given window on. The window order is fixed; a read
    that starts where the last one stopped continues the same iterator (no re-tokenising of the windows before)."""

    def __init__(self, loaded: LoadedModel, args: argparse.Namespace) -> None:
        self._loaded, self._args = loaded, args
        self._batches: Iterator[WindowBatch] = iter(())
        self.position = -1  # the window the held iterator yields next; -1: none held

    def batches_from(self, first_window: int) -> Iterator[WindowBatch]:
        if first_window != self.position:
            windows = corpus_windows(fidelity.corpus_config(self._args), self._loaded.tokenizer, "train")
            self._batches = stack_windows(itertools.islice(windows, first_window, None), self._args.batch_windows)
            self.position = first_window
        for batch in self._batches:
            self.position += int(batch.ids_BT.shape[0])
            yield batch


def _forward_chunk(
    loaded: LoadedModel, args: argparse.Namespace, sites: list[Site], cursor: WindowCursor, first_window: int
) -> tuple[dict[Site, np.ndarray], int]:
    """The next `--chunk-tokens` rows of `sites` from window `first_window` on (fewer where the corpus ends), in
    stream order, and the window after the chunk's last."""
    special = special_token_ids(loaded.tokenizer)
    parts: dict[Site, list[np.ndarray]] = {site: [] for site in sites}
    rows, window = 0, first_window
    bar = tqdm(total=args.chunk_tokens, unit="tok", unit_scale=True, desc=f"chunk from window {first_window}")
    with torch.no_grad(), bar:
        for batch in cursor.batches_from(first_window):
            acts = window_activations(loaded.model, sites, batch, special, first_window=window)
            window += int(batch.ids_BT.shape[0])
            for site in sites:
                parts[site].append(acts.acts[site].float().cpu().numpy())
            rows += acts.n_tokens
            bar.update(acts.n_tokens)
            if rows >= args.chunk_tokens:
                break
    return {site: np.concatenate(p)[: args.chunk_tokens] for site, p in parts.items()}, window


def chunk_permutation(seed: int, chunk: int, n_rows: int) -> np.ndarray:
    """The order of a chunk's rows in the stream (the same for every site, so sites stay aligned)."""
    return np.random.default_rng([seed, chunk]).permutation(n_rows)


def extend_stream(args: argparse.Namespace, loaded: LoadedModel, sites: list[Site], rows: int) -> dict[str, Any]:
    """Extend every site's stream to at least `rows` rows (whole chunks), chunk by chunk, saving after each; the
    record. A chunk's windows are fixed by the first site that computed it, so a site added later gets the same
    tokens."""
    record = read_stream_record(args.out) or {"settings": stream_settings(args), "chunks": [], "sites": {}}
    n_chunks = -(-rows // args.chunk_tokens)
    for site in sites:
        record["sites"].setdefault(site.id, {"chunks": 0, "norm_scale": None})
    behind = [s for s in sites if record["sites"][s.id]["chunks"] < n_chunks]
    if not behind:
        return record
    arrays = {}
    for site in behind:
        path = stream_path(args.out, site)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            width = _site_width(loaded, site)
            partial = path.with_name(path.name + ".partial.npy")
            np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(STREAM_CAPACITY_ROWS, width)).flush()
            partial.replace(path)
        arrays[site] = np.load(path, mmap_mode="r+")
    first = min(record["sites"][s.id]["chunks"] for s in behind)
    cursor = WindowCursor(loaded, args)
    for chunk in tqdm(range(first, n_chunks), desc=f"stream {', '.join(s.id for s in behind)}", unit="chunk"):
        todo = [s for s in behind if record["sites"][s.id]["chunks"] == chunk]
        if not todo:
            continue
        if chunk < len(record["chunks"]):
            start_window, expected_end = record["chunks"][chunk]["windows"]
        else:
            if record.get("exhausted"):
                break
            start_window = record["chunks"][-1]["windows"][1] if record["chunks"] else 0
            expected_end = None
        rows_BD, end_window = _forward_chunk(loaded, args, todo, cursor, start_window)
        n_rows = int(next(iter(rows_BD.values())).shape[0])
        if expected_end is not None and (end_window != expected_end or n_rows != record["chunks"][chunk]["rows"]):
            raise RuntimeError(
                f"chunk {chunk} of the stream came out differently ({n_rows} rows, windows up to {end_window}) from "
                f"its record {record['chunks'][chunk]}: the corpus changed; use another --out"
            )
        order = chunk_permutation(args.seed, chunk, n_rows)
        offset = chunk * args.chunk_tokens
        for site in todo:
            arrays[site][offset : offset + n_rows] = rows_BD[site][order]
            arrays[site].flush()
            if record["sites"][site.id]["norm_scale"] is None:  # C = sqrt(E||x||^2) from the first chunk
                x = rows_BD[site].astype(np.float64)
                record["sites"][site.id]["norm_scale"] = float(np.sqrt(np.mean(np.sum(x * x, axis=1))))
            record["sites"][site.id]["chunks"] = chunk + 1
        if chunk >= len(record["chunks"]):
            record["chunks"].append({"windows": [start_window, end_window], "rows": n_rows})
        if n_rows < args.chunk_tokens:
            record["exhausted"] = True  # the corpus' training split ended inside this chunk
        atomic_write_json(stream_record_path(args.out), record)
    return record


def _site_width(loaded: LoadedModel, site: Site) -> int:
    from saescope.models.sites import site_widths

    return int(site_widths(loaded.model, [site])[site])


def stream_rows(record: dict[str, Any], site: Site) -> int:
    """How many rows of `site`'s stream are written."""
    chunks = record.get("sites", {}).get(site.id, {}).get("chunks", 0)
    return int(sum(chunk["rows"] for chunk in record.get("chunks", [])[:chunks]))


class PrefixSource(fidelity.StreamSource):
    """The first `rows` rows of the sites' streams, in stream order (a budget's training tokens)."""

    def __init__(self, paths: dict[Site, Path], norm_scales: dict[Site, float], rows: int) -> None:
        super().__init__(paths, norm_scales)
        self._rows = rows

    def batches(self, batch_size: int, *, seed: int = 0, epoch: int = 0, skip_batches: int = 0) -> Iterator[SiteBatch]:
        for start in range(skip_batches * batch_size, self._rows - batch_size + 1, batch_size):
            yield {site: torch.from_numpy(np.array(a[start : start + batch_size])) for site, a in self._arrays.items()}


# ------------------------------------------------------------------------------------------------
# the grid and its order
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetCell:
    tokens: int
    cell: fidelity.Cell

    @property
    def key(self) -> str:
        return f"budget-{self.tokens}/{self.cell.key}"


def budget_args(args: argparse.Namespace, tokens: int) -> argparse.Namespace:
    """fidelity.py's settings for one budget: its own work folder, its token count."""
    given = copy.copy(args)
    given.out = Path(args.out) / f"budget-{tokens}"
    given.tokens = tokens
    return given


def priority(
    cell: BudgetCell, middle_l0: float, first_width: int, largest_budget: int
) -> tuple[int, int, int, float, bool, int]:
    """Stages: (a) res and mlp, the middle L0, the first width, the budgets below the largest, the core systems;
    (b) the same at the other widths; (c) att likewise; (d) the largest budget; (e) the other L0s and systems.
    Within a stage, small budgets first (they land soonest), then site, width, system."""
    c = cell.cell
    core = c.system.name in CORE_SYSTEMS and c.target_l0 == middle_l0
    if not core:
        stage = 4
    elif cell.tokens == largest_budget:
        stage = 3
    elif c.site.kind.value == "att":
        stage = 2
    else:
        stage = 0 if c.width == first_width else 1
    return (stage, cell.tokens, c.width, c.target_l0, c.site.kind.value != "res", CORE_SYSTEMS.index(c.system.name)
            if c.system.name in CORE_SYSTEMS else len(CORE_SYSTEMS))  # fmt: skip


def grid(args: argparse.Namespace, loaded: LoadedModel) -> list[BudgetCell]:
    budgets = sorted(int(t) for t in args.tokens.split(","))
    widths = [int(w) for w in args.widths.split(",")]
    targets = [float(t) for t in args.l0s.split(",")]
    systems = fidelity.parse_systems(args.systems)
    sites = select_sites(f"{args.layer}/{'+'.join(k.strip() for k in args.sites.split(','))}", loaded.info.n_layers)
    cells = [
        BudgetCell(budget, fidelity.Cell(site, width, target, system))
        for budget in budgets
        for site in sites
        for width in widths
        for target in targets
        for system in systems
        if not system.ignores_target or target == targets[len(targets) // 2]
    ]
    middle = targets[len(targets) // 2]
    return sorted(cells, key=lambda c: priority(c, middle, widths[0], budgets[-1]))


def companion_sites(todo: list[BudgetCell], batch: list[BudgetCell]) -> list[Site]:
    """The sites whose streams the next batch extends along with its own: every site with cells still to do at the
    batch's budget. One forward to the layer gives all its sites, so capturing them together costs little more than
    one, where extending them one at a time would repeat the forward per site."""
    return sorted({c.cell.site for c in todo if c.tokens == batch[0].tokens})


def next_batch(todo: list[BudgetCell]) -> list[BudgetCell]:
    """The cells trained and evaluated together next: the first cell and those right after it (in priority order)
    at the same budget, site, width and target L0."""

    def place(c: BudgetCell) -> tuple[int, Site, int, float]:
        return (c.tokens, c.cell.site, c.cell.width, c.cell.target_l0)

    batch = list(itertools.takewhile(lambda c: place(c) == place(todo[0]), todo))
    return batch


# ------------------------------------------------------------------------------------------------
# training and evaluation of one (budget, site) batch of cells
# ------------------------------------------------------------------------------------------------


def run_batch(
    args: argparse.Namespace, loaded: LoadedModel, batch: list[BudgetCell], stream_sites: list[Site]
) -> dict[str, str]:
    """Train and evaluate the batch's cells (one budget, one site); the cells that could not run, with why. The
    streams of `stream_sites` (the batch's site among them) are extended together: one forward serves them all."""
    tokens, site = batch[0].tokens, batch[0].cell.site
    record = extend_stream(args, loaded, sorted({site, *stream_sites}), tokens)
    available = stream_rows(record, site)
    given = budget_args(args, tokens)
    paths = {site: stream_path(args.out, site)}
    scales = {site: float(record["sites"][site.id]["norm_scale"])}
    source = PrefixSource(paths, scales, min(tokens, available))
    cells = [c.cell for c in batch if fidelity.needs_evaluation(given, c.cell)]
    skipped: dict[str, str] = {}
    ours = [c for c in cells if c.system.kind == "saescope"
            and fidelity.current_record(fidelity.trained_path(given, c), c) is None]  # fmt: skip
    if ours:
        fidelity.train_saescope(given, source, ours)
    for cell in (c for c in cells if c.system.kind in ("saelens", "sparsify")):
        if fidelity.weights_path(given, cell).exists():
            continue
        if available < tokens:
            skipped[cell.key] = f"the stream holds {available:,} tokens, fewer than the budget (no repeats for peers)"
            continue
        reason = fidelity.train_peer(given, paths, cell)
        if reason is not None:
            print(f"[{cell.key}] not run: {reason}", flush=True)
            skipped[cell.key] = reason
    fidelity.evaluate_cells(given, loaded, [c for c in cells if c.key not in skipped])
    return {f"budget-{tokens}/{key}": why for key, why in skipped.items()}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def saved_rows(args: argparse.Namespace, cells: list[BudgetCell]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every current result with its budget, and each result's per-prediction arrays by budget cell key."""
    rows, per_prediction = [], {}
    for cell in cells:
        given = budget_args(args, cell.tokens)
        row = fidelity.current_result(given, cell.cell)
        paths = {m: fidelity.per_prediction_path(given, cell.cell, m) for m in fidelity.PER_PREDICTION}
        if row is None or not all(p.exists() for p in paths.values()):
            continue
        rows.append({**row, "tokens": cell.tokens})
        per_prediction[cell.key] = {measure: np.load(path) for measure, path in paths.items()}
    return rows, per_prediction


def _default_key(row: dict[str, Any]) -> str:
    site = Site.parse(row["site"])
    return f"budget-{row['tokens']}/layer_{site.layer}-{site.kind.value}/w{row['width']}/l0_{row['target_l0']:g}/" \
        f"{fidelity.DEFAULT_SYSTEM}"  # fmt: skip


def _row_key(row: dict[str, Any]) -> str:
    return _default_key(row).rsplit("/", 1)[0] + f"/{row['system']}"


def paired_against_default(row: dict[str, Any], per_prediction: dict[str, Any], measure: str) -> str:
    """The row's paired difference from the default recipe's at the same budget, site, width and L0."""
    if row["system"] == fidelity.DEFAULT_SYSTEM:
        return "–"
    ours, default = per_prediction.get(_row_key(row)), per_prediction.get(_default_key(row))
    if ours is None or default is None or ours[measure].shape != default[measure].shape:
        return "–"
    difference, stderr = paired_difference(ours[measure].tolist(), default[measure].tolist())
    return fidelity.paired_summary(difference, stderr, digits=3 if measure == "deltas" else 4)


def results_tables(rows: list[dict[str, Any]], per_prediction: dict[str, Any], repeats: dict[str, int]) -> str:
    text = []
    groups = sorted({(r["site"], r["width"], r["target_l0"]) for r in rows})
    for site, width, target in groups:
        text.append(f"### {site}, width {width}, target L0 {target:g}\n")
        text.append("| tokens | system | L0 | FVU | delta LM loss ± s.e. | ΔL − default (paired) | KL | "
                    "KL − default (paired) | dead % | dense % |")  # fmt: skip
        text.append("|---|---|---|---|---|---|---|---|---|---|")
        chosen = [r for r in rows if (r["site"], r["width"], r["target_l0"]) == (site, width, target)]
        for row in sorted(chosen, key=lambda r: (r["tokens"], r["system"] != fidelity.DEFAULT_SYSTEM, r["system"])):
            repeat = " (repeats)" if row["tokens"] > repeats.get(site, row["tokens"]) else ""
            text.append(
                f"| {row['tokens']:,}{repeat} | {row['system']} | {row['l0']:.1f} | {row['fvu']:.4f} | "
                f"{row['delta_lm_loss']:.4f} ± {row['delta_lm_loss_stderr']:.4f} | "
                f"{paired_against_default(row, per_prediction, 'deltas')} | {row['kl']:.4f} | "
                f"{paired_against_default(row, per_prediction, 'kls')} | {100 * row['dead_fraction']:.1f} | "
                f"{100 * row['dense_fraction']:.1f} |"
            )
        text.append("")
    return "\n".join(text)


def write_plot(rows: list[dict[str, Any]], site: str, path: Path) -> None:
    """Delta loss against tokens (log x) at one site: one panel per (width, target L0), one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["width"], r["target_l0"]) for r in rows if r["site"] == site})
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (width, target) in zip(axes[0], panels, strict=True):
        chosen = [r for r in rows if (r["site"], r["width"], r["target_l0"]) == (site, width, target)]
        for system in sorted({r["system"] for r in chosen}, key=lambda s: (s != fidelity.DEFAULT_SYSTEM, s)):
            points = sorted((r["tokens"], r["delta_lm_loss"], r["delta_lm_loss_stderr"]) for r in chosen
                            if r["system"] == system)  # fmt: skip
            xs, ys, es = zip(*points, strict=True)
            axis.errorbar(xs, ys, yerr=es, fmt="-o" if system == fidelity.DEFAULT_SYSTEM else "-s", label=system,
                          capsize=2, markersize=4)  # fmt: skip
        readable_log_x(axis)  # plain-number ticks: the default minor labels overlap
        # log y where it can be: the faithful recipe far from its target L0 is orders of magnitude above the rest
        axis.set_yscale("log" if all(r["delta_lm_loss"] > 0 for r in chosen) else "linear")
        axis.set_title(f"{site}, width {width}, target L0 {target:g}")
        axis.set_xlabel("training tokens")
        axis.set_ylabel("delta LM loss (nats)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def warmup_note(args: argparse.Namespace) -> str:
    """The steps of each budget against the faithful recipe's warm-ups, which decide how it can do at a budget."""
    budgets = sorted(int(t) for t in args.tokens.split(","))
    steps = ", ".join(f"{budget // args.batch_size:,}" for budget in budgets)
    recipe = GEMMA_SCOPE
    return (
        f"Steps per budget: {steps}. The faithful Gemma Scope recipe (gemma-scope-jumprelu) warms its sparsity "
        f"coefficient up over {recipe.lambda_warmup_steps:,} steps and its learning rate over "
        f"{recipe.lr_warmup_steps:,}, as the papers do for billions of tokens: below {recipe.lambda_warmup_steps:,} "
        "steps its L0 penalty never reaches full strength, so its L0 stays far above the target.\n"
    )


def write_report(args: argparse.Namespace, cells: list[BudgetCell], skipped: dict[str, str], command: str) -> Path:
    rows, per_prediction = saved_rows(args, cells)
    record = read_stream_record(args.out)
    repeats = {Site.parse(site).id: stream_rows(record, Site.parse(site)) for site in record.get("sites", {})}
    done = {_row_key(r) for r in rows}
    missing = [c.key for c in cells if c.key not in done and c.key not in skipped]
    args.docs.mkdir(parents=True, exist_ok=True)
    plots = []
    for site in sorted({r["site"] for r in rows}):
        name = f"budget-sweep-{site.replace('/', '-')}.png"
        write_plot(rows, site, args.docs / name)
        plots.append(name)
    stream_lengths = ", ".join(f"{site} {rows_:,}" for site, rows_ in sorted(repeats.items()))
    text = [
        "# SAE fidelity against the training budget\n",
        f"Generated by `benchmarks/budget_sweep.py` on {datetime.date.today().isoformat()}; every number below was "
        "measured by runs of this command (a rerun resumes and skips finished cells):\n",
        f"```\n{command}\n```\n",
        f"Model gemma-3-270m (embedded), layer {args.layer}. Each budget B trains every system on the first B tokens "
        f"of one activation stream per site (the training split's windows in order, each {args.chunk_tokens:,}-token "
        "chunk shuffled within itself): the same tokens in the same order for every system, a larger budget the "
        f'smaller one\'s tokens then new ones, no token seen twice unless marked "(repeats)" (stream lengths: '
        f"{stream_lengths or 'none yet'}). Steps of {args.batch_size} tokens; context {args.context_size}. Evaluation "
        f"(fidelity.py's, one path for all systems): {args.eval_tokens:,} held-out tokens for L0/FVU/dead/dense, delta "
        f"LM loss and KL on {args.eval_loss_windows} held-out windows (every {args.eval_loss_stride}th prediction), "
        "the same sample for every cell. Paired differences are against the default recipe (saescope-jumprelu) at "
        "the same budget, site, width and target L0, over the same predictions (mean ± s.e.; negative is better). "
        "Dead = never fired on the evaluation tokens; dense = fires on > 10% of them.\n",
        warmup_note(args),
        "The machine was shared with other work while this ran: only the quality figures are meaningful, not "
        "timings (none are reported).\n",
        "## Results\n",
        results_tables(rows, per_prediction, repeats),
        "## Plots\n",
        *[f"![{name}]({name})\n" for name in plots],
        *(
            ["## Cells not run\n", *[f"* `{key}`: {why}" for key, why in sorted(skipped.items())], ""]
            if skipped
            else []
        ),
        *(
            [
                "## Cells of the grid without a result yet\n",
                f"{len(rows)} of {len(cells)} cells have a result; {len(missing)} have none yet. The next, in the "
                "order a run measures them: " + ", ".join(f"`{key}`" for key in missing[:12]) + ".\n",
            ]
            if missing
            else []
        ),
    ]
    path = Path(args.docs) / "budget-sweep.md"
    atomic_write_text(path, "\n".join(text))
    atomic_write_json(args.docs / "budget-sweep-results.json", {"command": command, "rows": rows, "skipped": skipped})
    return path


# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tokens", default="131072,524288,2097152,4194304", help="training budgets (tokens)")
    parser.add_argument("--widths", default="4096,16384", help="dictionary widths (4096,16384)")
    parser.add_argument("--l0s", default="20,60,150", help="target L0s (20,60,150)")
    parser.add_argument("--systems", default=SWEEP_SYSTEMS, help="fidelity.py system names")
    parser.add_argument("--sites", default="res,att,mlp", help="site kinds of --layer (res,att,mlp)")
    parser.add_argument("--layer", type=int, default=6, help="the layer (6 of 18)")
    parser.add_argument("--chunk-tokens", type=int, default=131_072, help="stream rows shuffled together (131072)")
    parser.add_argument(
        "--window-shuffle-tokens", type=int, default=DEFAULT_WINDOW_SHUFFLE_TOKENS,
        help=f"the corpus' window shuffle buffer, as `saescope run` draws windows ({DEFAULT_WINDOW_SHUFFLE_TOKENS})",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1024, help="tokens per step for every system (1024)")
    parser.add_argument("--context-size", type=int, default=256, help="tokens per window (256)")
    parser.add_argument("--batch-windows", type=int, default=8, help="windows per model forward (8)")
    parser.add_argument("--eval-tokens", type=int, default=32_768, help="held-out tokens for L0/FVU (32768)")
    parser.add_argument("--eval-loss-windows", type=int, default=32, help="held-out windows for delta loss (32)")
    parser.add_argument("--eval-loss-stride", type=int, default=1, help="count every n-th prediction (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-cells", type=int, default=0, help="stop after this many cells have landed (0: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/budget-sweep"), help="work folder (runs/budget-sweep)")
    parser.add_argument(
        "--docs", type=Path, default=Path("docs/results/budget-sweep"), help="report folder (docs/results/budget-sweep)"
    )
    parser.add_argument("--saelens-python", default="/tmp/bench_saelens/bin/python")
    parser.add_argument("--sparsify-python", default="/tmp/bench_sparsify/bin/python")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from saved results")
    args = parser.parse_args(argv)
    args.stream_shuffle = "chunks"  # fidelity.py reads these; the sweep's stream is its own
    args.kl_lr = 3e-4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--report-only"]
    command = " ".join(["python benchmarks/budget_sweep.py", *map(shlex.quote, given)])
    check_stream_settings(args)
    loaded = load_model("gemma-3-270m")
    cells = grid(args, loaded)
    skipped_path = args.out / "skipped.json"
    # The report keeps the last run's reasons; a run tries those cells again (a peer installed since may run).
    skipped: dict[str, str] = json.loads(skipped_path.read_text()) if skipped_path.exists() else {}
    if not args.report_only:
        skipped = {}
        landed = 0
        todo = [c for c in cells if c.key not in skipped and fidelity.needs_evaluation(
            budget_args(args, c.tokens), c.cell)]  # fmt: skip
        while todo and (not args.max_cells or landed < args.max_cells):
            batch = next_batch(todo)
            print(f"== {len(batch)} cells: {', '.join(c.key for c in batch)}", flush=True)
            skipped.update(run_batch(args, loaded, batch, companion_sites(todo, batch)))
            atomic_write_json(skipped_path, skipped)
            landed += len(batch)
            todo = [c for c in todo if c not in batch]
            write_report(args, cells, skipped, command)
    report = write_report(args, cells, skipped, command)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

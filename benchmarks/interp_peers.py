"""Interpretability against the peers: first-letter absorption and sparse probing of the budget sweep's dictionaries.

``budget_sweep.py`` trains saescope's recipes and the peers on the same tokens and compares them on reconstruction
(delta loss, KL, FVU). This sibling reads the dictionaries that sweep trained (it never trains and never writes into
the sweep's folder) and runs saescope's two interpretability metrics on each, with the same settings for every
dictionary: ``evaluate_absorption`` (``AbsorptionConfig()``) and ``evaluate_probing`` (``ProbingConfig()`` on the
embedded corpus's genres), both with ``--seed``. Every dictionary of a site shares the site's words, letter
probes, probing texts and dense probes, so the systems differ only by their dictionary.

A finished cell of the sweep is

* a saescope system: ``budget-<B>/trained/<site>/w<W>/l0_<L>/<system>.json`` whose dictionary folder holds
  ``config.json`` and ``sae.safetensors`` (read as ``fidelity.py`` reads it: folded into raw activation space);
* a peer: ``budget-<B>/peers/<site>/w<W>/l0_<L>/<system>.safetensors`` (written last by the peer's worker), loaded
  with ``fidelity.peer_dictionary``.

Each cell's figures are saved atomically under ``--out`` (``<out>/budget-<B>/<cell key>.json``) with the digest of
the weights they were measured on and the metric settings; a rerun evaluates only new or changed cells, so it can
be rerun while the sweep adds cells. It writes ``interp-peers.md`` and ``interp-peers.json`` into ``--docs``: one
table per site, and per (site, budget, width, target L0) the default recipe against the best peer on the mean
absorption fraction, the full-absorption rate and top-1 and top-5 probing accuracy, as paired differences over the
same letters and the same held-out probing samples.

    .venv/bin/python benchmarks/interp_peers.py --sweep runs/budget-sweep
    .venv/bin/python benchmarks/interp_peers.py --sweep runs/budget-sweep --report-only

Every figure it writes is measured in the run that wrote it (or an earlier run's saved cell of the same weights).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fidelity  # the sibling script: its systems, cells and peer loading
import torch

from saescope.atomic import atomic_write_json, atomic_write_text
from saescope.dictionaries.folder import read_trained_sae
from saescope.eval.interp import AbsorptionConfig, InterpOptions, ProbingConfig, evaluate_absorption, evaluate_probing
from saescope.eval.interp.common import ENCODE_CHUNK, encode_rows
from saescope.eval.metrics import mean_and_stderr
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import Site
from saescope.sae import SparseDictionary, single_layer

#: Bumped when a saved cell's figures change meaning, so that older cells are evaluated again. 2: absorption counts
#: a latent by its decoder row's component along the probe (it was its code times its cosine). 3: each probing test
#: sample's outcome is kept (paired differences over samples, not over tasks).
CELL_VERSION = 3
#: The peers' kinds (fidelity.py's System.kind): the systems the default recipe is compared against.
PEER_KINDS = ("sparsify", "saelens")
#: A cell key as fidelity.Cell.key writes it.
KEY_PATTERN = re.compile(r"^layer_(\d+)-(\w+)/w(\d+)/l0_([0-9.e+-]+)/([\w.-]+)$")
#: A dictionary whose L0 is further than this fraction from its target is not at matched L0.
MATCHED_L0_TOLERANCE = 0.25
#: Paired differences within this many standard errors of zero count as unresolved.
RESOLVED_STDERRS = 2.0


@dataclass(frozen=True)
class SweepCell:
    """One finished dictionary of the sweep: its budget, fidelity cell and weights file."""

    budget: int
    cell: fidelity.Cell
    weights: Path  # the .safetensors the figures are measured on
    folder: Path | None  # a saescope dictionary folder (None for a peer)

    @property
    def key(self) -> str:
        return f"budget-{self.budget}/{self.cell.key}"


def parse_key(key: str) -> fidelity.Cell | None:
    """The fidelity cell of ``layer_6-res/w4096/l0_60/<system>``; None for a key of an unknown system."""
    match = KEY_PATTERN.match(key)
    if match is None or match.group(5) not in fidelity.SYSTEMS:
        return None
    layer, kind, width, target_l0, system = match.groups()
    site = Site.parse(f"layer_{layer}/{kind}")
    return fidelity.Cell(site, int(width), float(target_l0), fidelity.SYSTEMS[system])


def resolve_folder(recorded: str, budget_dir: Path) -> Path:
    """A trained record's dictionary folder. The sweep records it relative to where it ran
    (``runs/budget-sweep/budget-<B>/train/...``); the part after ``budget-<B>/`` is joined to ``budget_dir``."""
    path = Path(recorded)
    if path.is_absolute() and path.exists():
        return path
    parts = path.parts
    if budget_dir.name in parts:
        return budget_dir.joinpath(*parts[parts.index(budget_dir.name) + 1 :])
    return path


def find_cells(sweep: Path) -> list[SweepCell]:
    """Every finished cell of every budget under ``sweep``, by budget then key."""
    cells = []
    for budget_dir in sorted(sweep.glob("budget-*"), key=lambda p: int(p.name.split("-")[1])):
        budget = int(budget_dir.name.split("-")[1])
        for record_path in sorted((budget_dir / "trained").glob("*/w*/l0_*/*.json")):
            cell = parse_key(record_path.relative_to(budget_dir / "trained").with_suffix("").as_posix())
            if cell is None or cell.system.kind != "saescope":
                continue
            folder = resolve_folder(json.loads(record_path.read_text())["folder"], budget_dir)
            if (folder / "config.json").exists() and (folder / "sae.safetensors").exists():
                cells.append(SweepCell(budget, cell, folder / "sae.safetensors", folder))
        for weights in sorted((budget_dir / "peers").glob("*/w*/l0_*/*.safetensors")):
            cell = parse_key(weights.relative_to(budget_dir / "peers").with_suffix("").as_posix())
            if cell is not None and cell.system.kind in PEER_KINDS:
                cells.append(SweepCell(budget, cell, weights, None))
    return cells


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_dictionary(cell: SweepCell) -> SparseDictionary:
    """The cell's dictionary reading raw activations (the space the metrics read the model in)."""
    if cell.folder is not None:
        return single_layer(read_trained_sae(cell.folder).raw_space(), "the interpretability evaluation")
    return fidelity.peer_dictionary(cell.weights, cell.cell)


def metric_settings(seed: int) -> dict[str, Any]:
    """What decides a cell's figures besides its weights: a saved cell with other settings is evaluated again. As
    JSON reads it back (tuples as lists), so that it compares equal to a saved cell's."""
    settings = {
        "version": CELL_VERSION, "seed": seed, "absorption": asdict(AbsorptionConfig()),
        "probing": asdict(ProbingConfig()),
    }  # fmt: skip
    return dict(json.loads(json.dumps(settings)))


def cell_path(out: Path, cell: SweepCell) -> Path:
    return out / f"{cell.key}.json"


def saved_cell(out: Path, cell: SweepCell, settings: dict[str, Any], digest: str) -> dict[str, Any] | None:
    path = cell_path(out, cell)
    if not path.exists():
        return None
    saved: dict[str, Any] = json.loads(path.read_text())
    return saved if saved.get("settings") == settings and saved.get("weights_sha256") == digest else None


def sweep_eval_l0(sweep: Path, cell: SweepCell) -> float | None:
    """The L0 the sweep measured on its held-out tokens, when it has evaluated the cell."""
    path = sweep / f"budget-{cell.budget}" / "results" / f"{cell.cell.key}.json"
    return float(json.loads(path.read_text())["l0"]) if path.exists() else None


@torch.no_grad()
def probing_text_l0(sae: SparseDictionary, options: InterpOptions) -> float:
    """The mean L0 over the probing texts' tokens (the site's shared probing data)."""
    (data,) = [value for key, value in options.shared.items() if key[0] == "probing"]
    tokens_ND = data.tokens_ND
    active = sum(int((encode_rows(sae, chunk_ND) > 0).sum()) for chunk_ND in torch.split(tokens_ND, ENCODE_CHUNK))
    return active / max(int(tokens_ND.shape[0]), 1)


def evaluate_cell(cell: SweepCell, loaded: LoadedModel, options: InterpOptions) -> dict[str, Any]:
    sae = load_dictionary(cell)
    absorption = evaluate_absorption(sae, cell.cell.site, loaded, AbsorptionConfig(), options=options)
    probing = evaluate_probing(sae, cell.cell.site, loaded, ProbingConfig(), options=options)
    return {
        "absorption": absorption.to_dict(),
        "probing": probing.to_dict(),
        "l0_probing_texts": probing_text_l0(sae, options),
    }


def evaluate_pending(args: argparse.Namespace, cells: Sequence[SweepCell]) -> None:
    """Evaluate every cell without a current saved result, site by site (the site's model passes are shared)."""
    settings = metric_settings(args.seed)
    pending = [(c, d) for c in cells if saved_cell(args.out, c, settings, d := file_digest(c.weights)) is None]
    print(f"{len(cells)} finished cells in {args.sweep}; {len(pending)} to evaluate", flush=True)
    if not pending:
        return
    loaded = load_model(args.model)
    for site in sorted({c.cell.site for c, _ in pending}, key=lambda s: s.id):
        options = InterpOptions(seed=args.seed, progress=True)
        for cell, digest in (p for p in pending if p[0].cell.site == site):
            print(f"[{cell.key}] absorption and probing", flush=True)
            figures = evaluate_cell(cell, loaded, options)
            record = {"settings": settings, "weights_sha256": digest, "weights": str(cell.weights), **figures}
            atomic_write_json(cell_path(args.out, cell), record)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def report_rows(args: argparse.Namespace, cells: Sequence[SweepCell]) -> list[dict[str, Any]]:
    """One row per cell with saved figures (any settings' figures are skipped unless they match the current)."""
    settings = metric_settings(args.seed)
    rows = []
    for cell in cells:
        saved = saved_cell(args.out, cell, settings, file_digest(cell.weights))
        if saved is None:
            continue
        absorption, probing = saved["absorption"], saved["probing"]
        rows.append({
            "key": cell.key, "site": cell.cell.site.id, "budget": cell.budget, "width": cell.cell.width,
            "target_l0": cell.cell.target_l0, "system": cell.cell.system.name, "label": cell.cell.system.label,
            "kind": cell.cell.system.kind, "l0": sweep_eval_l0(args.sweep, cell),
            "l0_probing_texts": saved["l0_probing_texts"],
            "mean_absorption_fraction": absorption["mean_absorption_fraction"],
            "full_absorption_rate": absorption["full_absorption_rate"],
            "letters_with_splitting": int(absorption["letters_with_splitting"]),
            "letters_evaluated": absorption["letters_evaluated"], "probe_test_f1": absorption["probe_test_f1"],
            "main_latent_f1": absorption["main_latent_f1"],
            "per_letter": {r["letter"]: r["mean_absorption_fraction"] for r in absorption["per_letter"]},
            "per_letter_full": {r["letter"]: r["full_absorption_rate"] for r in absorption["per_letter"]},
            "dense_accuracy": probing["dense_accuracy"],
            **{f"top_{k}_accuracy": probing[f"top_{k}_accuracy"] for k in ProbingConfig().ks},
            "per_sample": per_sample(probing),
        })  # fmt: skip
    return rows


def per_sample(probing: dict[str, Any]) -> dict[int, dict[str, float]]:
    """k -> {"<task>#<i>": 1.0 when the top-k probe got the task's i-th held-out sample right, else 0.0}."""
    outcomes: dict[int, dict[str, float]] = {}
    for task in probing["per_task"]:
        for k, rights in task["test_correct"].items():
            outcomes.setdefault(int(k), {}).update({f"{task['task']}#{i}": float(r) for i, r in enumerate(rights)})
    return outcomes


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def site_table(rows: Sequence[dict[str, Any]]) -> str:
    header = (
        "| system | tokens | width | L0 (sweep eval) | L0 (probing texts) | absorption fraction | full absorption "
        "| letters split | letter-latent F1 | top-1 | top-5 | top-20 | dense |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['label']} | {r['budget']:,} | {r['width']} | {_fmt(r['l0'], 4)} | {_fmt(r['l0_probing_texts'], 4)} "
        f"| {_fmt(r['mean_absorption_fraction'])} | {_fmt(r['full_absorption_rate'])} "
        f"| {r['letters_with_splitting']} of {r['letters_evaluated']} | {_fmt(r['main_latent_f1'])} "
        f"| {_fmt(r['top_1_accuracy'])} "
        f"| {_fmt(r['top_5_accuracy'])} | {_fmt(r['top_20_accuracy'])} | {_fmt(r['dense_accuracy'])} |"
        for r in sorted(rows, key=lambda r: (r["budget"], r["width"], r["target_l0"], r["kind"] != "saescope"))
    ]
    return header + "\n".join(lines) + "\n"


def paired(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float, float, int]:
    """Mean and standard error of (ours − theirs) over the items both have (letters, tasks), and their number."""
    common = sorted(set(ours) & set(theirs))
    diffs = [ours[item] - theirs[item] for item in common]
    if not diffs:
        return float("nan"), float("nan"), 0
    mean, stderr = mean_and_stderr(sum(diffs), sum(d * d for d in diffs), len(diffs))
    return mean, stderr, len(diffs)


def verdict(difference: float, stderr: float, *, lower_is_better: bool) -> str:
    """ "no worse", "better" or "worse" for ours − theirs, unresolved within RESOLVED_STDERRS standard errors."""
    if math.isnan(difference):
        return "not comparable"
    if difference == 0 and stderr == 0:
        return "equal"
    if abs(difference) <= RESOLVED_STDERRS * stderr:
        return "no worse (difference unresolved)"
    better = difference < 0 if lower_is_better else difference > 0
    return "better" if better else "**worse**"


def comparison_axes() -> list[tuple[str, str, bool]]:
    """(row field, name, lower is better) of each axis the goal names."""
    return [
        ("mean_absorption_fraction", "absorption fraction", True),
        ("full_absorption_rate", "full-absorption rate", True),
        ("top_1_accuracy", "top-1 probing", False),
        ("top_5_accuracy", "top-5 probing", False),
    ]


def _per_item(row: dict[str, Any], field: str) -> dict[str, float]:
    if field == "mean_absorption_fraction":
        return dict(row["per_letter"])
    if field == "full_absorption_rate":
        return dict(row["per_letter_full"])
    return dict(row["per_sample"][int(field.split("_")[1])])


def shown_l0(row: dict[str, Any]) -> float:
    """The sweep's held-out L0 when it has evaluated the cell, else the L0 on the probing texts."""
    return float(row["l0"] if row["l0"] is not None else row["l0_probing_texts"])


def off_target_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The dictionaries whose L0 is not near their target: they are not at matched L0 with the others."""
    lines = []
    for r in rows:
        if not at_matched_l0(r):
            lines.append(
                f"* Not at matched L0: {r['label']}, {r['site']}, {r['budget']:,} tokens: L0 {_fmt(shown_l0(r), 4)} "
                f"against a target of {r['target_l0']:g}; its figures are not comparable with the others'."
            )
    return lines


def at_matched_l0(row: dict[str, Any]) -> bool:
    """Whether a dictionary's L0 is within `MATCHED_L0_TOLERANCE` of its target."""
    return bool(abs(shown_l0(row) / float(row["target_l0"]) - 1.0) <= MATCHED_L0_TOLERANCE)


def goal_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per (site, budget, width, target L0): the default recipe against the best peer on each axis."""
    lines = []
    groups = sorted({(r["site"], r["budget"], r["width"], r["target_l0"]) for r in rows})
    for site, budget, width, target_l0 in groups:
        group = [r for r in rows if (r["site"], r["budget"], r["width"], r["target_l0"]) == (site, budget, width,
                                                                                              target_l0)]  # fmt: skip
        ours = next((r for r in group if r["system"] == fidelity.DEFAULT_SYSTEM), None)
        # Only peers at matched L0 compete: a denser dictionary probes better and absorbs less for that alone.
        peers = [r for r in group if r["kind"] in PEER_KINDS and at_matched_l0(r)]
        where = f"{site}, {budget:,} tokens, width {width}, target L0 {target_l0:g}"
        if ours is None or not peers:
            lines.append(f"* {where}: no pair yet (needs the default recipe and a peer at matched L0).")
            continue
        parts = []
        for field, name, lower in comparison_axes():
            best = min(peers, key=lambda r: r[field]) if lower else max(peers, key=lambda r: r[field])
            difference, stderr, n = paired(_per_item(ours, field), _per_item(best, field))
            parts.append(
                f"{name}: {_fmt(ours[field])} vs {_fmt(best[field])} ({best['label']}), paired difference "
                f"{difference:+.3f} ± {stderr:.3f} over {n} {'samples' if field.startswith('top') else 'letters'}: "
                f"{verdict(difference, stderr, lower_is_better=lower)}"
            )
        l0s = ", ".join(f"{r['system']} {_fmt(shown_l0(r), 4)}" for r in (ours, *peers))
        lines.append(f"* {where} (L0: {l0s}): " + "; ".join(parts) + ".")
    return lines


def write_report(args: argparse.Namespace, cells: Sequence[SweepCell], command: str) -> Path:
    rows = report_rows(args, cells)
    missing = sorted({c.key for c in cells} - {r["key"] for r in rows})
    absorption, probing = AbsorptionConfig(), ProbingConfig()
    probe_f1 = ", ".join(f"{site} {_fmt(f1)}" for site, f1 in sorted({(r["site"], r["probe_test_f1"]) for r in rows}))
    text = [
        "# Interpretability against the peers: absorption and sparse probing at matched L0\n",
        "Generated by `benchmarks/interp_peers.py` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; every figure was measured on the "
        "weights the budget sweep ([budget-sweep/](budget-sweep/budget-sweep.md)) trained, by this command:\n",
        f"```\n{command}\n```\n",
        "Model gemma-3-270m (embedded). Same settings for every dictionary (saescope's defaults of "
        f"`saescope eval --interp absorption,probing`, seed {args.seed}): absorption on up to "
        f"{absorption.max_words:,} vocabulary words read after {absorption.prompt_prefix!r}, letters with at least "
        f"{absorption.min_words_per_letter} words, a {absorption.test_fraction:g} test split; sparse probing on the "
        f"embedded corpus's genres (each against the rest, up to {probing.per_label} texts of {probing.max_tokens} "
        f"tokens per genre), top-k latents by class-mean difference, k in {list(probing.ks)}. All dictionaries of "
        "a site share its words, letter probes, texts and dense probes. Absorption fraction and full-absorption "
        "rate: lower is better; probing accuracies: higher is better, the dense probe on the raw activations is "
        "the ceiling. L0 (sweep eval): the sweep's held-out measurement; L0 (probing texts): on the probing "
        "texts' tokens (where the sweep has not evaluated a cell yet, the comparisons use it). Letter-latent F1: how "
        "well each letter's main latents detect the letter on the test words, averaged over letters (the letter "
        f"probe on the raw activations reaches F1 {probe_f1 or '–'}); absorption is measured against those "
        "latents, so a low absorption where they hardly detect their letter says nothing.\n",
        "## The default recipe against the best peer\n",
        "Paired over the same letters (absorption) or the same held-out samples of the probing tasks (probing); a "
        f"difference within {RESOLVED_STDERRS:g} standard errors of zero is unresolved and counts as no worse.\n",
        *(goal_lines(rows) or ["No cell evaluated yet."]),
        "",
        *off_target_lines(rows),
        "",
        *[
            section
            for site in sorted({r["site"] for r in rows})
            for section in (f"## {site}\n", site_table([r for r in rows if r["site"] == site]))
        ],
        *(["## Finished cells without figures\n", "Run the command without `--report-only` to measure: "
           + ", ".join(f"`{key}`" for key in missing) + ".\n"] if missing else []),
    ]  # fmt: skip
    args.docs.mkdir(parents=True, exist_ok=True)
    path = Path(args.docs) / "interp-peers.md"
    atomic_write_text(path, "\n".join(text))
    light_rows = [{key: value for key, value in r.items() if key != "per_sample"} for r in rows]  # in the cells
    atomic_write_json(
        args.docs / "interp-peers.json",
        {"command": command, "settings": metric_settings(args.seed), "rows": light_rows},
    )
    return path


def measuring_command(docs: Path, command: str) -> str:
    """The command of the run that measured the figures a ``--report-only`` rewrite reports (the previous report's),
    else ``command``."""
    previous = docs / "interp-peers.json"
    return str(json.loads(previous.read_text()).get("command", command)) if previous.exists() else command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=Path("runs/budget-sweep"), help="the budget sweep's --out")
    parser.add_argument("--out", type=Path, default=Path("runs/interp-peers"), help="this script's saved cells")
    parser.add_argument("--docs", type=Path, default=Path("docs/results"), help="where the report goes")
    parser.add_argument("--model", default="gemma-3-270m", help="the model the sweep trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the saved cells")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        raise SystemExit(f"--sweep {args.sweep}: no such folder (pass the budget sweep's --out)")
    if args.sweep.resolve() in (args.out.resolve(), *args.out.resolve().parents):
        raise SystemExit(f"--out {args.out} lies inside --sweep {args.sweep}: this script never writes there")
    command = shlex.join(["python", "benchmarks/interp_peers.py", *(argv if argv is not None else sys.argv[1:])])
    cells = find_cells(args.sweep)
    if args.report_only:
        command = measuring_command(args.docs, command)
    else:
        evaluate_pending(args, cells)
    print(f"wrote {write_report(args, cells, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

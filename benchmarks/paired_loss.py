"""Delta LM loss of dictionaries that `benchmarks/fidelity.py` trained, on a larger held-out sample, with paired
differences (a script, not a test).

The fidelity evaluation counts 2,032 predictions per dictionary; on the attention output of Gemma 3 270M, where the
delta losses are ~0.01-0.02 nats, a paired standard error of ~0.005 cannot tell a 10% margin. This script evaluates
the named systems at the given target L0s of one site together (one clean pass per batch, shared by all), on
``--windows`` held-out windows counting every ``--stride``-th prediction, and prints each dictionary's delta loss and
KL and their paired differences against the first system at the same target L0. The KL (the delta loss expected
under the clean model's own next-token distribution) has no noise from the observed token, so its paired
difference resolves far smaller margins. Results are saved (atomically) under ``<out>/paired/`` and read back, so a
rerun with the same settings only prints.

    python benchmarks/paired_loss.py --out runs/fidelity-buffer --site att --l0s 20,60,150 \\
        --systems saescope-jumprelu,sparsify-topk --windows 128 --stride 1

(41 minutes on 2 CPU cores: 32,488 predictions, six dictionaries.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fidelity  # the sibling script: its cells, work folder layout and loaders

from saescope.atomic import atomic_write_json
from saescope.dictionaries.sites import DictionarySites
from saescope.eval.evaluate import EvalConfig, EvalTarget, loss_metrics
from saescope.eval.metrics import paired_difference
from saescope.models.loading import load_model
from saescope.models.sites import Site


def saved_path(args: argparse.Namespace, site: Site) -> Path:
    return Path(args.out) / "paired" / f"{site.id.replace('/', '-')}-w{args.width}-n{args.windows}-s{args.stride}.json"


def evaluate_missing(args: argparse.Namespace, cells: list[fidelity.Cell], saved: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the cells without a saved result (all in one loss pass) and save them with the rest."""
    missing = [
        cell
        for cell in cells
        if saved.get(cell.key, {}).get("fingerprint") != cell.system.fingerprint or "kls" not in saved[cell.key]
    ]
    if not missing:
        return saved
    loaded = load_model("gemma-3-270m")
    targets = [EvalTarget(cell.key, DictionarySites(cell.site), fidelity.load_for_eval(args, cell)) for cell in missing]
    config = EvalConfig(
        tokens=1, loss_windows=args.windows, loss_position_stride=args.stride, batch_windows=args.batch_windows,
        keep_prediction_deltas=True,
    )  # fmt: skip
    results = loss_metrics(loaded, targets, fidelity.corpus_config(args), config)
    for cell in missing:
        loss = results[cell.key]
        saved[cell.key] = {
            "delta_lm_loss": loss["delta_lm_loss"], "delta_lm_loss_stderr": loss["delta_lm_loss_stderr"],
            "kl": loss["kl_clean_to_spliced"], "predictions": loss["loss_n_predictions"],
            "deltas": loss["delta_lm_loss_per_prediction"], "kls": loss["kl_per_prediction"],
            "fingerprint": cell.system.fingerprint,
        }  # fmt: skip
    # A sample evaluated in parts is one sample only if the parts read the same windows: the count checks it.
    counts = {entry["predictions"] for entry in saved.values()}
    if len(counts) != 1:
        raise RuntimeError(f"saved results in {saved_path(args, cells[0].site)} count different predictions: {counts}")
    atomic_write_json(saved_path(args, cells[0].site), saved)
    return saved


def report(cells: list[fidelity.Cell], saved: dict[str, Any], reference: fidelity.System) -> str:
    lines = [
        f"| target L0 | system | predictions | delta LM loss ± s.e. | KL | delta loss − {reference.name} (paired) | "
        f"KL − {reference.name} (paired) | {reference.name}'s delta loss, KL against it |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        entry = saved[cell.key]
        base = saved[fidelity.Cell(cell.site, cell.width, cell.target_l0, reference).key]
        paired_loss, paired_kl, relative = "–", "–", "–"
        if cell.system != reference:
            paired_loss = fidelity.paired_summary(*paired_difference(entry["deltas"], base["deltas"]))
            paired_kl = fidelity.paired_summary(*paired_difference(entry["kls"], base["kls"]))
            relative = (
                f"{fidelity.percent_lower(base['delta_lm_loss'], entry['delta_lm_loss'])}, "
                f"{fidelity.percent_lower(base['kl'], entry['kl'])}"
            )
        lines.append(
            f"| {cell.target_l0:g} | {cell.system.name} | {entry['predictions']:,} | {entry['delta_lm_loss']:.4f} ± "
            f"{entry['delta_lm_loss_stderr']:.4f} | {entry['kl']:.4f} | {paired_loss} | {paired_kl} | {relative} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fidelity"), help="fidelity work folder (runs/fidelity)")
    parser.add_argument("--site", default="att", help="site kind of the fidelity layer (att)")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--l0s", default="20,60,150", help="target L0s of the cells (20,60,150)")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument(
        "--systems", default="saescope-jumprelu,sparsify-topk", help="fidelity system names; the first is the reference"
    )
    parser.add_argument("--windows", type=int, default=128, help="held-out windows (128)")
    parser.add_argument("--stride", type=int, default=1, help="count every n-th prediction (1)")
    parser.add_argument("--batch-windows", type=int, default=8, help="windows per model forward (8)")
    parser.add_argument("--context-size", type=int, default=256, help="the fidelity run's context (256)")
    args = parser.parse_args(argv)
    args.window_shuffle_tokens = fidelity.held_window_shuffle(args.out)
    site = Site.parse(f"layer_{args.layer}/{args.site}")
    systems = fidelity.parse_systems(args.systems)
    cells = [fidelity.Cell(site, args.width, float(l0), system) for l0 in args.l0s.split(",") for system in systems]
    untrained = [cell.key for cell in cells if fidelity.current_result(args, cell) is None]
    if untrained:
        raise SystemExit(f"{args.out} has no current result for {', '.join(untrained)}: run benchmarks/fidelity.py "
                         "with the same --out, sites, L0s and systems first")  # fmt: skip
    path = saved_path(args, site)
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved = evaluate_missing(args, cells, saved)
    print(f"## {site.id}, width {args.width}: delta LM loss on {args.windows} held-out windows, every "
          f"{args.stride}-th prediction\n")  # fmt: skip
    print(report(cells, saved, systems[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

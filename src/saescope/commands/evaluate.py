"""`saescope eval`: the paper's metrics for a trained suite, single dictionaries or released weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saescope.commands.common import add_corpus_arguments, add_model_arguments, corpus_from_args, load_from_args
from saescope.eval import EvalConfig, EvalTarget, evaluate
from saescope.eval.report import markdown_table, suite_rows, write_report
from saescope.models.sites import Site
from saescope.release import load_sae
from saescope.release.suite import read_suite


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate dictionaries: L0, FVU, delta LM loss, density; tables, plots and an HTML report",
        description="Evaluate on the corpus's held-out split: reconstruction metrics in one streaming pass for every "
        "site (L0, FVU about the mean, cosine, L2 ratio, dead/dense latents, density histogram, per-position "
        "curves) and delta LM loss with shared clean and zero-ablation passes. PATH is a run folder (runs/<name>, "
        "or a training folder holding saes/), one saescope dictionary folder, or a released SAE (Gemma Scope 1/2 "
        "or SAELens folder, or a Hub id with --online). --model lets SAEs trained on one model be evaluated on "
        "another (e.g. base-model SAEs on the instruction-tuned model).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder, dictionary folder or released SAE")
    add_model_arguments(parser)
    add_corpus_arguments(parser)
    parser.add_argument("--site", help="site of a released SAE whose files do not say it, e.g. layer_6/res")
    parser.add_argument("--tokens", type=int, default=50_000, help="held-out tokens for reconstruction (50000)")
    parser.add_argument("--loss-windows", type=int, default=4, help="held-out windows for delta LM loss (4)")
    parser.add_argument("--loss-stride", type=int, default=4, help="count every n-th prediction in loss passes (4)")
    parser.add_argument("--batch-windows", type=int, default=4, help="windows per model forward (4)")
    parser.add_argument("--out", type=Path, help="report folder (default: <run>/report, else ./eval-report)")
    parser.set_defaults(handler=run, subparser=parser)


def _targets(paths: list[str], site_flag: str | None, out: Path | None, online: bool | None) -> list[EvalTarget]:
    targets = []
    for text in paths:
        path = Path(text)
        training = path / "train" if (path / "train" / "saes").is_dir() else path
        if (training / "saes").is_dir():
            for entry in read_suite(training):
                folder = out / entry.name if out else entry.folder
                targets.append(EvalTarget(entry.name, entry.site, entry.raw_space(), folder))
            continue
        loaded = load_sae(text, online=online)
        site = Site.parse(site_flag) if site_flag else loaded.site
        if site is None:
            raise ValueError(f"{text}: its files do not say which site it reads; pass --site layer_<L>/<kind>")
        name = path.name if path.exists() else text.replace("/", "_")
        folder = (out / name) if out else (path if loaded.source_format == "saescope" else Path("eval-report") / name)
        targets.append(EvalTarget(name, site, loaded.sae, folder))
    return targets


def _report_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    first = Path(args.paths[0])
    return first / "report" if (first / "train" / "saes").is_dir() else Path("eval-report")


def run(args: argparse.Namespace) -> int:
    online = True if args.online else None
    targets = _targets(args.paths, args.site, args.out, online)
    for target in targets:
        if target.folder is not None:
            target.folder.mkdir(parents=True, exist_ok=True)
    loaded = load_from_args(args)
    config = EvalConfig(
        tokens=args.tokens,
        loss_windows=args.loss_windows,
        loss_position_stride=args.loss_stride,
        batch_windows=args.batch_windows,
    )
    results = evaluate(loaded, targets, corpus_from_args(args), config)
    report_dir = _report_dir(args)
    files = write_report(list(results.values()), report_dir, title=f"saescope evaluation on {loaded.info.name}")
    print("\n" + markdown_table(suite_rows(list(results.values()))))
    print(f"Report: {files.html}\nmetrics.json: next to each dictionary (or under --out)")
    return 0

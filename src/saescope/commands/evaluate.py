"""`saescope eval`: the paper's metrics for a trained suite, single dictionaries or released weights."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.commands.common import (
    DTYPES,
    add_corpus_arguments,
    add_model_arguments,
    corpus_from_args,
    online_from_args,
)
from saescope.dictionaries import eval_folder, read_suite
from saescope.dictionaries.folder import write_metrics
from saescope.dictionaries.sites import DictionarySites
from saescope.eval import EvalConfig, EvalTarget, evaluate
from saescope.eval.evaluate import check_targets_fit, trained_target
from saescope.eval.interp import INTERP_METRICS, InterpOptions, ProbeDataSpec
from saescope.eval.interp.labelled import read_labelled_rows
from saescope.eval.interp.run import check_interp_request, interp_table, parse_interp_names, run_interp
from saescope.eval.report import markdown_table, suite_rows, write_report
from saescope.models.loading import DEFAULT_MODEL, LoadedModel, ModelLoadError, load_model
from saescope.models.sites import Site, SiteKind
from saescope.release import load_sae
from saescope.train.devices import check_device

RUN_CONFIG = "run_config.json"


@dataclass(frozen=True)
class Named:
    """A dictionary to evaluate, the path it was read from, and the model its files say it was made for."""

    target: EvalTarget
    path: str
    model: str | None


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="evaluate dictionaries: L0, FVU, delta LM loss, density; tables, plots and an HTML report",
        description="Evaluate on the corpus's held-out split: reconstruction metrics in one streaming pass for every "
        "site (L0, FVU about the mean, cosine, L2 ratio, dead/dense latents, density histogram, per-position "
        "curves) and delta LM loss with shared clean and zero-ablation passes. PATH is a run folder (runs/<name>, "
        "or a training folder holding saes/), one saescope dictionary folder, or a released SAE (Gemma Scope 1/2 "
        "or SAELens folder, or a Hub id with --online). The model is the one the dictionaries' files name (a run's "
        "run_config.json, a release's model name), else the embedded one; a dictionary the model cannot run is "
        "refused before anything is evaluated. --model lets SAEs trained on one model be evaluated on another (e.g. "
        "base-model SAEs on the instruction-tuned model). --interp adds interpretability metrics: first-letter "
        "feature absorption and sparse probing (on the embedded corpus's genres, or --probe-data). Automated "
        "interpretability (LLM explanations and detection scores) is its own command, `saescope autointerp`: it "
        "needs an explainer LLM and the run's feature index.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run folder, dictionary folder or released SAE")
    add_model_arguments(parser)
    parser.set_defaults(model=None)  # default: the model the dictionaries' files name, else the embedded one
    add_corpus_arguments(parser)
    parser.add_argument("--site", help="site of a released SAE whose files do not say it, e.g. layer_6/res")
    parser.add_argument("--tokens", type=int, default=50_000, help="held-out tokens for reconstruction (50000)")
    parser.add_argument("--loss-windows", type=int, default=4, help="held-out windows for delta LM loss (4)")
    parser.add_argument("--loss-stride", type=int, default=4, help="count every n-th prediction in loss passes (4)")
    parser.add_argument("--batch-windows", type=int, default=4, help="windows per model forward (4)")
    parser.add_argument("--out", type=Path, help="report folder (default: <run>/report, else ./eval-report)")
    group = parser.add_argument_group("interpretability")
    group.add_argument(
        "--interp",
        metavar="METRICS",
        help=f"also run these interpretability metrics, comma-separated ({', '.join(INTERP_METRICS)}); results go "
        "into each dictionary's metrics.json under 'interp' (automated interpretability: `saescope autointerp`)",
    )
    group.add_argument(
        "--probe-data",
        type=Path,
        metavar="FILE",
        help="labelled .jsonl/.csv/.parquet for sparse probing, or hf:<dataset>[:<config>] (its train split; needs "
        "--online) (default: the embedded corpus's genres)",
    )
    group.add_argument("--probe-text-field", help="the probe data's text field (default: --text-field)")
    group.add_argument("--label-field", default="label", help="the probe data's label field (label)")
    group.add_argument("--interp-seed", type=int, default=0, help="seed of the interpretability samples (0)")
    parser.set_defaults(handler=run, subparser=parser)


def _run_model(path: Path) -> str | None:
    """The model a run folder was made with (``run_config.json``), when it says."""
    config_path = path / RUN_CONFIG
    if not config_path.is_file():
        return None
    model = json.loads(config_path.read_text(encoding="utf-8")).get("model")
    return str(model) if model else None


def _targets(paths: list[str], site_flag: str | None, out: Path | None, online: bool | None) -> list[EvalTarget]:
    return [named.target for named in _named_targets(paths, site_flag, out, online)]


def _named_targets(paths: list[str], site_flag: str | None, out: Path | None, online: bool | None) -> list[Named]:
    targets = []
    for text in paths:
        path = Path(text)
        training = path / "train" if (path / "train" / "saes").is_dir() else path
        if (training / "saes").is_dir():
            model = _run_model(path)
            for entry in read_suite(training):
                target = trained_target(entry, out / entry.name if out else None)
                targets.append(Named(target, text, model))
            continue
        loaded = load_sae(text, online=online)
        site = Site.parse(site_flag) if site_flag else loaded.site
        if site is None:
            raise ValueError(f"{text}: its files do not say which site it reads; pass --site layer_<L>/<kind>")
        name = path.name if path.exists() else text.replace("/", "_")
        saescope_folder = Path(str(loaded.metadata["path"])) if loaded.source_format == "saescope" else None
        own = eval_folder(saescope_folder) if saescope_folder is not None else Path("eval-report") / name
        folder = (out / name) if out else own
        target = EvalTarget(name, DictionarySites(site, loaded.site_out, loaded.layers), loaded.sae, folder)
        targets.append(Named(target, text, loaded.model_name))
    return targets


def model_to_use(targets: list[Named], model_flag: str | None) -> tuple[str, Named | None]:
    """The model to evaluate on, and the dictionary whose files named it: ``--model`` when given (None); else the
    model the dictionaries' files name; else the embedded default (None). Raises ValueError when the files name
    several models."""
    if model_flag is not None:
        return model_flag, None
    named = [t for t in targets if t.model]
    models = {t.model for t in named}
    if len(models) > 1:
        listing = "; ".join(f"{t.path}: {t.model}" for t in named)
        raise ValueError(
            f"the dictionaries were made for different models ({listing}): evaluate each model's dictionaries in a "
            "separate `saescope eval`, or pass --model to evaluate them all on one model"
        )
    if not named:
        return DEFAULT_MODEL, None
    return str(named[0].model), named[0]


def load_named_model(model: str, named_by: Named | None, args: argparse.Namespace) -> LoadedModel:
    """Load ``model``. When a dictionary's files named it and it cannot be loaded here (not embedded, not a local
    folder, not in the Hugging Face cache, downloads off), the error says which model the dictionary was made
    for, its width, and that saescope does not fall back to the embedded model, which it was not made for."""
    try:
        return load_model(model, dtype=DTYPES[args.dtype], device=args.device, online=online_from_args(args))
    except ModelLoadError as error:
        if named_by is None:
            raise
        site, width = named_by.target.site, named_by.target.sae.config.d_in
        width_text = f"attention width {width} (heads x head_dim)" if site.kind == SiteKind.ATT else f"d_model {width}"
        reason = str(error).splitlines()[0]
        raise ModelLoadError(
            f"{named_by.path} is a dictionary for the model {model!r} ({width_text}, read at {site.id}), which cannot "
            f"be loaded here ({reason}). saescope evaluates a dictionary on the model its files name and does not "
            f"fall back to {DEFAULT_MODEL}, which it was not made for. Pass --model with a local folder of {model} "
            f"(or its Hugging Face id), or --online to let saescope download it"
        ) from error


def _report_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    first = Path(args.paths[0])
    return first / "report" if (first / "train" / "saes").is_dir() else Path("eval-report")


def _interp_request(args: argparse.Namespace) -> tuple[list[str], InterpOptions]:
    """The chosen metrics and their options, checked before anything is loaded or evaluated."""
    if args.interp is None:
        if args.probe_data is not None:
            raise ValueError("--probe-data is read by sparse probing: add --interp probing")
        return [], InterpOptions()
    names = parse_interp_names(args.interp, list(INTERP_METRICS))
    probe_data = None
    if args.probe_data is not None:
        text_field = args.probe_text_field or args.text_field
        probe_data = ProbeDataSpec(args.probe_data, text_field, args.label_field, online_from_args(args))
        read_labelled_rows(probe_data)  # a missing file or field fails now, not after the reconstruction passes
    return names, InterpOptions(seed=args.interp_seed, probe_data=probe_data)


def _add_interp(
    loaded: LoadedModel,
    targets: list[EvalTarget],
    results: dict[str, dict[str, Any]],
    names: list[str],
    options: InterpOptions,
) -> dict[str, dict[str, Any]]:
    """Run the interpretability metrics and add them to each target's results and metrics.json."""
    interp = run_interp(loaded, targets, {name: INTERP_METRICS[name] for name in names}, options)
    for target in targets:
        results[target.name]["interp"] = interp[target.name]
        if target.folder is not None:
            write_metrics(target.folder, results[target.name])
    return interp


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    online = True if args.online else None
    interp_names, interp_options = _interp_request(args)
    named = _named_targets(args.paths, args.site, args.out, online)
    model, named_by = model_to_use(named, args.model)
    targets = [n.target for n in named]
    loaded = load_named_model(model, named_by, args)
    if named_by is not None:
        print(f"Evaluating on {model}, the model {named_by.path} names (--model chooses another)")
    check_targets_fit(loaded, targets)  # before any report folder is made
    check_interp_request(loaded, interp_names, interp_options)
    for target in targets:
        if target.folder is not None:
            target.folder.mkdir(parents=True, exist_ok=True)
    config = EvalConfig(
        tokens=args.tokens,
        loss_windows=args.loss_windows,
        loss_position_stride=args.loss_stride,
        batch_windows=args.batch_windows,
    )
    results = evaluate(loaded, targets, corpus_from_args(args), config)
    interp = _add_interp(loaded, targets, results, interp_names, interp_options) if interp_names else {}
    report_dir = _report_dir(args)
    files = write_report(list(results.values()), report_dir, title=f"saescope evaluation on {loaded.info.name}")
    print("\n" + markdown_table(suite_rows(list(results.values()))))
    if interp:
        print("Interpretability\n" + interp_table(interp))
    print(f"Report: {files.html}\nmetrics.json: in the run's eval folder (<run>/eval/<dictionary>/, or under --out)")
    return 0

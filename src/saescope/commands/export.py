"""`saescope export`: write a trained run as a release in the Gemma Scope 1/2 and SAELens formats."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saescope.release.common import DEFAULT_MODEL_TYPE, l0_label
from saescope.release.export import CARD, FORMATS, ReleaseSummary, export_release

_CHOICES = (*FORMATS, "all")


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "export",
        help="write trained SAEs in the Gemma Scope 1/2 and SAELens formats, with a model card",
        description="Export every dictionary of a training run (RUN/saes/*/) with raw-space weights "
        "(the normalisation scale C and b_dec folded in, method §2.7) as a release folder: "
        "gemmascope = Gemma Scope 1 layout <model>-<res|att|mlp|transcoders>/layer_L/width_W/average_l0_N/params.npz; "
        "gemmascope2 = Gemma Scope 2 layout <resid_post|attn_out|mlp_out>_all/layer_L_width_W_l0_<small|medium|big>/"
        "{params.safetensors,config.json}; saelens = cfg.json + sae_weights.safetensors per SAE, loadable with "
        "sae_lens.SAE.load_from_disk. Folder names use the held-out L0 from metrics.json (written by evaluation) "
        "when present, else the last training batch's L0. A README.md model card and a checksum manifest are "
        "written too; load any exported folder with saescope.release.load_sae. An earlier release as OUT keeps "
        "everything in it: new formats are added beside its formats (OUT/<format>/), and files it already has "
        "stop the export, listed, unless --overwrite is given.",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="a training run folder (made by `saescope train`)")
    parser.add_argument(
        "--format",
        choices=_CHOICES,
        default="all",
        help="release format; 'all' writes OUT/gemmascope, OUT/gemmascope2 and OUT/saelens (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="release folder: a new or empty folder, or an earlier saescope release to add formats to",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier export that this export writes again (default: stop and list them); "
        "nothing else in OUT is touched",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="model name written into the folder names and configs (default: the model recorded in the run, "
        "else the embedded gemma-3-270m)",
    )
    parser.add_argument(
        "--model-type",
        default=DEFAULT_MODEL_TYPE,
        help=f"transformers model_type whose site table spells the HF hook names (default: {DEFAULT_MODEL_TYPE})",
    )
    parser.add_argument(
        "--training-data", default=None, help="one line describing the training data, for the model card"
    )
    parser.set_defaults(handler=run, subparser=parser)


def _index_of(run: Path) -> Path | None:
    """The feature index of a run (``RUN/index.sqlite``, or beside a run's ``train/`` folder), if there is one."""
    from saescope.explore import INDEX_FILE

    candidates = [run / INDEX_FILE] + ([run.parent / INDEX_FILE] if run.name == "train" else [])
    return next((path for path in candidates if path.is_file()), None)


def _write_examples(run: Path, summary: ReleaseSummary) -> None:
    """Gemma Scope 2 folders ship their top examples (``examples.safetensors``), taken from the run's feature
    index when it has one (`saescope index`)."""
    from saescope.explore.shipped import write_release_examples
    from saescope.explore.sources import safe_name

    index = _index_of(run)
    if index is None or "gemmascope2" not in summary.exported:
        return
    root = summary.format_dirs["gemmascope2"]
    folders = {safe_name(item.entry.name): root / item.path for item in summary.exported["gemmascope2"]}
    from saescope.explore import FeatureIndexError

    try:
        written = write_release_examples(index, folders)
    except FeatureIndexError as error:  # the release itself is complete: say why it has no examples
        print(f"\nwarning: no examples.safetensors written: {error}")
        return
    print(f"\nTop examples from {index}: {len(written)} examples.safetensors in {root}/")


def run(args: argparse.Namespace) -> int:
    formats = list(FORMATS) if args.format == "all" else [args.format]
    summary = export_release(
        args.run,
        args.out,
        formats,
        model_name=args.model_name,
        model_type=args.model_type,
        training_data=args.training_data,
        overwrite=args.overwrite,
    )
    total = sum(len(items) for items in summary.exported.values())
    print(f"Exported {total} dictionar{'y' if total == 1 else 'ies'} of {args.run} for {summary.model_name}:")
    for format_id, items in summary.exported.items():
        folder = summary.format_dirs[format_id]
        print(f"\n{format_id} -> {folder}/")
        print(f"  {'dictionary':<44} {'site':<14} {'width':>8} {'L0':>7} {'label':<6}  folder")
        for item in items:
            e = item.entry
            print(
                f"  {e.name:<44} {e.site.id:<14} {e.width:>8} {e.l0:>7.1f} {l0_label(e.l0):<6}  {item.path.as_posix()}"
            )
        if items:
            print(f"  model card: {folder / CARD}")
    for name, format_id, reason in summary.skipped:
        print(f"\nskipped {name} in {format_id}: {reason}")
    if summary.added_to:
        print(f"\nadded to the earlier release in {args.out} (its other files are unchanged)")
    if summary.replaced:
        print(f"replaced {len(summary.replaced)} file(s) of the earlier export (--overwrite)")
    l0_sources = sorted({item.entry.l0_source for items in summary.exported.values() for item in items})
    if l0_sources:
        print(f"\nL0 from: {'; '.join(l0_sources)}")
    _write_examples(Path(args.run), summary)
    return 0

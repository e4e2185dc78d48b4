"""`saescope compare-pt-it`: PT SAEs vs IT SAEs on the IT model's rollouts and on PT text (Gemma Scope 1 §4.5)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saescope.commands.common import CHAT_TEMPLATE_HELP, DTYPES
from saescope.commands.evaluate import _targets as eval_targets
from saescope.data.corpus import CorpusConfig
from saescope.data.embedded import EMBEDDED_SOURCE
from saescope.data.rollouts import ROLLOUTS_FILE
from saescope.eval import EvalConfig
from saescope.eval.compare import Condition, compare_pt_it, comparison_markdown
from saescope.models.loading import DEFAULT_MODEL, LoadedModel, load_model


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "compare-pt-it",
        help="compare PT and IT SAEs (delta LM loss, FVU) on IT rollouts and on PT text, as Gemma Scope 1 §4.5",
        description="Evaluate SAEs trained on a pretrained (PT) model and SAEs trained or finetuned (saescope train "
        "--init-from) for its instruction-tuned (IT) counterpart under two conditions: spliced into the IT model on "
        "its rollouts (saescope rollouts; chat template applied, user-turn prefix and special tokens masked), and "
        "spliced into the PT model on held-out PT text. Writes comparison.csv/.md/.json, comparison.png, and a "
        "metrics.json per condition and SAE under OUT/metrics/.",
    )
    models = parser.add_argument_group("models (one architecture)")
    models.add_argument("--pt-model", default=DEFAULT_MODEL, help=f"the pretrained model (default: {DEFAULT_MODEL})")
    models.add_argument("--it-model", required=True, help="the instruction-tuned model, e.g. google/gemma-3-270m-it")
    models.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model weight dtype (float32)")
    models.add_argument("--device", default="cpu", help="torch device for the models (cpu)")
    models.add_argument("--online", action="store_true", help="allow downloads from the Hugging Face Hub")
    saes = parser.add_argument_group("SAEs (run folders, dictionary folders or released SAEs, as for saescope eval)")
    saes.add_argument("--pt-saes", nargs="+", default=[], metavar="PATH", help="SAEs trained on the PT model")
    saes.add_argument("--it-saes", nargs="+", default=[], metavar="PATH", help="SAEs trained or finetuned for IT")
    saes.add_argument("--site", help="site of released SAEs whose files do not say it, e.g. layer_6/res")
    data = parser.add_argument_group("data")
    data.add_argument("--rollouts", type=Path, required=True, help=f"the IT model's {ROLLOUTS_FILE} (or its folder)")
    data.add_argument(
        "--rollouts-split",
        choices=("heldout", "all"),
        default="heldout",
        help="which rollouts: 'heldout' (default: safe when the IT SAEs were finetuned on the same file) or 'all' "
        "(rollouts kept for evaluation only, as Gemma Scope 1's)",
    )
    data.add_argument("--chat-template", default="tokenizer", metavar="TEMPLATE", help=CHAT_TEMPLATE_HELP)
    data.add_argument("--pt-corpus", default=EMBEDDED_SOURCE, help="PT text source, as --corpus (embedded)")
    data.add_argument("--text-field", default="text", help="field/column of the PT text (.jsonl, .parquet, hf:)")
    data.add_argument("--context-size", type=int, default=1024, help="tokens per window, BOS included (1024)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--tokens", type=int, default=50_000, help="tokens for FVU and L0 per condition (50000)")
    evaluation.add_argument("--loss-windows", type=int, default=4, help="windows for delta LM loss (4)")
    evaluation.add_argument("--loss-stride", type=int, default=4, help="count every n-th prediction (4)")
    evaluation.add_argument("--batch-windows", type=int, default=4, help="windows per model forward (4)")
    parser.add_argument("--out", type=Path, default=Path("compare-pt-it"), help="output folder (compare-pt-it)")
    parser.set_defaults(handler=run, subparser=parser)


def _rollouts_file(path: Path) -> Path:
    file = path / ROLLOUTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no rollouts file; make one with `saescope rollouts --out {path}`")
    return file


def run(args: argparse.Namespace) -> int:
    online = True if args.online else None
    families = {
        "PT": eval_targets(args.pt_saes, args.site, None, online),
        "IT": eval_targets(args.it_saes, args.site, None, online),
    }
    rollouts = CorpusConfig(
        source=str(_rollouts_file(args.rollouts)), text_field="messages", context_size=args.context_size,
        chat_template=args.chat_template,
    )  # fmt: skip
    pt_text = CorpusConfig(source=args.pt_corpus, text_field=args.text_field, context_size=args.context_size)
    conditions = [
        Condition("it-rollouts", f"{args.it_model} on its rollouts (chat mask)", args.it_model, rollouts,
                  args.rollouts_split),
        Condition("pt-text", f"{args.pt_model} on held-out PT text", args.pt_model, pt_text),
    ]  # fmt: skip
    config = EvalConfig(
        tokens=args.tokens, loss_windows=args.loss_windows, loss_position_stride=args.loss_stride,
        batch_windows=args.batch_windows,
    )  # fmt: skip

    def load(name: str) -> LoadedModel:
        return load_model(name, dtype=DTYPES[args.dtype], device=args.device, online=online)

    rows = compare_pt_it(conditions, families, config, args.out, load=load)
    print("\n" + comparison_markdown(rows))
    print(
        f"Table: {args.out / 'comparison.csv'}; plot: {args.out / 'comparison.png'}; metrics: {args.out / 'metrics'}/"
    )
    return 0

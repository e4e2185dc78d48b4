"""`saescope rollouts`: sample a model's responses to prompts and store them as conversations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saescope.commands.common import CHAT_TEMPLATE_HELP, add_model_arguments, load_from_args
from saescope.data.rollouts import MAX_NEW_TOKENS_LIMIT, RolloutConfig, generate_rollouts, read_prompts


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "rollouts",
        help="sample a model's responses to prompts and store prompt + response as conversations",
        description="Render each prompt with the model's chat template, sample a response (temperature 1.0 by "
        "default, no top-k/top-p, seeded per prompt), and store prompt + response as a conversation in "
        "OUT/rollouts.jsonl (a `messages` list per line). Batches are written as they finish: rerunning the same "
        "command after an interruption resumes and produces the same file. Train or evaluate on the result with "
        "--corpus OUT/rollouts.jsonl --text-field messages --chat (the user-turn prefix and special tokens are "
        "dropped from activations).",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--prompts", type=Path, required=True, help="a .txt file (one prompt per line) or a .jsonl file"
    )
    parser.add_argument(
        "--prompt-field",
        default="prompt",
        help="field of a .jsonl prompt file: a string, or a messages list ending with a user turn (prompt)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (1.0)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help=f"response length bound, at most {MAX_NEW_TOKENS_LIMIT} (256)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (8)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed; each prompt draws from its own stream (0)")
    parser.add_argument("--max-prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--chat-template", default="tokenizer", metavar="TEMPLATE", help=CHAT_TEMPLATE_HELP)
    parser.set_defaults(handler=run, subparser=parser)


def run(args: argparse.Namespace) -> int:
    prompts = read_prompts(args.prompts, args.prompt_field)
    if args.max_prompts is not None:
        if args.max_prompts < 1:
            raise ValueError(f"--max-prompts must be >= 1; got {args.max_prompts}")
        prompts = prompts[: args.max_prompts]
    config = RolloutConfig(
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        chat_template=args.chat_template,
    )
    loaded = load_from_args(args)
    report = generate_rollouts(loaded, prompts, args.out, config)
    resumed = report.n_rollouts - report.generated_now
    print(
        f"{report.n_rollouts} rollouts of {loaded.info.name} -> {report.path}"
        + (f" ({resumed} from an earlier run)" if resumed else "")
    )
    print(f"Use them as data: --corpus {report.path} --text-field messages --chat")
    return 0

"""Worker of benchmarks/train_step.py: runs SAELens' JumpReLU training steps on request, in SAELens' own venv.

SAELens (the ``sae-lens`` package) lives in its own virtual environment, so ``train_step.py`` starts this
file as a subprocess with that environment's interpreter and talks to it over stdin/stdout, one JSON
object per line, so that SAELens' steps can be interleaved step by step with saescope's (load from other
processes then hits both alike). Requests::

    {"cmd": "build", "width": 4096}   -> {"built": 4096}
    {"cmd": "step", "width": 4096}    -> {"seconds": 1.23, "loss": 0.93}
    {"cmd": "quit"}

On start it loads the activations that ``train_step.py`` wrote to a ``.npy`` file and answers
``{"ready": true, "sae_lens": ..., "torch": ..., "threads": ...}``.

A build makes ``JumpReLUTrainingSAE`` with Gemma Scope's settings and an ``SAETrainer`` (which owns
SAELens' Adam optimiser, LR scheduler and L0-coefficient warm-up). A step times what ``SAETrainer.fit``
does per step: ``maybe_reset_sparsity()`` then ``step(batch)`` (forward, loss, firing statistics,
backward, grad-norm clipping, Adam, schedulers) and the step counter.

It imports nothing from saescope. By hand (type requests on stdin)::

    /tmp/bench_saelens/bin/python benchmarks/saelens_train_step_worker.py --acts x.npy
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import torch


class SAELensStepper:
    """One SAELens JumpReLU training SAE and its trainer, stepped on the same batch every time."""

    def __init__(self, x_BD: torch.Tensor, width: int, args: argparse.Namespace) -> None:
        from sae_lens import SAETrainer
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

        torch.manual_seed(0)
        batch, d_in = x_BD.shape
        sae_config = JumpReLUTrainingSAEConfig(
            d_in=d_in,
            d_sae=width,
            jumprelu_init_threshold=args.threshold_init,
            jumprelu_bandwidth=args.bandwidth,
            jumprelu_sparsity_loss_mode="step",  # Gemma Scope's L0 penalty
            l0_coefficient=args.l0_coefficient,
            l0_warm_up_steps=args.l0_warmup_steps,
        )
        trainer_config = SAETrainerConfig(
            total_training_samples=batch * 1_000_000,
            train_batch_size_samples=batch,
            lr=args.lr,
            lr_end=args.lr,  # normally filled in by the runner config; "constant" ignores it
            lr_scheduler_name="constant",
            adam_beta1=0.0,
            adam_beta2=0.999,
            device="cpu",
        )
        self.x_BD = x_BD
        self.trainer = SAETrainer(trainer_config, JumpReLUTrainingSAE(sae_config), data_provider=iter(()))

    def step(self) -> dict[str, float]:
        started = time.perf_counter()
        self.trainer.maybe_reset_sparsity()
        output = self.trainer.step(self.x_BD)
        self.trainer.n_training_steps += 1
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "loss": float(output.loss.detach())}


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="run SAELens JumpReLU training steps on request")
    parser.add_argument("--acts", required=True, help=".npy file of (batch, d_in) float32 activations")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's)")
    parser.add_argument("--lr", type=float, default=7e-5)
    parser.add_argument("--l0-coefficient", type=float, default=6e-4)
    parser.add_argument("--l0-warmup-steps", type=int, default=10_000)
    parser.add_argument("--threshold-init", type=float, default=0.001)
    parser.add_argument("--bandwidth", type=float, default=0.001)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import sae_lens

    x_BD = torch.from_numpy(np.load(args.acts)).float().contiguous()
    steppers: dict[int, SAELensStepper] = {}
    reply(
        {
            "ready": True,
            "sae_lens": getattr(sae_lens, "__version__", "unknown"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    for line in sys.stdin:
        request = json.loads(line)
        command = request.get("cmd")
        if command == "quit":
            break
        width = int(request["width"])
        if command == "build":
            steppers.pop(width, None)
            steppers[width] = SAELensStepper(x_BD, width, args)
            reply({"built": width})
        elif command == "step":
            reply(steppers[width].step())
        elif command == "drop":
            steppers.pop(width, None)
            reply({"dropped": width})
        else:
            reply({"error": f"unknown command {command!r}"})


if __name__ == "__main__":
    main()

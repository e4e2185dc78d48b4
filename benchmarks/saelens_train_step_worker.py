"""Worker of benchmarks/train_step.py: runs SAELens' JumpReLU training steps on request, in SAELens' own venv.

Protocol, shared weights and peak memory: see ``train_step_worker_protocol.py``. A build makes
``JumpReLUTrainingSAE`` with Gemma Scope's settings (L0 "step" penalty, bandwidth, coefficient and its
warm-up), loads the shared initial parameters (SAELens trains θ directly, as ``threshold``) and an
``SAETrainer`` (which owns SAELens' Adam optimiser, LR scheduler and L0-coefficient warm-up). A step
times what ``SAETrainer.fit`` does per step: ``maybe_reset_sparsity()`` then ``step(batch)`` (forward,
loss, firing statistics, backward, grad-norm clipping, Adam, schedulers) and the step counter.

By hand (type requests on stdin)::

    /tmp/bench_saelens/bin/python benchmarks/saelens_train_step_worker.py --acts x.npy
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from train_step_worker_protocol import Stepper, serve, worker_arguments


def build(x_BD: torch.Tensor, width: int, weights: dict[str, torch.Tensor], args: argparse.Namespace) -> Stepper:
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    batch, d_in = x_BD.shape
    sae_config = JumpReLUTrainingSAEConfig(
        d_in=d_in,
        d_sae=width,
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
    sae = JumpReLUTrainingSAE(sae_config)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            getattr(sae, name).copy_(weights[name])
    trainer = SAETrainer(trainer_config, sae, data_provider=iter(()))

    def step() -> tuple[float, float]:
        started = time.perf_counter()
        trainer.maybe_reset_sparsity()
        output = trainer.step(x_BD)
        trainer.n_training_steps += 1
        seconds = time.perf_counter() - started
        return seconds, float((output.feature_acts != 0).float().sum(-1).mean())

    return step


def main() -> None:
    args = worker_arguments("run SAELens JumpReLU training steps on request")
    import sae_lens

    x_BD = torch.from_numpy(np.load(args.acts)).float().contiguous()
    version = getattr(sae_lens, "__version__", "unknown")
    serve("sae-lens", version, x_BD, lambda width, weights: build(x_BD, width, weights, args))


if __name__ == "__main__":
    main()

"""Worker of benchmarks/fidelity.py: trains one SAELens JumpReLU SAE with SAELens' own trainer, in SAELens' venv.

It reads the training stream that ``fidelity.py`` wrote (a float32 ``.npy`` of raw activations, rows in the
order every system sees them), feeds it batch by batch to ``SAETrainer.fit()`` (SAELens' Adam, LR
schedule, L0-coefficient warm-up, activation-norm estimation and folding) and writes the trained SAE in
raw activation space as ``W_enc_DF, b_enc_F, W_dec_FD, b_dec_D, threshold_F`` (pre-encoder bias folded
into ``b_enc``), plus a JSON sidecar with the settings and the SAELens version. It imports nothing from
saescope.

Recipes (SAELens' training docs, "Training JumpReLU SAEs", the DeepMind ``step`` variant, everything
else at the library's defaults -- Adam(0.9, 0.999) at lr 3e-4, constant schedule):

* ``step``: ``l0_coefficient=5.0, jumprelu_bandwidth=0.01, jumprelu_init_threshold=0.01,
  normalize_activations="expected_average_only_in"``;
* ``quadratic``: the same with ``jumprelu_sparsity_loss_mode="quadratic"`` and ``target_l0`` (GS2's
  target-L0 penalty as SAELens implements it).

SAELens estimates its normalisation factor from the first ``min(1000, steps)`` batches of the data
provider; here those are the stream's first batches, after which training starts again from batch 0, so
it trains on exactly the tokens every other system sees.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


def batches(acts: np.ndarray, batch_size: int, n_batches: int) -> Iterator[torch.Tensor]:
    for index in range(n_batches):
        rows = acts[index * batch_size : (index + 1) * batch_size]
        yield torch.from_numpy(np.array(rows, dtype=np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description="train one SAELens JumpReLU SAE on a .npy activation stream")
    parser.add_argument("--acts", type=Path, required=True, help="(tokens, d) float32 .npy, rows in training order")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--target-l0", type=float, required=True)
    parser.add_argument("--mode", choices=("step", "quadratic"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors (a .json sidecar is written too)")
    args = parser.parse_args()

    import sae_lens
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from safetensors.torch import save_file

    acts = np.load(args.acts, mmap_mode="r")
    n_batches = min(args.tokens, acts.shape[0]) // args.batch_size
    torch.manual_seed(args.seed)
    sae_settings = {
        "l0_coefficient": 5.0,
        "jumprelu_bandwidth": 0.01,
        "jumprelu_init_threshold": 0.01,
        "normalize_activations": "expected_average_only_in",
    }
    if args.mode == "quadratic":
        sae_settings.update(jumprelu_sparsity_loss_mode="quadratic", target_l0=args.target_l0)
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=int(acts.shape[1]), d_sae=args.width, **sae_settings))
    norm_batches = min(1000, n_batches)
    trainer_config = SAETrainerConfig(
        total_training_samples=n_batches * args.batch_size,
        train_batch_size_samples=args.batch_size,
        n_batches_for_norm_estimate=norm_batches,
        lr_end=3e-4 / 10,  # what LanguageModelSAERunnerConfig fills in (lr / 10); unused by "constant"
        device="cpu",
    )
    provider = itertools.chain(batches(acts, args.batch_size, norm_batches), batches(acts, args.batch_size, n_batches))
    started = time.perf_counter()
    trained = SAETrainer(trainer_config, sae, data_provider=provider).fit()
    seconds = time.perf_counter() - started

    with torch.no_grad():
        W_enc_DF = trained.W_enc.detach().float()
        b_enc_F = trained.b_enc.detach().float()
        b_dec_D = trained.b_dec.detach().float()
        if trained.cfg.apply_b_dec_to_input:  # fold the pre-encoder bias: (x - b_dec) W + b = x W + (b - b_dec W)
            b_enc_F = b_enc_F - b_dec_D @ W_enc_DF
        tensors = {
            "W_enc_DF": W_enc_DF.contiguous(),
            "b_enc_F": b_enc_F.contiguous(),
            "W_dec_FD": trained.W_dec.detach().float().contiguous(),
            "b_dec_D": b_dec_D.contiguous(),
            "threshold_F": trained.threshold.detach().float().clamp_min(0).contiguous(),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    save_file(tensors, str(partial))
    sidecar = {
        "library": "sae-lens",
        "version": getattr(sae_lens, "__version__", "unknown"),
        "torch": torch.__version__,
        "architecture": "jumprelu",
        "mode": args.mode,
        "sae_settings": sae_settings,
        "trainer_settings": {
            "lr": trainer_config.lr,
            "adam_betas": [trainer_config.adam_beta1, trainer_config.adam_beta2],
            "lr_scheduler": trainer_config.lr_scheduler_name,
            "n_batches_for_norm_estimate": norm_batches,
        },
        "steps": n_batches,
        "tokens": n_batches * args.batch_size,
        "train_seconds": seconds,
    }
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    partial.replace(args.out)  # last: the .safetensors marks the run finished


if __name__ == "__main__":
    main()

"""Worker of benchmarks/train_step.py: runs EleutherAI sparsify's TopK training steps on request, in its own venv.

Protocol, shared weights and peak memory: see ``train_step_worker_protocol.py``. A build makes a
``SparseCoder`` (TopK, ``k`` active latents, unit-norm decoder) from the shared initial parameters
(``encoder.weight`` = W_encᵀ) and the optimiser sparsify's ``Trainer`` builds for ``optimizer="adam"``:
``torch.optim.Adam`` (the 8-bit one only with bitsandbytes, absent here) at sparsify's default learning
rate 2e-4/√(width/2¹⁴), with its linear warm-up schedule. (sparsify's default optimiser is sign-SGD with
schedule-free momentum; Adam is chosen here because saescope and SAELens use it.) A step times what
``Trainer.fit`` does per step and SAE with ``loss_fn="fvu"``: renormalise decoder rows, forward with the
batch variance, fired-latent bookkeeping, backward of the FVU, remove the decoder-parallel gradient,
optimiser and scheduler steps, ``zero_grad``.

Set up once (torch first, so that pip keeps the CPU build)::

    python3 -m venv /tmp/bench_sparsify
    /tmp/bench_sparsify/bin/pip install torch==2.13.0 eai-sparsify
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time

import numpy as np
import torch
from train_step_worker_protocol import Stepper, serve, worker_arguments


def build(x_BD: torch.Tensor, width: int, weights: dict[str, torch.Tensor], args: argparse.Namespace) -> Stepper:
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    d_in = x_BD.shape[1]
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=width, k=args.k), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        sae.encoder.weight.copy_(weights["W_enc"].T)
        sae.encoder.bias.copy_(weights["b_enc"])
        assert sae.W_dec is not None
        sae.W_dec.copy_(weights["W_dec"])
        sae.b_dec.copy_(weights["b_dec"])
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / (width / 2**14) ** 0.5)
    scheduler = get_linear_schedule_with_warmup(optimizer, 1000, 1_000_000)
    did_fire = torch.zeros(width, dtype=torch.bool)

    def step() -> tuple[float, float]:
        started = time.perf_counter()
        sae.set_decoder_norm_to_unit_norm()
        total_variance = (x_BD - x_BD.mean(0)).pow(2).sum()
        out = sae(x=x_BD, y=x_BD, dead_mask=None, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        fvu = float(out.fvu.detach())  # the trainer logs it
        loss = out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        seconds = time.perf_counter() - started
        assert fvu == fvu, "sparsify's loss is NaN"
        return seconds, float((out.latent_acts != 0).float().sum(-1).mean())

    return step


def main() -> None:
    args = worker_arguments("run sparsify TopK training steps on request")
    x_BD = torch.from_numpy(np.load(args.acts)).float().contiguous()
    serve("eai-sparsify", importlib.metadata.version("eai-sparsify"), x_BD,
          lambda width, weights: build(x_BD, width, weights, args))  # fmt: skip


if __name__ == "__main__":
    main()

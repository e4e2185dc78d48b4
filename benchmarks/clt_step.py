"""How a cross-layer transcoder's training step grows with its number of layers (issue: CLT step cost).

Times one whole training step of a JumpReLU CLT (loss, backward, decoder-gradient projection, fused Adam,
decoder renormalisation: what the trainer does) on random data for several layer counts, each block's
thresholds set at the quantile giving the target L0 per layer. Prints the step time, its ratio to ``n`` times
the first count's step per layer (with ``--layers 1,...``: 1.0 = linear growth), L0 per layer and the parameter count::

    .venv/bin/python benchmarks/clt_step.py --layers 1,2,6,12,18
"""

from __future__ import annotations

import argparse
import time

import torch

from saescope.sae import DictionaryConfig, JumpReLU, build_any_dictionary, dictionary_blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="1,2,6,12,18", help="layer counts to time (1,2,6,12,18)")
    parser.add_argument("--d-model", type=int, default=640, help="model width (640, Gemma 3 270M)")
    parser.add_argument("--width", type=int, default=1024, help="latents per layer (1024)")
    parser.add_argument("--batch", type=int, default=1024, help="tokens per step (1024)")
    parser.add_argument("--l0", type=float, default=40.0, help="target L0 per layer (40)")
    parser.add_argument("--repeats", type=int, default=4, help="steps per layer count; the best after the first")
    args = parser.parse_args()
    torch.manual_seed(0)
    B, D, F = args.batch, args.d_model, args.width
    one_layer_step = 0.0  # seconds, from the first layer count (per layer)
    for n in (int(text) for text in args.layers.split(",")):
        config = DictionaryConfig(
            d_in=D, width=F, d_out=D, apply_pre_encoder_bias=False, n_layers=n,
            threshold_parameterisation="raw", lambda_warmup_steps=0,
        )  # fmt: skip
        sae = build_any_dictionary(config)
        x_BX, y_BY = torch.randn(B, n * D), torch.randn(B, n * D)
        with torch.no_grad():
            for block in dictionary_blocks(sae):
                assert isinstance(block, JumpReLU)
                pre_BF = x_BX[:, :D] @ block.W_enc_DF
                theta_F = pre_BF.kthvalue(round(B * (1 - args.l0 / F)), dim=0).values.clamp_min(1e-3)
                block.set_threshold_(theta_F)
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-6, fused=True)
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            out = sae.loss(x_BX, y_BY)
            out.total.backward()  # type: ignore[no-untyped-call]
            sae.project_decoder_grad_()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sae.normalize_decoder_()
            seconds.append(time.perf_counter() - started)
        step = min(seconds[1:] or seconds)
        one_layer_step = one_layer_step or step / n
        params = sum(p.numel() for p in sae.parameters())
        print(
            f"layers {n:2d}: step {step * 1000:7.0f} ms   vs n x 1-layer {step / (n * one_layer_step):5.2f}   "
            f"L0/layer {float(out.l0) / n:5.1f}   parameters {params / 1e6:6.1f}M",
            flush=True,
        )


if __name__ == "__main__":
    main()

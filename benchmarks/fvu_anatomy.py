"""What a plain FVU is made of, for dictionaries that `benchmarks/fidelity.py` trained (a script, not a test).

For one site and target L0 of a fidelity work folder, and each named system, it prints:

* on the evaluation's held-out sample: the plain FVU, each massive dimension's error as a share of its variance, the
  FVU of the other dimensions, and the latents that fire on more than 10% of the tokens (how many, their firing
  rates, the active latents per token they take, and how much of the largest dimension's variance they rebuild);
* the generalisation gap: the plain FVU on the first tokens of the training stream, on as many train-split tokens
  the dictionaries never saw (windows from ``--unseen-from`` on, every fourth), and on the held-out sample; and on
  the same three samples, how many latents fire on more than 10% of the tokens and the highest firing rate.

    python benchmarks/fvu_anatomy.py --out runs/fidelity-global --site mlp --l0 20 \\
        --systems saescope-jumprelu,ablate-no-refit,sparsify-topk

Why: on Gemma 3 270M, one or two dimensions hold most of the variance of the residual stream and the MLP output, so
the plain FVU mostly measures them, and two dictionaries with the same FVU can differ everywhere else.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fidelity  # the sibling script: its cells, work folder layout and loaders

from saescope.data.activations import stream_token_activations
from saescope.data.corpus import corpus_windows
from saescope.data.windows import WindowBatch, special_token_ids, stack_windows
from saescope.eval.evaluate import EvalConfig, heldout_batches
from saescope.eval.metrics import DENSE_THRESHOLDS
from saescope.models.loading import LoadedModel, load_model
from saescope.models.sites import Site
from saescope.sae import SparseDictionary

DENSE_RATE = max(DENSE_THRESHOLDS)  # the evaluation's "dense": fires on more than 10% of tokens


def gather(loaded: LoadedModel, site: Site, batches: Iterator[WindowBatch], tokens: int, label: str) -> torch.Tensor:
    """The first `tokens` activations (N, D) of `site` over `batches`, BOS/EOS/padding dropped, float32."""
    parts, seen = [], 0
    with tqdm(total=tokens, unit="tok", unit_scale=True, desc=f"{label}: {site.id} activations") as bar:
        for acts in stream_token_activations(loaded.model, [site], batches, special_token_ids(loaded.tokenizer)):
            take = min(acts.n_tokens, tokens - seen)
            parts.append(acts.acts[site][:take].float())
            seen += take
            bar.update(take)
            if seen >= tokens:
                break
    return torch.cat(parts)


@torch.no_grad()
def encode(sae: SparseDictionary, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, F) and reconstruction (N, D), in chunks."""
    codes, recon = [], []
    for chunk in torch.split(x_ND, 4096):
        out = sae(chunk)
        codes.append(out.codes)
        recon.append(out.reconstruction)
    return torch.cat(codes), torch.cat(recon)


def fvu(x_ND: torch.Tensor, x_hat_ND: torch.Tensor) -> float:
    x, x_hat = x_ND.double(), x_hat_ND.double()
    return float((x - x_hat).square().sum() / (x - x.mean(0)).square().sum())


@torch.no_grad()
def anatomy(name: str, sae: SparseDictionary, x_ND: torch.Tensor, top_dims: int) -> str:
    codes_NF, x_hat_ND = encode(sae, x_ND)
    x, x_hat = x_ND.double(), x_hat_ND.double()
    variance_D = (x - x.mean(0)).square().sum(0)
    error_D = (x - x_hat).square().sum(0)
    order = variance_D.argsort(descending=True)
    massive, rest = order[:top_dims], order[top_dims:]
    fires_NF = codes_NF > 0
    rate_F = fires_NF.float().mean(0)
    dense = (rate_F > DENSE_RATE).nonzero().squeeze(1)
    largest = int(order[0])
    rebuilt = codes_NF[:, dense].double() @ sae.W_dec_FD[dense, largest].double()
    target = x[:, largest] - x[:, largest].mean()
    share = 1 - float((target - (rebuilt - rebuilt.mean())).var() / target.var()) if len(dense) else 0.0
    errors = ", ".join(f"dim {int(d)} {100 * float(error_D[d] / variance_D[d]):.2f}%" for d in massive)
    rates = f"{100 * float(rate_F[dense].min()):.0f}–{100 * float(rate_F[dense].max()):.0f}%" if len(dense) else "–"
    return (
        f"| {name} | {fvu(x_ND, x_hat_ND):.4f} | {errors} | {float(error_D[rest].sum() / variance_D[rest].sum()):.3f} "
        f"| {len(dense)} ({rates}) | {float(fires_NF[:, dense].sum(1).float().mean()):.1f} of "
        f"{float(fires_NF.sum(1).float().mean()):.1f} | {100 * share:.1f}% |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fidelity-global"), help="fidelity work folder")
    parser.add_argument("--site", default="mlp", help="site kind of the fidelity layer (mlp)")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--l0", type=float, default=20.0, help="target L0 of the cells (20)")
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--systems", default="saescope-jumprelu,sparsify-topk", help="fidelity system names")
    parser.add_argument("--tokens", type=int, default=32_768, help="tokens of each sample (32768: the evaluation's)")
    parser.add_argument("--unseen-from", type=int, default=1024, help="first train-split window never trained on")
    parser.add_argument("--top-dims", type=int, default=2, help="the largest-variance dimensions to single out (2)")
    parser.add_argument("--context-size", type=int, default=256)
    args = parser.parse_args()
    args.window_shuffle_tokens = fidelity.held_window_shuffle(args.out)
    site = Site.parse(f"layer_{args.layer}/{args.site}")
    loaded = load_model("gemma-3-270m")
    corpus = fidelity.corpus_config(args)
    sample = EvalConfig(tokens=args.tokens, loss_windows=16, batch_windows=8)
    heldout = gather(loaded, site, heldout_batches(loaded, corpus, sample, 8), args.tokens, "held-out sample")
    windows = corpus_windows(corpus, loaded.tokenizer, "train")
    unseen_windows = itertools.islice(windows, args.unseen_from, None, 4)
    unseen = gather(loaded, site, stack_windows(unseen_windows, 8), args.tokens, "unseen train-split windows")
    stream = np.load(fidelity.stream_paths(args.out, [site])[site], mmap_mode="r")
    seen = torch.from_numpy(np.array(stream[: args.tokens], dtype=np.float32))
    dictionaries = {
        name: fidelity.load_for_eval(args, fidelity.Cell(site, args.width, args.l0, fidelity.SYSTEMS[name]))
        for name in args.systems.split(",")
    }
    print(f"## {site.id}, width {args.width}, target L0 {args.l0:g}: held-out sample ({len(heldout):,} tokens)\n")
    print("| system | FVU | error / variance of the largest dimensions | FVU of the others | latents on > 10% of "
          "tokens (rates) | their active latents per token, of L0 | largest dimension rebuilt by them |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, sae in dictionaries.items():
        print(anatomy(name, sae.eval(), heldout, args.top_dims))
    print(f"\n## The same dictionaries on training, unseen train-split and held-out tokens (plain FVU, {args.tokens:,} "
          "tokens each)\n")  # fmt: skip
    header = (
        "| system | training stream (first tokens) | unseen train-split windows | held-out sample |\n|---|---|---|---|"
    )
    fvu_rows, dense_rows = [], []
    for name, sae in dictionaries.items():
        fvus, dense = [], []
        for x_ND in (seen, unseen, heldout):
            codes_NF, x_hat_ND = encode(sae, x_ND)
            rate_F = (codes_NF > 0).float().mean(0)
            fvus.append(f"{fvu(x_ND, x_hat_ND):.4f}")
            dense.append(f"{int((rate_F > DENSE_RATE).sum())} ({100 * float(rate_F.max()):.1f}%)")
        fvu_rows.append(f"| {name} | " + " | ".join(fvus) + " |")
        dense_rows.append(f"| {name} | " + " | ".join(dense) + " |")
    print(header, *fvu_rows, sep="\n")
    print("\n## Latents on > 10% of the tokens (the highest firing rate), on the same three samples\n")
    print(header, *dense_rows, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

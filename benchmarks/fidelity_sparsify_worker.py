"""Worker of benchmarks/fidelity.py: trains one EleutherAI sparsify TopK SAE with sparsify's own Trainer, in its venv.

sparsify's ``Trainer`` runs a language model and trains SAEs inside forward hooks; it has no entry point
for stored activations. So this worker hands it a stand-in "model" whose single layer *returns the
cached activations*: a token id is a row number of the training stream ``fidelity.py`` wrote (a float32
``.npy`` of raw activations in the order every system sees them), each "sequence" is one token, and
``batch_size`` sequences make one step of exactly the same tokens as the other systems. Everything else
is sparsify's ``Trainer.fit()`` with its defaults: SignSGD under schedule-free (lr 5e-3/√(M/2¹⁴)), b_dec
set to the first batch's mean, unit-norm decoder with parallel-gradient removal, FVU loss, no AuxK. The
weights sparsify saves at the end (schedule-free's averaged iterate) are written in raw activation space
as ``W_enc_DF, b_enc_F, W_dec_FD, b_dec_D`` (pre-encoder bias folded into ``b_enc``) plus ``k``, with a
JSON sidecar. It imports nothing from saescope.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn


class RowLookup(nn.Module):
    """The "layer" sparsify hooks: token ids in, the stored activation rows out, shape (B, T, d)."""

    def __init__(self, acts: np.ndarray) -> None:
        super().__init__()
        self.acts = acts

    def forward(self, ids_BT: torch.Tensor) -> torch.Tensor:
        rows = np.asarray(self.acts[np.sort(ids_BT.flatten().numpy())], dtype=np.float32)
        order = np.argsort(np.argsort(ids_BT.flatten().numpy()))
        return torch.from_numpy(rows[order]).reshape(*ids_BT.shape, -1)


class StoredActivationsModel(nn.Module):
    """Just enough of a Hugging Face model for sparsify's Trainer: ``base_model.layers.0`` yields the rows."""

    def __init__(self, acts: np.ndarray) -> None:
        super().__init__()
        self.layers = nn.ModuleList([RowLookup(acts)])
        self.config = SimpleNamespace(num_hidden_layers=1)
        self.dummy_inputs = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.layers[0](input_ids))


class RowIds(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Sequence i of the dataset is the single token "i" (row i of the stream)."""

    def __init__(self, n_rows: int) -> None:
        self.n_rows = n_rows

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([index])}


def main() -> None:
    parser = argparse.ArgumentParser(description="train one sparsify TopK SAE on a .npy activation stream")
    parser.add_argument("--acts", type=Path, required=True, help="(tokens, d) float32 .npy, rows in training order")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors (a .json sidecar is written too)")
    args = parser.parse_args()

    from importlib.metadata import version

    from safetensors.torch import save_file
    from sparsify import SaeConfig, SparseCoder, TrainConfig, Trainer

    acts = np.load(args.acts, mmap_mode="r")
    n_rows = (min(args.tokens, acts.shape[0]) // args.batch_size) * args.batch_size
    with tempfile.TemporaryDirectory() as save_dir:
        config = TrainConfig(
            SaeConfig(num_latents=args.width, k=args.k),
            batch_size=args.batch_size,
            hookpoints=["layers.0"],
            init_seeds=[args.seed],
            log_to_wandb=False,
            save_dir=save_dir,
            run_name="run",
            save_every=10**9,
        )
        trainer = Trainer(config, RowIds(n_rows), StoredActivationsModel(acts))  # type: ignore[arg-type]
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        sae = SparseCoder.load_from_disk(Path(save_dir) / "run" / "layers.0")
        learning_rate = float(trainer.optimizers[0].param_groups[0]["lr"])

    with torch.no_grad():
        W_enc_DF = sae.encoder.weight.detach().float().T.contiguous()
        b_dec_D = sae.b_dec.detach().float()
        tensors = {
            "W_enc_DF": W_enc_DF,
            "b_enc_F": (sae.encoder.bias.detach().float() - b_dec_D @ W_enc_DF).contiguous(),
            "W_dec_FD": sae.W_dec.detach().float().contiguous(),
            "b_dec_D": b_dec_D.contiguous(),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    save_file(tensors, str(partial))
    sidecar = {
        "library": "eai-sparsify",
        "version": version("eai-sparsify"),
        "torch": torch.__version__,
        "architecture": "topk",
        "k": args.k,
        "optimizer": config.optimizer,
        "lr": learning_rate,
        "steps": n_rows // args.batch_size,
        "tokens": n_rows,
        "train_seconds": seconds,
    }
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1))
    partial.replace(args.out)  # last: the .safetensors marks the run finished


if __name__ == "__main__":
    main()

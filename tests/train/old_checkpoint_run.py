"""The tiny runs whose checkpoints, as written by saescope before the recipe elements moved into
`saescope.train.elements`, are checked in under ``tests/train/data/checkpoints-before-elements/``.

Regenerate them (only if the layout is meant to change) from a checkout of that older code with
``PYTHONPATH=<old checkout>/src python tests/train/old_checkpoint_run.py``: every name used here exists there.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from saescope.data.arrays import ArrayActivations
from saescope.models.sites import Site, SiteKind
from saescope.sae import DictionaryConfig
from saescope.train import SAESpec, TrainConfig, Trainer

DATA = Path(__file__).parent / "data" / "checkpoints-before-elements"
#: The step the checked-in checkpoints were written at, of `TOTAL_STEPS`.
KILLED_AT, TOTAL_STEPS, BATCH = 8, 12, 64
RES, MLP_IN, MLP = Site(0, SiteKind.RES), Site(0, SiteKind.MLP_IN), Site(0, SiteKind.MLP)
D, WIDTH = 8, 16
#: Every element switched on, or none.
SETTINGS = {
    "all-elements": dict(
        dimension_gain_power=0.5, plain_error_share=0.25, code_scale_init=True, linear_map_decoder_init=True,
        threshold_controller_gain=0.1, revive_dead_after_tokens=128, max_firing_rate=0.2, decoder_refit_tokens=256,
    ),
    "no-elements": {},
}  # fmt: skip


def old_checkpoint_trainer(settings: str, out_dir: Path) -> Trainer:
    """A trainer of an SAE and a transcoder on fixed random data, with the elements of ``SETTINGS[settings]``."""
    generator = torch.Generator().manual_seed(11)
    x_ND = torch.randn(40 * BATCH, D, generator=generator) * torch.linspace(0.2, 3.0, D) + 1.0
    y_ND = torch.tanh(x_ND @ torch.randn(D, D, generator=generator))
    source = ArrayActivations({RES: x_ND, MLP_IN: x_ND, MLP: y_ND})
    dictionary = DictionaryConfig(d_in=D, width=WIDTH, threshold_parameterisation="raw", lambda_warmup_steps=0)
    transcoder = dictionary.replace(apply_pre_encoder_bias=False)
    specs = [
        SAESpec("sae", RES, dictionary, lr=3e-3, target_l0=4.0, decoder_bias_init="mean"),
        SAESpec("tc", MLP_IN, transcoder, lr=3e-3, target_l0=4.0, site_out=MLP, decoder_bias_init="mean"),
    ]
    config = TrainConfig(
        total_tokens=TOTAL_STEPS * BATCH, batch_size=BATCH, checkpoint_every_steps=4, log_every_steps=4, seed=5,
        progress=False, **SETTINGS[settings],  # type: ignore[arg-type]
    )  # fmt: skip
    return Trainer(specs, source, config, out_dir)


def write_old_checkpoints() -> None:
    """Each setting's checkpoint at step `KILLED_AT` (with its checksum), and the final weights of the same run
    trained straight through (``final-<name>.safetensors``)."""
    with tempfile.TemporaryDirectory() as scratch:
        for name in SETTINGS:
            killed, straight = Path(scratch) / name / "killed", Path(scratch) / name / "straight"
            old_checkpoint_trainer(name, killed).run(max_steps=KILLED_AT)
            old_checkpoint_trainer(name, straight).run()
            (DATA / name).mkdir(parents=True, exist_ok=True)
            for file in ("checkpoint.pt", "checkpoint.pt.sha256"):
                shutil.copyfile(killed / file, DATA / name / file)
            for folder in (straight / "saes").iterdir():
                shutil.copyfile(folder / "sae.safetensors", DATA / name / f"final-{folder.name}.safetensors")


if __name__ == "__main__":
    write_old_checkpoints()
    sys.exit(0)

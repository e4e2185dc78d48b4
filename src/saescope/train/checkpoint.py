"""A training run's checkpoint: weights, optimiser and controller states, dead-latent counters, the recipe
elements' states, the data position and the RNG state, written atomically with its SHA-256 beside it.

The layout is a dict: ``identity`` (settings and specs, which a resume must match), ``step``, ``tokens_seen``,
``epoch``, ``batch_in_epoch``, ``norm_scales`` (site id → C), one entry per recipe element that keeps state
(under its `checkpoint_key`), ``members`` (name → sae, optimizer, controller, tokens_since_fired, last) and
``torch_rng``. A resumed run gives bit-identical weights to an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saescope.atomic import CorruptFileError, verify_checksum
from saescope.dictionaries.folder import DICTIONARY_CONFIG_SCHEMA
from saescope.models.sites import Site
from saescope.train.settings import TRAIN_CONFIG_SCHEMA

if TYPE_CHECKING:
    from saescope.train.trainer import Trainer

CHECKPOINT = "checkpoint.pt"


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """Everything a resume needs of the run, as `torch.save` writes it."""
    elements = {e.checkpoint_key: e.state_dict() for e in trainer.elements if e.checkpoint_key is not None}
    return {
        "identity": trainer.identity(),
        "step": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "epoch": trainer.epoch,
        "batch_in_epoch": trainer.batch_in_epoch,
        "norm_scales": {site.id: scale for site, scale in trainer.norm_scales.items()},
        **elements,
        "members": {
            m.spec.name: {
                "sae": m.sae.state_dict(),
                "optimizer": m.optimizer.state_dict(),
                "controller": m.controller.log_scale if m.controller else None,
                "tokens_since_fired": m.tokens_since_fired_F,
                "last": m.last,
            }
            for m in trainer.members
        },
        "torch_rng": torch.get_rng_state(),
    }


def read_checkpoint(path: Path, device: str, *, start_over: str) -> dict[str, Any]:
    """The state in `path`, checked against its recorded checksum; `CorruptFileError` naming the file and
    saying how to start over (`start_over`) when it is corrupted or unreadable."""
    verify_checksum(path, start_over)
    try:
        state = torch.load(path, weights_only=False, map_location=device)
    except Exception as error:  # a damaged file fails in torch's zip, pickle or storage readers alike
        raise CorruptFileError(
            f"{path} is unreadable: it is truncated or not a saescope checkpoint ({error}). {start_over}"
        ) from error
    if not isinstance(state, dict) or "identity" not in state:
        raise CorruptFileError(f"{path} is not a saescope training checkpoint. {start_over}")
    return state


def restore_checkpoint(trainer: Trainer, state: dict[str, Any], path: Path) -> None:
    """Put the run back where `state` left it (ValueError when `state` was written by other settings).

    An element whose key the checkpoint lacks keeps its fresh state (a checkpoint written before the element
    existed)."""
    if _recorded_identity(state["identity"], path) != trainer.identity():
        raise ValueError(f"{path} was written by a run with other settings; use another output folder or delete it")
    trainer.step, trainer.tokens_seen = state["step"], state["tokens_seen"]
    trainer.epoch, trainer.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
    trainer.norm_scales = {Site.parse(site_id): scale for site_id, scale in state["norm_scales"].items()}
    for element in trainer.elements:
        if element.checkpoint_key is not None and element.checkpoint_key in state:
            element.load_state_dict(state[element.checkpoint_key])
    for member in trainer.members:
        saved = state["members"][member.spec.name]
        member.sae.load_state_dict(saved["sae"])
        member.optimizer.load_state_dict(saved["optimizer"])
        if member.controller is not None:
            member.controller.log_scale = saved["controller"]
        member.tokens_since_fired_F = saved["tokens_since_fired"]
        member.last = dict(saved.get("last", {}))  # a run resumed at its last step still saves its final metrics
    torch.set_rng_state(state["torch_rng"].cpu())


def current_identity(identity: dict[str, Any], *, origin: str) -> dict[str, Any]:
    """A checkpoint's ``identity`` (its training settings and specs) as today's saescope writes it: each record
    migrated to its current version, so that a checkpoint of an older saescope resumes when its settings are
    the same (``origin`` names the checkpoint in errors)."""
    return {
        "config": TRAIN_CONFIG_SCHEMA.migrate(identity["config"], origin=f"{origin}, identity.config"),
        "specs": [
            DICTIONARY_CONFIG_SCHEMA.migrate(spec, origin=f"{origin}, identity.specs[{i}]")
            for i, spec in enumerate(identity["specs"])
        ],
    }


def _recorded_identity(identity: Any, path: Path) -> dict[str, Any] | None:
    """`current_identity` of a checkpoint's identity; None when it is not one (no run of these settings wrote it)."""
    try:
        return current_identity(identity, origin=str(path))
    except (KeyError, TypeError, AttributeError):
        return None


def start_over_hint(path: Path) -> str:
    """What to do about an unusable checkpoint, without deleting anything."""
    return (
        f"To start this training over from step 0, move it aside (for example `mv {path} {path}.unusable`) and "
        "rerun the same command, or train into a new output folder."
    )

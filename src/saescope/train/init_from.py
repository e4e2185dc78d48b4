"""Start training from a trained dictionary (PT→IT finetuning, method §7.6): a parent's weights mapped into
this run's training space.

Gemma Scope 2 initialised the SAEs of each instruction-tuned model from the pretrained model's SAEs and
finetuned them on rollouts. A parent is a raw-space dictionary, with the normalisation scale and the
pre-encoder bias folded in (method §2.7): a saescope dictionary folder, which the trainer reads here
(:func:`read_parent`), or any dictionary the caller loaded, for example with :func:`saescope.release.load_sae`
(a Gemma Scope 1/2 or SAELens folder, a Hub id), and handed to the trainer. Reading the release formats is the
release stage's job, above training, so training never imports it. The trainer trains on ``x_raw / C``,
C being *this run's* scale of the site (estimated on the new activations), so the parent is unfolded with
that C -- the inverse of :meth:`~saescope.sae.SparseDictionary.fold_normalisation`::

    W_enc = W_enc'    W_dec = W_dec'    b_dec = b_dec' / C    b_enc = b_enc' / C + b_dec @ W_enc    θ = θ' / C

The unfolded dictionary computes exactly the parent's function (codes C× smaller, as in any training space),
so the first step's loss is the parent's loss on that batch. Why the new run's C rather than the parent's:
both give the same function, but the optimiser works in the normalised space, and ε (the STE bandwidth), λ
and the learning rate are set for activations with E‖x‖² = 1 (method §2.2). IT activations have other norms
than PT ones, so only the new C keeps those settings calibrated on the new data (and an official release
does not record its C at all).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from saescope.dictionaries.folder import is_dictionary_folder, read_trained_sae
from saescope.sae import BatchTopK, JumpReLU, SparseDictionary, single_layer


def _check_compatible(sae: SparseDictionary, parent: SparseDictionary, where: str) -> None:
    mine, theirs = sae.config, parent.config
    fields = ("architecture", "width", "d_in", "d_target", "skip")
    differences = [f"{f} {getattr(theirs, f)!r} vs {getattr(mine, f)!r}" for f in fields
                   if getattr(theirs, f) != getattr(mine, f)]  # fmt: skip
    if differences:
        raise ValueError(f"{where} does not match the dictionary to train ({'; '.join(differences)})")


@torch.no_grad()
def unfold_into_(sae: SparseDictionary, parent: SparseDictionary, scale: float, where: str = "the parent") -> None:
    """Set ``sae`` (training space, inputs divided by ``scale``) to compute ``parent``'s raw-space function:
    ``sae(x_raw / scale)`` reconstructs ``parent(x_raw) / scale`` with codes ``parent``'s codes / ``scale``."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"the normalisation scale must be a finite number > 0; got {scale!r}")
    _check_compatible(sae, parent, where)
    W_enc_DF = parent.W_enc_DF.double()
    b_enc_raw_F = parent.b_enc_F.double()
    if parent.config.apply_pre_encoder_bias:  # a parent that still subtracts b_dec before encoding
        b_enc_raw_F = b_enc_raw_F - parent.b_dec_D.double() @ W_enc_DF
    b_dec_D = parent.b_dec_D.double() / scale
    b_enc_F = b_enc_raw_F / scale
    if sae.config.apply_pre_encoder_bias:  # training subtracts b_dec first: add back what it removes
        b_enc_F = b_enc_F + b_dec_D @ W_enc_DF
    sae.W_enc_DF.copy_(W_enc_DF)
    sae.W_dec_FD.copy_(parent.W_dec_FD)
    sae.b_dec_D.copy_(b_dec_D)
    sae.b_enc_F.copy_(b_enc_F)
    if sae.W_skip_DD is not None and parent.W_skip_DD is not None:
        sae.W_skip_DD.copy_(parent.W_skip_DD)
    if isinstance(sae, JumpReLU) and isinstance(parent, JumpReLU):
        sae.set_threshold_(parent.threshold_F.detach().double() / scale)
    if isinstance(sae, BatchTopK) and isinstance(parent, BatchTopK) and parent.threshold_is_set:
        sae.inference_threshold.copy_(parent.inference_threshold / scale)


def transcoder_parent_error(parent: str) -> ValueError:
    """The error for a parent that writes another site than it reads: the trainer continues SAEs only."""
    return ValueError(f"{parent}: init_from continues SAEs (the trainer reconstructs the input); this is a transcoder")


def read_parent(parent: str) -> SparseDictionary:
    """The raw-space dictionary of the saescope dictionary folder ``parent`` (or of the folder of a file in it)."""
    folder = Path(parent)
    if folder.is_file():
        folder = folder.parent
    if not is_dictionary_folder(folder):
        raise ValueError(
            f"{parent}: not a saescope dictionary folder (sae.safetensors + config.json), which is what the trainer "
            "reads by itself. Load a parent in a release format with saescope.release.load_sae(path) and pass its "
            "dictionary to the trainer as parents={path: loaded.sae}"
        )
    entry = read_trained_sae(folder)
    if entry.is_transcoder:
        raise transcoder_parent_error(parent)
    return single_layer(entry.raw_space(), f"init_from ({parent})")

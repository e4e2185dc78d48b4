"""Delta LM loss: next-token cross-entropy with a site replaced by a dictionary's reconstruction (method §4.2).

The model body is run to its final hidden states (after the final norm) and the LM head is applied in
chunks of positions (:mod:`saescope.models.predictions`), so the positions × vocabulary logits never exist at
once. The clean pass is shared by every dictionary and the zero-ablation pass by every dictionary of a site.
Special positions (BOS, EOS, pad) are neither spliced nor counted: a prediction counts when both its
input token and its target token are ordinary tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import torch
from torch import nn

from saescope.models.hooks import Tap, taps
from saescope.models.predictions import (
    DEFAULT_CHUNK,
    Predictions,
    chunked_predictions,
    final_hidden,
    kl_to_clean,
)
from saescope.models.sites import Site
from saescope.sae import AnyDictionary, dictionary_blocks, layer_output


@torch.no_grad()
def spliced_losses(
    model: nn.Module,
    ids_BT: torch.Tensor,
    keep_BT: torch.Tensor,
    site: Site,
    replace: Callable[[torch.Tensor], torch.Tensor],
    predictions: Predictions,
    clean_log_probs_NV: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy (N,) with `site` replaced by `replace(x)` at kept positions, and KL(clean ‖ spliced)
    (N,) when the clean log-probabilities are given."""
    keep_BT1 = keep_BT.unsqueeze(-1).to(ids_BT.device)

    def masked(x_BTD: torch.Tensor) -> torch.Tensor:
        return torch.where(keep_BT1, replace(x_BTD).to(x_BTD.dtype), x_BTD)

    return tapped_losses(model, ids_BT, {site: masked}, predictions, clean_log_probs_NV, chunk)


@torch.no_grad()
def tapped_losses(
    model: nn.Module,
    ids_BT: torch.Tensor,
    site_taps: Mapping[Site, Tap],
    predictions: Predictions,
    clean_log_probs_NV: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy (N,) of a forward with `site_taps` installed (they choose what to replace where), and
    KL(clean ‖ spliced) (N,) when the clean log-probabilities are given."""
    with taps(model, site_taps):
        h_ND = final_hidden(model, ids_BT)[predictions.rows_B, predictions.cols_T]
    ce_parts, kl_parts = [], []
    for rows, log_probs, ce in chunked_predictions(model, h_ND, predictions, chunk):
        ce_parts.append(ce)
        if clean_log_probs_NV is not None:
            kl_parts.append(kl_to_clean(clean_log_probs_NV[rows], log_probs))
    if not ce_parts:  # no countable prediction in this batch
        empty = h_ND.new_zeros(0, dtype=torch.float32)
        return empty, (empty if clean_log_probs_NV is not None else None)
    return torch.cat(ce_parts), (torch.cat(kl_parts) if clean_log_probs_NV is not None else None)


def dictionary_taps(
    sae: AnyDictionary,
    input_sites: Sequence[Site],
    output_sites: Sequence[Site],
    replaced: Collection[int],
    keep_BT: torch.Tensor,
) -> dict[Site, Tap]:
    """Taps that splice a dictionary into a forward: each input site's activation is encoded as the forward
    passes it; each output site whose index is in `replaced` becomes the dictionary's output there (at kept
    positions), computed from the codes of the inputs seen so far.

    An SAE is one site both read and replaced; a transcoder reads ``mlp_in`` and replaces ``mlp`` of its
    layer; a CLT or crosscoder with one output replaced is its per-layer splice (earlier layers clean), and
    with every output replaced the *replacement model* (each layer's input already carries the replaced
    outputs of the layers before it; errors are not patched). Fresh state per call: one call per forward.
    """
    if len(input_sites) != len(output_sites):
        raise ValueError(f"{len(input_sites)} input sites but {len(output_sites)} output sites")
    blocks = dictionary_blocks(sae)
    keep_BT1 = keep_BT.unsqueeze(-1)
    inputs: dict[int, torch.Tensor] = {}
    codes: dict[int, torch.Tensor] = {}

    def tap_for(site: Site) -> Tap:
        reads = [i for i, s in enumerate(input_sites) if s == site]
        writes = [j for j, s in enumerate(output_sites) if s == site and j in replaced]

        def tap(x_BTD: torch.Tensor) -> torch.Tensor | None:
            for i in reads:
                inputs[i] = x_BTD.float()
                codes[i] = blocks[i].encode(inputs[i])
            if not writes:
                return None
            (j,) = writes
            missing = [i for i in range(j + 1) if i not in codes]
            if missing:
                raise RuntimeError(f"the forward reached {site} before the dictionary's inputs {missing}")
            y = layer_output(sae, j, [codes[i] for i in range(j + 1)], inputs[j])
            return torch.where(keep_BT1.to(x_BTD.device), y.to(x_BTD.dtype), x_BTD)

        return tap

    return {site: tap_for(site) for site in dict.fromkeys([*input_sites, *output_sites])}

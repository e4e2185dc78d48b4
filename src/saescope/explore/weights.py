"""What a latent's weights say, without data: its logit effects, its nearest latents by decoder cosine, and how
strongly it writes each site it writes.

**Logit effects** (as in SAEDashboard and Neuronpedia): the latent's decoder direction, written into the
residual stream, times the unembedding. An ``att`` dictionary writes the concatenated head outputs, so its
directions go through the attention out-projection first (method §3.1); every other site is already in the
residual stream. The unembedding includes the final norm's per-dimension gain (as TransformerLens' folded
``W_U`` does), but not its division by the RMS, which is a positive per-token factor that does not change
which tokens a direction promotes. Computed ``latent_chunk`` latents at a time: the full latents × vocabulary
matrix (17 GB for 16k latents and Gemma's 262k tokens) never exists.

**Neighbours**: the latents whose decoder directions have the largest cosine with a latent's, among every
dictionary that writes the same site (several widths at one site are compared with each other).

**Write norms**: the L2 norm of a latent's decoder row at every site it writes. An SAE or transcoder writes one
site; a block of a cross-layer transcoder writes its own layer and every later one, and how its (jointly
constrained) decoder norm is split among them says which layers the latent serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from saescope.models.sites import Site, SiteKind, architecture_of, decoder_layers


@dataclass(frozen=True)
class LogitEffects:
    """Top and bottom ``k`` tokens of each latent's logit effect: (F, k) token ids and values."""

    top_ids_Fk: torch.Tensor
    top_values_Fk: torch.Tensor
    bottom_ids_Fk: torch.Tensor
    bottom_values_Fk: torch.Tensor


def _final_norm(model: nn.Module) -> nn.Module | None:
    body = cast(nn.Module, model.base_model)
    for name in ("norm", "final_layernorm", "final_layer_norm", "ln_f"):
        module = getattr(body, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


@torch.no_grad()
def final_norm_gain(model: nn.Module) -> torch.Tensor | None:
    """The per-dimension gain of the model's final norm, (D,) float32, or None when it has none we can find.

    Read off the module's behaviour rather than its parameters, so every convention works (Gemma's
    ``1 + weight``, Llama's ``weight``, GPT-2's LayerNorm): a norm maps the basis vector e_j to
    ``gain_j · c`` on coordinate j (c = sqrt(D) for RMSNorm, sqrt(D - 1) for LayerNorm, up to its epsilon),
    plus its bias, which the norm of the zero vector gives.
    """
    norm = _final_norm(model)
    if norm is None:
        return None
    weight = next(model.parameters())
    D = int(_output_embedding(model).shape[1])
    basis_DD = torch.eye(D, dtype=weight.dtype, device=weight.device)
    try:
        out_DD = norm(basis_DD).float() - norm(torch.zeros_like(basis_DD[:1])).float()
    except Exception:  # an unusual norm module: fall back to the plain unembedding
        return None
    diagonal_D = out_DD.diagonal()
    factor = (D - 1) ** 0.5 if isinstance(norm, nn.LayerNorm) else D**0.5
    gain_D: torch.Tensor = (diagonal_D / factor).float()
    return gain_D


def _output_embedding(model: nn.Module) -> torch.Tensor:
    get_head = cast(Callable[[], nn.Module], model.get_output_embeddings)
    weight = get_head().weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


def unembedding(model: nn.Module) -> torch.Tensor:
    """(V, D) unembedding with the final norm's gain folded in (see :func:`final_norm_gain`)."""
    W_U_VD = _output_embedding(model)
    gain_D = final_norm_gain(model)
    return W_U_VD if gain_D is None else W_U_VD * gain_D.to(W_U_VD.dtype)


@torch.no_grad()
def residual_directions(model: nn.Module, site: Site, directions_FD: torch.Tensor) -> torch.Tensor:
    """Decoder directions written at ``site``, as residual-stream directions (F, d_model)."""
    if site.kind is not SiteKind.ATT:
        return directions_FD
    out_proj = decoder_layers(model)[site.layer].get_submodule(architecture_of(model).attn_out_proj)
    weight = next(out_proj.parameters())
    x_FD = directions_FD.to(weight.dtype)
    # The projection's bias is not part of a direction: subtract the image of zero.
    projected: torch.Tensor = out_proj(x_FD) - out_proj(torch.zeros_like(x_FD[:1]))
    return projected


@torch.no_grad()
def logit_effects(
    directions_FD: torch.Tensor, W_U_VD: torch.Tensor, k: int, *, latent_chunk: int = 128
) -> LogitEffects:
    """Top-k and bottom-k of ``directions @ W_Uᵀ`` per row, in float32, ``latent_chunk`` rows at a time.

    (A bfloat16 screen with a proven error bound was tried: the worst-case bound is too loose on Gemma's
    unembedding to prove most rows, so the exact float32 product stays.)
    """
    k = min(k, int(W_U_VD.shape[0]))
    parts: list[tuple[torch.Tensor, ...]] = []
    W_U = W_U_VD.float()
    for start in range(0, directions_FD.shape[0], latent_chunk):
        logits_cV = directions_FD[start : start + latent_chunk].to(W_U.device).float() @ W_U.T
        top = logits_cV.topk(k, dim=1)
        bottom = logits_cV.topk(k, dim=1, largest=False)
        parts.append((top.indices.cpu(), top.values.cpu(), bottom.indices.cpu(), bottom.values.cpu()))
    columns = [torch.cat([part[i] for part in parts]) for i in range(4)]
    return LogitEffects(*columns)


@dataclass(frozen=True)
class Neighbours:
    """For each latent of one dictionary: its k nearest latents by decoder cosine, anywhere in its group."""

    owners_Fk: torch.Tensor  # index of the neighbour's dictionary in the group
    latents_Fk: torch.Tensor
    cosines_Fk: torch.Tensor


@torch.no_grad()
def decoder_neighbours(decoders: Sequence[torch.Tensor], k: int, *, chunk: int = 1024) -> list[Neighbours]:
    """Nearest latents by decoder cosine among dictionaries writing the same space (each latent excluded
    from its own list). ``decoders`` are the (F_i, D) decoder matrices of the group."""
    units = [W / W.norm(dim=1, keepdim=True).clamp_min(1e-12) for W in (d.float() for d in decoders)]
    all_FD = torch.cat(units)
    owners = torch.cat([torch.full((len(u),), i, dtype=torch.long) for i, u in enumerate(units)])
    latents = torch.cat([torch.arange(len(u)) for u in units])
    k = min(k, len(all_FD) - 1)
    results = []
    start_of_owner = 0
    for unit_FD in units:
        owner_parts, latent_parts, cosine_parts = [], [], []
        for start in range(0, len(unit_FD), chunk):
            cosines = unit_FD[start : start + chunk] @ all_FD.T
            own_rows = torch.arange(start, min(start + chunk, len(unit_FD)))
            cosines[own_rows - start, own_rows + start_of_owner] = -float("inf")  # not its own neighbour
            values, columns = cosines.topk(k, dim=1)
            owner_parts.append(owners[columns])
            latent_parts.append(latents[columns])
            cosine_parts.append(values)
        results.append(Neighbours(torch.cat(owner_parts), torch.cat(latent_parts), torch.cat(cosine_parts)))
        start_of_owner += len(unit_FD)
    return results


@torch.no_grad()
def write_norms(decoders: Sequence[torch.Tensor], *, chunk: int = 4096) -> torch.Tensor:
    """(F, S) float32 norms of every latent's decoder row in each of the S decoders (F, d_out) it writes with.

    Computed ``chunk`` rows at a time, so a wide bfloat16 decoder is never copied to float32 whole."""
    columns = []
    for W_FD in decoders:
        parts = [
            torch.linalg.vector_norm(W_FD[start : start + chunk], dim=1, dtype=torch.float32).cpu()
            for start in range(0, W_FD.shape[0], chunk)
        ]
        columns.append(torch.cat(parts))
    return torch.stack(columns, dim=1)

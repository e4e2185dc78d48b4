"""Read or replace site activations during a model forward: capture and splice.

Both are built on one mechanism, a *tap*: a function called with a site's activation tensor
(batch × positions × width) that may return a replacement. Capture taps store the tensor and stop
the forward right after the deepest requested layer, so neither the later layers nor the LM head
(262k-wide for Gemma 3) are computed. Splice taps return a function of the activation, for delta
LM loss and steering.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from saescope.models.sites import Site, decoder_layers, hook_module

#: Called with a site's activation (B, T, d); returns a replacement of the same shape, or None to keep it.
Tap = Callable[[torch.Tensor], torch.Tensor | None]


class _StopForwardSignal(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by a hook to end a forward pass early once every requested site is captured."""


def _checked_replacement(site: Site, original: torch.Tensor, replacement: torch.Tensor | None) -> torch.Tensor | None:
    if replacement is not None and replacement.shape != original.shape:
        raise ValueError(
            f"splice function for {site} returned shape {tuple(replacement.shape)}, expected {tuple(original.shape)}"
        )
    return replacement


def _register_tap(model: nn.Module, site: Site, tap: Tap) -> RemovableHandle:
    module, point = hook_module(model, site)
    if point.io == "output":

        def output_hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            is_tuple = isinstance(output, tuple)
            value = output[0] if is_tuple else output
            replacement = _checked_replacement(site, value, tap(value))
            if replacement is None:
                return None
            return (replacement, *output[1:]) if is_tuple else replacement

        return module.register_forward_hook(output_hook)

    def input_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # Decoder layers receive hidden_states positionally in transformers; accept the keyword too.
        value = args[0] if args else kwargs["hidden_states"]
        replacement = _checked_replacement(site, value, tap(value))
        if replacement is None:
            return None
        if args:
            return (replacement, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replacement}

    return module.register_forward_pre_hook(input_hook, with_kwargs=True)


@contextlib.contextmanager
def taps(model: nn.Module, site_taps: Mapping[Site, Tap]) -> Iterator[None]:
    """Install taps for the duration of a `with` block; they are removed even on error."""
    handles = [_register_tap(model, site, tap) for site, tap in site_taps.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture(
    model: nn.Module,
    sites: Sequence[Site],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    stop_early: bool = True,
) -> dict[Site, torch.Tensor]:
    """Run one forward and return every requested site's activations, each (B, T, width).

    With `stop_early` the forward ends right after the deepest requested layer. Gradients are not
    tracked; tensors keep the model's dtype and device.
    """
    if not sites:
        raise ValueError("capture needs at least one site")
    captured: dict[Site, torch.Tensor] = {}

    def storing_tap(site: Site) -> Tap:
        def store(value: torch.Tensor) -> None:
            captured[site] = value.detach()

        return store

    deepest_layer = decoder_layers(model)[max(site.layer for site in sites)]

    def stop(_module: nn.Module, _args: Any, _output: Any) -> None:
        raise _StopForwardSignal

    with torch.no_grad(), taps(model, {site: storing_tap(site) for site in sites}):
        # Registered after the taps, so the deepest layer's own output tap has already run.
        stop_handle = deepest_layer.register_forward_hook(stop) if stop_early else None
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForwardSignal:
            pass
        finally:
            if stop_handle is not None:
                stop_handle.remove()
    missing = [str(site) for site in sites if site not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached sites {missing}")
    return captured


@contextlib.contextmanager
def splice(model: nn.Module, replacements: Mapping[Site, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Within the block, every forward replaces each site's activation x (B, T, d) by `fn(x)`.

    To leave some positions untouched (BOS, padding), the function itself selects, e.g.
    `lambda x: torch.where(mask_BT1, sae(x), x)`.
    """
    with taps(model, dict(replacements)):
        yield

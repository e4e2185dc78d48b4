"""Build the feature index of a suite: one streaming pass over held-out windows for every dictionary at once.

1. **The pass.** Held-out token windows (:func:`saescope.data.corpus.corpus_windows`) go through the model
   once per batch, capturing every site the suite reads (:func:`saescope.data.activations.
   stream_token_activations`, which drops BOS/EOS/pad positions, so they are never examples). Every
   dictionary encodes its site; a :class:`~saescope.explore.statistics.StatisticsAccumulator` per dictionary
   keeps, per latent, the firing count, maximum, top-k examples with their context activations, the
   activation histogram and uniform samples from explicit activation intervals.
2. **The weights.** Logit effects (top/bottom tokens of each decoder direction through the unembedding; via
   the attention out-projection for ``att`` dictionaries), decoder-cosine neighbours, and the decoder-row norm
   at every site a latent writes (one for an SAE; its own and every later layer for a CLT block)
   (:mod:`saescope.explore.weights`).
3. **The file.** Everything goes into one SQLite file (:mod:`saescope.explore.store`), written atomically.
   A dictionary folder that ships its own top examples (a Gemma Scope 2 ``examples.safetensors``) adds them
   too, shown next to the pass's (:mod:`saescope.explore.shipped`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import statistics as pystatistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import saescope
from saescope.checks import check_at_least, check_unique_names
from saescope.data.activations import heldout_token_budget, stream_token_activations
from saescope.data.corpus import CorpusConfig, corpus_windows
from saescope.data.windows import WindowBatch, special_token_ids, spread_windows, stack_windows, windows_for_tokens
from saescope.explore import store
from saescope.explore.shipped import read_shipped, shipped_example_rows
from saescope.explore.sources import Dictionary, safe_name
from saescope.explore.statistics import ExampleSettings, LatentStatistics, StatisticsAccumulator
from saescope.explore.store import short_float
from saescope.explore.weights import (
    LogitEffects,
    Neighbours,
    decoder_neighbours,
    final_norm_gain,
    logit_effects,
    residual_directions,
    unembedding,
    write_norms,
)
from saescope.models.loading import LoadedModel
from saescope.models.sites import site_widths
from saescope.release.examples import EXAMPLES_FILE, ReleaseExamples

log = logging.getLogger(__name__)

#: Held-out tokens of the default index: one model pass over them, every dictionary encoding each token.
DEFAULT_TOKENS = 49_152
SPECIAL_POLICY = "BOS, EOS, padding and every other special token are never indexed nor chosen as examples"
#: log10(density) bins of the per-dictionary density histogram.
_LOG_DENSITY_START, _LOG_DENSITY_STEP, _LOG_DENSITY_BINS = -7.0, 0.25, 28


@dataclass(frozen=True)
class IndexConfig:
    """What one index pass computes; every field is recorded in the index (``meta.settings``)."""

    tokens: int = DEFAULT_TOKENS
    batch_windows: int = 8
    examples: ExampleSettings = field(default_factory=ExampleSettings)
    logit_tokens: int = 10
    neighbours: int = 10
    latent_chunk: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_at_least(self, ("tokens", "batch_windows", "logit_tokens", "latent_chunk"), 1, owner="IndexConfig.")
        check_at_least(self, ("neighbours",), 0, owner="IndexConfig.")

    def settings(self) -> dict[str, Any]:
        """The flat settings dict stored in the index and compared to decide whether it can be reused."""
        values = {k: v for k, v in asdict(self).items() if k != "examples"}
        return {**values, **asdict(self.examples)}


@dataclass(frozen=True)
class IndexSummary:
    path: Path
    n_tokens: int
    n_windows: int
    dictionaries: int
    latents: int
    dead: int
    seconds: dict[str, float]
    bytes: int
    kept_explanations: int = 0
    """Explanations (and below, detection scores) of unchanged dictionaries kept from the index this replaced."""
    kept_detection_scores: int = 0


def recorded_model_name(name: str) -> str:
    """How an index records its model: a local folder as an absolute path, so `saescope serve` finds it from
    anywhere; a model name or Hub id as given."""
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def stored_settings(path: Path) -> dict[str, Any] | None:
    """The settings, corpus and dictionary names an existing index was built with (None if none is readable)."""
    try:
        reader = store.IndexReader(path)
    except store.FeatureIndexError:
        return None
    return {
        "settings": reader.meta.get("settings"),
        "corpus": reader.meta.get("corpus"),
        "dictionaries": [sae.name for sae in reader.saes],
    }


def _check_widths(loaded: LoadedModel, dictionaries: Sequence[Dictionary]) -> None:
    widths = site_widths(loaded.model, sorted({d.site for d in dictionaries} | {d.site_out for d in dictionaries}))
    for d in dictionaries:
        config = d.sae.config
        if config.d_in != widths[d.site] or config.d_target != widths[d.site_out]:
            raise ValueError(
                f"dictionary {d.name} reads width {config.d_in} at {d.site}, but {loaded.info.name} has width "
                f"{widths[d.site]} there: index it with the model it was trained on (--model)"
            )


def _check_shipped_tokens(
    loaded: LoadedModel, dictionaries: Sequence[Dictionary], shipped: Sequence[ReleaseExamples | None]
) -> None:
    vocab = loaded.info.vocab_size
    for d, examples in zip(dictionaries, shipped, strict=True):
        if examples is not None and examples.tokens_SL.size and int(examples.tokens_SL.max()) >= vocab:
            raise ValueError(
                f"{d.folder / EXAMPLES_FILE} holds token ids up to {int(examples.tokens_SL.max())}, but "
                f"{loaded.info.name} has {vocab} tokens: index it with the model it was made for (--model)"
            )


class _RecordedWindows:
    """The (T,) token windows of the pass, kept as they stream by (4 bytes per token)."""

    def __init__(self) -> None:
        self.windows: list[torch.Tensor] = []

    def batches(self, corpus: CorpusConfig, tokenizer: Any, tokens: int, batch_windows: int) -> Iterator[WindowBatch]:
        """The held-out windows spread over the split (as evaluation reads them), so that examples come from
        many documents rather than the first few of the shuffled order."""
        windows = spread_windows(
            corpus_windows(corpus, tokenizer, "heldout"), windows_for_tokens(tokens, corpus.context_size)
        )
        for batch in stack_windows(windows, batch_windows):
            self.windows.extend(batch.ids_BT)  # the ids the model read
            yield batch


@torch.no_grad()
def _stream_statistics(
    loaded: LoadedModel,
    dictionaries: Sequence[Dictionary],
    corpus: CorpusConfig,
    config: IndexConfig,
    *,
    progress: bool,
) -> tuple[list[LatentStatistics], list[torch.Tensor]]:
    device = next(loaded.model.parameters()).device
    sites = sorted({d.site for d in dictionaries})
    saes = [d.sae.to(device).eval() for d in dictionaries]
    accumulators = [
        StatisticsAccumulator(d.sae.config.width, config.examples, device=device, seed=config.seed + i)
        for i, d in enumerate(dictionaries)
    ]
    recorded = _RecordedWindows()
    T = corpus.context_size
    stream = stream_token_activations(
        loaded.model, sites, recorded.batches(corpus, loaded.tokenizer, config.tokens, config.batch_windows),
        special_token_ids(loaded.tokenizer),
    )  # fmt: skip
    first_window = 0
    for token_acts, take in heldout_token_budget(stream, config.tokens, desc="index", progress=progress):
        B = token_acts.n_windows
        rows = (token_acts.windows_N[:take] - first_window) * T + token_acts.positions_N[:take]
        rows = rows.to(device)
        for sae, accumulator, d in zip(saes, accumulators, dictionaries, strict=True):
            codes_NF = sae.encode(token_acts.acts[d.site][:take].float())
            grid_PF = codes_NF.new_zeros(B * T, codes_NF.shape[1])
            grid_PF[rows] = codes_NF
            accumulator.update(grid_PF.view(B, T, -1), first_window, take)
        first_window += B
    return [accumulator.result() for accumulator in accumulators], recorded.windows[:first_window]


def _weights(
    loaded: LoadedModel, dictionaries: Sequence[Dictionary], config: IndexConfig, *, progress: bool
) -> tuple[list[LogitEffects], list[Neighbours], list[torch.Tensor]]:
    """Logit effects, decoder neighbours (owners are dictionary positions) and (F, S) write norms (S the sites
    of ``d.writes``) of every dictionary."""
    W_U_VD = unembedding(loaded.model)
    effects = []
    for d in tqdm(dictionaries, desc="index: logit effects", disable=not progress):
        directions_FD = residual_directions(loaded.model, d.site_out, d.sae.W_dec_FD.detach())
        effects.append(logit_effects(directions_FD, W_U_VD, config.logit_tokens, latent_chunk=config.latent_chunk))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, d in enumerate(dictionaries):
        groups.setdefault((d.site_out.id, d.sae.config.d_target), []).append(i)
    neighbours: dict[int, Neighbours] = {}
    for members in groups.values():
        found = decoder_neighbours([dictionaries[i].sae.W_dec_FD.detach().cpu() for i in members], config.neighbours)
        for i, result in zip(members, found, strict=True):
            owners = torch.tensor(members)[result.owners_Fk]  # positions in the group -> dictionary positions
            neighbours[i] = Neighbours(owners, result.latents_Fk, result.cosines_Fk)
    norms = [write_norms([W_FD.detach() for _, W_FD in d.writes]) for d in dictionaries]
    return effects, [neighbours[i] for i in range(len(dictionaries))], norms


def _log_density_histogram(stats: LatentStatistics) -> dict[str, Any]:
    density = stats.count_F.double() / max(stats.n_tokens, 1)
    live = density[density > 0]
    index = ((live.log10() - _LOG_DENSITY_START) / _LOG_DENSITY_STEP).floor().long().clamp(0, _LOG_DENSITY_BINS - 1)
    counts = torch.bincount(index, minlength=_LOG_DENSITY_BINS)
    return {
        "start": _LOG_DENSITY_START, "step": _LOG_DENSITY_STEP, "counts": counts.tolist(),
        "dead": int((density == 0).sum()),
    }  # fmt: skip


def _latent_rows(
    sae_id: int, stats: LatentStatistics, effects: LogitEffects, neighbours: Neighbours, norms_FS: torch.Tensor
) -> Iterator[tuple[Any, ...]]:
    counts = stats.count_F.tolist()
    norms = norms_FS.tolist()
    for f, count in enumerate(counts):
        histogram = stats.histogram_FH[f]
        nonzero = histogram.nonzero()
        trimmed = histogram[: int(nonzero[-1]) + 1].tolist() if len(nonzero) else []
        top = [[int(i), short_float(v)] for i, v in zip(effects.top_ids_Fk[f], effects.top_values_Fk[f], strict=True)]
        bottom = [
            [int(i), short_float(v)] for i, v in zip(effects.bottom_ids_Fk[f], effects.bottom_values_Fk[f], strict=True)
        ]
        near = [
            [int(s), int(j), short_float(c)]
            for s, j, c in zip(neighbours.owners_Fk[f], neighbours.latents_Fk[f], neighbours.cosines_Fk[f], strict=True)
        ]
        max_act = float(stats.max_F[f])
        yield (
            sae_id, f, count, count / stats.n_tokens, max_act, float(stats.sum_F[f]) / count if count else 0.0,
            int(count == 0), float(stats.scale_F[f]), json.dumps(trimmed), json.dumps(top), json.dumps(bottom),
            json.dumps(near), json.dumps([short_float(v) for v in norms[f]]),
        )  # fmt: skip


def _interval_rows(sae_id: int, stats: LatentStatistics) -> Iterator[tuple[Any, ...]]:
    N, H = stats.intervals, stats.histogram_bins
    counts_FN = stats.histogram_FH.view(-1, N, H // N).sum(-1)
    for f, k in counts_FN.nonzero().tolist():
        scale = float(stats.scale_F[f])
        yield sae_id, f, k, k * scale / N, (k + 1) * scale / N, int(counts_FN[f, k])


def _packed_contexts(contexts_EC: np.ndarray) -> list[bytes]:
    """:func:`store.pack_context` of every row, vectorised (millions of examples for a large suite)."""
    mask = contexts_EC != 0
    offsets = np.nonzero(mask)[1].astype("<u2")
    values = contexts_EC[mask].astype("<f4")
    ends = np.cumsum(mask.sum(axis=1))
    starts = ends - mask.sum(axis=1)
    return [offsets[a:b].tobytes() + values[a:b].tobytes() for a, b in zip(starts, ends, strict=True)]


def _example_rows(sae_id: int, stats: LatentStatistics) -> Iterator[tuple[Any, ...]]:
    """Rows of the examples table in primary-key order: per latent, the top examples then each interval's
    samples (by decreasing value)."""
    T = stats.window_length
    F, K = stats.top_value_FK.shape
    N, M = stats.intervals, stats.sample_value_FNM.shape[2]
    C = stats.top_context_FKC.shape[2]
    # One table of every example: (latent, interval, value, location, context); top examples have interval -1.
    sample_order = stats.sample_value_FNM.argsort(dim=2, descending=True)
    sample_values = stats.sample_value_FNM.gather(2, sample_order)
    sample_locations = stats.sample_location_FNM.gather(2, sample_order)
    sample_contexts = stats.sample_context_FNMC.gather(2, sample_order.unsqueeze(-1).expand(-1, -1, -1, C))
    latents = torch.cat([torch.arange(F).repeat_interleave(K), torch.arange(F).repeat_interleave(N * M)])
    intervals = torch.cat([torch.full((F * K,), store.TOP), torch.arange(N).repeat_interleave(M).repeat(F)])
    values = torch.cat([stats.top_value_FK.reshape(-1), sample_values.reshape(-1)])
    locations = torch.cat([stats.top_location_FK.reshape(-1), sample_locations.reshape(-1)])
    contexts = torch.cat([stats.top_context_FKC.reshape(-1, C), sample_contexts.reshape(-1, C)])
    keep = locations >= 0
    order = torch.argsort(latents[keep] * (N + 1) + intervals[keep] + 1, stable=True)  # latent-major, top first
    latents, intervals = latents[keep][order], intervals[keep][order]
    values, locations, contexts = values[keep][order], locations[keep][order], contexts[keep][order]
    blobs = _packed_contexts(contexts.numpy())
    previous, rank = (-1, -2), 0
    for latent, interval, value, location, blob in zip(
        latents.tolist(), intervals.tolist(), values.tolist(), locations.tolist(), blobs, strict=True
    ):
        rank = rank + 1 if (latent, interval) == previous else 0
        previous = (latent, interval)
        yield sae_id, latent, interval, rank, location // T, location % T, value, blob


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 over a dictionary's parameters (name, dtype, shape and bytes of each, by name): equal exactly
    when the weights are."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _sae_row(sae_id: int, d: Dictionary, stats: LatentStatistics, root: Path | None) -> tuple[Any, ...]:
    live = stats.max_F[stats.count_F > 0]
    folder = d.folder
    if root is not None and folder.is_relative_to(root):
        folder = folder.relative_to(root)
    summary = {
        "folder": folder.as_posix(),
        "log_density_histogram": _log_density_histogram(stats),
        # Steering strengths are multiples of a latent's max activation; a dead latent uses this instead.
        "median_max_activation": float(pystatistics.median(live.tolist())) if len(live) else 1.0,
        # A rebuild keeps this dictionary's explanations and detection scores while its weights are the same.
        "weights_fingerprint": weights_fingerprint(d.sae.state_dict()),
    }
    config = d.sae.config
    n_dead = int((stats.count_F == 0).sum())
    metrics = json.dumps(d.metrics, sort_keys=True) if d.metrics else None
    l0 = float(stats.count_F.sum()) / stats.n_tokens
    return (
        sae_id, d.name, d.site.id, d.site_out.id, json.dumps([site.id for site, _ in d.writes]), d.parent,
        config.architecture, config.width, config.d_in, config.d_target, stats.n_tokens, n_dead, l0, metrics,
        json.dumps(summary, sort_keys=True),
    )  # fmt: skip


def _token_rows(tokenizer: Any, token_ids: set[int]) -> list[tuple[int, str]]:
    ids = sorted(token_ids)
    texts = tokenizer.batch_decode([[i] for i in ids]) if ids else []
    return list(zip(ids, texts, strict=True))


def build_index(
    loaded: LoadedModel,
    dictionaries: Sequence[Dictionary],
    corpus: CorpusConfig,
    config: IndexConfig,
    out: Path,
    *,
    model_name: str,
    source: dict[str, Any] | None = None,
    report_dir: Path | None = None,
    progress: bool = True,
) -> IndexSummary:
    """Index every dictionary (see the module docstring) into the SQLite file ``out``.

    ``model_name`` is what :func:`saescope.models.load_model` loads the model from (recorded for the live
    search of ``saescope serve``); ``source`` records where the dictionaries come from (``kind``, ``path``);
    the PNG plots of ``report_dir`` are shown on the suite overview.
    """
    if not dictionaries:
        raise ValueError("nothing to index: no dictionaries")
    check_unique_names([d.name for d in dictionaries], what="dictionary")
    _check_widths(loaded, dictionaries)
    started = time.perf_counter()
    all_stats, windows = _stream_statistics(loaded, dictionaries, corpus, config, progress=progress)
    pass_seconds = time.perf_counter() - started
    effects, neighbours, norms = _weights(loaded, dictionaries, config, progress=progress)
    weights_seconds = time.perf_counter() - started - pass_seconds
    root = Path(source["path"]) if source and source.get("path") else None
    n_tokens = all_stats[0].n_tokens
    shipped = [read_shipped(d.folder, d.sae.config.width) if d.parent is None else None for d in dictionaries]
    _check_shipped_tokens(loaded, dictionaries, shipped)
    with store.atomic_database(out) as db:
        used_windows: set[int] = set()
        sae_rows: list[tuple[Any, ...]] = []
        shipped_windows: dict[int, np.ndarray] = {}
        for sae_id, (d, stats) in enumerate(zip(dictionaries, all_stats, strict=True)):
            sae_rows.append(_sae_row(sae_id, d, stats, root))
            db.execute(f"INSERT INTO saes VALUES ({','.join('?' * 15)})", sae_rows[-1])
            db.executemany(
                f"INSERT INTO latents VALUES ({','.join('?' * 13)})",
                _latent_rows(sae_id, stats, effects[sae_id], neighbours[sae_id], norms[sae_id]),
            )
            db.executemany("INSERT INTO intervals VALUES (?, ?, ?, ?, ?, ?)", _interval_rows(sae_id, stats))
            rows = list(_example_rows(sae_id, stats))
            used_windows.update(row[4] for row in rows)
            db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            release_examples = shipped[sae_id]
            if release_examples is not None:
                found = shipped_example_rows(
                    release_examples, sae_id, top_k=config.examples.top_k,
                    first_window=len(windows) + len(shipped_windows),
                    context_before=config.examples.context_before, context_after=config.examples.context_after,
                )  # fmt: skip
                shipped_windows.update(found.windows)
                db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", found.examples)
        db.executemany(
            "INSERT INTO windows VALUES (?, ?)",
            ((w, windows[w].numpy().astype("<i4").tobytes()) for w in sorted(used_windows)),
        )
        db.executemany(
            "INSERT INTO windows VALUES (?, ?)",
            ((w, tokens.astype("<i4").tobytes()) for w, tokens in sorted(shipped_windows.items())),
        )
        token_ids = {int(i) for w in used_windows for i in windows[w].tolist()}
        token_ids.update(int(i) for tokens in shipped_windows.values() for i in np.unique(tokens).tolist())
        for e in effects:
            token_ids.update(e.top_ids_Fk.reshape(-1).tolist())
            token_ids.update(e.bottom_ids_Fk.reshape(-1).tolist())
        db.executemany("INSERT INTO tokens VALUES (?, ?)", _token_rows(loaded.tokenizer, token_ids))
        fingerprints = {
            d.name: json.loads(row[-1])["weights_fingerprint"] for d, row in zip(dictionaries, sae_rows, strict=True)
        }
        kept = store.carry_autointerp(db, out, fingerprints)
        if report_dir is not None and report_dir.is_dir():
            for png in sorted(report_dir.glob("*.png")):
                db.execute("INSERT INTO assets VALUES (?, ?, ?)", (safe_name(png.name), "image/png", png.read_bytes()))
        info = loaded.info
        store.write_meta(
            db,
            {
                "format": store.FORMAT,
                "schema_version": store.SCHEMA_VERSION,
                "saescope_version": saescope.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "model": model_name,
                "model_info": {k: v for k, v in info.to_dict().items() if k not in ("load_seconds", "source")},
                "corpus": {**corpus.to_dict(), "split": "heldout"},
                "settings": config.settings(),
                "n_tokens": n_tokens,
                "n_windows": len(windows),
                "window_length": corpus.context_size,
                "source": source or {},
                "special_tokens": SPECIAL_POLICY,
                "unembedding": "W_U times the final norm's gain"
                if final_norm_gain(loaded.model) is not None
                else "W_U (no final norm gain found)",
                "seconds": {"pass": round(pass_seconds, 1), "weights": round(weights_seconds, 1)},
            },
        )
    total_seconds = time.perf_counter() - started
    latents = sum(len(s.count_F) for s in all_stats)
    dead = sum(int((s.count_F == 0).sum()) for s in all_stats)
    return IndexSummary(
        out, n_tokens, len(windows), len(dictionaries), latents, dead,
        {"pass": pass_seconds, "weights": weights_seconds, "total": total_seconds}, out.stat().st_size, *kept,
    )  # fmt: skip

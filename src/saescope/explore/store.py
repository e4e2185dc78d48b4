"""The feature index on disk: one SQLite file per run, versioned schema, written atomically, read read-only.

Tables (``SCHEMA_VERSION`` 2)::

    meta       key -> JSON value: format, schema_version, model, corpus, settings, token counts, timings
    saes       one row per dictionary: name (URL-safe, unique), site, the sites it writes (its own output site
               first; a CLT block also writes every later layer), the multi-layer dictionary it is a block of
               (NULL for a single-layer one), widths, evaluation metrics, summary
    latents    one row per (dictionary, latent): firing count, density, max/mean activation, dead flag, the
               histogram scale and counts, top/bottom logit tokens, decoder neighbours, and its decoder-row
               norm at each site its dictionary writes (parallel to ``saes.write_sites``)
    intervals  the activation interval bins of each latent: [lo, hi) (the last closed), firings inside
    examples   top examples (interval -1), interval samples, and the top examples a release ships in its
               ``examples.safetensors`` (interval -2; only the example's own activation is known): window,
               position, value, and the latent's activations on the context tokens (sparse: offsets + float32
               values)
    windows    token ids of every window an example comes from
    tokens     display text of every token id used by windows and logit tables
    assets     PNG plots of the run's evaluation report, shown on the overview

Indexes serve what the pages ask: a dictionary's latents by index (primary key), by density, by maximum and
mean activation; a latent's examples and intervals (clustered primary keys: WITHOUT ROWID tables of small
rows; the latents' rows are about 1 kB, too large for a WITHOUT ROWID table to store compactly). The file is
built under a temporary name next to its target and renamed over it when complete, so readers never see half
an index.

Version 2 added ``saes.write_sites``, ``saes.parent`` and ``latents.write_norms``: a reader refuses a
version-1 file (``saescope index`` rebuilds it) rather than show a CLT block's latents without where they write.

Optional tables (:data:`AUTOINTERP_SCHEMA`), added in place by ``saescope autointerp`` (a migration that only
creates missing tables, so an index without them stays readable and reads as having no explanations)::

    explanations      (dictionary, latent, explainer) -> the explainer LLM's explanation of the latent
    detection_scores  (dictionary, latent, explainer, scorer) -> detection accuracy of the scorer LLM given that
                      explanation, on balanced activating and non-activating contexts, with the counts
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import numpy as np

FORMAT = "saescope-feature-index"
SCHEMA_VERSION = 2
INDEX_FILE = "index.sqlite"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE saes (
    sae_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, site TEXT NOT NULL, site_out TEXT NOT NULL,
    write_sites TEXT NOT NULL, parent TEXT, architecture TEXT NOT NULL, width INTEGER NOT NULL,
    d_in INTEGER NOT NULL, d_out INTEGER NOT NULL, n_tokens INTEGER NOT NULL, n_dead INTEGER NOT NULL,
    l0 REAL NOT NULL, metrics TEXT, summary TEXT NOT NULL
);
CREATE TABLE latents (
    sae_id INTEGER NOT NULL, latent INTEGER NOT NULL, fire_count INTEGER NOT NULL, density REAL NOT NULL,
    max_act REAL NOT NULL, mean_act REAL NOT NULL, dead INTEGER NOT NULL, scale REAL NOT NULL,
    histogram TEXT NOT NULL, top_logits TEXT NOT NULL, bottom_logits TEXT NOT NULL, neighbours TEXT NOT NULL,
    write_norms TEXT NOT NULL, PRIMARY KEY (sae_id, latent)
);
CREATE INDEX latents_by_density ON latents (sae_id, density);
CREATE INDEX latents_by_max ON latents (sae_id, max_act);
CREATE INDEX latents_by_mean ON latents (sae_id, mean_act);
CREATE TABLE intervals (
    sae_id INTEGER NOT NULL, latent INTEGER NOT NULL, interval INTEGER NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, fire_count INTEGER NOT NULL,
    PRIMARY KEY (sae_id, latent, interval)
) WITHOUT ROWID;
CREATE TABLE examples (
    sae_id INTEGER NOT NULL, latent INTEGER NOT NULL, interval INTEGER NOT NULL, rank INTEGER NOT NULL,
    window INTEGER NOT NULL, position INTEGER NOT NULL, value REAL NOT NULL, context BLOB NOT NULL,
    PRIMARY KEY (sae_id, latent, interval, rank)
) WITHOUT ROWID;
CREATE TABLE windows (window INTEGER PRIMARY KEY, tokens BLOB NOT NULL);
CREATE TABLE tokens (token_id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE assets (name TEXT PRIMARY KEY, mime TEXT NOT NULL, data BLOB NOT NULL);
"""

#: The automated-interpretability tables (see the module docstring): created when missing, never required.
AUTOINTERP_SCHEMA = """
CREATE TABLE IF NOT EXISTS explanations (
    sae_id INTEGER NOT NULL, latent INTEGER NOT NULL, explainer TEXT NOT NULL, explanation TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (sae_id, latent, explainer)
);
CREATE TABLE IF NOT EXISTS detection_scores (
    sae_id INTEGER NOT NULL, latent INTEGER NOT NULL, explainer TEXT NOT NULL, scorer TEXT NOT NULL,
    accuracy REAL NOT NULL, n_activating INTEGER NOT NULL, n_non_activating INTEGER NOT NULL,
    true_positives INTEGER NOT NULL, true_negatives INTEGER NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (sae_id, latent, explainer, scorer)
);
"""

#: ``interval`` of the top examples in the examples table.
TOP = -1
#: ``interval`` of the top examples shipped with a release (a Gemma Scope 2 ``examples.safetensors``).
SHIPPED = -2
#: Sort keys of the latents list -> their column.
LATENT_SORTS = {
    "index": "latent", "density": "density", "max_activation": "max_act", "mean_activation": "mean_act",
    "detection": "detection",
}  # fmt: skip


#: Per latent of one dictionary (bound to its sae_id): the detection score most recently written and the
#: explanation it scored. SQLite gives the bare columns of a MAX() aggregate the values of the row holding the max.
_LATEST_SCORES = (
    "SELECT d.latent AS latent, d.accuracy AS detection, e.explanation AS explanation, MAX(d.rowid) "
    "FROM detection_scores AS d JOIN explanations AS e "
    "ON e.sae_id = d.sae_id AND e.latent = d.latent AND e.explainer = d.explainer "
    "WHERE d.sae_id = ? GROUP BY d.latent"
)


class FeatureIndexError(RuntimeError):
    """The index file is missing, of another schema version, or damaged; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_database(path: Path) -> Iterator[sqlite3.Connection]:
    """A new database with the schema, built under a temporary name and renamed to ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    db = sqlite3.connect(temporary)
    try:
        # No journal: the temporary file is thrown away on failure anyway, and the rename publishes it.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.executescript(SCHEMA)
        yield db
        db.commit()
        db.close()
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        db.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def carry_autointerp(db: sqlite3.Connection, previous: Path, fingerprints: dict[str, str]) -> tuple[int, int]:
    """Copy the explanations and detection scores of ``previous`` (the index a rebuild replaces) into ``db``, for
    every dictionary whose weights are unchanged: same name and the same weights fingerprint (``fingerprints``:
    name -> :func:`weights_fingerprint` of the dictionary now indexed). They cost an LLM's time, and a rebuild
    with other contexts or settings leaves an unchanged dictionary's explanations valid. Returns the number of
    explanations and of detection scores kept."""
    if not previous.is_file():
        return 0, 0
    db.execute("ATTACH DATABASE ? AS previous", (str(previous),))
    try:
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM previous.sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:  # a damaged index is what --force replaces: nothing in it can be trusted
            return 0, 0
        if not {"explanations", "detection_scores", "saes"} <= tables:
            return 0, 0
        pairs = []
        for old_id, name, summary in db.execute("SELECT sae_id, name, summary FROM previous.saes"):
            new = db.execute("SELECT sae_id FROM saes WHERE name = ?", (name,)).fetchone()
            recorded = json.loads(summary).get("weights_fingerprint")
            if new is not None and recorded is not None and recorded == fingerprints.get(name):
                pairs.append((int(old_id), int(new[0])))
        if not pairs:
            return 0, 0
        db.executescript(AUTOINTERP_SCHEMA)
        counts = [0, 0]
        for old_id, new_id in pairs:
            for i, table in enumerate(("explanations", "detection_scores")):
                columns = [row[1] for row in db.execute(f"PRAGMA previous.table_info({table})")][1:]
                listed = ", ".join(columns)
                cursor = db.execute(
                    f"INSERT INTO main.{table} (sae_id, {listed}) SELECT ?, {listed} FROM previous.{table} "
                    "WHERE sae_id = ? ORDER BY rowid",
                    (new_id, old_id),
                )
                counts[i] += cursor.rowcount
        db.commit()
        return counts[0], counts[1]
    finally:
        db.commit()
        db.execute("DETACH DATABASE previous")


def write_meta(db: sqlite3.Connection, values: dict[str, Any]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(key, json.dumps(value, sort_keys=True)) for key, value in values.items()],
    )


def pack_context(values_C: np.ndarray) -> bytes:
    """A context's activations, sparse: uint16 offsets of the non-zero entries, then their float32 values."""
    offsets = np.flatnonzero(values_C).astype("<u2")
    return bytes(offsets.tobytes() + values_C[offsets].astype("<f4").tobytes())


def short_float(value: SupportsFloat) -> float:
    """A float32 value with the 7 significant digits it holds, so JSON does not spell 17 of them."""
    return float(f"{float(value):.7g}")


def unpack_context(blob: bytes, length: int) -> list[float]:
    """The dense activations (``length`` values) of a :func:`pack_context` blob."""
    n = len(blob) // 6
    offsets = np.frombuffer(blob[: 2 * n], dtype="<u2")
    dense = np.zeros(length, dtype=np.float32)
    dense[offsets] = np.frombuffer(blob[2 * n :], dtype="<f4")
    return [short_float(v) if v else 0.0 for v in dense]


def json_float(value: float) -> float | None:
    """A float JSON can carry (NaN and infinities become null)."""
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaeRow:
    sae_id: int
    name: str
    site: str
    site_out: str
    write_sites: tuple[str, ...]
    """Every site its latents write, its own output site first (``Dictionary.writes``)."""
    parent: str | None
    """The multi-layer dictionary this is a block of (pages group blocks by it); None for a single-layer one."""
    architecture: str
    width: int
    d_in: int
    d_out: int
    n_tokens: int
    n_dead: int
    l0: float
    metrics: dict[str, Any] | None
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "site": self.site, "site_out": self.site_out, "write_sites": list(self.write_sites),
            "parent": self.parent, "architecture": self.architecture,
            "width": self.width, "d_in": self.d_in, "d_out": self.d_out, "n_tokens": self.n_tokens,
            "n_dead": self.n_dead, "dead_fraction": self.n_dead / self.width, "l0": self.l0,
            "metrics": self.metrics, **self.summary,
        }  # fmt: skip


def open_read_only(path: Path) -> sqlite3.Connection:
    """Open an index for reading only (SQLite ``mode=ro``, queries only)."""
    if not path.is_file():
        raise FeatureIndexError(f"{path} does not exist: build it with `saescope index RUN`")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA query_only = ON")
    return db


def rebuild_command(path: Path, source: str | None) -> str:
    """The `saescope index` command that rebuilds the index file ``path`` from ``source`` (the run or release it
    was built from, when known)."""
    source_text = source or "RUN_OR_RELEASE"
    out = "" if source is not None and Path(source) / INDEX_FILE == path.resolve() else f" --out {path}"
    return f"saescope index {source_text}{out} --force"


def _recorded_source(db: sqlite3.Connection) -> str | None:
    """The folder the index was built from, as its meta table records it (None if unreadable)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'source'").fetchone()
        source = json.loads(row[0]) if row else None
    except (sqlite3.DatabaseError, ValueError):
        return None
    path = source.get("path") if isinstance(source, dict) else None
    return str(path) if path else None


def _expected_columns() -> dict[str, list[str]]:
    """Every table of :data:`SCHEMA` -> its column names, in order."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return _columns(db)
    finally:
        db.close()


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {table: [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')] for table in tables}


def integrity_problems(db: sqlite3.Connection) -> list[str]:
    """What is wrong with the database file under ``db`` (empty when nothing is): SQLite's structural check
    (``PRAGMA quick_check``: every page and b-tree readable and well formed, so a damaged file is refused at
    open rather than failing page by page later), then the tables and columns of :data:`SCHEMA`."""
    try:
        found = [line for row in db.execute("PRAGMA quick_check(5)") for line in str(row[0]).splitlines()]
        if found != ["ok"]:
            return [line for line in found if not line.startswith("***")][:5]
        columns = _columns(db)
    except sqlite3.DatabaseError as error:
        return [str(error)]
    problems = []
    for table, expected in _expected_columns().items():
        if table not in columns:
            problems.append(f"table {table!r} is missing")
        elif columns[table] != expected:
            problems.append(f"table {table!r} has columns {columns[table]}, expected {expected}")
    return problems


class IndexReader:
    """Everything the pages show, read from one index file opened read-only (one connection per thread).

    Opening checks the whole file (format, schema version, SQLite's structural check, the tables and columns of
    the schema) and raises :class:`FeatureIndexError` naming the file and the command that rebuilds it, so a
    damaged index stops `saescope serve` at startup instead of failing request by request.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        db = self._db()
        try:
            rows = db.execute("SELECT key, value FROM meta").fetchall()
            self.meta: dict[str, Any] = {key: json.loads(value) for key, value in rows}
        except (sqlite3.DatabaseError, ValueError) as error:
            raise self._damaged([f"its meta table cannot be read: {error}"]) from error
        if self.meta.get("format") != FORMAT:
            raise FeatureIndexError(f"{self.path} is not a saescope feature index (format {self.meta.get('format')!r})")
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise FeatureIndexError(
                f"{self.path} has index schema version {self.meta.get('schema_version')}, this saescope reads "
                f"version {SCHEMA_VERSION}: rebuild it with `{rebuild_command(self.path, _recorded_source(db))}`"
            )
        problems = integrity_problems(db)
        if problems:
            raise self._damaged(problems)
        try:
            self._saes = [self._sae_row(row) for row in db.execute("SELECT * FROM saes ORDER BY sae_id")]
        except (sqlite3.DatabaseError, ValueError) as error:
            raise self._damaged([f"its saes table cannot be read: {error}"]) from error
        self._by_name = {sae.name: sae for sae in self._saes}

    def _damaged(self, problems: list[str]) -> FeatureIndexError:
        source = _recorded_source(self._db())
        return FeatureIndexError(
            f"{self.path} is damaged and cannot be served ({'; '.join(problems)}). It is a cache of the "
            f"dictionaries' features: rebuild it with `{rebuild_command(self.path, source)}`"
        )

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = open_read_only(self.path)
            self._local.db = db
        return db

    @staticmethod
    def _sae_row(row: Sequence[Any]) -> SaeRow:
        (sae_id, name, site, site_out, write_sites, parent, architecture, width, d_in, d_out, n_tokens, n_dead, l0,
         metrics, summary) = row  # fmt: skip
        return SaeRow(
            sae_id, name, site, site_out, tuple(json.loads(write_sites)), parent, architecture, width, d_in, d_out,
            n_tokens, n_dead, l0, json.loads(metrics) if metrics else None, json.loads(summary),
        )  # fmt: skip

    # --- dictionaries -------------------------------------------------------------------------------
    @property
    def saes(self) -> list[SaeRow]:
        return list(self._saes)

    def sae(self, name: str) -> SaeRow | None:
        return self._by_name.get(name)

    def asset_names(self) -> list[str]:
        return [row[0] for row in self._db().execute("SELECT name FROM assets ORDER BY name")]

    def asset(self, name: str) -> tuple[str, bytes] | None:
        row = self._db().execute("SELECT mime, data FROM assets WHERE name = ?", (name,)).fetchone()
        return (str(row[0]), bytes(row[1])) if row else None

    def token_texts(self, token_ids: Iterable[int]) -> dict[int, str]:
        ids = sorted({int(i) for i in token_ids})  # plain ints: numpy scalars would bind as blobs
        texts: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            query = f"SELECT token_id, text FROM tokens WHERE token_id IN ({marks})"
            texts.update({int(i): str(t) for i, t in self._db().execute(query, part)})
        return texts

    def suite(self) -> dict[str, Any]:
        """The overview: what was indexed, and one row per dictionary with its evaluation metrics."""
        from saescope.eval.report import suite_rows

        keys = ("model", "corpus", "settings", "n_tokens", "n_windows", "created", "special_tokens", "unembedding")
        saes = []
        for sae in self._saes:
            row = sae.to_dict()
            try:
                row["evaluation"] = suite_rows([sae.metrics])[0] if sae.metrics else None
            except (KeyError, TypeError, ValueError):  # metrics of another layout: show the row without them
                row["evaluation"] = None
            del row["metrics"]
            saes.append(row)
        return {"index": {key: self.meta.get(key) for key in keys}, "saes": saes, "assets": self.asset_names()}

    # --- latents ------------------------------------------------------------------------------------
    def latents(
        self, sae: SaeRow, *, sort: str = "index", descending: bool = False, dead: str = "show",
        offset: int = 0, limit: int = 100,
    ) -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
        """(number of matching latents, one page of them) sorted by ``sort`` (a key of LATENT_SORTS)."""
        column = LATENT_SORTS[sort]
        where = "sae_id = ?" + {"show": "", "hide": " AND dead = 0", "only": " AND dead = 1"}[dead]
        direction = "DESC" if descending else "ASC"
        db = self._db()
        total = int(db.execute(f"SELECT COUNT(*) FROM latents WHERE {where}", (sae.sae_id,)).fetchone()[0])
        order = f"{column} {direction}" if column == "latent" else f"{column} {direction}, latent {direction}"
        if column == "detection":  # latents without a score last, whichever the direction
            order = f"detection IS NULL, {order}"
        scored = self.has_autointerp()
        scores = (
            f"LEFT JOIN ({_LATEST_SCORES}) AS scores USING (latent)"
            if scored
            else "LEFT JOIN (SELECT NULL AS latent, NULL AS detection, NULL AS explanation) AS scores USING (latent)"
        )
        rows = db.execute(
            f"SELECT latent, fire_count, density, max_act, mean_act, dead, top_logits, detection, explanation "
            f"FROM latents {scores} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            ((sae.sae_id,) if scored else ()) + (sae.sae_id, limit, offset),
        ).fetchall()
        top_ids = {row[0]: [pair[0] for pair in json.loads(row[6])[:3]] for row in rows}
        texts = self.token_texts(i for ids in top_ids.values() for i in ids)
        return total, [
            {
                "latent": row[0], "fire_count": row[1], "density": row[2], "max_activation": row[3],
                "mean_activation": row[4], "dead": bool(row[5]),
                "top_tokens": [texts.get(i, "") for i in top_ids[row[0]]],
                "detection": row[7], "explanation": row[8],
            }
            for row in rows
        ]  # fmt: skip

    def has_autointerp(self) -> bool:
        """Whether the index holds the automated-interpretability tables (added by ``saescope autointerp``)."""
        found = (
            self._db()
            .execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                "AND name IN ('explanations', 'detection_scores')"
            )
            .fetchone()
        )
        return int(found[0]) == 2

    def autointerp(self, sae: SaeRow, latent: int) -> list[dict[str, Any]]:
        """Every explanation of one latent with its detection scores, the most recently scored first (empty when
        the index has none)."""
        if not self.has_autointerp():
            return []
        rows = (
            self._db()
            .execute(
                "SELECT e.explainer, e.explanation, d.scorer, d.accuracy, d.n_activating, d.n_non_activating, "
                "d.true_positives, d.true_negatives FROM explanations AS e LEFT JOIN detection_scores AS d "
                "ON d.sae_id = e.sae_id AND d.latent = e.latent AND d.explainer = e.explainer "
                "WHERE e.sae_id = ? AND e.latent = ? ORDER BY d.rowid IS NULL, d.rowid DESC, e.rowid DESC",
                (sae.sae_id, latent),
            )
            .fetchall()
        )
        return [
            {
                "explainer": explainer, "explanation": explanation, "scorer": scorer, "detection": accuracy,
                "n_activating": n_pos, "n_non_activating": n_neg, "true_positives": tp, "true_negatives": tn,
            }
            for explainer, explanation, scorer, accuracy, n_pos, n_neg, tp, tn in rows
        ]  # fmt: skip

    def feature(self, sae: SaeRow, latent: int) -> dict[str, Any] | None:
        """Everything the feature page shows for one latent, or None if the dictionary has no such latent."""
        db = self._db()
        row = db.execute(
            "SELECT fire_count, density, max_act, mean_act, dead, scale, histogram, top_logits, bottom_logits, "
            "neighbours, write_norms FROM latents WHERE sae_id = ? AND latent = ?",
            (sae.sae_id, latent),
        ).fetchone()
        if row is None:
            return None
        fire_count, density, max_act, mean_act, dead, scale, histogram, top, bottom, neighbours, norms = row
        top_logits, bottom_logits = json.loads(top), json.loads(bottom)
        examples = db.execute(
            "SELECT interval, rank, window, position, value, context FROM examples "
            "WHERE sae_id = ? AND latent = ? ORDER BY interval, rank",
            (sae.sae_id, latent),
        ).fetchall()
        windows = self._windows({int(e[2]) for e in examples})
        texts = self.token_texts(
            [i for ids in windows.values() for i in ids] + [p[0] for p in top_logits + bottom_logits]
        )
        documents: dict[int, list[dict[str, Any]]] = {
            interval: [] for interval in [TOP, SHIPPED] + [e[0] for e in examples]
        }
        for interval, _rank, window, position, value, context in examples:
            documents[interval].append(self._example(windows[window], texts, window, position, value, context))
        counts = json.loads(histogram)
        intervals = db.execute(
            "SELECT interval, lo, hi, fire_count FROM intervals WHERE sae_id = ? AND latent = ? ORDER BY interval DESC",
            (sae.sae_id, latent),
        ).fetchall()
        names = {s.sae_id: s.name for s in self._saes}
        settings = self.meta["settings"]
        return {
            "sae": sae.name, "parent": sae.parent, "site": sae.site, "latent": latent, "width": sae.width,
            "n_tokens": sae.n_tokens, "fire_count": fire_count, "density": density, "max_activation": max_act,
            "mean_activation": mean_act, "dead": bool(dead),
            "histogram": {
                "bin_width": scale / settings["histogram_bins"], "interval_width": scale / settings["intervals"],
                "counts": counts,
            },
            "top_examples": documents[TOP],
            "shipped_examples": documents[SHIPPED],
            "intervals": [
                {
                    "interval": k, "lo": lo, "hi": hi, "closed": k == settings["intervals"] - 1,
                    "fire_count": n, "share": n / fire_count if fire_count else 0.0, "examples": documents.get(k, []),
                }
                for k, lo, hi, n in intervals
            ],
            "top_logits": [{"token": texts.get(i, ""), "token_id": i, "value": v} for i, v in top_logits],
            "bottom_logits": [{"token": texts.get(i, ""), "token_id": i, "value": v} for i, v in bottom_logits],
            "neighbours": [{"sae": names[s], "latent": j, "cosine": c} for s, j, c in json.loads(neighbours)],
            "writes": [
                {"site": site, "norm": norm} for site, norm in zip(sae.write_sites, json.loads(norms), strict=True)
            ],
            "autointerp": self.autointerp(sae, latent),
        }  # fmt: skip

    def top_example_rows(self, sae: SaeRow) -> list[tuple[int, int, int, int, float]]:
        """(latent, rank, window, position, value) of every top example of ``sae``, by latent then rank."""
        rows = self._db().execute(
            "SELECT latent, rank, window, position, value FROM examples WHERE sae_id = ? AND interval = ? "
            "ORDER BY latent, rank",
            (sae.sae_id, TOP),
        )
        return [(int(f), int(r), int(w), int(p), float(v)) for f, r, w, p, v in rows]

    def latent_summaries(self, sae: SaeRow) -> list[tuple[float, list[list[float]], list[list[float]]]]:
        """Per latent of ``sae`` (in order): density, top and bottom logit effects ([token id, value] pairs)."""
        rows = self._db().execute(
            "SELECT density, top_logits, bottom_logits FROM latents WHERE sae_id = ? ORDER BY latent", (sae.sae_id,)
        )
        return [(float(density), json.loads(top), json.loads(bottom)) for density, top, bottom in rows]

    def window_tokens(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The token ids of the windows ``ids`` (those the index holds)."""
        return self._windows({int(i) for i in ids})

    def _windows(self, ids: set[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        ordered = sorted(ids)
        for start in range(0, len(ordered), 500):
            part = ordered[start : start + 500]
            marks = ",".join("?" * len(part))
            for window, blob in self._db().execute(
                f"SELECT window, tokens FROM windows WHERE window IN ({marks})", part
            ):
                found[int(window)] = np.frombuffer(blob, dtype="<i4")
        return found

    def _example(
        self, window_ids: np.ndarray, texts: dict[int, str], window: int, position: int, value: float, context: bytes
    ) -> dict[str, Any]:
        settings = self.meta["settings"]
        before, after = int(settings["context_before"]), int(settings["context_after"])
        acts = unpack_context(context, before + 1 + after)
        first, last = max(0, position - before), min(len(window_ids), position + after + 1)
        token_ids = [int(i) for i in window_ids[first:last]]
        return {
            "window": window, "position": position, "value": short_float(value), "focus": position - first,
            "tokens": [texts.get(i, "") for i in token_ids], "token_ids": token_ids,
            "acts": acts[first - (position - before) : last - (position - before)],
        }  # fmt: skip

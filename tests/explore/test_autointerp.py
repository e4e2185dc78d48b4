"""Automated interpretability on constructed feature indexes: detection scoring, frequency weighting, the cache,
the OpenAI-compatible client against a local fake server, the command, and (slow) the embedded model end to end.

The constructed index has one dictionary ``toy`` whose latent j fires exactly on the token ``TRIGGER + j``, which
occurs once in each of its own windows and nowhere else; so an oracle explainer can name that token, and an
oracle scorer can tell from a context's text whether the latent fires there.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from saescope.cli import main
from saescope.explore.autointerp import (
    AutointerpSettings,
    Context,
    EndpointError,
    HuggingFaceLM,
    LatentScore,
    OpenAICompatibleLM,
    answers_yes,
    frequency_weighted_mean,
    latent_contexts,
    parse_yes,
    run_autointerp,
    stratified_latents,
)
from saescope.explore.store import FORMAT, SCHEMA_VERSION, TOP, IndexReader, atomic_database, pack_context, write_meta

N_LATENTS = 40
DEAD = N_LATENTS  # one more latent, which never fires
TRIGGER = 1000
WINDOW = 16
BEFORE, AFTER = 4, 2
TOP_K, INTERVALS, PER_INTERVAL = 5, 4, 3


def density_of(latent: int) -> float:
    return 10 ** (-4 + 3 * latent / N_LATENTS)


def build_index(path: Path, seed: int = 0) -> Path:
    """The constructed index of the module docstring: ``TOP_K`` top examples and ``INTERVALS`` ×
    ``PER_INTERVAL`` interval samples per live latent, each in a window of its own."""
    rng = random.Random(seed)
    with atomic_database(path) as db:
        settings = {"histogram_bins": 8, "intervals": INTERVALS, "context_before": BEFORE, "context_after": AFTER}
        write_meta(db, {"format": FORMAT, "schema_version": SCHEMA_VERSION, "model": "toy", "settings": settings})
        width = N_LATENTS + 1
        db.execute(
            "INSERT INTO saes VALUES (0, 'toy', 'layer_0/res', 'layer_0/res', '[\"layer_0/res\"]', NULL, 'jumprelu', "
            "?, 8, 8, 100000, 1, 3.0, NULL, '{}')",
            (width,),
        )
        window = 0
        for latent in range(width):
            alive = latent != DEAD
            density = density_of(latent) if alive else 0.0
            db.execute(
                "INSERT INTO latents VALUES (0, ?, ?, ?, ?, ?, ?, 4.0, '[]', '[]', '[]', '[]', '[1.0]')",
                (
                    latent,
                    round(density * 100000),
                    density,
                    4.0 if alive else 0.0,
                    2.0 if alive else 0.0,
                    int(not alive),
                ),
            )
            if not alive:
                continue
            slots = [(TOP, rank) for rank in range(TOP_K)]
            slots += [(k, rank) for k in range(INTERVALS) for rank in range(PER_INTERVAL)]
            for k in range(INTERVALS):
                db.execute("INSERT INTO intervals VALUES (0, ?, ?, ?, ?, 10)", (latent, k, k, k + 1.0))
            for interval, rank in slots:
                tokens = np.array([rng.randrange(3, 900) for _ in range(WINDOW)], dtype="<i4")
                position = rng.randrange(BEFORE, WINDOW - AFTER)
                tokens[position] = TRIGGER + latent
                acts = np.zeros(BEFORE + 1 + AFTER, dtype=np.float32)
                acts[BEFORE] = 3.0
                db.execute("INSERT INTO windows VALUES (?, ?)", (window, tokens.tobytes()))
                db.execute(
                    "INSERT INTO examples VALUES (0, ?, ?, ?, ?, ?, 3.0, ?)",
                    (latent, interval, rank, window, position, pack_context(acts)),
                )
                window += 1
        db.executemany("INSERT INTO tokens VALUES (?, ?)", [(t, f" w{t}") for t in range(TRIGGER + N_LATENTS)])
    return path


@pytest.fixture
def index(tmp_path: Path) -> Path:
    return build_index(tmp_path / "index.sqlite")


class RandomLM:
    """Answers Yes or No at random (seeded); explains with a fixed phrase."""

    def __init__(self, seed: int) -> None:
        self.name = f"random-{seed}"
        self.rng = random.Random(seed)

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        if prompt.rstrip().endswith("Explanation:"):
            return " the letter w"
        return self.rng.choice([" Yes", " No"])


class OracleLM:
    """Explains a latent by the token its contexts mark; answers whether the explained token is in the text."""

    name = "oracle"

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        self.calls += 1
        if prompt.rstrip().endswith("Explanation:"):
            marked = prompt.split("Text 1:")[1].split("<<")[1].split(">>")[0].strip()
            return f"the word {marked}\nmore text"
        explained = prompt.splitlines()[0].split()[-1]
        text = next(line for line in prompt.splitlines() if line.startswith("Text: "))
        return " Yes" if explained in text.split() else " No"


def pooled_accuracy(scores: list[LatentScore]) -> tuple[float, int]:
    n = sum(s.n_contexts for s in scores)
    return sum(s.n_correct for s in scores) / n, n


def test_a_scorer_answering_at_random_scores_chance(index: Path) -> None:
    lm = RandomLM(seed=7)
    settings = AutointerpSettings(n_score=6)
    [result] = run_autointerp(index, lm, lm, N_LATENTS, settings=settings, progress=False)
    assert len(result.scores) == N_LATENTS  # every live latent, the dead one not sampled
    assert all(s.n_activating == s.n_non_activating == 6 for s in result.scores)  # balanced
    accuracy, n = pooled_accuracy(list(result.scores))
    standard_error = math.sqrt(0.25 / n)  # binomial s.e. of an accuracy of 0.5 over n answers
    assert abs(accuracy - 0.5) < 4 * standard_error
    assert abs(result.mean_accuracy - 0.5) < 4 * standard_error


def test_a_perfect_oracle_scores_one(index: Path) -> None:
    oracle = OracleLM()
    [result] = run_autointerp(index, oracle, oracle, 12, progress=False)
    assert len(result.scores) == 12
    assert all(s.accuracy == 1.0 for s in result.scores)
    assert result.mean_accuracy == result.frequency_weighted_accuracy == 1.0
    assert all(s.explanation == f"the word w{TRIGGER + s.latent}" for s in result.scores)  # first line only


def test_non_activating_contexts_avoid_the_latents_windows_and_activating_ones_are_held_out(index: Path) -> None:
    reader = IndexReader(index)
    sae = reader.saes[0]
    contexts = latent_contexts(reader, sae, 3, n_explain_top=5, n_explain_random=2, n_score=5, rng=random.Random(0))
    trigger = f" w{TRIGGER + 3}"
    assert all(trigger in c.tokens for c in contexts.explain + contexts.activating)
    assert not any(trigger in c.tokens for c in contexts.non_activating)
    shown = {(c.window, c.position) for c in contexts.explain}
    assert shown.isdisjoint((c.window, c.position) for c in contexts.activating)
    assert len(contexts.activating) == len(contexts.non_activating) == 5


def test_frequency_weighted_mean_weights_accuracy_by_firing_density() -> None:
    scores = [
        LatentScore("toy", 0, 0.1, "a", 1.0, 5, 5, 5, 5),
        LatentScore("toy", 1, 0.01, "b", 0.5, 5, 5, 3, 2),
        LatentScore("toy", 2, 0.001, "c", 0.0, 5, 5, 0, 0),
    ]
    assert frequency_weighted_mean(scores) == pytest.approx((0.1 * 1.0 + 0.01 * 0.5) / 0.111)
    assert math.isnan(frequency_weighted_mean([]))


def test_stratified_sample_draws_from_every_frequency_bin() -> None:
    densities = [1e-5] * 50 + [1e-3] * 50 + [1e-1] * 5 + [0.0] * 10
    chosen = stratified_latents(densities, 6, strata=3, seed=0)
    assert len(chosen) == 6
    bins = [sum(1 for i in chosen if lo <= i < hi) for lo, hi in ((0, 50), (50, 100), (100, 105))]
    assert bins == [2, 2, 2]
    assert stratified_latents(densities, 500, strata=3) == list(range(105))  # never a dead latent


def test_a_rerun_skips_latents_already_scored(index: Path) -> None:
    oracle = OracleLM()
    first = run_autointerp(index, oracle, oracle, 6, progress=False)
    assert oracle.calls > 0
    again = OracleLM()
    second = run_autointerp(index, again, again, 6, progress=False)
    assert again.calls == 0
    assert [s.accuracy for s in second[0].scores] == [s.accuracy for s in first[0].scores]


def test_a_new_scorer_reuses_the_explainers_cached_explanations(index: Path) -> None:
    oracle = OracleLM()
    run_autointerp(index, oracle, oracle, 4, progress=False)
    explainer, scorer = OracleLM(), RandomLM(seed=1)
    [result] = run_autointerp(index, explainer, scorer, 4, progress=False)
    assert explainer.calls == 0  # explanations from the cache
    assert len(result.scores) == 4
    with sqlite3.connect(index) as db:
        assert db.execute("SELECT COUNT(*) FROM explanations").fetchone()[0] == 4
        assert db.execute("SELECT COUNT(DISTINCT scorer) FROM detection_scores").fetchone()[0] == 2


def test_an_index_without_autointerp_tables_stays_readable_and_gains_them(index: Path) -> None:
    reader = IndexReader(index)
    sae = reader.saes[0]
    assert not reader.has_autointerp()
    feature = reader.feature(sae, 0)
    assert feature is not None
    assert feature["autointerp"] == []
    assert reader.latents(sae, sort="detection")[1][0]["detection"] is None
    oracle = OracleLM()
    run_autointerp(index, oracle, oracle, 3, progress=False)
    reader = IndexReader(index)  # the integrity check accepts the added tables
    assert reader.has_autointerp()
    _, rows = reader.latents(sae, sort="detection", descending=True, limit=5)
    assert [row["detection"] for row in rows][:3] == [1.0, 1.0, 1.0]
    assert rows[3]["detection"] is None
    scored = next(row["latent"] for row in rows if row["detection"] is not None)
    [entry] = reader.feature(sae, scored)["autointerp"]  # type: ignore[index]
    assert entry["explanation"] == f"the word w{TRIGGER + scored}"
    assert entry["detection"] == 1.0


def test_an_unknown_dictionary_is_refused_before_anything_is_written(index: Path) -> None:
    oracle = OracleLM()
    with pytest.raises(ValueError, match="no dictionary named nope; it has: toy"):
        run_autointerp(index, oracle, oracle, 3, saes=["nope"], progress=False)
    assert not IndexReader(index).has_autointerp()
    with pytest.raises(ValueError, match="autointerp setting n_score must be >= 1"):
        AutointerpSettings(n_score=0)


def test_yes_no_answers_use_log_odds_when_the_model_gives_them() -> None:
    class LogOdds:
        name = "log-odds"

        def complete(self, prompt: str, max_new_tokens: int) -> str:
            raise AssertionError("a model with log-odds is not asked to write")

        def yes_log_odds(self, prompt: str) -> float:
            return 0.3 if "yes" in prompt else -0.3

    assert answers_yes(LogOdds(), "say yes")
    assert not answers_yes(LogOdds(), "say no")
    assert parse_yes(' "Yes, it does')
    assert parse_yes("\n**yes**")
    assert not parse_yes(" No")
    assert not parse_yes("")


def test_a_local_hugging_face_model_completes_and_gives_finite_log_odds(tiny_model_dir: Path) -> None:
    from saescope.models.loading import load_model

    lm = HuggingFaceLM(load_model(str(tiny_model_dir)), name="tiny")
    assert isinstance(lm.complete("w1 w2 w3", 3), str)
    assert math.isfinite(lm.yes_log_odds("w1 w2 w3"))


# ------------------------------------------------------------------------------------------------
# The OpenAI-compatible client against a local fake server
# ------------------------------------------------------------------------------------------------


class FakeEndpoint(BaseHTTPRequestHandler):
    """Answers chat completions like the oracle (status 500 when the prompt asks for it); records requests."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeEndpoint.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        prompt = body["messages"][0]["content"]
        if "FAIL" in prompt:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"boom")
            return
        answer = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": OracleLM().complete(prompt, 1)}}]}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    FakeEndpoint.requests = []
    server = HTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_openai_compatible_client_round_trips(endpoint: str) -> None:
    lm = OpenAICompatibleLM(endpoint, "fake-model", api_key="secret")
    assert lm.complete("Text 1: a <<b>> c\nExplanation:", 20).startswith("the word b")
    [request] = FakeEndpoint.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "fake-model"
    assert request["body"]["max_tokens"] == 20
    with pytest.raises(EndpointError, match="HTTP 500"):
        lm.complete("FAIL", 3)
    with pytest.raises(ValueError, match="must start with http"):
        OpenAICompatibleLM("ftp://x", "m")


def test_the_command_scores_through_an_endpoint_and_caches(
    index: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOY_KEY", "k")
    summary = index.parent / "summary.json"
    args = [
        "autointerp", str(index), "--explainer-url", endpoint, "--explainer-api-model", "fake-model",
        "--explainer-key-env", "TOY_KEY", "--latents", "3", "--score-contexts", "4", "--json", str(summary),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| toy | 3 | 0 | 1.000 | 1.000 |" in out
    assert all(r["auth"] == "Bearer k" for r in FakeEndpoint.requests)
    assert json.loads(summary.read_text())["dictionaries"][0]["mean_detection"] == 1.0
    calls = len(FakeEndpoint.requests)
    assert main(args) == 0
    assert len(FakeEndpoint.requests) == calls  # all cached


def test_the_command_refuses_a_missing_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["autointerp", str(tmp_path / "none.sqlite"), "--explainer-url", "http://127.0.0.1:9/v1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_command_needs_the_endpoints_model_name(index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["autointerp", str(index), "--explainer-url", "http://127.0.0.1:9/v1"]) == 2
    assert "need --explainer-api-model" in capsys.readouterr().err
    assert not IndexReader(index).has_autointerp()


@pytest.mark.slow
def test_the_embedded_model_runs_the_whole_pipeline(index: Path) -> None:
    """Gemma 3 270M base as explainer and scorer on 3 latents: the pipeline runs end to end and stores what it
    wrote; its scores are near chance (a base model this small cannot explain latents), so only their range is
    checked."""
    from saescope.explore.autointerp import load_local_lm

    lm = load_local_lm("gemma-3-270m")
    [result] = run_autointerp(index, lm, lm, 3, settings=AutointerpSettings(n_score=5), progress=False)
    assert len(result.scores) == 3
    assert all(0.0 <= s.accuracy <= 1.0 and s.n_contexts == 10 for s in result.scores)
    print("embedded gemma-3-270m:", [(s.latent, s.explanation, s.accuracy) for s in result.scores])
    assert IndexReader(index).has_autointerp()


def test_contexts_mark_firing_tokens() -> None:
    context = Context(0, 1, (" a", " b", "\nc"), (0.0, 2.0, 0.0))
    assert context.marked() == " a<< b>> c"
    assert context.text() == " a b c"


def test_the_command_runs_a_local_model_as_explainer_and_scorer(
    index: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["autointerp", str(index), "--explainer", str(tiny_model_dir), "--latents", "2"]) == 0
    assert f"explainer {tiny_model_dir}, scorer {tiny_model_dir}" in capsys.readouterr().out
    with sqlite3.connect(index) as db:
        rows = db.execute("SELECT explainer, scorer, n_activating, n_non_activating FROM detection_scores").fetchall()
    assert rows == [(str(tiny_model_dir), str(tiny_model_dir), 7, 7)] * 2

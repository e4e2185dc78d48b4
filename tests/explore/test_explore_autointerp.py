"""Explanations and detection scores from `saescope autointerp` in the explorer: the latent table (a sortable
column), the feature page, and the Neuronpedia JSON; and an index without them keeps its old shape."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from explore_fixtures import CONFIG, ExploreRun, random_sae, shared_run
from fastapi.testclient import TestClient

from saescope.explore import IndexReader, build_index, read_dictionaries
from saescope.explore.autointerp import run_autointerp
from saescope.explore.server import create_app
from saescope.models.loading import load_model


class ScriptedLM:
    """Explains every latent the same way and says Yes to every context."""

    name = "scripted"

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        return "a scripted explanation" if prompt.rstrip().endswith("Explanation:") else " Yes"


@pytest.fixture(scope="module")
def scored_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared explore index (the original stays as other tests expect it) with 4 latents of
    ``random-res`` scored: the scorer always says Yes, so each scores exactly 0.5."""
    run: ExploreRun = shared_run(tmp_path_factory)
    copy = tmp_path_factory.mktemp("autointerp") / "index.sqlite"
    shutil.copyfile(run.index, copy)
    lm = ScriptedLM()
    run_autointerp(copy, lm, lm, 4, saes=["random-res"], progress=False)
    return copy


@pytest.fixture(scope="module")
def client(scored_index: Path) -> Iterator[TestClient]:
    with TestClient(create_app(scored_index), raise_server_exceptions=False) as test_client:
        yield test_client


def scored_latents(index: Path) -> list[int]:
    reader = IndexReader(index)
    _, rows = reader.latents(reader.sae("random-res"), limit=1000)  # type: ignore[arg-type]
    return [row["latent"] for row in rows if row["detection"] is not None]


def test_latent_table_sorts_by_detection_with_unscored_latents_last(client: TestClient, scored_index: Path) -> None:
    scored = scored_latents(scored_index)
    assert len(scored) == 4
    for order in ("asc", "desc"):
        answer = client.get(f"/api/saes/random-res/latents?sort=detection&order={order}&limit=24")
        assert answer.status_code == 200
        rows = answer.json()["latents"]
        assert [row["latent"] for row in rows[:4]] == sorted(scored, reverse=order == "desc")
        assert {row["detection"] for row in rows[:4]} == {0.5}
        assert {row["explanation"] for row in rows[:4]} == {"a scripted explanation"}
        assert all(row["detection"] is None and row["explanation"] is None for row in rows[4:])


def test_feature_page_and_neuronpedia_json_carry_the_explanation(client: TestClient, scored_index: Path) -> None:
    latent = scored_latents(scored_index)[0]
    [entry] = client.get(f"/api/saes/random-res/latents/{latent}").json()["autointerp"]
    assert entry["explanation"] == "a scripted explanation"
    assert entry["explainer"] == entry["scorer"] == "scripted"
    assert entry["detection"] == 0.5
    assert entry["true_positives"] == entry["n_activating"]
    assert entry["true_negatives"] == 0
    record = client.get(f"/api/saes/random-res/latents/{latent}/neuronpedia").json()
    [explanation] = record["explanations"]
    assert explanation["description"] == "a scripted explanation"
    assert explanation["explanationModelName"] == "scripted"
    assert explanation["scores"][0]["value"] == 0.5


def test_unscored_latents_and_indexes_keep_their_old_shape(
    client: TestClient, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert client.get("/api/saes/detector/latents/0").json()["autointerp"] == []
    assert "explanations" not in client.get("/api/saes/detector/latents/0/neuronpedia").json()
    original = shared_run(tmp_path_factory).index
    with TestClient(create_app(original)) as plain:
        rows = plain.get("/api/saes/detector/latents?sort=detection").json()["latents"]
    assert all(row["detection"] is None for row in rows)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it)")
def test_the_page_shows_a_sortable_detection_column_and_the_explanation(scored_index: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is a dev dependency")
    scored = scored_latents(scored_index)
    with serving(scored_index) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/#/sae/random-res")
        expect = sync_api.expect
        expect(page.locator("#latents-table tbody tr")).to_have_count(24)
        page.click("#latents-table th:text-matches('^detection')")
        expect(page).to_have_url(url + "/#/sae/random-res?sort=detection&order=desc&dead=show&page=0")
        first = [str(latent) for latent in sorted(scored, reverse=True)]
        expect(page.locator("#latents-table tbody td:nth-child(1) >> nth=0")).to_have_text(first[0])
        cells = page.locator("#latents-table tbody td.detection").all_inner_texts()
        assert cells[:4] == ["0.5"] * 4
        assert set(cells[4:]) == {"–"}
        page.goto(url + f"/#/sae/random-res/{scored[0]}")
        expect(page.locator("#autointerp")).to_contain_text("a scripted explanation")
        expect(page.locator("#autointerp")).to_contain_text("detection 0.5")
        browser.close()
    assert errors == []


@contextlib.contextmanager
def serving(index: Path) -> Iterator[str]:
    """The explorer of ``index`` on a free local port, in a thread, for the length of the block."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_rebuild_keeps_the_explanations_of_dictionaries_whose_weights_are_unchanged(
    scored_index: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    run: ExploreRun = shared_run(tmp_path_factory)
    index = tmp_path / "index.sqlite"
    shutil.copyfile(scored_index, index)
    found = read_dictionaries(run.run)
    loaded = load_model(str(run.model_dir))
    summary = build_index(loaded, found.dictionaries, run.corpus, CONFIG, index, model_name="m", progress=False)
    assert (summary.kept_explanations, summary.kept_detection_scores) == (4, 4)
    assert scored_latents(index) == scored_latents(scored_index)

    retrained = [
        dataclasses.replace(d, sae=random_sae(32, 24, seed=9)) if d.name == "random-res" else d
        for d in found.dictionaries
    ]
    summary = build_index(loaded, retrained, run.corpus, CONFIG, index, model_name="m", progress=False)
    assert (summary.kept_explanations, summary.kept_detection_scores) == (0, 0)
    assert scored_latents(index) == []

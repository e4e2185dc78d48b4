"""End to end in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

The server runs the tiny explored run in a thread; the test opens the overview, a dictionary, a feature page
(highlighted tokens with their values), runs a search by text, and opens the static export from disk.
Screenshots go to ``$SAESCOPE_ARTIFACTS`` when set, else to a pytest temporary folder; their paths are printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from explore_fixtures import DETECTED, ExploreRun, shared_run

from saescope.explore import IndexReader
from saescope.explore.export import write_static_site
from saescope.explore.live import LiveModel
from saescope.explore.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`make test` installs it: apt-get install chromium)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is a dev dependency")


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("SAESCOPE_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server_url(explore_run: ExploreRun) -> Iterator[str]:
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(explore_run.index, live=LiveModel(str(explore_run.model_dir), explore_run.run))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(artifacts: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.console_errors = []
        tab.on("console", lambda message: message.type == "error" and tab.console_errors.append(message.text))
        tab.on("pageerror", lambda error: tab.console_errors.append(str(error)))
        yield tab
        browser.close()


def screenshot(page: Any, artifacts: Path, name: str) -> Path:
    path = artifacts / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_overview_feature_page_and_search(page: Any, server_url: str, artifacts: Path) -> None:
    expect = sync_api.expect
    page.goto(server_url + "/#/")
    expect(page.locator("#suite-table tbody tr")).to_have_count(3)
    expect(page.locator(".plots img")).to_have_count(1)
    screenshot(page, artifacts, "overview.png")

    page.click("#suite-table a:text-is('random-res')")
    expect(page.locator("#latents-table tbody tr")).to_have_count(24)
    page.select_option(".controls select >> nth=0", "density")
    expect(page).to_have_url(server_url + "/#/sae/random-res?sort=density&order=desc&dead=show&page=0")
    # the URL changes before the table is re-rendered: wait for the API's order to be on screen
    listing = json.loads(
        urllib.request.urlopen(server_url + "/api/saes/random-res/latents?sort=density&order=desc").read()
    )
    expected_order = [str(row["latent"]) for row in listing["latents"]]
    expect(page.locator("#latents-table tbody td:nth-child(1)")).to_have_text(expected_order)
    densities = page.locator("#latents-table tbody td:nth-child(2)").all_inner_texts()
    values = [float(text.rstrip("%")) for text in densities]
    assert values == sorted(values, reverse=True)

    page.goto(server_url + "/#/sae/random-res/3")
    highlighted = page.locator("#top-examples .tok.active")
    expect(highlighted.first).to_be_visible()
    feature = json.loads(urllib.request.urlopen(server_url + "/api/saes/random-res/latents/3").read())
    shown = [float(text) for text in page.locator("#top-examples .example .value").all_inner_texts()]
    assert shown == pytest.approx([e["value"] for e in feature["top_examples"]], rel=5e-3)
    expect(highlighted.first).to_be_visible()
    assert highlighted.count() >= 5
    first = highlighted.first
    assert float(first.get_attribute("data-value")) > 0
    assert "rgba(255, 128, 0" in (first.get_attribute("style") or "")
    assert first.get_attribute("title").split()[-1].replace(".", "", 1).isdigit()  # hover shows the value
    expect(page.locator("#top-examples .tok.focus")).to_have_count(5)  # one example token per top example
    expect(page.locator(".group.interval").first).to_be_visible()
    first.hover()
    screenshot(page, artifacts, "feature.png")

    detected_word = f"w{DETECTED[1] - 4}"
    page.goto(server_url + "/#/search")
    page.fill("#search-text", f"w1 w2 {detected_word} w3")
    page.click("#search-run")
    expect(page.locator("#search-results .search-sae")).to_have_count(3)
    page.click("#search-results .tokens.clickable .tok[data-index='3']")
    detail = page.locator("#token-detail")
    expect(detail).to_contain_text(detected_word)
    expect(detail.locator("a[href='#/sae/detector/1']")).to_have_count(1)
    screenshot(page, artifacts, "search.png")
    detail.locator("a[href='#/sae/detector/1']").click()
    expect(page.locator("h1")).to_have_text("detector · latent 1")
    assert page.console_errors == []


def test_static_export_opens_from_disk(page: Any, explore_run: ExploreRun, tmp_path: Path, artifacts: Path) -> None:
    site = tmp_path / "site"
    write_static_site(IndexReader(explore_run.index), site, progress=False)
    page.goto((site / "index.html").as_uri() + "#/")
    sync_api.expect(page.locator("#suite-table tbody tr")).to_have_count(3)
    sync_api.expect(page.locator("nav a.live")).to_have_count(0)  # no live pages without the server
    page.goto((site / "index.html").as_uri() + "#/sae/random-att/2")
    sync_api.expect(page.locator("#top-examples .tok.active").first).to_be_visible()
    page.goto((site / "index.html").as_uri() + "#/sae/detector?sort=density&order=desc&dead=only&page=0")
    sync_api.expect(page.locator("#latents-table tbody tr")).to_have_count(1)
    screenshot(page, artifacts, "static.png")

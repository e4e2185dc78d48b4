"""Every endpoint of the explorer API, with good inputs and bad ones (which must be 4xx, never a 500)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from explore_fixtures import DETECTED, ExploreRun, shared_run
from fastapi.testclient import TestClient
from starlette.routing import Match

from saescope.explore import IndexReader
from saescope.explore import server as server_module
from saescope.explore.live import MAX_PROMPT_TOKENS, LiveModel, search_answer_bytes
from saescope.explore.server import MAX_BODY_BYTES, create_app

#: One valid intervention.
ONE = [{"sae": "detector", "latent": 0, "strength": 1}]


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def client(explore_run: ExploreRun) -> Iterator[TestClient]:
    live = LiveModel(str(explore_run.model_dir), explore_run.run)
    with TestClient(create_app(explore_run.index, live=live), raise_server_exceptions=False) as test_client:
        yield test_client


def documented_4xx(client: TestClient, method: str, path: str) -> set[int]:
    """The 4xx statuses the OpenAPI schema documents for the route that answers ``method path``."""
    scope = {"type": "http", "method": method.upper(), "path": path.split("?")[0]}
    routes = [r for r in client.app.routes if r.matches(scope)[0] == Match.FULL]  # type: ignore[attr-defined]
    assert routes, f"no route answers {method} {path}"
    template = routes[0].path
    responses = client.get("/openapi.json").json()["paths"][template][method.lower()]["responses"]
    return {int(code) for code in responses if code.startswith("4")}


def no_traceback(response: object) -> None:
    text = getattr(response, "text", "")
    assert "Traceback" not in text
    assert 'File "' not in text


def test_suite_and_dictionary_pages(client: TestClient) -> None:
    suite = client.get("/api/suite").json()
    assert [s["name"] for s in suite["saes"]] == ["detector", "random-att", "random-res"]
    assert suite["live"] is True
    assert suite["assets"] == ["fidelity_vs_l0.png"]
    assert suite["index"]["n_tokens"] == 1500
    res = next(s for s in suite["saes"] if s["name"] == "random-res")
    assert res["evaluation"]["fvu"] == 0.25  # the run's metrics.json
    assert next(s for s in suite["saes"] if s["name"] == "detector")["evaluation"] is None
    sae = client.get("/api/saes/detector").json()["sae"]
    assert (sae["site"], sae["width"], sae["n_dead"]) == ("layer_0/resid_pre", len(DETECTED), 1)
    assert all(s["parent"] is None for s in suite["saes"])  # no multi-layer dictionary in this run
    assert sae["write_sites"] == ["layer_0/resid_pre"]
    assert sum(sae["log_density_histogram"]["counts"]) + sae["log_density_histogram"]["dead"] == sae["width"]


def test_latent_lists_sort_filter_and_page(client: TestClient) -> None:
    page = client.get("/api/saes/random-res/latents", params={"sort": "density", "order": "desc", "limit": 5}).json()
    densities = [row["density"] for row in page["latents"]]
    assert page["total"] == 24
    assert len(densities) == 5
    assert densities == sorted(densities, reverse=True)
    everything = client.get("/api/saes/random-res/latents", params={"sort": "max_activation", "limit": 1000}).json()
    maxima = [row["max_activation"] for row in everything["latents"]]
    assert maxima == sorted(maxima)
    second = client.get("/api/saes/random-res/latents", params={"offset": 20, "limit": 10}).json()
    assert [row["latent"] for row in second["latents"]] == [20, 21, 22, 23]
    dead = client.get("/api/saes/detector/latents", params={"dead": "only"}).json()
    assert [row["latent"] for row in dead["latents"]] == [len(DETECTED) - 1]
    alive = client.get("/api/saes/detector/latents", params={"dead": "hide"}).json()
    assert alive["total"] == len(DETECTED) - 1


def test_feature_page_and_neuronpedia_json(client: TestClient) -> None:
    feature = client.get("/api/saes/random-att/latents/3").json()
    assert feature["latent"] == 3
    assert feature["top_examples"]
    assert all(len(e["tokens"]) == len(e["acts"]) for e in feature["top_examples"])
    assert feature["parent"] is None
    assert [w["site"] for w in feature["writes"]] == ["layer_1/att"]  # a single-layer dictionary writes one site
    detector = client.get("/api/saes/detector/latents/2").json()
    assert detector["writes"] == [{"site": "layer_0/resid_pre", "norm": pytest.approx(1.0)}]  # unit decoder rows
    record = client.get("/api/saes/random-att/latents/3/neuronpedia").json()
    assert record["index"] == "3"
    assert record["layer"] == "1-random-att"
    assert record["maxActApprox"] == feature["max_activation"]
    assert record["frac_nonzero"] == feature["density"]
    assert len(record["freq_hist_data_bar_heights"]) == len(record["freq_hist_data_bar_values"])
    assert record["pos_str"] == [t["token"] for t in feature["top_logits"]]
    top = [a for a in record["activations"] if a["binMin"] == -1]
    assert len(top) == len(feature["top_examples"])
    for activation in record["activations"]:
        assert len(activation["tokens"]) == len(activation["values"])
        assert activation["values"][activation["maxValueTokenIndex"]] == activation["maxValue"]


def test_assets_and_static_files_come_only_from_the_index_and_the_package(client: TestClient) -> None:
    png = client.get("/api/assets/fidelity_vs_l0.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    page = client.get("/")
    assert page.status_code == 200
    assert "saescope explorer" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert client.get("/static/app.js").status_code == 200
    attempts = [
        "/static/../pyproject.toml", "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..%2f..%2fstore.py",
        "/static/%2e%2e%2fstore.py", "/static//etc/passwd", "/api/assets/..%2f..%2fetc%2fpasswd",
        "/api/assets/%2e%2e", "/api/saes/..%2f..%2fetc%2fpasswd", "/api/saes/%2e%2e/latents/0",
        "/api/saes/detector/latents/0/..%2f..%2f..%2fsuite", "/etc/passwd", "/index.sqlite",
    ]  # fmt: skip
    for path in attempts:
        response = client.get(path)
        assert response.status_code in (404, 422), path
        assert "root:" not in response.text
        no_traceback(response)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/saes/nope", 404),
        ("/api/saes/<script>", 422),
        ("/api/saes/" + "a" * 300, 422),
        ("/api/saes/random-res/latents/24", 404),  # width 24: latents 0-23
        ("/api/saes/random-res/latents/-1", 422),
        ("/api/saes/random-res/latents/abc", 422),
        ("/api/saes/random-res/latents/99999999999999999999999", 422),
        ("/api/saes/random-res/latents/2147483647", 404),
        ("/api/saes/random-res/latents/24/neuronpedia", 404),
        ("/api/saes/random-res/latents?sort=name", 422),
        ("/api/saes/random-res/latents?limit=0", 422),
        ("/api/saes/random-res/latents?limit=100000", 422),
        ("/api/saes/random-res/latents?offset=-5", 422),
        ("/api/saes/random-res/latents?dead=maybe", 422),
        ("/api/assets/missing.png", 404),
    ],
)
def test_bad_reads_are_4xx(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert status in documented_4xx(client, "get", path)
    assert "detail" in response.json()
    no_traceback(response)


def test_search_by_text(client: TestClient) -> None:
    detected_word = f"w{DETECTED[1] - 4}"  # the tokenizer's ids: 4 special tokens, then w0, w1, ...
    answer = client.post("/api/search", json={"text": f"w1 w2 {detected_word} w3", "per_token": 3}).json()
    assert answer["tokens"] == ["<bos>", "w1", "w2", detected_word, "w3"]
    by_name = {sae["sae"]: sae for sae in answer["saes"]}
    assert set(by_name) == {"detector", "random-att", "random-res"}
    for sae in answer["saes"]:
        assert len(sae["per_token"]) == 5
        assert sae["per_token"][0] == []  # BOS never activates anything
        assert all(len(f["values"]) == 5 and f["values"][0] == 0 for f in sae["features"])
        assert all(len(top) <= 3 for top in sae["per_token"])
    detector = by_name["detector"]
    assert [t["latent"] for t in detector["per_token"][3]] == [1]
    assert [f["latent"] for f in detector["features"]] == [1]
    assert detector["features"][0]["max_index"] == 3
    only = client.post("/api/search", json={"text": "w1 w2", "saes": ["random-res"]}).json()
    assert [sae["sae"] for sae in only["saes"]] == ["random-res"]


def test_steering(client: TestClient) -> None:
    request = {"text": "w1 w2 w3", "max_new_tokens": 6}
    request["interventions"] = [{"sae": "random-res", "latent": 2, "strength": 0}]
    unsteered = client.post("/api/steer", json=request).json()
    assert unsteered["steered"] == unsteered["default"]
    assert len(unsteered["default_tokens"]) == 6
    request["interventions"] = [{"sae": "random-res", "latent": 2, "strength": 100.0}]
    steered = client.post("/api/steer", json=request).json()
    assert steered["default"] == unsteered["default"]  # same seed, no steering: the same continuation
    assert steered["steered"] != steered["default"]
    assert steered["interventions"][0]["coefficient"] > 0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/search", {"text": ""}, 422),
        ("/api/search", {"text": "w1 " * 1500}, 422),  # over the character limit
        ("/api/search", {"text": "w1 " * MAX_PROMPT_TOKENS}, 422),  # under it, but too many tokens
        ("/api/search", {"text": "w1", "saes": ["nope"]}, 404),
        ("/api/search", {"text": "w1", "saes": ["../etc"]}, 422),
        ("/api/search", {"text": "w1", "saes": ["detector"] * 600}, 422),
        ("/api/search", {"text": "w1", "per_token": 0}, 422),
        ("/api/search", {"text": "w1", "features": 10_000}, 422),
        ("/api/search", {"text": "w1", "unknown": 1}, 422),
        ("/api/search", {"text": 5}, 422),
        ("/api/steer", {"text": "w1", "interventions": []}, 422),
        ("/api/steer", {"text": "w1", "interventions": [{"sae": "detector", "latent": 0, "strength": 1}] * 9}, 422),
        ("/api/steer", {"text": "w1", "interventions": [{"sae": "detector", "latent": 99, "strength": 1}]}, 404),
        ("/api/steer", {"text": "w1", "interventions": [{"sae": "detector", "latent": -1, "strength": 1}]}, 422),
        ("/api/steer", {"text": "w1", "interventions": [{"sae": "nope", "latent": 0, "strength": 1}]}, 404),
        ("/api/steer", {"text": "w1", "interventions": [{"sae": "detector", "latent": 0, "strength": 1e9}]}, 422),
        ("/api/steer", {"text": "w1", "max_new_tokens": 1000, "interventions": ONE}, 422),
        ("/api/steer", {"text": "w1", "temperature": -1, "interventions": ONE}, 422),
    ],
)
def test_bad_live_requests_are_4xx(client: TestClient, path: str, body: dict, status: int) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert status in documented_4xx(client, "post", path)
    if status == 422:  # every 422 has the shape the schema gives it: a list of located problems
        assert all({"loc", "msg", "type"} <= set(problem) for problem in response.json()["detail"])
    no_traceback(response)
    assert len(response.text) < 10_000  # the error does not echo a huge input back


def test_malformed_oversized_and_unframed_bodies(client: TestClient) -> None:
    nan = '{"text": "w1", "interventions": [{"sae": "detector", "latent": 0, "strength": NaN}]}'
    assert client.post("/api/steer", content=nan, headers={"content-type": "application/json"}).status_code == 422
    broken = client.post("/api/search", content="{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422
    huge = json.dumps({"text": "w1", "padding": "x" * MAX_BODY_BYTES})
    response = client.post("/api/search", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "w1"}'

    unframed = client.post("/api/search", content=chunks(), headers={"content-type": "application/json"})
    assert unframed.status_code == 411
    for path in ("/api/search", "/api/steer"):
        not_utf8 = client.post(path, content=b'{"text": "\xff"}', headers={"content-type": "application/json"})
        assert not_utf8.status_code == 400
        assert {400, 411, 413} <= documented_4xx(client, "post", path)
    assert client.get("/api/search").status_code == 405


def test_unexpected_errors_are_a_plain_500(explore_run: ExploreRun, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = IndexReader(explore_run.index)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(reader, "feature", broken)
    with TestClient(create_app(reader), raise_server_exceptions=False) as client:
        response = client.get("/api/saes/detector/latents/0")
    assert response.status_code == 500
    assert "secret" not in response.text
    no_traceback(response)


def test_without_a_model_live_pages_say_so(explore_run: ExploreRun) -> None:
    with TestClient(create_app(explore_run.index), raise_server_exceptions=False) as client:
        assert client.get("/api/suite").json()["live"] is False
        response = client.post("/api/search", json={"text": "w1"})
        assert response.status_code == 503
    broken = LiveModel(str(explore_run.run / "no-such-model"), explore_run.run)
    with TestClient(create_app(explore_run.index, live=broken), raise_server_exceptions=False) as client:
        response = client.post("/api/search", json={"text": "w1"})
        assert response.status_code == 503
        assert "could not be loaded" in response.json()["detail"]


def test_the_openapi_schema_lists_every_endpoint(client: TestClient) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {
        "/api/suite", "/api/saes/{name}", "/api/saes/{name}/latents", "/api/saes/{name}/latents/{latent}",
        "/api/saes/{name}/latents/{latent}/neuronpedia", "/api/assets/{name}", "/api/search", "/api/steer",
    }  # fmt: skip


def test_the_openapi_schema_documents_the_4xx_answers_of_every_route(client: TestClient) -> None:
    reads = {404, 422}
    expected = {
        ("get", "/api/suite"): set(), ("get", "/api/saes/{name}"): reads, ("get", "/api/saes/{name}/latents"): reads,
        ("get", "/api/saes/{name}/latents/{latent}"): reads,
        ("get", "/api/saes/{name}/latents/{latent}/neuronpedia"): reads, ("get", "/api/assets/{name}"): reads,
        ("post", "/api/search"): {400, 404, 411, 413, 422}, ("post", "/api/steer"): {400, 404, 411, 413, 422},
    }  # fmt: skip
    schema = client.get("/openapi.json").json()
    found = {
        (method, path): {int(code) for code in operation["responses"] if code.startswith("4")}
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }
    assert found == expected
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                assert response.get("description"), (path, code)
                if code in ("400", "404", "411", "413", "503"):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorMessage"
                    }
    assert all("503" in operations["post"]["responses"] for path, operations in schema["paths"].items()
               if path in ("/api/search", "/api/steer"))  # fmt: skip


def test_search_names_each_dictionary_once_however_often_it_is_asked_for(client: TestClient) -> None:
    once = client.post("/api/search", json={"text": "w1 w2", "saes": ["random-res"]})
    repeated = client.post("/api/search", json={"text": "w1 w2", "saes": ["random-res", "detector"] * 256})
    assert repeated.status_code == 200
    assert [sae["sae"] for sae in repeated.json()["saes"]] == ["random-res", "detector"]
    assert repeated.json()["saes"][0] == once.json()["saes"][0]


def test_search_is_refused_before_running_when_its_answer_could_exceed_the_bound(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = {"text": "w1 w2 w3 w4", "per_token": 20, "features": 50}  # 5 tokens with BOS
    bound = search_answer_bytes(1, 5, 20, 50)
    monkeypatch.setattr(server_module, "MAX_SEARCH_ANSWER_BYTES", bound)
    one = client.post("/api/search", json={**request, "saes": ["random-res"]})
    assert one.status_code == 200
    assert len(json.dumps(one.json()["saes"])) <= bound
    every = client.post("/api/search", json=request)  # all 3 dictionaries
    assert every.status_code == 400
    assert "limit" in every.json()["detail"]
    assert "fewer dictionaries" in every.json()["detail"]
    assert 400 in documented_4xx(client, "post", "/api/search")

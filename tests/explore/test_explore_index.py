"""The feature index of a tiny run against what the weights and a dense computation say it must hold."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from explore_fixtures import CONFIG, DETECTED, SETTINGS, ExploreRun, shared_run

from saescope.data.corpus import corpus_windows
from saescope.data.windows import WindowBatch, special_token_ids, spread_windows, windows_for_tokens
from saescope.explore import IndexReader, build_index, read_dictionaries
from saescope.explore import index as index_module
from saescope.explore.weights import unembedding
from saescope.models.hooks import capture
from saescope.models.loading import LoadedModel, load_model


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


@dataclass(frozen=True)
class Dense:
    """Every indexed token at once: its location (window * T + position), token id, and each dictionary's codes."""

    locations: torch.Tensor
    token_ids: torch.Tensor
    windows: torch.Tensor
    codes: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def loaded(explore_run: ExploreRun) -> LoadedModel:
    return load_model(str(explore_run.model_dir))


@pytest.fixture(scope="module")
def dense(explore_run: ExploreRun, loaded: LoadedModel) -> Dense:
    corpus = explore_run.corpus
    needed = windows_for_tokens(CONFIG.tokens, corpus.context_size)  # the index samples the split this way
    batch = WindowBatch.stack(list(spread_windows(corpus_windows(corpus, loaded.tokenizer, "heldout"), needed)))
    windows, keep = batch.ids_BT, batch.kept_positions(special_token_ids(loaded.tokenizer))
    dictionaries = read_dictionaries(explore_run.run).dictionaries
    acts = capture(loaded.model, sorted({d.site for d in dictionaries}), windows)
    T = windows.shape[1]
    locations = (torch.arange(windows.numel()).view_as(windows))[keep][: CONFIG.tokens]
    with torch.no_grad():
        codes = {d.name: d.sae.encode(acts[d.site][keep][: CONFIG.tokens].float()) for d in dictionaries}
    assert explore_run.corpus.context_size == T
    return Dense(locations, windows.reshape(-1)[locations], windows, codes)


def test_the_detector_fires_exactly_on_its_tokens_and_its_examples_show_them(
    explore_run: ExploreRun, loaded: LoadedModel, dense: Dense
) -> None:
    reader = IndexReader(explore_run.index)
    detector = next(d for d in read_dictionaries(explore_run.run).dictionaries if d.name == "detector")
    with torch.no_grad():  # from the weights alone: which vocabulary tokens make each latent fire
        every_token = loaded.model.get_input_embeddings()(torch.arange(loaded.info.vocab_size)).float()
        fires_VF = detector.sae.encode(every_token) > 0
    for j, token in enumerate(DETECTED):
        assert fires_VF[:, j].nonzero().squeeze(1).tolist() == [token]
    sae = reader.sae("detector")
    assert sae is not None
    assert reader.meta["n_tokens"] == CONFIG.tokens == len(dense.token_ids)
    for j, token in enumerate(DETECTED):
        feature = reader.feature(sae, j)
        assert feature is not None
        occurrences = int((dense.token_ids == token).sum())
        assert feature["fire_count"] == occurrences
        assert feature["density"] == pytest.approx(occurrences / CONFIG.tokens)
        assert feature["dead"] == (occurrences == 0)
        assert len(feature["top_examples"]) == min(SETTINGS.top_k, occurrences)
        examples = feature["top_examples"] + [e for i in feature["intervals"] for e in i["examples"]]
        for example in examples:
            assert example["token_ids"][example["focus"]] == token
            assert example["acts"][example["focus"]] == example["value"] == pytest.approx(feature["max_activation"])
    assert DETECTED[-1] not in dense.token_ids.tolist()
    dead = reader.feature(sae, len(DETECTED) - 1)
    assert dead is not None
    assert dead["dead"]
    assert dead["top_examples"] == dead["intervals"] == []
    assert sae.n_dead == 1


@pytest.mark.parametrize("name", ["random-res", "random-att"])
def test_statistics_examples_and_intervals_match_a_dense_computation(
    explore_run: ExploreRun, dense: Dense, name: str
) -> None:
    reader = IndexReader(explore_run.index)
    sae = reader.sae(name)
    assert sae is not None
    codes_NF = dense.codes[name]
    location_row = {int(loc): row for row, loc in enumerate(dense.locations)}
    T = explore_run.corpus.context_size
    special = {0, 1, 2}
    for latent in range(sae.width):
        feature = reader.feature(sae, latent)
        assert feature is not None
        values = codes_NF[:, latent]
        fired = values[values > 0].double()
        assert feature["fire_count"] == len(fired)
        assert feature["max_activation"] == pytest.approx(float(values.max()))
        assert feature["mean_activation"] == pytest.approx(float(fired.mean()))
        # Top examples: the k largest activations, each at a location that has it. (Batched and unbatched
        # forwards differ in the last bits, so near-ties may order differently: compare values, not locations.)
        top_values = values.topk(SETTINGS.top_k).values
        assert [e["value"] for e in feature["top_examples"]] == pytest.approx(top_values.tolist())
        for example in feature["top_examples"]:
            row = location_row[example["window"] * T + example["position"]]
            assert float(values[row]) == pytest.approx(example["value"])
        # Histogram and intervals on the power-of-two grid.
        scale = feature["histogram"]["bin_width"] * SETTINGS.histogram_bins
        expected = torch.bincount(torch.floor(fired * SETTINGS.histogram_bins / scale).long().clamp(max=63))
        assert feature["histogram"]["counts"] == expected.tolist()
        interval_of = torch.floor(fired * SETTINGS.intervals / scale).long().clamp(max=SETTINGS.intervals - 1)
        for interval in feature["intervals"]:
            k = interval["interval"]
            assert interval["fire_count"] == int((interval_of == k).sum())
            assert len(interval["examples"]) == min(SETTINGS.samples_per_interval, interval["fire_count"])
            for example in interval["examples"]:
                v = example["value"]
                assert interval["lo"] <= v < interval["hi"] or (interval["closed"] and v == interval["hi"])
                assert v == pytest.approx(float(values[location_row[example["window"] * T + example["position"]]]))
        # Every example: the window's tokens around it, and this latent's codes on them; never a special token.
        for example in feature["top_examples"] + [e for i in feature["intervals"] for e in i["examples"]]:
            window, position, focus = example["window"], example["position"], example["focus"]
            first = position - focus
            assert example["token_ids"] == dense.windows[window, first : first + len(example["token_ids"])].tolist()
            assert example["token_ids"][focus] not in special
            expected_acts = [
                float(values[location_row[window * T + p]]) if window * T + p in location_row else 0.0
                for p in range(first, first + len(example["token_ids"]))
            ]
            assert example["acts"] == pytest.approx(expected_acts)


def test_logit_effects_and_neighbours_match_brute_force(explore_run: ExploreRun, loaded: LoadedModel) -> None:
    reader = IndexReader(explore_run.index)
    W_U = unembedding(loaded.model).float()
    norm = loaded.model.model.norm
    torch.testing.assert_close(W_U, loaded.model.lm_head.weight * (1 + norm.weight), rtol=0, atol=1e-5)
    for d in read_dictionaries(explore_run.run).dictionaries:
        directions = d.sae.W_dec_FD.detach()
        if d.site.kind.value == "att":
            o_proj = loaded.model.model.layers[d.site.layer].self_attn.o_proj
            directions = directions @ o_proj.weight.T
        logits = directions @ W_U.T
        unit = d.sae.W_dec_FD / d.sae.W_dec_FD.norm(dim=1, keepdim=True)
        cosines = (unit @ unit.T).fill_diagonal_(-2)
        sae = reader.sae(d.name)
        assert sae is not None
        for latent in range(sae.width):
            feature = reader.feature(sae, latent)
            assert feature is not None
            top = logits[latent].topk(CONFIG.logit_tokens)
            bottom = logits[latent].topk(CONFIG.logit_tokens, largest=False)
            assert [t["token_id"] for t in feature["top_logits"]] == top.indices.tolist()
            assert [t["value"] for t in feature["top_logits"]] == pytest.approx(top.values.tolist(), abs=1e-5)
            assert [t["token_id"] for t in feature["bottom_logits"]] == bottom.indices.tolist()
            near = cosines[latent].topk(CONFIG.neighbours)
            expected = [(d.name, j) for j in near.indices.tolist()]
            assert [(n["sae"], n["latent"]) for n in feature["neighbours"]] == expected
            assert [n["cosine"] for n in feature["neighbours"]] == pytest.approx(near.values.tolist(), abs=1e-5)


def test_the_file_has_its_schema_indexes_and_opens_read_only(explore_run: ExploreRun) -> None:
    reader = IndexReader(explore_run.index)
    assert reader.meta["schema_version"] == 2
    db = reader._db()
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"latents_by_density", "latents_by_max", "latents_by_mean"} <= names
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN SELECT latent FROM latents WHERE sae_id = 0 "
                                                "ORDER BY density DESC, latent DESC LIMIT 5"))  # fmt: skip
    assert "latents_by_density" in plan
    with pytest.raises(sqlite3.OperationalError):
        db.execute("DELETE FROM latents")
    assert reader.asset_names() == ["fidelity_vs_l0.png"]


def test_a_failed_build_leaves_the_previous_index_and_no_temporary_file(
    explore_run: ExploreRun, loaded: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "index.sqlite"
    target.write_bytes(explore_run.index.read_bytes())
    before = target.read_bytes()

    def broken(*_args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_module, "_example_rows", broken)
    found = read_dictionaries(explore_run.run)
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(loaded, found.dictionaries, explore_run.corpus, CONFIG, target, model_name="m", progress=False)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.sqlite"]


def test_the_index_is_deterministic(explore_run: ExploreRun, loaded: LoadedModel, tmp_path: Path) -> None:
    found = read_dictionaries(explore_run.run)
    again = tmp_path / "again.sqlite"
    build_index(loaded, found.dictionaries, explore_run.corpus, CONFIG, again, model_name="m", progress=False)
    first, second = IndexReader(explore_run.index), IndexReader(again)
    for name in ("random-res", "random-att"):
        sae_a, sae_b = first.sae(name), second.sae(name)
        assert sae_a is not None
        assert sae_b is not None
        for latent in range(sae_a.width):
            assert first.feature(sae_a, latent) == second.feature(sae_b, latent)

"""Saved configs by version (saescope.versions): the mechanism, every version-1 fixture read in today's form, and
a guard that a field added to a saved config comes with a migration step."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from saescope.atomic import atomic_write_checksummed
from saescope.data.cache import ActivationCache, CacheSettings, read_cache_manifest
from saescope.data.corpus import CorpusConfig
from saescope.data.sources import current_source_record, same_source, source_identity
from saescope.dictionaries.folder import DICTIONARY_CONFIG_SCHEMA, read_trained_sae, write_dictionary_folder
from saescope.models.sites import Site
from saescope.pipeline import CONFIG_FILE, RunConfig, SuiteRun
from saescope.sae import DictionaryConfig, build_any_dictionary
from saescope.train.checkpoint import current_identity, read_checkpoint
from saescope.train.settings import TRAIN_CONFIG_SCHEMA, SAESpec, TrainConfig
from saescope.versions import SCHEMA_VERSION, NewerSchemaError, RecordSchema
from v1_fixtures import RUN_CONFIG, V1_FINISHED, V1_RUN


def _add(field: str, value: Any) -> Any:
    return lambda record: {**record, field: value}


COUNTER = RecordSchema("counter", (_add("b", 2), _add("c", 3)))


def test_a_record_without_a_version_is_version_1_and_runs_every_step() -> None:
    assert COUNTER.version == 3
    assert COUNTER.migrate({"a": 1}, origin="x") == {SCHEMA_VERSION: 3, "a": 1, "b": 2, "c": 3}


def test_a_record_runs_only_the_steps_after_its_version_and_is_not_changed() -> None:
    saved = {SCHEMA_VERSION: 2, "a": 1, "b": 20}
    assert COUNTER.migrate(saved, origin="x") == {SCHEMA_VERSION: 3, "a": 1, "b": 20, "c": 3}
    assert saved == {SCHEMA_VERSION: 2, "a": 1, "b": 20}
    assert COUNTER.migrate(COUNTER.stamp({"a": 1}), origin="x") == {SCHEMA_VERSION: 3, "a": 1}


def test_a_newer_version_is_refused_naming_the_file_and_saying_to_upgrade() -> None:
    with pytest.raises(NewerSchemaError, match=r"run/x\.json: the counter was written by a newer saescope.*upgrade"):
        COUNTER.migrate({SCHEMA_VERSION: 4}, origin="run/x.json")


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, True, None])
def test_a_version_that_is_not_a_whole_number_from_1_is_named(version: object) -> None:
    with pytest.raises(ValueError, match=r"x\.json: schema_version of the counter is"):
        COUNTER.migrate({SCHEMA_VERSION: version}, origin="x.json")


# --- every version-1 fixture reads in today's form, holding every field today's saescope saves ------------------
def _json(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def test_the_v1_run_config_reads_as_the_run_that_wrote_it_with_every_field() -> None:
    record = _json(V1_RUN / CONFIG_FILE)
    assert SCHEMA_VERSION not in record
    config = RunConfig.from_record(record)
    assert config == RUN_CONFIG
    assert config.to_dict().keys() == RunConfig().to_dict().keys()


def test_the_v1_cache_manifest_reads_with_its_corpus_in_todays_form() -> None:
    manifest = read_cache_manifest(V1_RUN / "cache" / "manifest.json")
    corpus = manifest["settings"]["corpus"]
    assert set(corpus) == set(CorpusConfig().to_dict())  # a field without a migration step fails here
    assert CorpusConfig.from_dict(corpus) == RUN_CONFIG.corpus_config()  # stream order: window_shuffle_tokens 0
    sites = tuple(Site.parse(site) for site in manifest["settings"]["sites"])
    today = CacheSettings("m", sites, dict.fromkeys(sites, 1), "bfloat16", RUN_CONFIG.corpus_config().to_dict(), 16, 1)
    assert set(manifest["settings"]) == set(today.identity())
    assert manifest["settings"]["corpus"] == today.identity()["corpus"]


def test_the_v1_source_record_matches_the_identity_of_the_v1_cache() -> None:
    recorded = current_source_record(_json(V1_RUN / "train" / "source.json"), origin="source.json")
    identity = source_identity(ActivationCache(V1_RUN / "cache"))
    assert identity is not None
    assert recorded.keys() == identity.keys()
    assert same_source(recorded, identity)


def test_the_v1_checkpoint_identity_reads_as_todays_settings_and_specs() -> None:
    state = read_checkpoint(V1_RUN / "train" / "checkpoint.pt", "cpu", start_over="")
    assert "plain_error_share" not in state["identity"]["config"]  # version 1 left it out at its default
    identity = current_identity(state["identity"], origin="checkpoint.pt")
    config = TrainConfig.from_dict(identity["config"], progress=False)
    assert config.to_dict() == RUN_CONFIG.train_config().to_dict() == identity["config"]
    assert identity["config"].keys() == TrainConfig(total_tokens=4096).to_dict().keys()
    for spec in identity["specs"]:
        assert SAESpec.from_dict(spec).to_dict() == spec
        assert spec.keys() == _a_spec().to_dict().keys()
        assert spec["dictionary"].keys() == _a_spec().to_dict()["dictionary"].keys()  # a DictionaryConfig field too


@pytest.mark.parametrize("name", sorted(p.name for p in V1_FINISHED.glob("*.config.json")))
def test_a_v1_dictionary_config_reads_as_its_spec_and_training_settings(name: str) -> None:
    saved = _json(V1_FINISHED / name)
    spec = DICTIONARY_CONFIG_SCHEMA.migrate(saved, origin=name)
    assert SAESpec.from_dict({key: spec[key] for key in _a_spec().to_dict()}).name == saved["name"]
    training = TRAIN_CONFIG_SCHEMA.migrate(saved["training"], origin=name)
    assert TrainConfig.from_dict({k: v for k, v in training.items() if k not in ("steps_done", "tokens_seen")})


@pytest.mark.parametrize("name", sorted(p.name.removesuffix(".config.json") for p in V1_FINISHED.glob("*.config.json")))
def test_a_v1_dictionary_folder_is_read_with_its_config_in_todays_form(name: str, tmp_path: Path) -> None:
    shutil.copyfile(V1_FINISHED / f"{name}.config.json", tmp_path / "config.json")
    shutil.copyfile(V1_FINISHED / f"{name}.safetensors", tmp_path / "sae.safetensors")
    entry = read_trained_sae(tmp_path)
    assert entry.config[SCHEMA_VERSION] == DICTIONARY_CONFIG_SCHEMA.version
    assert entry.config["init_from"] is None
    assert entry.site_out == (Site.parse("layer_1/mlp") if "transcoder" in name else None)


def test_a_dictionary_config_of_a_newer_saescope_is_refused(tmp_path: Path) -> None:
    spec = _a_spec()
    config = _newer({**spec.to_dict(), "norm_scale": 1.0})
    write_dictionary_folder(tmp_path, build_any_dictionary(spec.dictionary), config)
    with pytest.raises(NewerSchemaError, match=r"config\.json: the dictionary config was written by a newer saescope"):
        read_trained_sae(tmp_path)


def _a_spec() -> SAESpec:
    return SAESpec("s", Site.parse("layer_0/res"), DictionaryConfig(d_in=4, width=8))


# --- round trips ---------------------------------------------------------------------------------------------
def test_configs_round_trip_through_json() -> None:
    def through_json(data: dict[str, Any]) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(json.dumps(data))
        return loaded

    train = TrainConfig(total_tokens=1000, batch_size=10, plain_error_share=0.3, adam_betas=(0.9, 0.99))
    assert TrainConfig.from_dict(through_json(train.to_dict())) == train
    transcoder = SAESpec(
        "t", Site.parse("layer_1/mlp_in"), DictionaryConfig(d_in=4, width=8), target_l0=2.0,
        site_out=Site.parse("layer_1/mlp"), init_from="parent",
    )  # fmt: skip
    for spec in (_a_spec(), transcoder):
        assert SAESpec.from_dict(through_json(spec.to_dict())).to_dict() == spec.to_dict()
    assert RunConfig.from_record(through_json(RUN_CONFIG.to_dict())) == RUN_CONFIG
    corpus = CorpusConfig(chat_template="gemma", max_documents=5)
    assert CorpusConfig.from_dict(through_json(corpus.to_dict())) == corpus


# --- a record of a newer saescope is refused where it is read --------------------------------------------------
def _newer(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, SCHEMA_VERSION: 99}


def test_a_run_config_of_a_newer_saescope_is_refused(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(json.dumps(_newer(RUN_CONFIG.to_dict())))
    with pytest.raises(NewerSchemaError, match=r"run_config\.json: the run config was written by a newer saescope"):
        SuiteRun.resume(tmp_path, log=lambda _: None)


@pytest.mark.parametrize("inside", [False, True])
def test_a_cache_manifest_of_a_newer_saescope_is_refused(tmp_path: Path, inside: bool) -> None:
    shutil.copytree(V1_RUN / "cache", tmp_path / "cache")
    path = tmp_path / "cache" / "manifest.json"
    manifest = _json(path)
    if inside:
        manifest["settings"]["corpus"] = _newer(manifest["settings"]["corpus"])
    path.write_text(json.dumps(manifest if inside else _newer(manifest)))
    with pytest.raises(NewerSchemaError, match=r"manifest\.json.*newer saescope"):
        ActivationCache(tmp_path / "cache")


def test_a_checkpoint_of_a_newer_saescope_is_refused(tmp_path: Path) -> None:
    state = read_checkpoint(V1_RUN / "train" / "checkpoint.pt", "cpu", start_over="")
    state["identity"]["config"] = _newer(state["identity"]["config"])
    atomic_write_checksummed(tmp_path / "checkpoint.pt", lambda handle: torch.save(state, handle))
    read = read_checkpoint(tmp_path / "checkpoint.pt", "cpu", start_over="")
    with pytest.raises(NewerSchemaError, match=r"checkpoint\.pt, identity\.config: the training settings"):
        current_identity(read["identity"], origin=str(tmp_path / "checkpoint.pt"))


def test_a_source_record_of_a_newer_saescope_is_refused() -> None:
    with pytest.raises(NewerSchemaError, match=r"source\.json: the training source record"):
        current_source_record(_newer(_json(V1_RUN / "train" / "source.json")), origin="source.json")


# --- a digest stored on disk as a name -------------------------------------------------------------------------
def test_the_fidelity_benchmark_names_a_training_folder_as_it_did_before_configs_carried_a_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = importlib.util.spec_from_file_location(
        "saescope_fidelity", Path(__file__).parents[1] / "benchmarks/fidelity.py"
    )
    assert spec is not None
    assert spec.loader is not None
    fidelity = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fidelity)  # its dataclasses look their module up there
    spec.loader.exec_module(fidelity)
    identity_v1 = read_checkpoint(V1_RUN / "train" / "checkpoint.pt", "cpu", start_over="")["identity"]
    named_then = hashlib.sha256(json.dumps(identity_v1, sort_keys=True).encode()).hexdigest()[:10]  # as main named it
    identity = current_identity(identity_v1, origin="checkpoint.pt")
    specs = [SAESpec.from_dict(saved) for saved in identity["specs"]]
    assert {saved["site_out"] for saved in identity["specs"]} == {None, "layer_1/mlp"}  # an SAE and a transcoder
    assert fidelity.training_folder_digest(specs, TrainConfig.from_dict(identity["config"])) == named_then

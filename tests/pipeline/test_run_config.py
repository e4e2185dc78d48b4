"""Run settings: presets, validation, and run folders written before a setting existed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from saescope.data.corpus import DEFAULT_WINDOW_SHUFFLE_TOKENS
from saescope.dictionaries.folder import DICTIONARY_CONFIG_SCHEMA
from saescope.models.sites import Site, all_sites
from saescope.pipeline import CONFIG_FILE, RunConfig, SuiteRun, list_presets, load_preset, suite_specs
from saescope.train.settings import TRAIN_CONFIG_SCHEMA
from saescope.train.specs import DICTIONARY_KINDS, MULTI_LAYER_KINDS, parse_target_l0, parse_width


def test_presets_shuffle_training_windows_and_the_corpus_config_carries_it() -> None:
    config = load_preset("default")
    assert config.window_shuffle_tokens == DEFAULT_WINDOW_SHUFFLE_TOKENS
    assert config.corpus_config().window_shuffle_tokens == DEFAULT_WINDOW_SHUFFLE_TOKENS
    assert load_preset("default", {"window_shuffle_tokens": 0}).corpus_config().window_shuffle_tokens == 0


def test_negative_window_shuffle_is_refused() -> None:
    with pytest.raises(ValueError, match="window_shuffle_tokens must be a non-negative integer"):
        load_preset("default", {"window_shuffle_tokens": -1})


def test_a_run_recorded_before_window_shuffling_resumes_in_stream_order(tmp_path: Path) -> None:
    record = load_preset("smoke").to_dict()
    del record["schema_version"], record["window_shuffle_tokens"]  # a run_config.json written before the setting
    folder = tmp_path / "old-run"
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(json.dumps(record))

    assert SuiteRun.resume(folder, log=lambda _: None).config.window_shuffle_tokens == 0
    assert RunConfig.from_record(record).corpus_config().window_shuffle_tokens == 0
    # Starting today's default over it would train on other windows than its checkpoint did.
    with pytest.raises(ValueError, match="already holds a run with other settings"):
        SuiteRun.create(folder, load_preset("smoke"), log=lambda _: None)
    same = dataclasses.replace(load_preset("smoke"), window_shuffle_tokens=0)
    assert SuiteRun.create(folder, same, log=lambda _: None).config == same


RECORDS = Path(__file__).parent / "records"
#: A run_config.json as saescope wrote it at commit 830348c (recipe settings as top-level fields, None = the
#: recipe's), next to the training settings and specs that commit derived from it.
OLD_RECORD = RECORDS / "run_config-830348c-smoke.json"
OLD_EXPECTED = RECORDS / "run_config-830348c-smoke.expected.json"
#: Site widths of Gemma 3 270M by kind (the model is not loaded by these tests).
WIDTHS_270M = {"res": 640, "att": 1024, "mlp": 640, "mlp_in": 640, "att_in": 640}


def fake_site_widths(n_layers: int) -> dict[Site, int]:
    return {site: WIDTHS_270M.get(site.kind.value, 640) for site in all_sites(n_layers)}


def test_a_run_recorded_by_an_older_saescope_trains_exactly_as_it_did(tmp_path: Path) -> None:
    record = json.loads(OLD_RECORD.read_text())
    expected = json.loads(OLD_EXPECTED.read_text())
    config = RunConfig.from_record(record)
    assert config.recipe_settings == {"lr": 0.002, "lr_warmup_steps": 2, "lr_decay_fraction": 0.3,
                                      "l0_coefficient": 1e-3}  # fmt: skip
    # The expected records are of version 1; today's are the same settings in today's form.
    expected_config = TRAIN_CONFIG_SCHEMA.migrate(expected["train_config"], origin=OLD_EXPECTED.name)
    assert json.loads(json.dumps(config.train_config().to_dict())) == expected_config
    specs = {spec.name: spec for spec in suite_specs(config, 18, fake_site_widths(18))}
    expected_specs = [DICTIONARY_CONFIG_SCHEMA.migrate(spec, origin=OLD_EXPECTED.name) for spec in expected["specs"]]
    assert [specs[spec["name"]].to_dict() for spec in expected_specs] == expected_specs
    folder = tmp_path / "old-run"
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(OLD_RECORD.read_text())
    resumed = SuiteRun.resume(folder, log=lambda _: None)
    assert resumed.config == config
    assert SuiteRun.create(folder, config, log=lambda _: None).config == config  # the same run, not "other settings"


def test_preset_keys_that_name_recipe_settings_become_the_runs_recipe_settings() -> None:
    smoke = load_preset("smoke")
    assert smoke.recipe_settings == {"lr": 2e-3, "lr_warmup_steps": 2}
    assert smoke.training_recipe().lr == 2e-3
    assert load_preset("smoke", {"lr": "1e-3"}).training_recipe().lr == 1e-3  # an override (`--set lr=1e-3`) wins
    assert "recipe_settings" in smoke.to_dict()
    assert "lr" not in smoke.to_dict()


def test_unknown_run_settings_and_bad_recipe_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown run setting\(s\) \['learning_rate'\].*recipe settings: lr, "):
        load_preset("smoke", {"learning_rate": 1e-3})
    with pytest.raises(ValueError, match="max_firing_rate must be in"):
        load_preset("smoke", {"max_firing_rate": 2.0})
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        load_preset("smoke", {"recipe": "fast"})


def test_fewer_tokens_than_one_batch_are_refused() -> None:
    with pytest.raises(ValueError, match=r"training tokens \(100\) are fewer than one batch \(1024 tokens\)"):
        load_preset("smoke", {"tokens": 100})


@pytest.mark.parametrize("preset", sorted(list_presets()))
def test_every_preset_gives_every_dictionary_kind_a_target_l0(preset: str) -> None:
    config = load_preset(preset, {"kinds": ",".join(DICTIONARY_KINDS)})
    n_layers = 18
    if config.target_l0 is not None and config.training_recipe().l0_steering == "quadratic":
        # GS2's quadratic penalty is per layer: such a recipe says so for multi-layer kinds, and trains the others
        with pytest.raises(ValueError, match="multi-layer dictionaries aim at an L0 with the controller"):
            suite_specs(config, n_layers, fake_site_widths(n_layers))
        single = ",".join(kind for kind in DICTIONARY_KINDS if kind not in MULTI_LAYER_KINDS)
        specs = suite_specs(load_preset(preset, {"kinds": single}), n_layers, fake_site_widths(n_layers))
        assert {"transcoder", "skip_transcoder"} <= {spec.name.split("-")[1] for spec in specs}
        return
    specs = suite_specs(config, n_layers, fake_site_widths(n_layers))
    kinds_built = {spec.name.split("-")[0] if spec.layers else spec.name.split("-")[1] for spec in specs}
    assert {"transcoder", "skip_transcoder", "clt", "skip_clt", "crosscoder"} <= kinds_built
    assert kinds_built & {"res", "att", "mlp"}  # and the preset's SAEs
    targets = parse_target_l0(config.target_l0)
    if isinstance(targets, dict):  # per-kind targets: a CLT without its own fires on its SAEs' share of latents
        (clt,) = [spec for spec in specs if spec.name.startswith("clt-")]
        sae_width = parse_width(config.widths.split(",")[0])
        clt_width = parse_width((config.multi_layer_widths or config.widths).split(",")[0])
        assert clt.target_l0 == targets.get("clt", [targets["mlp"][0] * clt_width / sae_width])[0]


def test_a_transcoder_kind_without_a_target_of_its_own_takes_the_mlp_target_at_the_same_latent_share() -> None:
    """The transcoders preset names every kind's target; the defaults give the same ones."""
    preset = load_preset("transcoders")
    assert isinstance(preset.target_l0, dict)
    named = {spec.name: spec.target_l0 for spec in suite_specs(preset, 18, fake_site_widths(18))}
    derived_config = load_preset("transcoders", {"target_l0": {"mlp": preset.target_l0["mlp"]}})
    derived = {spec.name: spec.target_l0 for spec in suite_specs(derived_config, 18, fake_site_widths(18))}
    assert derived == named

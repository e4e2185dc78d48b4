"""saescope.dictionaries.folder: one writer and one reader of a trained dictionary folder, and where its
evaluation metrics live (the run's eval folder; beside the weights in runs made before it existed)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from saescope.atomic import CorruptFileError
from saescope.dictionaries import (
    DictionaryFormatError,
    eval_folder,
    metrics_path,
    read_suite,
    read_trained_sae,
    write_dictionary_folder,
    write_metrics,
)
from saescope.dictionaries.folder import L0_FROM_METRICS, L0_FROM_TRAINING
from saescope.models.sites import Site
from saescope.release.common import ReleaseFormatError
from saescope.sae import DictionaryConfig, build_dictionary

SRC = Path(__file__).resolve().parents[2] / "src" / "saescope"


def dictionary_config(name: str, site: str = "layer_1/res", l0: float = 12.0) -> dict[str, Any]:
    """What the trainer records beside the weights (abridged)."""
    return {
        "name": name,
        "site": site,
        "dictionary": DictionaryConfig(d_in=8, width=16).to_dict(),
        "norm_scale": 2.5,
        "final_batch_metrics": {"l0": l0, "fvu": 0.25},
    }


def write_trained(training: Path, name: str, seed: int = 0, **config: Any) -> Path:
    sae = build_dictionary(DictionaryConfig(d_in=8, width=16), generator=torch.Generator().manual_seed(seed))
    folder = training / "saes" / name
    write_dictionary_folder(folder, sae, {**dictionary_config(name), **config})
    return folder


def test_a_written_folder_reads_back_with_its_weights_sites_and_format(tmp_path: Path) -> None:
    sae = build_dictionary(DictionaryConfig(d_in=8, width=16), generator=torch.Generator().manual_seed(3))
    folder = tmp_path / "saes" / "a"
    write_dictionary_folder(folder, sae, dictionary_config("a", site="layer_2/att"))
    assert json.loads((folder / "config.json").read_text())["format"] == "saescope-dictionary-v1"
    assert (folder / "sae.safetensors.sha256").is_file()
    entry = read_trained_sae(folder)
    assert entry.site == Site.parse("layer_2/att")
    assert entry.input_sites == entry.output_sites == (Site.parse("layer_2/att"),)
    assert (entry.l0, entry.l0_source) == (12.0, L0_FROM_TRAINING)
    for key, value in entry.training_space().state_dict().items():
        torch.testing.assert_close(value, sae.state_dict()[key], rtol=0, atol=0)


def test_corrupted_weights_are_refused_with_the_file_named(tmp_path: Path) -> None:
    folder = write_trained(tmp_path, "a")
    weights = folder / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=re.escape("sae.safetensors")):
        read_trained_sae(folder).training_space()


def test_the_folder_error_is_the_release_format_error(tmp_path: Path) -> None:
    folder = tmp_path / "saes" / "a"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ReleaseFormatError, match=re.escape("config.json: format is 'something-else'")):
        read_trained_sae(folder)
    assert ReleaseFormatError is DictionaryFormatError


def test_a_run_evaluates_into_its_own_eval_folder_beside_train(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "default"
    (run / "train").mkdir(parents=True)
    (run / "run_config.json").write_text("{}")
    folder = write_trained(run / "train", "layer_1-res")
    assert eval_folder(folder) == run / "eval" / "layer_1-res"


def test_a_training_folder_evaluates_into_its_eval_folder(tmp_path: Path) -> None:
    folder = write_trained(tmp_path / "layer6", "a")
    assert eval_folder(folder) == tmp_path / "layer6" / "eval" / "a"
    # a folder named train that is not inside a saescope run is a training folder like any other
    assert eval_folder(write_trained(tmp_path / "train", "b")) == tmp_path / "train" / "eval" / "b"


def test_a_lone_dictionary_folder_keeps_its_metrics_beside_its_weights(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    write_dictionary_folder(folder, build_dictionary(DictionaryConfig(d_in=8, width=16)), dictionary_config("m"))
    assert eval_folder(folder) == folder


def test_metrics_in_the_eval_folder_name_the_l0_and_never_touch_the_training_folder(tmp_path: Path) -> None:
    folder = write_trained(tmp_path, "a")
    before = sorted(path.name for path in folder.iterdir())
    written = write_metrics(eval_folder(folder), {"reconstruction": {"l0": 14.5}})
    assert written == tmp_path / "eval" / "a" / "metrics.json"
    assert sorted(path.name for path in folder.iterdir()) == before
    entry = read_trained_sae(folder)
    assert (entry.l0, entry.l0_source) == (14.5, L0_FROM_METRICS)
    assert entry.metrics == {"reconstruction": {"l0": 14.5}}


def test_metrics_beside_the_weights_from_older_runs_are_still_read(tmp_path: Path) -> None:
    folder = write_trained(tmp_path, "a")
    (folder / "metrics.json").write_text(json.dumps({"reconstruction": {"l0": 9.0}}))
    assert metrics_path(folder) == folder / "metrics.json"
    assert read_trained_sae(folder).l0 == 9.0
    write_metrics(eval_folder(folder), {"reconstruction": {"l0": 11.0}})  # a new evaluation wins
    assert read_trained_sae(folder).l0 == 11.0


def test_a_suite_reads_every_folder_sorted_by_site_width_and_l0(tmp_path: Path) -> None:
    write_trained(tmp_path, "b", site="layer_2/res", final_batch_metrics={"l0": 3.0})
    write_trained(tmp_path, "a", site="layer_1/res", final_batch_metrics={"l0": 20.0})
    write_trained(tmp_path, "c", site="layer_1/res", final_batch_metrics={"l0": 5.0})
    assert [entry.name for entry in read_suite(tmp_path)] == ["c", "a", "b"]


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


@pytest.mark.parametrize("higher", ["train", "eval", "release", "explore", "commands", "pipeline"])
def test_the_dictionaries_layer_imports_no_higher_layer(higher: str) -> None:
    for path in (SRC / "dictionaries").glob("*.py"):
        imported = _imported_modules(path)
        assert not any(m == f"saescope.{higher}" or m.startswith(f"saescope.{higher}.") for m in imported), path


def test_training_writes_and_finetunes_dictionary_folders_without_the_release_layer() -> None:
    for name in ("trainer.py", "kl_finetune.py"):
        imported = _imported_modules(SRC / "train" / name)
        assert not any(m.startswith("saescope.release") for m in imported), name

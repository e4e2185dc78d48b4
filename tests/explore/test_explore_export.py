"""`saescope index` and `saescope serve` on the command line, and the static-site and Neuronpedia exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from explore_fixtures import ExploreRun, shared_run

from saescope.cli import main
from saescope.explore import IndexReader, read_dictionaries
from saescope.explore.export import neuronpedia_feature, write_static_site
from saescope.release import export_release


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


def test_index_command_builds_reuses_and_exports(
    explore_run: ExploreRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(explore_run.run, run, ignore=shutil.ignore_patterns("index.sqlite"))
    args = ["index", str(run), "--tokens", "400", "--top-k", "3", "--intervals", "4", "--neighbours", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Indexed 3 dictionaries (48 latents" in out
    reader = IndexReader(run / "index.sqlite")
    assert reader.meta["n_tokens"] == 400
    assert reader.meta["corpus"]["context_size"] == 16  # the run's corpus settings (run_config.json)
    assert reader.meta["model"] == str(explore_run.model_dir)
    assert reader.meta["settings"]["top_k"] == 3
    before = (run / "index.sqlite").stat().st_mtime_ns
    static, neuronpedia = tmp_path / "site", tmp_path / "np"
    assert main([*args, "--static", str(static), "--neuronpedia", str(neuronpedia)]) == 0
    out = capsys.readouterr().out
    assert "is up to date" in out
    assert (run / "index.sqlite").stat().st_mtime_ns == before  # reused, not rebuilt
    assert (static / "index.html").is_file()
    assert (static / "static" / "mode.js").read_text().strip() == "window.SAESCOPE_STATIC = true;"
    assert (static / "data" / "saes" / "random-res" / "latents" / "23.js").is_file()
    assert (static / "data" / "assets" / "fidelity_vs_l0.png").is_file()
    record = json.loads((neuronpedia / "random-res" / "5.json").read_text())
    sae = reader.sae("random-res")
    assert sae is not None
    feature = reader.feature(sae, 5)
    assert feature is not None
    assert record == json.loads(json.dumps(neuronpedia_feature(reader, sae, feature)))
    assert len(list((neuronpedia / "detector").glob("*.json"))) == 8
    assert main([*args[:-2], "--neighbours", "3"]) == 0  # other settings: rebuilt
    assert "Indexed 3 dictionaries" in capsys.readouterr().out


def test_static_site_scripts_hold_the_api_documents(explore_run: ExploreRun, tmp_path: Path) -> None:
    reader = IndexReader(explore_run.index)
    site = tmp_path / "site"
    files = write_static_site(reader, site, progress=False)
    assert files == sum(1 for p in site.rglob("*") if p.is_file())
    text = (site / "data" / "saes" / "detector" / "latents" / "1.js").read_text()
    prefix = '__saescope_put("saes/detector/latents/1",'
    assert text.startswith(prefix)
    sae = reader.sae("detector")
    assert sae is not None
    assert json.loads(text[len(prefix) : -3]) == json.loads(json.dumps(reader.feature(sae, 1)))
    listing = (site / "data" / "saes" / "detector" / "latents.js").read_text()
    assert json.loads(listing[len('__saescope_put("saes/detector/latents",') : -3])[7]["dead"] is True


def test_index_and_serve_refuse_bad_arguments(
    explore_run: ExploreRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["index", str(explore_run.run), "--intervals", "6", "--out", str(tmp_path / "x.sqlite")]) == 2
    assert "power of two" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "saescope index" in capsys.readouterr().err
    assert main(["serve", str(explore_run.run), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_a_release_is_read_through_one_of_its_formats(explore_run: ExploreRun, tmp_path: Path) -> None:
    summary = export_release(explore_run.run / "train", tmp_path / "release", model_name="tiny")
    found = read_dictionaries(tmp_path / "release")
    assert found.kind == "release"
    exported = {item.entry.name for item in summary.exported["gemmascope2"]}
    assert len(found.dictionaries) == len(exported) >= 2  # read through gemmascope2 only, not three times
    run = {d.name: d for d in read_dictionaries(explore_run.run).dictionaries}
    for d in found.dictionaries:
        assert d.folder.is_relative_to(tmp_path / "release" / "gemmascope2")
        twin = next(r for r in run.values() if r.site == d.site)
        assert d.sae.W_dec_FD.detach().allclose(twin.sae.W_dec_FD.detach(), atol=1e-6)

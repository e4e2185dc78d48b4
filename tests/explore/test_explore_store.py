"""Opening a feature index: a damaged or foreign file is refused at open with an error that names it and says how
to rebuild it, so `saescope serve` stops at startup instead of answering request after request with a 500."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from explore_fixtures import ExploreRun, shared_run

from saescope.cli import main
from saescope.explore import FeatureIndexError, IndexReader
from saescope.explore.index import stored_settings
from saescope.explore.store import rebuild_command


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


def _page_of(path: Path, table: str) -> tuple[int, int]:
    """(byte offset, size) of the root page of ``table`` in the database file ``path``."""
    db = sqlite3.connect(path)
    try:
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        root = int(db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
    finally:
        db.close()
    return (root - 1) * page_size, page_size


def zero_the_examples_root_page(path: Path) -> None:
    offset, size = _page_of(path, "examples")
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = bytes(size)
    path.write_bytes(bytes(data))


def overwrite_a_third_with_noise(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start, length = len(data) // 3, len(data) // 3
    noise = random.Random(0).randbytes(length)
    data[start : start + length] = noise
    path.write_bytes(bytes(data))


def truncate_to_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _alter(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(statement)
        db.commit()
    finally:
        db.close()


def drop_the_assets_table(path: Path) -> None:
    _alter(path, "DROP TABLE assets")


def drop_a_column(path: Path) -> None:
    _alter(path, "ALTER TABLE latents DROP COLUMN write_norms")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "a zeroed page": zero_the_examples_root_page,
    "noise over a third of the file": overwrite_a_third_with_noise,
    "a truncated file": truncate_to_half,
    "a missing table": drop_the_assets_table,
    "a missing column": drop_a_column,
}


def damaged_copy(explore_run: ExploreRun, folder: Path, damage: str) -> Path:
    """A copy of the shared index as ``folder/index.sqlite``, damaged as ``DAMAGE[damage]`` says."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "index.sqlite"
    copy.write_bytes(explore_run.index.read_bytes())
    DAMAGE[damage](copy)
    return copy


def test_the_intact_index_opens(explore_run: ExploreRun) -> None:
    assert [sae.name for sae in IndexReader(explore_run.index).saes] == ["detector", "random-att", "random-res"]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_index_is_refused_at_open_with_the_command_that_rebuilds_it(
    explore_run: ExploreRun, tmp_path: Path, damage: str
) -> None:
    copy = damaged_copy(explore_run, tmp_path, damage)
    with pytest.raises(FeatureIndexError) as refused:
        IndexReader(copy)
    message = str(refused.value)
    assert str(copy) in message
    assert "damaged" in message
    assert "saescope index" in message
    assert "--force" in message


def test_the_rebuild_command_names_the_source_when_the_index_records_it(
    explore_run: ExploreRun, tmp_path: Path
) -> None:
    copy = damaged_copy(explore_run, tmp_path, "a missing table")  # the meta table still says where it came from
    with pytest.raises(FeatureIndexError, match=f"saescope index {explore_run.run} --out {copy} --force"):
        IndexReader(copy)
    beside_its_source = explore_run.run / "index.sqlite"
    assert rebuild_command(beside_its_source, str(explore_run.run)) == f"saescope index {explore_run.run} --force"
    assert rebuild_command(copy, None) == f"saescope index RUN_OR_RELEASE --out {copy} --force"


def test_a_damaged_index_is_never_reused_by_saescope_index(explore_run: ExploreRun, tmp_path: Path) -> None:
    intact = stored_settings(explore_run.index)
    assert intact is not None
    assert intact["dictionaries"] == ["detector", "random-att", "random-res"]
    assert stored_settings(damaged_copy(explore_run, tmp_path, "a zeroed page")) is None  # so it is rebuilt


def test_serve_stops_at_startup_on_a_damaged_index(
    explore_run: ExploreRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_kwargs: started.append(app))
    copy = damaged_copy(explore_run, tmp_path / "run", "a zeroed page")
    assert main(["serve", str(copy.parent), "--no-live"]) == 2
    assert started == []
    error = capsys.readouterr().err
    assert str(copy) in error
    assert "saescope index" in error
    assert "Traceback" not in error
    assert main(["serve", str(explore_run.index), "--no-live"]) == 0  # the intact index does start
    assert len(started) == 1

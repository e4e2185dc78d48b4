"""Top examples shipped with a Gemma Scope 2 release (``examples.safetensors``): written from a run's feature index
by `saescope export`, read back by the index of a release so the explorer shows them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from explore_fixtures import CONFIG, DETECTED, ExploreRun, shared_run

from saescope.atomic import CorruptFileError
from saescope.cli import main
from saescope.explore import IndexReader, build_index, read_dictionaries
from saescope.models.loading import load_model
from saescope.release.common import ReleaseFormatError
from saescope.release.examples import EXAMPLES_FILE, ReleaseExamples, read_examples, write_examples


@pytest.fixture(scope="session")
def explore_run(tmp_path_factory: pytest.TempPathFactory) -> ExploreRun:
    return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def release(explore_run: ExploreRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run exported as a Gemma Scope 2 release by the CLI, with the run's index next to its train/ folder."""
    out = tmp_path_factory.mktemp("release") / "gs2"
    assert main(["export", str(explore_run.run / "train"), "--format", "gemmascope2", "--out", str(out)]) == 0
    return out


def folder_of(release: Path, site_folder: str) -> Path:
    (params,) = release.glob(f"{site_folder}/*/params.safetensors")
    return params.parent


def test_the_export_ships_each_dictionarys_top_examples_from_the_index(explore_run: ExploreRun, release: Path) -> None:
    reader = IndexReader(explore_run.index)
    sae = reader.sae("random-res")
    assert sae is not None
    shipped = read_examples(folder_of(release, "resid_post_all") / EXAMPLES_FILE, width=sae.width)
    windows = reader.window_tokens(w for _, _, w, _, _ in reader.top_example_rows(sae))
    for latent in range(sae.width):
        feature = reader.feature(sae, latent)
        assert feature is not None
        top = feature["top_examples"]
        found = shipped.top(latent, k=1000)
        assert [value for _, _, value in found] == pytest.approx([e["value"] for e in top])
        for (sequence, position, _), example in zip(found, top, strict=True):
            assert position == example["position"]
            assert shipped.tokens_SL[sequence].tolist() == windows[example["window"]].tolist()
        assert shipped.feature_frequencies_F is not None
        assert shipped.feature_frequencies_F[latent] == pytest.approx(feature["density"])
        assert shipped.top_tokens_Fn is not None
        assert shipped.top_tokens_Fn[latent].tolist() == [t["token_id"] for t in feature["top_logits"]]
    assert sorted(p.parent.name for p in release.rglob(EXAMPLES_FILE)) == sorted(
        p.parent.name for p in release.rglob("params.safetensors")
    )  # every Gemma Scope 2 folder of the run got one


def test_the_index_of_a_release_shows_the_examples_it_ships(explore_run: ExploreRun, release: Path) -> None:
    found = read_dictionaries(release)
    out = release.parent / "index.sqlite"
    loaded = load_model(str(explore_run.model_dir))
    build_index(loaded, found.dictionaries, explore_run.corpus, CONFIG, out, model_name="m", progress=False)
    reader = IndexReader(out)
    (detector,) = [sae for sae in reader.saes if sae.site == "layer_0/resid_pre"]
    original = IndexReader(explore_run.index)
    source = original.sae("detector")
    assert source is not None
    for latent in range(len(DETECTED) - 1):  # the last latent is dead: it ships nothing
        shipped = reader.feature(detector, latent)
        before = original.feature(source, latent)
        assert shipped is not None
        assert before is not None
        assert shipped["shipped_examples"], latent
        pairs = zip(shipped["shipped_examples"], before["top_examples"], strict=True)
        for example, expected in pairs:
            assert example["tokens"] == expected["tokens"]
            assert example["token_ids"][example["focus"]] == DETECTED[latent]
            assert example["value"] == pytest.approx(expected["value"])
            assert example["acts"][example["focus"]] == pytest.approx(expected["value"])
    assert reader.feature(detector, len(DETECTED) - 1)["shipped_examples"] == []  # type: ignore[index]


def small_examples(**changes: np.ndarray) -> ReleaseExamples:
    arrays = {
        "tokens_SL": np.array([[2, 4, 10, 20], [2, 33, 47, 60]], dtype=np.int32),
        "seq_ids_FK": np.array([[0, 1], [1, -1]], dtype=np.int32),
        "positions_FK": np.array([[2, 3], [1, -1]], dtype=np.int32),
        "activations_FK": np.array([[1.5, 2.5], [0.5, 0.0]], dtype=np.float32),
    }
    return ReleaseExamples(**{**arrays, **changes})


def test_the_strongest_used_slots_come_first_whatever_the_files_order(tmp_path: Path) -> None:
    path = tmp_path / EXAMPLES_FILE
    write_examples(path, small_examples())
    examples = read_examples(path, width=2)
    assert examples.top(0, k=5) == [(1, 3, 2.5), (0, 2, 1.5)]
    assert examples.top(1, k=5) == [(1, 1, 0.5)]  # the empty slot (-1) is skipped


@pytest.mark.parametrize(
    ("changes", "width", "problem"),
    [
        ({}, 3, "describes 2 latents but its dictionary has 3"),
        ({"seq_ids_FK": np.array([[0, 2], [1, -1]], dtype=np.int32)}, 2, "seq_ids must be -1"),
        ({"positions_FK": np.array([[2, 4], [1, -1]], dtype=np.int32)}, 2, "positions must lie"),
        ({"activations_FK": np.zeros((2, 3), dtype=np.float32)}, 2, "must have one shape"),
    ],
)
def test_a_malformed_examples_file_is_refused_naming_it(
    tmp_path: Path, changes: dict[str, np.ndarray], width: int, problem: str
) -> None:
    path = tmp_path / EXAMPLES_FILE
    write_examples(path, small_examples(**changes))
    with pytest.raises(ReleaseFormatError, match=problem) as refused:
        read_examples(path, width=width)
    assert str(path) in str(refused.value)


def test_a_file_without_its_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / EXAMPLES_FILE
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ReleaseFormatError, match="not a readable safetensors file"):
        read_examples(path)


def test_a_flipped_byte_in_an_examples_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / EXAMPLES_FILE
    write_examples(path, small_examples())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # an activation's bits: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"examples\.safetensors is corrupted: its SHA-256 is"):
        read_examples(path, width=2)

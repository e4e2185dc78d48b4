from __future__ import annotations

from pathlib import Path

import pytest

from saescope.atomic import atomic_directory
from saescope.models import loading
from saescope.models.loading import ModelLoadError, ensure_embedded_converted, load_model


def test_local_folder_loads_with_description(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir))
    info = loaded.info
    assert info.source == "local folder"
    assert (info.family, info.n_layers, info.d_model, info.n_heads, info.head_dim, info.d_attn) == (
        "gemma3", 3, 32, 4, 16, 64
    )  # fmt: skip
    assert (info.bos_token_id, info.pad_token_id) == (2, 0)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer("w1 w2")["input_ids"][-2:] == [5, 6]


def test_missing_hub_model_offline_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loading.ONLINE_ENV, raising=False)
    with pytest.raises(ModelLoadError, match=r"SAESCOPE_ONLINE=1 .*--online"):
        load_model("nobody-here/not-a-model-4b")


def _fake_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Point the cache at tmp_path and replace the slow GGUF conversion by a recorder."""
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path))
    conversions: list[Path] = []

    def fake_convert(_embedded: loading.EmbeddedModel, folder: Path) -> None:
        conversions.append(folder)
        with atomic_directory(folder, {"format": loading._CONVERSION_FORMAT}) as staging:
            (staging / "model.safetensors").write_bytes(b"weights" * 100)

    monkeypatch.setattr(loading, "_convert_embedded", fake_convert)
    return conversions


def test_embedded_conversion_happens_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conversions = _fake_embedded(tmp_path, monkeypatch)
    embedded = loading.EMBEDDED_MODELS[loading.DEFAULT_MODEL]
    folder, source = ensure_embedded_converted(embedded)
    assert source == "embedded (GGUF, converted now)"
    assert folder == tmp_path / "models" / "gemma-3-270m"
    _, source_again = ensure_embedded_converted(embedded)
    assert source_again == "embedded (converted cache)"
    assert len(conversions) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_manifest"])
def test_damaged_or_half_written_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    conversions = _fake_embedded(tmp_path, monkeypatch)
    embedded = loading.EMBEDDED_MODELS[loading.DEFAULT_MODEL]
    folder, _ = ensure_embedded_converted(embedded)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[5] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (folder / "SAESCOPE_MANIFEST.json").unlink()
    _, source = ensure_embedded_converted(embedded)
    assert source == "embedded (GGUF, converted now)"
    assert len(conversions) == 2
    assert weights.read_bytes() == b"weights" * 100


def _embedded_from(folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the embedded model load from ``folder`` (a tiny model) and record each time it is asked for."""
    asked: list[str] = []

    def fake_converted(embedded: loading.EmbeddedModel) -> tuple[Path, str]:
        asked.append(embedded.name)
        return folder, "embedded (converted cache)"

    monkeypatch.setattr(loading, "ensure_embedded_converted", fake_converted)
    return asked


@pytest.mark.parametrize(
    "name", ["google/gemma-3-270m-pt", "google/gemma-3-270m", "gemma-3-270m-pt", "Google/Gemma-3-270M"]
)
def test_official_ids_of_the_embedded_model_load_it_offline_and_say_so(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """A Gemma Scope 2 config names the model google/gemma-3-270m-pt: index/serve must not stop at it."""
    monkeypatch.delenv(loading.ONLINE_ENV, raising=False)
    asked = _embedded_from(tiny_model_dir, monkeypatch)
    with caplog.at_level("WARNING", logger=loading.__name__):
        loaded = load_model(name)
    assert asked == ["gemma-3-270m"]
    assert loaded.info.source == "embedded (converted cache)"
    assert loaded.info.name == name
    assert f"model {name!r} is the original of the embedded 'gemma-3-270m'" in caplog.text


def test_other_models_and_online_loads_are_not_mapped(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loading.ONLINE_ENV, raising=False)
    asked = _embedded_from(tiny_model_dir, monkeypatch)
    requested: list[tuple[str, bool]] = []

    def fake_from_pretrained(name: str, *, dtype: object, local_only: bool) -> tuple[object, object]:
        requested.append((name, local_only))
        raise ModelLoadError(name)

    monkeypatch.setattr(loading, "_from_pretrained", fake_from_pretrained)
    for name, online in (("google/gemma-3-270m-it", False), ("google/gemma-3-1b-pt", False),
                         ("google/gemma-3-270m-pt", True)):  # fmt: skip
        with pytest.raises(ModelLoadError):
            load_model(name, online=online)
    assert asked == []
    assert requested == [("google/gemma-3-270m-it", True), ("google/gemma-3-1b-pt", True),
                         ("google/gemma-3-270m-pt", False)]  # fmt: skip
    assert loading.embedded_model_named("gemma-3-270m-it") is None
    assert loading.gemma_scope_model_id("gemma-3-270m") == "google/gemma-3-270m-pt"
    assert loading.gemma_scope_model_id("google/gemma-2-2b") == "google/gemma-2-2b"

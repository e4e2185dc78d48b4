from __future__ import annotations

import json
from pathlib import Path

import pytest

from saescope.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "info" in capsys.readouterr().out


def test_info_prints_facts_and_site_table(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "Layers      3" in out
    assert "4 heads x 16 = 64" in out
    att_row = next(line for line in out.splitlines() if line.startswith("att "))
    assert att_row.split()[:3] == ["att", "64", "0-2"]
    assert "model.layers.{L}.self_attn.o_proj.input" in att_row


def test_info_json_lists_every_site(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_model_dir), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["model"]["n_layers"] == 3
    widths = {site["id"]: site["width"] for site in payload["sites"]}
    assert len(widths) == 15
    assert widths["layer_2/att"] == 64
    assert widths["layer_2/mlp"] == 32


def test_info_on_missing_model_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "nobody-here/not-a-model"]) == 2
    assert "saescope: error: could not load model" in capsys.readouterr().err

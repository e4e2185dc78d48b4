"""The model card's content and the `saescope export` command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from saescope.commands import export as export_command
from saescope.release import ReleaseExportError, export_release, load_sae


def test_card_lists_contents_metrics_training_recipe_and_licences(suite_run: Path, tmp_path: Path) -> None:
    export_release(suite_run, tmp_path / "out", ["gemmascope2"], model_name="gemma-3-270m",
                   training_data="embedded corpus, 4,096 tokens")  # fmt: skip
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("# Sparse autoencoders for gemma-3-270m")
    assert "`layer_0/att`, `layer_1/res`, `layer_2/mlp_in`" in card
    assert "| res-a | layer_1/res | 48 | 14.2 | small | `resid_post_all/layer_1_width_48_l0_small_1` |" in card
    assert "layer_2/mlp_in → layer_2/mlp" in card
    # metrics table from metrics.json (only res-a has one); the others fall back to the training batch
    assert "| dictionary | l0 | fvu | delta_lm_loss | loss_recovered | dead_fraction |" in card
    assert "| res-a | 14.2 | 0.2 | 0.05 | 0.9 | 0 |" in card
    assert "| res-b |  |  |  |  |  |" in card
    assert "Evaluation data: source embedded, split heldout. Masking: special tokens excluded." in card
    assert "come from the last training batch" in card
    assert "embedded corpus, 4,096 tokens" in card
    assert "| res-a | layer_1/res | jumprelu | l0 λ=0.0006" in card
    # the inference recipe
    assert "f = (pre > threshold) * relu(pre)" in card
    assert "pre = x @ W_enc + b_enc" in card
    assert "no subtraction of `b_dec` before encoding" in card
    assert "Skip the BOS position" in card
    assert "Gemma Terms of Use" in card
    assert "CC BY 2.5" in card


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saescope")
    export_command.register(parser.add_subparsers(title="commands", required=True))
    return parser


def test_export_help_describes_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["export", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "{gemmascope,gemmascope2,saelens,all}" in text
    assert "average_l0_N/params.npz" in text


def test_export_command_writes_all_formats_and_prints_a_summary(
    suite_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "release"
    args = _parser().parse_args(["export", str(suite_run), "--out", str(out), "--model-name", "tiny"])
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert "Exported 11 dictionaries" in text
    assert "tiny-res/layer_1/width_48/average_l0_14" in text
    assert "skipped tc in gemmascope: Gemma Scope 1's params.npz has no skip connection" in text
    assert "L0 from: held-out evaluation (metrics.json); last training batch" in text
    assert load_sae(out / "gemmascope2/attn_out_all/layer_0_width_48_l0_big").model_name == "tiny"


def test_export_command_single_format(suite_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "release"
    args = _parser().parse_args(["export", str(suite_run), "--format", "saelens", "--out", str(out)])
    assert args.handler(args) == 0
    assert (out / "res/layer_1/width_48/average_l0_14/cfg.json").is_file()
    assert not (out / "saelens").exists()
    assert f"saelens -> {out}/" in capsys.readouterr().out


def test_export_command_adds_a_format_then_needs_overwrite_to_replace(
    suite_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "release"
    for fmt in ("saelens", "gemmascope2"):
        args = _parser().parse_args(["export", str(suite_run), "--format", fmt, "--out", str(out)])
        assert args.handler(args) == 0
    assert "added to the earlier release" in capsys.readouterr().out
    assert (out / "res/layer_1/width_48/average_l0_14/cfg.json").is_file()
    assert (out / "gemmascope2/resid_post_all/layer_1_width_48_l0_small_1/config.json").is_file()
    again = ["export", str(suite_run), "--format", "gemmascope2", "--out", str(out)]
    args = _parser().parse_args(again)
    with pytest.raises(ReleaseExportError, match=r"gemmascope2/README\.md"):
        args.handler(args)
    args = _parser().parse_args([*again, "--overwrite"])
    assert args.handler(args) == 0
    # 9 files of the format and the checksum record of each of the 4 weight files
    assert "replaced 13 file(s) of the earlier export (--overwrite)" in capsys.readouterr().out

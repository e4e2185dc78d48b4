"""`saescope run` checks every setting before it creates the run folder: a bad one leaves nothing behind, so the
same command, corrected, starts cleanly (and a folder is never left that can neither be rerun nor resumed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saescope.cli import main


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--layers", "7"], "outside the model's layers 0-2"),
        (["--sites", "layer_9/res"], "layer"),
        (["--target-l0", "res=many"], "many"),
        (["--target-l0", "att=4"], "no target L0 for site kind"),
        (["--architectures", "jumprelu,gated"], "gated"),
        (["--tokens", "100"], "fewer than one batch"),
        (["--set", "threshold=cubic"], "threshold must be 'log' or 'raw'"),
        (["--set", "learning_rate=1"], "unknown recipe setting(s) ['learning_rate']"),
    ],
)
def test_bad_run_settings_are_refused_before_the_run_folder_exists(
    flags: list[str], message: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    argv = ["run", "--preset", "smoke", "--model", str(tiny_model_dir), "--runs-dir", str(runs), "--name", "x"]
    assert main([*argv, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (runs / "x").exists()

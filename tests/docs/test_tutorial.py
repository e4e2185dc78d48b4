"""Every code block of docs/tutorial.md runs, in order (slow: the smoke suite and the real model)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TUTORIAL = Path(__file__).parents[2] / "docs" / "tutorial.md"
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [(match.group(1), match.group(2)) for match in BLOCK.finditer(TUTORIAL.read_text(encoding="utf-8"))]


def test_the_tutorial_has_both_kinds_of_blocks() -> None:
    kinds = {kind for kind, _ in blocks()}
    assert kinds == {"bash", "python"}


def test_every_tutorial_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    bin_dir = Path(sys.executable).parent
    namespace: dict[str, object] = {"__name__": "tutorial"}
    for index, (kind, code) in enumerate(blocks()):
        if kind == "bash":
            for line in filter(None, (raw.strip() for raw in code.splitlines())):
                argv = shlex.split(line.replace(".venv/bin/", f"{bin_dir}/"))
                result = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), check=False)
                assert result.returncode == 0, (
                    f"block {index}: {line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
                )
        else:
            exec(compile(code, f"tutorial block {index}", "exec"), namespace)

"""The folders of src/saescope form layers, and a module imports only its own layer or lower ones.

Lowest first: models, data, sae, dictionaries, train, eval, release, explore, then ``pipeline.py`` (which chains
the stages), then commands (``saescope run`` calls the pipeline). ``atomic.py``, ``checks.py`` and ``tomlfile.py``
are below them all; ``cli.py``, ``__main__.py`` and the package's ``__init__.py`` are at the top. Importing the bare
package (``import saescope``, for its ``__version__``) is allowed anywhere. The imports are read from the source with
``ast`` (lazy imports inside functions count too), so nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "saescope"
LAYERS = ("models", "data", "sae", "dictionaries", "train", "eval", "release", "explore", "pipeline", "commands")
#: Top-level modules, by their layer: atomic.py below every folder, the entry points above every folder.
#: (``versions.py``, the schema versions of saved configs, arrives from another branch: below every folder too.)
BOTTOM_MODULES = ("atomic", "checks", "tomlfile", "versions")
TOP = len(LAYERS) + 1


def layer_of(module: str) -> int | None:
    """The layer of a dotted ``saescope...`` module name (0 = atomic.py), None outside the package."""
    parts = module.split(".")
    if parts[0] != "saescope":
        return None
    if len(parts) == 1:  # the bare package: its version
        return 0
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1]) + 1
    return 0 if parts[1] in BOTTOM_MODULES else TOP


def module_name(path: Path, package: Path) -> str:
    """The dotted name of the module at ``path`` in the package folder ``package``."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a saescope module in ``path`` (in the package folder ``root``), relative
    imports resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
    return [(line, module) for line, module in found if module.split(".")[0] == "saescope"]


def layering_violations(root: Path) -> list[str]:
    """Every import in ``root`` (a copy of the package) of a module from a higher layer than the importer's."""
    violations = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        own = TOP if importer == "saescope" else layer_of(importer)
        assert own is not None
        for line, module in imported_modules(path, root):
            other = layer_of(module)
            if other is not None and other > own:
                violations.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return violations


def test_no_module_imports_a_higher_layer() -> None:
    assert layering_violations(PACKAGE) == []


def test_an_import_of_a_higher_layer_is_reported(tmp_path: Path) -> None:
    """The check itself: a lower layer importing a higher one, directly or relatively, is caught."""
    copy = tmp_path / "saescope"
    (copy / "train").mkdir(parents=True)
    (copy / "release").mkdir()
    (copy / "__init__.py").write_text("from saescope.commands import cli\n")
    (copy / "train" / "__init__.py").write_text("")
    (copy / "train" / "ok.py").write_text("from saescope.sae import JumpReLU\nfrom . import other\n")
    (copy / "train" / "bad.py").write_text("def later():\n    from saescope.release.load import load_sae\n")
    (copy / "train" / "relative.py").write_text("from ..explore import sources\n")
    (copy / "release" / "__init__.py").write_text("import saescope.train.trainer\n")
    assert layering_violations(copy) == [
        "saescope/train/bad.py:2 imports saescope.release.load",
        "saescope/train/relative.py:1 imports saescope.explore",
    ]


@pytest.mark.parametrize(
    ("module", "layer"),
    [
        ("saescope.models.sites", 1),
        ("saescope.dictionaries.folder", 4),
        ("saescope.train.trainer", 5),
        ("saescope.release.load", 7),
        ("saescope.pipeline", 9),
        ("saescope.commands.train", 10),
        ("saescope.atomic", 0),
        ("saescope.cli", TOP),
    ],
)
def test_layers_are_ordered_as_the_architecture_says(module: str, layer: int) -> None:
    assert layer_of(module) == layer

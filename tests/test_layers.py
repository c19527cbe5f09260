"""docs/architecture.md's layer list is true of the code: every module of the package has a
place in it, and each imports only modules listed below its own (or beside it, in the same
entry). An import inside a function counts too: a lazy import upward is still upward."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "tokenward"


def _entries() -> list[list[str]]:
    """The layer list's first column, top to bottom: the names of each entry (`cli.py`,
    `cli_*.py`, `broker/`, ...)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("## Layers", 1)[1].split("```", 2)[1]
    entries = []
    for line in block.splitlines():
        if line and not line[0].isspace():
            first = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            entries.append([name.strip() for name in first.split(",")])
    return entries


ENTRIES = _entries()


def _layer(path: str) -> int | None:
    """The index of the entry a module (a path relative to the package) belongs to."""
    for index, names in enumerate(ENTRIES):
        for name in names:
            if path.startswith(name) if name.endswith("/") else fnmatch.fnmatch(path, name):
                return index
    return None


def _modules() -> dict[str, str]:
    """Dotted module name -> path relative to the package, the package's own __init__ aside."""
    found = {}
    for file in PACKAGE.rglob("*.py"):
        path = file.relative_to(PACKAGE).as_posix()
        if path != "__init__.py":
            dotted = "tokenward." + path[:-3].replace("/", ".").removesuffix(".__init__")
            found[dotted] = path
    return found


MODULES = _modules()


def _imported(dotted: str, path: str, source: str) -> list[tuple[int, str]]:
    """(line, module) for every tokenward module that `source` (of `path`) imports, anywhere."""
    package = dotted if path.endswith("__init__.py") else dotted.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name in MODULES]
    return found


def test_every_module_has_a_place_in_the_layer_list() -> None:
    unplaced = sorted(path for path in MODULES.values() if _layer(path) is None)
    assert unplaced == [], f"add these to docs/architecture.md's layer list: {unplaced}"


def test_the_list_parses_into_its_entries() -> None:
    # The check below is only as good as the parse: the top, the bottom and a shared entry.
    assert ENTRIES[0] == ["cli.py", "cli_*.py"]
    assert ENTRIES[-1] == ["testing/"]
    assert ["token.py", "errors.py"] in ENTRIES


def _upward(dotted: str, source: str) -> list[str]:
    path = MODULES[dotted]
    own = _layer(path)
    assert own is not None
    return [
        f"{path}:{line} imports {MODULES[name]}"
        for line, name in _imported(dotted, path, source)
        if (_layer(MODULES[name]) or 0) < own
    ]


@pytest.mark.parametrize("dotted", sorted(MODULES))
def test_imports_only_lower_layers(dotted: str) -> None:
    upward = _upward(dotted, (PACKAGE / MODULES[dotted]).read_text())
    assert upward == [], "a lower layer imports a higher one (docs/architecture.md, Layers)"


def test_an_upward_import_is_caught() -> None:
    """The check fails when it should: relative, absolute and function-level imports upward,
    and not for an import downward or within one entry."""
    lazy = "def f():\n    from ..manager import TokenManager\n"
    assert _upward("tokenward.flow", "from .manager import TokenManager\n") == [
        "flow.py:1 imports manager.py"
    ]
    assert _upward("tokenward.stores.redis", lazy) == ["stores/redis.py:2 imports manager.py"]
    assert _upward("tokenward.token", "import tokenward.broker.app\n") == [
        "token.py:1 imports broker/app.py"
    ]
    assert _upward("tokenward.manager", "from . import flow\nfrom .flow import Load\n") == []
    assert _upward("tokenward.broker.app", "from .routes import proxy\n") == []

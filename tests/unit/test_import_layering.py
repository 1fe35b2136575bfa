"""The shared patch layer's shape: a method folder of ``models/`` imports shared modules (``models/*.py``,
``models/tiny``, ``models/llm``, ``kernels``), never another method's folder; ``nodes/host.py`` never imports
``nodes/common.py`` (common may use host). Read from the source (AST), so an import inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("saedit", "tryon", "expression", "conceptsplit", "chronoedit", "worldtoimage", "layered")


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute dotted name relative to the repo root) of every import in ``path`` (``package``: the file's
    package, e.g. "models.conceptsplit"); ``from X import a`` gives "X.a" (a may be a module)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def method_of(name: str) -> str | None:
    parts = name.split(".")
    if parts and parts[0] == "editlab":
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] == "models" and parts[1] in METHODS:
        return parts[1]
    return None


def cross_method_imports(root: Path) -> list[str]:
    bad = []
    for method in METHODS:
        for path in sorted((root / "models" / method).rglob("*.py")):
            package = ".".join(path.relative_to(root).parent.parts)
            seen = set()
            for line, name in imported_modules(path, package):
                other = method_of(name)
                if other is not None and other != method and line not in seen:
                    seen.add(line)
                    bad.append(f"{path.relative_to(root)}:{line} imports {name}")
    return bad


def test_no_method_folder_imports_another():
    bad = cross_method_imports(ROOT)
    assert not bad, "method folders must share code through models/ shared modules:\n" + "\n".join(bad)


def test_the_walk_sees_relative_and_absolute_and_nested_imports(tmp_path):
    """The checker itself: the forms a method-to-method import can take are all found."""
    for method in METHODS:
        (tmp_path / "models" / method).mkdir(parents=True)
    (tmp_path / "models" / "layered" / "a.py").write_text(
        "from ..conceptsplit.attention_maps import heatmap\n"
        "def f():\n    from ..expression import patch\n"
        "import editlab.models.saedit.sae\n"
        "from ..heatmap import heatmap\nfrom .. import patch_layer\nfrom . import data\n")
    (tmp_path / "models" / "conceptsplit" / "b.py").write_text("from .. import expression\n")
    bad = cross_method_imports(tmp_path)
    assert sorted(b.split(" imports ")[1] for b in bad) == sorted([
        "models.conceptsplit.attention_maps.heatmap", "models.expression.patch", "editlab.models.saedit.sae",
        "models.expression"]), bad


@pytest.mark.parametrize("path, forbidden", [("nodes/host.py", "nodes.common"), ("nodes/common.py", "nodes.host")])
def test_common_and_host_do_not_import_each_other(path, forbidden):
    names = [n for _, n in imported_modules(ROOT / path, "nodes")]
    assert not [n for n in names if n == forbidden or n.startswith(forbidden + ".")], names

"""The package's layering is a test: every import points down (the contracts in pyproject.toml, checked by
import-linter), and no modules import each other in a circle (checked on grimp's import graph)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_every_import_points_down():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """core/units.py importing the CLI (the top layer) must fail the same check."""
    shutil.copytree(ROOT / "mv4deploy", tmp_path / "mv4deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    units = tmp_path / "mv4deploy" / "core" / "units.py"
    units.write_text(units.read_text() + "\n\ndef _upward():\n    from mv4deploy.cli import app  # noqa: F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1
    assert "mv4deploy.core is not allowed to import mv4deploy.cli" in result.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop(); on_stack.discard(top); component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]; counter[0] += 1; stack.append(child); on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_cycles():
    graph = grimp.build_graph("mv4deploy")
    for package in [m for m in graph.modules if graph.find_children(m)]:
        graph.remove_import(importer=package, imported=package) if graph.direct_import_exists(
            importer=package, imported=package) else None
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = grimp.ImportGraph()
    for name in ("p.a", "p.b", "p.c", "p.d"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.c", imported="p.d")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_architecture_doc_names_every_module():
    """docs/architecture.md has one line per module: a new module without its line fails here."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted((ROOT / "mv4deploy").glob("*/*.py")):
        if path.name == "__init__.py":
            continue
        section = doc.split(f"### `{path.parent.name}/`", 1)
        if len(section) < 2 or f"| `{path.name}` |" not in section[1].split("### ", 1)[0]:
            missing.append(f"{path.parent.name}/{path.name}")
    assert missing == []

"""The package keeps the layout of DESIGN.md: a bare root, small modules, one-way imports.

Imports are read from the source with ``ast`` (every ``import``, also those inside functions
and under ``TYPE_CHECKING``), so the checks see what a reader sees, not what happened to be
imported at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "rsvlm"
MAX_MODULE_LINES = 400
ROOT_MODULES = {"__init__.py", "contracts.py"}
COMPONENTS = ("encoders", "fusion", "prompts", "llm", "bridges", "heads", "crops")
# subpackage → subpackages it must never import (DESIGN.md, "Layout").
FORBIDDEN = {kind: {"models", "training", "inference", "experiments", "cli"} for kind in COMPONENTS}
FORBIDDEN["data"] = {"models", "training", "inference"}
FORBIDDEN["llm"] |= {"data"}


@dataclass(frozen=True)
class Import:
    """One ``import`` statement of a module inside the package, resolved to subpackages."""

    source: str  # the importing module's subpackage (``contracts`` for rsvlm/contracts.py)
    target: str  # the imported subpackage
    where: str  # file:line of the statement

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _subpackage(path: Path) -> str | None:
    """``rsvlm/X/...`` → ``X``; ``rsvlm/contracts.py`` → ``contracts``; the root ``__init__`` → None."""
    parts = path.relative_to(PACKAGE).parts
    if len(parts) > 1:
        return parts[0]
    return None if parts[0] == "__init__.py" else Path(parts[0]).stem


def _dotted_name(path: Path) -> list[str]:
    """The module's dotted name as parts, e.g. ``["rsvlm", "data", "spie", "builder"]``."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_names(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """Absolute dotted names an import statement loads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # ``from ..x import y`` inside the package
        package = _dotted_name(path) if path.name == "__init__.py" else _dotted_name(path)[:-1]
        base = package[: len(package) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    # ``from rsvlm import data`` names a subpackage; ``from rsvlm.x import y`` names a module of x.
    return [f"{module}.{alias.name}" for alias in node.names] if module == "rsvlm" else [module]


def _target(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "rsvlm" or len(parts) < 2:
        return None
    candidate = parts[1]
    is_part = (PACKAGE / candidate).is_dir() or (PACKAGE / f"{candidate}.py").is_file()
    return candidate if is_part else None  # e.g. ``from rsvlm import __version__``


def package_imports() -> list[Import]:
    """Every import between two different subpackages of rsvlm."""
    found = []
    for path in _modules():
        source = _subpackage(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported_names(node, path):
                target = _target(name)
                if target is not None and source is not None and target != source:
                    where = f"{path.relative_to(REPO)}:{node.lineno}"
                    found.append(Import(source, target, where))
    return found


def test_package_root_holds_only_init_and_contracts():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert modules == ROOT_MODULES, f"move {sorted(modules - ROOT_MODULES)} into a subpackage (DESIGN.md, Layout)"


def test_no_module_over_the_line_limit():
    too_long = {}
    for path in _modules():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long[str(path.relative_to(REPO))] = lines
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_import_scanner_sees_every_kind_of_import():
    """The scanner itself: plain, from, relative and function-local imports all count."""
    path = PACKAGE / "data" / "spie" / "example.py"  # never written: only its name is used
    tree = ast.parse(
        "import rsvlm.io.atomic\n"
        "from rsvlm.models import vlm\n"
        "from ...training import losses\n"
        "from .. import bands\n"
        "from rsvlm import contracts, __version__\n"
        "def f():\n"
        "    from rsvlm.inference.writer import PredictionWriter\n"
    )
    names = [
        n
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for n in _imported_names(node, path)
    ]
    targets = [_target(n) for n in names]
    assert targets == ["io", "models", "training", "data", "contracts", None, "inference"]


def cycle_report(imports: list[Import]) -> str:
    """The first import cycle between subpackages, one line per import with its file:line ("" if none)."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        graph[imp.source].add(imp.target)
        edges[imp.source, imp.target].append(imp.where)
    try:
        # A subpackage's imports are its predecessors: they must come before it.
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        # Each node of the reported cycle is a predecessor of the next, i.e. is imported by it.
        cycle = err.args[1][::-1]
        steps = [f"  {a} imports {b} at {', '.join(edges[a, b])}" for a, b in zip(cycle, cycle[1:])]
        return "import cycle between subpackages " + " → ".join(cycle) + ":\n" + "\n".join(steps)
    return ""


def test_cycle_report_names_every_import_of_the_cycle():
    imports = [
        Import("io", "contracts", "rsvlm/io/a.py:1"),
        Import("data", "models", "rsvlm/data/b.py:2"),
        Import("models", "training", "rsvlm/models/c.py:3"),
        Import("training", "data", "rsvlm/training/d.py:4"),
        Import("training", "contracts", "rsvlm/training/e.py:5"),
    ]
    report = cycle_report(imports)
    for step in ("data imports models at rsvlm/data/b.py:2", "models imports training at rsvlm/models/c.py:3"):
        assert step in report
    assert "training imports data at rsvlm/training/d.py:4" in report
    assert "rsvlm/io/a.py" not in report and "rsvlm/training/e.py" not in report  # not on the cycle
    assert cycle_report([i for i in imports if i.target != "data"]) == ""


def test_no_import_cycle_between_subpackages():
    report = cycle_report(package_imports())
    assert not report, report


def direction_violations(imports: list[Import]) -> list[str]:
    """The imports against DESIGN.md's direction, as ``file:line: a imports b``."""
    return [
        str(imp)
        for imp in imports
        if imp.target in FORBIDDEN.get(imp.source, set()) or (imp.target == "cli" and imp.source != "cli")
    ]


def test_direction_rules_catch_each_kind_of_wrong_import():
    wrong = [
        Import("data", "models", "a.py:1"),
        Import("data", "inference", "a.py:2"),
        Import("llm", "data", "b.py:3"),
        Import("bridges", "training", "c.py:4"),
        Import("crops", "experiments", "d.py:5"),
        Import("experiments", "cli", "e.py:6"),
    ]
    allowed = [
        Import("models", "data", "f.py:7"),
        Import("data", "llm", "g.py:8"),
        Import("heads", "fusion", "h.py:9"),
        Import("cli", "experiments", "i.py:10"),
    ]
    assert direction_violations(wrong + allowed) == [str(imp) for imp in wrong]
    assert str(wrong[0]) == "a.py:1: data imports models"


def test_imports_follow_the_design_direction():
    wrong = direction_violations(package_imports())
    assert not wrong, "imports against DESIGN.md's direction:\n" + "\n".join(wrong)


def test_help_imports_neither_torch_nor_the_llm_stack():
    code = (
        "import sys; from rsvlm.cli.main import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', 'lightning')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"

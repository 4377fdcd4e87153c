"""The code's shape: no import circles between the package's modules."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

import mri_tumor

PACKAGE_DIR = Path(mri_tumor.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its code (functions too; not
    imports that exist only for type checkers)."""
    modules = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(block.test)
                     for statement in block.body for node in ast.walk(statement)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in modules else node.module for t in targets]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_finds_a_circle_when_there_is_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_between_modules() -> None:
    graph = import_graph()
    assert "mri_tumor.data.dicom" in graph["mri_tumor.data.reading"]  # the graph sees lazy ones
    # A package's __init__ re-exports its modules; a module importing a name from its own
    # package's __init__ is a circle through that __init__, and is caught here too.
    assert find_cycle(graph) is None


REPO = PACKAGE_DIR.parents[1]
# Stages that data flows through: command-line handling (argparse, flag names) lives in cli.
LIBRARY_MODULES = ["calibration", "card", "curves", "evaluation", "export", "inference",
                   "metrics", "ood", "report", "training", "data/folders", "data/splitting",
                   "data/reading", "data/dicom", "data/preprocess", "data/augment"]


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_modules_leave_the_command_line_to_cli(module: str) -> None:
    source = (PACKAGE_DIR / f"{module}.py").read_text()
    assert "import argparse" not in source
    flags = re.findall(r'(?:raise \w+\(|Error\()f?"(--[a-z-]+)', source)
    assert not flags, f"{module}.py names command-line flags in its errors: {flags}"


def test_the_predictor_does_not_branch_on_backend_names() -> None:
    source = (PACKAGE_DIR / "inference.py").read_text()
    assert not re.search(r"""backend\s*==\s*["'](onnx|torch)["']""", source)


def test_shared_test_fixtures_are_defined_once() -> None:
    defined = [path.name for path in (REPO / "tests").glob("test_*.py")
               if re.search(r"^def (predictor|onnx_predictor|fixture_paths)\(",
                            path.read_text(), re.M)]
    assert defined == []
    assert not [path.name for path in (REPO / "tests").glob("test_*.py")
                if re.search(r"^FIXTURE_IMAGES = ", path.read_text(), re.M)]


def test_the_app_installs_without_the_test_tools() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for tool in ("pytest", "playwright", "schemathesis", "ruff"):
        assert tool not in runtime
        assert tool in " ".join(project["optional-dependencies"]["test"]).lower()
    makefile = (REPO / "Makefile").read_text()
    app_recipe = makefile.split("$(APP_STAMP): pyproject.toml")[1].split("\n\n")[0]
    assert "pip install --quiet -e .\n" in app_recipe and "[test]" not in app_recipe


def test_readme_is_for_users() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for page in ("docs/experiments.md", "docs/benchmarks.md"):
        assert (REPO / page).is_file() and page in readme

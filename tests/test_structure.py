"""The code's shape: stages that import only the stages below them, no import circles, no
module over 600 lines, command-line handling only in the CLI (docs/architecture.md)."""

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

# The stages in the order data flows through them, lowest first. A module may import modules of
# its own layer and of the layers below, never one above. ``mri_tumor`` itself (the version and
# the lazy ``Predictor`` face) may be imported by every module and is not checked.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"card", "columns", "metrics", "figures", "lazy"}),  # card, numbers, figures
    ("data", {"data"}),  # images, series, volumes, folders, splits, pixels
    ("models", {"models"}),  # networks, weights, temperature, guard
    ("training", {"training"}),
    ("inference", {"inference"}),  # predictor, backends, model folders, scans, registry
    ("evaluation", {"evaluation", "explain"}),
    ("adaptation", {"adaptation"}),  # trains and gates: training, inference and evaluation
    ("front ends", {"presentation", "cli", "app", "api", "pacs"}),
]
MAX_MODULE_LINES = 600


def layer_of(module: str) -> int:
    """The layer of a package module (``mri_tumor.training.fit`` -> the training layer)."""
    top = module.split(".")[1]
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise KeyError(f"{module} is in no layer: add its package to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module from a higher layer."""
    return [f"{name} -> {target}" for name, targets in sorted(graph.items())
            if name not in ("mri_tumor", "mri_tumor.__main__")
            for target in sorted(targets)
            if target != "mri_tumor" and layer_of(target) > layer_of(name)]


def test_the_layering_check_finds_an_upward_import() -> None:
    graph = {"mri_tumor.data.reading": {"mri_tumor.inference.predictor"},
             "mri_tumor.inference.predictor": {"mri_tumor.data.reading", "mri_tumor"}}
    assert upward_imports(graph) == ["mri_tumor.data.reading -> mri_tumor.inference.predictor"]


def test_every_module_is_in_a_layer_and_imports_only_downwards() -> None:
    graph = import_graph()
    assert "mri_tumor.data.rows" in graph["mri_tumor.training.fit"]
    assert upward_imports(graph) == []


def test_no_module_is_over_600_lines() -> None:
    long = {str(p.relative_to(PACKAGE_DIR)): n for p in PACKAGE_DIR.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def library_files() -> list[Path]:
    """The modules below the front ends (they log; only front ends print)."""
    return [p for p in PACKAGE_DIR.rglob("*.py") if p.parent != PACKAGE_DIR or p.stem in
            {name for _, members in LAYERS[:-1] for name in members}
            if layer_of(_module_name(p)) < len(LAYERS) - 1]


def test_library_code_does_not_print() -> None:
    assert PACKAGE_DIR / "training" / "fit.py" in library_files()
    printing = [str(p.relative_to(PACKAGE_DIR)) for p in library_files()
                if any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                       and node.func.id == "print" for node in ast.walk(ast.parse(p.read_text())))]
    assert printing == []


# Stages that data flows through: command-line handling (argparse, flag names) lives in cli.
LIBRARY_MODULES = sorted(str(p.relative_to(PACKAGE_DIR).with_suffix("")) for p in library_files()
                         if p.name != "__init__.py")


@pytest.mark.parametrize("module", LIBRARY_MODULES)
def test_library_modules_leave_the_command_line_to_cli(module: str) -> None:
    source = (PACKAGE_DIR / f"{module}.py").read_text()
    assert "import argparse" not in source
    flags = re.findall(r'(?:raise \w+\(|Error\()f?"(--[a-z-]+)', source)
    assert not flags, f"{module}.py names command-line flags in its errors: {flags}"


def test_the_predictor_does_not_branch_on_backend_names() -> None:
    source = (PACKAGE_DIR / "inference" / "predictor.py").read_text()
    assert not re.search(r"""backend\s*==\s*["'](onnx|torch)["']""", source)


def test_shared_test_fixtures_are_defined_once() -> None:
    defined = [path.name for path in (REPO / "tests").glob("test_*.py")
               if re.search(r"^def (predictor|onnx_predictor|types_predictor|fixture_paths)\(",
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


@pytest.mark.parametrize("package", ["mri_tumor.models", "mri_tumor.training"])
def test_every_name_of_a_lazy_package_face_loads(package: str) -> None:
    import importlib

    face = importlib.import_module(package)
    assert sorted(face.__all__) == sorted(face._HOMES)
    for name in face.__all__:
        assert getattr(face, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        face.nothing  # noqa: B018


def test_reading_the_recipe_and_the_parser_import_neither_torch_nor_lightning() -> None:
    import subprocess
    import sys

    code = ("import sys; from mri_tumor.cli import build_parser; build_parser(); "
            "from mri_tumor.training.config import TrainConfig; TrainConfig(data_dirs=[]); "
            "print(sorted({'torch', 'lightning'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

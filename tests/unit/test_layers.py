"""The floor plan, checked from the code's own imports (see docs/architecture.md).

- no import cycle between the package's modules (imports under ``if TYPE_CHECKING:`` are
  annotations only, and do not count);
- nothing outside ``_aps/`` imports a private module of APScheduler (``apscheduler._*``);
- the ``_aps/`` layer never imports the layers above it (only ``_errors``, ``_log``,
  ``_clock``, ``_shared``, ``_urls``);
- the modules at the bottom import nothing of the package above them;
- an optional dependency (an extra) is imported by its one module only, which the facade
  imports lazily (inside the method that needs it): the package imports without the extras.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import library.components.scheduling.task_scheduler as task_scheduler

PACKAGE = Path(task_scheduler.__file__).parent
NAME = task_scheduler.__name__

BOTTOM = {"_errors", "_log", "_clock", "_shared", "_models"}
"""Modules every layer may import; they import nothing of the package (but _errors)."""
APS_MAY_IMPORT = BOTTOM | {"_urls"}
OPTIONAL = {"prometheus_client": "_metrics", "opentelemetry": "_otel"}
"""Each optional dependency (``metrics``, ``otel`` extras) and the one module importing it."""
OBSERVERS_MAY_IMPORT = BOTTOM | {"_runs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(part for part in parts if part != "__init__") or "__init__"


def imports_of(path: Path) -> set[str]:
    """Package modules (dotted, relative to the package) and apscheduler modules imported."""
    tree = ast.parse(path.read_text())
    package_parts = list(path.relative_to(PACKAGE).parent.parts)
    found: set[str] = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("apscheduler"))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                if module.startswith("apscheduler"):
                    found.add(module)
                elif module.startswith(NAME + "."):
                    found.add(module[len(NAME) + 1 :])
                continue
            base = package_parts[: len(package_parts) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
    return {name for name in found if name}


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only, never imported)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def package_imports(name: str) -> set[str]:
    return {dep for dep in GRAPH[name] if not dep.startswith("apscheduler") and dep in MODULES}


def test_the_graph_is_read() -> None:
    assert "_scheduler" in package_imports("__init__")
    assert "_aps.engine" in package_imports("_backend")


def test_no_import_cycles() -> None:
    seen: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if seen.get(name) == "done":
            return
        if seen.get(name) == "visiting":
            cycle = [*path[path.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        seen[name] = "visiting"
        for dep in sorted(package_imports(name)):
            visit(dep, [*path, dep])
        seen[name] = "done"

    for name in sorted(MODULES):
        visit(name, [name])


@pytest.mark.parametrize("name", sorted(name for name in MODULES if not name.startswith("_aps")))
def test_no_private_apscheduler_module_outside_the_adapter_layer(name: str) -> None:
    private = sorted(dep for dep in GRAPH[name] if dep.startswith("apscheduler._"))
    assert private == [], f"{name} imports {private}: move that code into _aps/"


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("_aps")))
def test_the_adapter_layer_imports_only_downwards(name: str) -> None:
    above = sorted(
        dep
        for dep in package_imports(name)
        if not dep.startswith("_aps") and dep not in APS_MAY_IMPORT
    )
    assert above == [], f"{name} imports {above}, a layer above _aps/"


@pytest.mark.parametrize("name", sorted(BOTTOM))
def test_the_bottom_modules_import_nothing_above_them(name: str) -> None:
    assert package_imports(name) <= {"_errors"}


def third_party(path: Path) -> set[str]:
    """Top-level names of the distributions a module imports (absolute imports)."""
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_an_optional_dependency_is_imported_by_its_module_only(name: str) -> None:
    for dependency, owner in OPTIONAL.items():
        if dependency in third_party(MODULES[name]):
            assert name == owner, f"{name} imports {dependency}: only {owner} may"


@pytest.mark.parametrize("module", sorted(OPTIONAL.values()))
def test_the_optional_modules_are_imported_lazily_by_the_facade(module: str) -> None:
    importers = sorted(name for name in MODULES if module in package_imports(name))
    assert importers == ["_scheduler"], importers
    tree = ast.parse(MODULES["_scheduler"].read_text())
    top_level = [
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    ]
    assert module not in top_level, f"_scheduler imports {module} at import time"
    assert package_imports(module) <= OBSERVERS_MAY_IMPORT, package_imports(module)


RUNS_JOBS = {"_scheduler", "_lifecycle", "_backend", "_executor", "_hooks"}
"""The modules that run jobs: what sees a store from outside must not need them."""


def test_the_store_seen_from_outside_runs_nothing() -> None:
    """``_admin`` (the task-scheduler command's view of a store) starts no engine, claims
    nothing, and never imports what runs jobs; ``_cli`` stands on ``_admin`` alone."""
    assert package_imports("_admin") & RUNS_JOBS == set()
    assert "_aps.stores" in package_imports("_admin")
    assert package_imports("_cli") - BOTTOM == {"_admin"}
    assert package_imports("__main__") - BOTTOM == {"_cli"}
    assert "_admin" not in {dep for name in RUNS_JOBS for dep in package_imports(name)}


def test_virtual_time_is_imported_by_testing_only() -> None:
    """Virtual time costs nothing unless a test enters it: only ``testing`` imports
    ``_virtual``; the engine, executor and lifecycle know a clock through ``_clock`` alone."""
    importers = sorted(name for name in MODULES if "_virtual" in package_imports(name))
    assert importers == ["testing"]
    assert package_imports("_virtual") <= BOTTOM

"""Layers point one way: deployments → flows → tasks → broadcasts; the simulator stands alone;
only the proxy client talks to AWS."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "broadcasts": {"prefect", "fastapi", "typer", "flows", "tasks", "deployments", "simulator", "uvicorn"},
    "tasks": {"flows", "deployments", "simulator"},
    "flows": {"deployments", "simulator"},
    "simulator": {"broadcasts", "flows", "tasks", "deployments", "prefect"},
}


def imported_names(path: Path) -> set[str]:
    """Every absolute import in the file, at its top or inside a function: `import a.b` gives a.b,
    `from a.b import c` gives a.b and a.b.c (c may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_names(path)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_from_the_layers_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {file: names for file, names in offenders.items() if names} == {}


def test_only_the_proxy_client_imports_boto3_or_botocore():
    users = {
        str(path.relative_to(ROOT))
        for package in ("broadcasts", "tasks", "flows", "deployments")
        for path in (ROOT / package).rglob("*.py")
        if imported_packages(path) & {"boto3", "botocore"}
    }
    assert users == {"broadcasts/cbc_proxy.py"}


def test_no_flow_or_task_names_a_provider_or_builds_sql():
    for package in ("flows", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text().lower()
            for word in ("vodafone", "select(", "insert(", "message_format"):
                assert word not in text, f"{path.relative_to(ROOT)} mentions {word!r}"


PACKAGES = ("broadcasts", "tasks", "flows", "deployments", "simulator")


def module_imports() -> dict[str, set[str]]:
    """Each project module and the project modules it imports, at its top or inside a function."""
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
               for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    return {name: {imported for imported in imported_names(path) if imported in modules and imported != name}
            for name, path in modules.items()}


def test_no_module_imports_itself_through_others():
    graph = module_imports()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for imported in sorted(graph[name]):
            if imported in path:
                cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in done:
                visit(imported, path + [imported])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_every_module_under_deployments_stays_short_enough_to_read():
    lengths = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "deployments").glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 400} == {}

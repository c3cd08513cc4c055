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


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


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

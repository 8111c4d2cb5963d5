"""The dependency rules of ARCHITECTURE §2, checked by walking every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Top-level modules a pure core must never import (I/O, clocks' owners, heavy runtimes).
FORBIDDEN_IN_CORES = {
    "controlplane",
    "workers",
    "sqlalchemy",
    "sqlmodel",
    "alembic",
    "psycopg",
    "psycopg2",
    "sqlite3",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "requests",
    "ray",
    "torch",
    "deepspeed",
    "transformers",
    "kubernetes",
    "socket",
    "subprocess",
}


def imported_roots(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add((alias.name.split(".")[0], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return found


def violations(package: str, forbidden: set[str]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for mod, line in imported_roots(path):
            if mod in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize("package", ["quotas", "policies"])
def test_pure_cores_import_no_io(package: str) -> None:
    assert violations(package, FORBIDDEN_IN_CORES) == []


def test_workers_never_import_the_database_layer() -> None:
    bad = []
    for path in sorted((ROOT / "workers").rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "controlplane.db" or name.startswith("controlplane.db."):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert bad == []


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    # Guard against a checker that silently passes everything.
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom sqlalchemy import select\nimport ray.util\n")
    roots = {m for m, _ in imported_roots(bad)}
    assert {"sqlalchemy", "ray"} <= roots & FORBIDDEN_IN_CORES

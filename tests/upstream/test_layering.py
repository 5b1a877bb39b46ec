"""Dependencies point one way: api/ and health/ use proxy/ and upstream/, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gateway

PACKAGE_ROOT = Path(gateway.__file__).parent


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("proxy", ("gateway.api", "gateway.health")),
        ("upstream", ("gateway.api", "gateway.health", "gateway.proxy")),
    ],
)
def test_lower_layers_do_not_import_higher_ones(package: str, forbidden: tuple[str, ...]) -> None:
    offending = {
        f"{path.relative_to(PACKAGE_ROOT)}: {module}"
        for path in sorted((PACKAGE_ROOT / package).rglob("*.py"))
        for module in imported_modules(path)
        if any(module == name or module.startswith(name + ".") for name in forbidden)
    }
    assert not offending

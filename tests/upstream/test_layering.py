"""Dependencies point one way: api/ and health/ use proxy/ and upstream/, never the reverse.

`gateway/keys.py` is read by every layer, so it imports no gateway module at run time (its value
types are for the type checker only): otherwise a layer would reach a higher one through it.
"""

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


def runtime_imports(path: Path) -> set[str]:
    """The modules `path` imports outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            skipped.update(id(child) for child in ast.walk(node))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_the_state_keys_import_no_gateway_module_at_run_time() -> None:
    modules = runtime_imports(PACKAGE_ROOT / "keys.py")
    assert modules, "the parser found no import at all"
    assert not {module for module in modules if module.split(".")[0] == "gateway"}

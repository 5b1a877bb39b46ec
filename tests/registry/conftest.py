"""The registry suite's fixtures: one fresh registry per test, for every backend.

test_store.py runs against each entry of BACKENDS; a second backend joins by adding one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.registry.interface import Registry, RegistryBackend
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import SqliteBackend

# Backend name -> where a fresh registry lives, given a per-test temporary directory. A short
# change poll: tests of other processes' changes should not wait the production second.
BACKENDS: dict[str, Callable[[Path], RegistryBackend]] = {
    "sqlite": lambda tmp_path: SqliteBackend(tmp_path / "gateway.db", change_poll_seconds=0.05),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryBackend:
    """A fresh, not yet created registry of one backend."""
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
async def registry(backend: RegistryBackend) -> AsyncIterator[Registry]:
    async with backend.open(SecretBox("key-one")) as opened:
        yield opened

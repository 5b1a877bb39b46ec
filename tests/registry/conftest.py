"""The registry suite's fixtures: one fresh registry per test, for every backend.

test_store.py runs against each entry of BACKENDS; a second backend joins by adding one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.registry.interface import Registry, RegistryBackend
from gateway.registry.postgres import PostgresBackend
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import SqliteBackend


def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryBackend:
    # A short change poll: tests of other processes' changes should not wait the production
    # second.
    return SqliteBackend(tmp_path / "gateway.db", change_poll_seconds=0.05)


def postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryBackend:
    # A fresh database on the session's server (tests/services/postgres.py): skipped, naming
    # the Debian package, where PostgreSQL is not installed.
    url: str = request.getfixturevalue("postgres_url")
    return PostgresBackend(url, keepalive_seconds=0.5, retry_seconds=0.05)


# Backend name -> where a fresh registry lives, given the test's request and temporary directory.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], RegistryBackend]] = {
    "sqlite": sqlite_backend,
    "postgres": postgres_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryBackend:
    """A fresh, not yet created registry of one backend."""
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
async def registry(backend: RegistryBackend) -> AsyncIterator[Registry]:
    async with backend.open(SecretBox("key-one")) as opened:
        yield opened

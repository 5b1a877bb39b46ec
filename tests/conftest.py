"""Shared fixtures: a real SQLite file per test, the real app, real HTTP through a test client.

Every fixture builds from `settings`, which points at a fresh temp data dir, so tests can run in
parallel (pytest-xdist) without sharing files or ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from gateway.app import SERVER_OPTIONS, create_app
from gateway.config import Settings
from gateway.keys import STORE
from gateway.loop import event_loop_factory
from gateway.registry.models import Role
from gateway.security.auth import hash_token

pytest_plugins = ["tests.services.influxdb", "tests.services.prometheus", "tests.upstreams"]

ADMIN_TOKEN = "dsg_test-admin-token"
SECRET_KEY = "test-secret-key-not-for-production"

Headers = dict[str, str]
MakeToken = Callable[..., Awaitable[Headers]]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the loop `gateway serve` runs on (uvloop where installed); the two
    hand-made HTTP/1.1 layers (the front server and the upstream pool) on asyncio's as well."""
    factory = event_loop_factory()
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {}
    if factory is None or "front" in item.path.parts or item.path.name == "test_upstream.py":
        factories["asyncio"] = asyncio.new_event_loop
    if factory is not None:
        factories["uvloop"] = factory
    return factories


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(
        port=0,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        log_format="console",
        health_interval=30.0,
        health_timeout=2.0,
    )


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, app: web.Application) -> TestClient:
    """The app served with the options `gateway serve` uses (SERVER_OPTIONS).

    TestServer ignores options given to its constructor; they only reach aiohttp's runner
    through start_server(). It always sets handler_cancellation itself.
    """
    server = TestServer(app)
    await server.start_server(auto_decompress=SERVER_OPTIONS["auto_decompress"])
    return await aiohttp_client(server)


@pytest.fixture
def admin_headers() -> Headers:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def make_token(client: TestClient) -> MakeToken:
    """`await make_token(role="viewer", org="Other")` → headers of a new token (org made if new)."""

    async def make(role: str = "admin", org: str = "Main Org.", scheme: str = "Bearer") -> Headers:
        store = client.server.app[STORE]
        try:
            org_record = await store.find_org(name=org)
        except Exception:
            org_record = await store.create_org(org)
        token = f"dsg_test-{role}-{org_record.id}-{scheme}-{id(store)}"
        await store.ensure_token(org_record.id, Role(role), hash_token(token), "test")
        return {"Authorization": f"{scheme} {token}"}

    return make

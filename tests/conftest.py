"""Shared fixtures: a real SQLite file per test, the real app, real HTTP through a test client.

Every fixture builds from `settings`, which points at a fresh temp data dir, so tests can run in
parallel (pytest-xdist) without sharing files or ports.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import TCPConnector, web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient
from yarl import URL

from gateway.api.fast_proxy import FastProxy
from gateway.app import SERVER_OPTIONS, create_app
from gateway.config import Settings
from gateway.front.site import FrontSite
from gateway.keys import STORE
from gateway.loop import event_loop_factory
from gateway.registry.models import Role
from gateway.security.auth import hash_token
from tests.types import AppClient

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


class FrontTestServer(TestServer):
    """The app served as `gateway serve` serves it: behind the front protocol (FrontSite), with
    the options of SERVER_OPTIONS for the aiohttp server that API connections are handed to."""

    async def start_server(self, loop: object = None, **kwargs: Any) -> None:
        if self.runner:
            return
        kwargs.setdefault("auto_decompress", SERVER_OPTIONS["auto_decompress"])
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        site = FrontSite(self.runner, FastProxy(self.app).route, host=self.host, port=0)
        await site.start()
        self.port = site.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


# Test modules that proxy requests run twice: with a new connection per request, so every
# proxied request is served by the front protocol's fast path, and with connections kept alive,
# so that proxied requests following an API request on the same connection are served by
# aiohttp's handlers. Both must behave the same.
_PROXYING_TESTS = ("proxy", "services", "test_ssrf_integration.py", "test_metrics.py")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    path = metafunc.definition.path
    if "client" in metafunc.fixturenames and any(
        part in _PROXYING_TESTS for part in (path.parent.name, path.name)
    ):
        metafunc.parametrize("connections", ["fresh", "reused"], scope="function")


@pytest.fixture
def connections() -> str:
    return "reused"


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, app: web.Application, connections: str
) -> TestClient:
    server = FrontTestServer(app)
    await server.start_server()
    if connections == "fresh":
        return await aiohttp_client(server, connector=TCPConnector(force_close=True))
    return await aiohttp_client(server)


@pytest.fixture
def admin_headers() -> Headers:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def make_token(client: AppClient) -> MakeToken:
    """`await make_token(role="viewer", org="Other")` → headers of a new token (org made if new)."""

    async def make(role: str = "admin", org: str = "Main Org.", scheme: str = "Bearer") -> Headers:
        store = client.app[STORE]
        try:
            org_record = await store.find_org(name=org)
        except Exception:
            org_record = await store.create_org(org)
        token = f"dsg_test-{role}-{org_record.id}-{scheme}-{id(store)}"
        await store.ensure_token(org_record.id, Role(role), hash_token(token), "test")
        return {"Authorization": f"{scheme} {token}"}

    return make


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty provisioning folder."""
    path = tmp_path / "provisioning"
    path.mkdir()
    return path


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A URL whose port refuses connections: bound (so nobody else gets it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"

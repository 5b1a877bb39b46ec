"""Shared fixtures: a real SQLite file per test, the real app, real HTTP through a test client.

Every fixture builds from `settings`, which points at a fresh temp data dir, so tests can run in
parallel (pytest-xdist) without sharing files or ports.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import TCPConnector, web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient
from yarl import URL

from gateway.app import SERVER_OPTIONS, create_app
from gateway.config import Settings
from gateway.front.protocol import FastHandler, Router
from gateway.front.site import FrontSite
from gateway.keys import PIPELINE, STORE
from gateway.loop import event_loop_factory
from gateway.proxy.aiohttp_carrier import proxy_handler
from gateway.proxy.front_carrier import front_router
from gateway.registry.models import Role
from gateway.security.auth import hash_token
from tests.types import AppClient

pytest_plugins = [
    "tests.services.influxdb",
    "tests.services.postgres",
    "tests.services.prometheus",
    "tests.upstreams",
]

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
    # Relative to the project: a checkout under a directory named "front" is not the front server.
    parts = item.path.relative_to(config.rootpath).parts
    if factory is None or parts[:2] == ("tests", "front") or item.path.name == "test_upstream.py":
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
def metrics_registry() -> CollectorRegistry:
    """The test's own metrics registry: what the app's /metrics serves, readable directly."""
    return CollectorRegistry()


@pytest.fixture
def app(settings: Settings, metrics_registry: CollectorRegistry) -> web.Application:
    return create_app(settings, metrics_registry=metrics_registry)


# Which server carries proxied requests (gateway/proxy/: one pipeline, two carriers):
# - "front": the front server's fast path serves every proxied request (a new connection per
#   request, so that no API request before it hands the connection to aiohttp);
# - "aiohttp": aiohttp's handlers serve every proxied request (the front router claims nothing,
#   so every connection is handed to aiohttp at its first request);
# - "served" (the default outside proxying tests): as `gateway serve` serves, with kept-alive
#   connections: proxied requests go to the front server until an API request on the same
#   connection hands it to aiohttp.
FRONT, AIOHTTP, SERVED = "front", "aiohttp", "served"
CARRIERS = (FRONT, AIOHTTP)


def _claims_nothing(method: str, path: str) -> FastHandler | None:
    return None


class FrontTestServer(TestServer):
    """The app served as `gateway serve` serves it: behind the front protocol (FrontSite), with
    the options of SERVER_OPTIONS for the aiohttp server that API connections are handed to.

    `front_served` and `aiohttp_served` count the proxied requests each carrier served (the
    latter those aiohttp answered), so that a test can tell which one it exercised."""

    def __init__(self, app: web.Application, *, carrier: str = SERVED, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.carrier = carrier
        self.front_served = 0
        self.aiohttp_served = 0

    async def start_server(self, loop: object = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.app.on_response_prepare.append(self._count_aiohttp)
        kwargs.setdefault("auto_decompress", SERVER_OPTIONS["auto_decompress"])
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        router = _claims_nothing if self.carrier == AIOHTTP else self._counting(self.app)
        site = FrontSite(self.runner, router, host=self.host, port=0)
        await site.start()
        self.port = site.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    def _counting(self, app: web.Application) -> Router:
        route = front_router(app[PIPELINE])

        def router(method: str, path: str) -> FastHandler | None:
            handler = route(method, path)
            if handler is not None:
                self.front_served += 1
            return handler

        return router

    async def _count_aiohttp(self, request: web.Request, response: web.StreamResponse) -> None:
        if proxy_handler(request) is not None:
            self.aiohttp_served += 1


# Test modules that proxy requests run on both carriers, and must behave the same on both.
# (test_auth.py: InfluxDB 1.x credentials are taken on the proxied /query and /write.)
_PROXYING_TESTS = (
    "proxy",
    "services",
    "test_ssrf_integration.py",
    "test_metrics.py",
    "test_auth.py",
    "test_intercept.py",  # the write spool on the proxied write routes
    "cluster_ops",  # proxied requests while PostgreSQL is away
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    path = metafunc.definition.path
    fixtures = metafunc.fixturenames
    if ("client" in fixtures or "gateway_client" in fixtures) and any(
        part in _PROXYING_TESTS for part in (path.parent.name, path.name)
    ):
        metafunc.parametrize("carrier", CARRIERS, scope="function")


@pytest.fixture
def carrier() -> str:
    return SERVED


GatewayClient = Callable[[web.Application], Awaitable[AppClient]]


@pytest.fixture
def gateway_client(aiohttp_client: AiohttpClient, carrier: str) -> GatewayClient:
    """`await gateway_client(app)`: a client of `app` served behind the front protocol, with
    proxied requests on the `carrier` under test."""

    async def start(app: web.Application) -> AppClient:
        server = FrontTestServer(app, carrier=carrier)
        await server.start_server()
        # One connection per request on the front carrier: no API request before a proxied
        # one can hand its connection to aiohttp.
        connector = TCPConnector(force_close=True) if carrier == FRONT else None
        # pytest-aiohttp types a client of a server, not of an app, as app-less: this one is.
        return cast(AppClient, await aiohttp_client(server, connector=connector))

    return start


@pytest.fixture
async def client(gateway_client: GatewayClient, app: web.Application) -> AppClient:
    return await gateway_client(app)


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

"""The two carriers of proxied requests: the front server and aiohttp, one route table and one
pipeline (gateway/proxy/). Every proxying test module runs on both (tests/conftest.py); these
tests check that the parametrisation really exercises the carrier it names, how the front
router derives from the route table, and what the carriers still answer differently."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
import structlog
from aiohttp import TCPConnector, web
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import STORE
from gateway.proxy.front_carrier import front_router
from gateway.proxy.pipeline import ProxyPipeline
from gateway.proxy.routes import ROUTES, ProxyRoute
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import ADMIN_TOKEN, AIOHTTP, FRONT, FrontTestServer, GatewayClient
from tests.proxy.conftest import StartRawServer
from tests.proxy.servers import Peer, RawServer
from tests.types import AppClient

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def bare_upstream(peer: Peer) -> None:
    """Answers with only what a test names: no Content-Type, Server or Date of its own."""
    while (request := await peer.read_request()) is not None:
        if request.target.endswith("/not-modified"):
            await peer.send(
                b'HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: "v1"\r\n\r\n'
            )
        elif request.target.endswith("/typed"):
            await peer.respond(body=b"{}", headers=[("Content-Type", "application/json")])
        elif request.target.endswith("/named"):
            await peer.respond(body=b"hello", headers=[("Server", "upstream/1.0")])
        else:
            await peer.respond(body=b"hello")


@pytest.fixture
async def upstream(raw_server: StartRawServer) -> RawServer:
    return await raw_server(bare_upstream)


@pytest.fixture
async def source(client: AppClient, upstream: RawServer) -> DataSource:
    spec = DataSourceSpec(name="bare", type="acme-json", url=f"http://127.0.0.1:{upstream.port}")
    return await client.app[STORE].create_source(1, spec)


def proxy_path(source: DataSource, rest: str) -> str:
    return f"/api/datasources/proxy/uid/{source.uid}/{rest}"


# --- the carrier under test is the one named --------------------------------------------------


async def test_the_carrier_under_test_is_the_one_named(
    client: AppClient, carrier: str, source: DataSource
) -> None:
    for _ in range(2):
        response = await client.get(proxy_path(source, "x"), headers=AUTH)
        assert response.status == 200
        assert await response.text() == "hello"
    server = cast(FrontTestServer, client.server)
    served = (server.front_served, server.aiohttp_served)
    assert served == {FRONT: (2, 0), AIOHTTP: (0, 2)}[carrier]


async def test_sources_created_through_the_api_are_proxied_on_the_same_connection(
    aiohttp_client: AiohttpClient, app: web.Application, upstream: RawServer
) -> None:
    """As `gateway serve` serves: an API request hands its kept-alive connection to aiohttp,
    which then serves the proxied requests that follow on it, through the same pipeline."""
    server = FrontTestServer(app)  # the real router, kept-alive connections: one of them
    await server.start_server()
    client = cast(AppClient, await aiohttp_client(server, connector=TCPConnector(limit=1)))
    url = f"http://127.0.0.1:{upstream.port}"
    body = {"name": "api-made", "type": "acme-json", "access": "proxy", "url": url}
    created = await client.post("/api/datasources", json=body, headers=AUTH)
    assert created.status == 200, await created.text()
    uid = (await created.json())["datasource"]["uid"]
    influx = await client.post(
        "/api/v2/sources", json={"name": "influx", "type": "v1", "url": url}, headers=AUTH
    )
    assert influx.status == 201, await influx.text()

    proxied = await client.get(f"/api/datasources/proxy/uid/{uid}/x", headers=AUTH)
    assert (proxied.status, await proxied.text()) == (200, "hello")
    passthrough = await client.get("/query", params={"q": "SHOW DATABASES"}, headers=AUTH)
    assert (passthrough.status, await passthrough.text()) == (200, "hello")
    missing = await client.get("/api/datasources/proxy/uid/nope/x", headers=AUTH)
    assert missing.status == 404
    assert await missing.json() == {"message": "Unable to find datasource"}
    assert "X-Request-Id" in missing.headers

    assert (server.front_served, server.aiohttp_served) == (0, 3)


async def test_one_log_line_and_one_count_per_proxied_request_on_either_carrier(
    gateway_client: GatewayClient, settings: Settings, upstream: RawServer
) -> None:
    """The pipeline logs and counts a proxied request; aiohttp's middlewares step aside."""
    registry = CollectorRegistry()
    client = await gateway_client(create_app(settings, metrics_registry=registry))
    spec = DataSourceSpec(name="bare", type="acme-json", url=f"http://127.0.0.1:{upstream.port}")
    source = await client.app[STORE].create_source(1, spec)
    with structlog.testing.capture_logs() as logs:
        ok = await client.get(proxy_path(source, "x"), headers={**AUTH, "X-Request-Id": "r-1"})
        missing = await client.get("/api/datasources/proxy/uid/nope/x", headers=AUTH)
    assert (ok.status, missing.status) == (200, 404)
    assert ok.headers.getall("X-Request-Id") == ["r-1"]
    assert len(missing.headers.getall("X-Request-Id")) == 1
    lines = [(line["path"], line["status"]) for line in logs if line["event"] == "request"]
    route = "/api/datasources/proxy/uid/{uid}/{path}"
    assert lines == [(route, 200), (route, 404)]
    for status in ("200", "404"):
        labels = {"route": route, "method": "GET", "code": status}
        assert registry.get_sample_value("gateway_api_requests_total", labels) == 1


# --- both carriers pass the upstream's headers as they are -------------------------------------


async def test_a_response_without_content_type_gets_none(
    client: AppClient, source: DataSource
) -> None:
    response = await client.get(proxy_path(source, "x"), headers=AUTH)
    assert response.status == 200
    assert "Content-Type" not in response.headers
    assert response.headers["Content-Length"] == "5"
    assert "Date" in response.headers  # the one field both servers add when it is missing
    typed = await client.get(proxy_path(source, "typed"), headers=AUTH)
    assert typed.headers.getall("Content-Type") == ["application/json"]


async def test_no_server_field_is_added_and_the_upstreams_passes(
    client: AppClient, source: DataSource
) -> None:
    plain = await client.get(proxy_path(source, "x"), headers=AUTH)
    assert "Server" not in plain.headers
    named = await client.get(proxy_path(source, "named"), headers=AUTH)
    assert named.headers.getall("Server") == ["upstream/1.0"]
    error = await client.get("/api/datasources/proxy/uid/nope/x", headers=AUTH)
    assert error.status == 404
    assert "Server" not in error.headers


async def test_a_304_keeps_its_content_length(client: AppClient, source: DataSource) -> None:
    response = await client.get(proxy_path(source, "not-modified"), headers=AUTH)
    assert response.status == 304
    assert response.headers["Content-Length"] == "42"
    assert response.headers["ETag"] == '"v1"'
    assert "Content-Type" not in response.headers
    again = await client.get(proxy_path(source, "x"), headers=AUTH)  # the connection still works
    assert await again.text() == "hello"


# --- the front router is derived from the route table -----------------------------------------


class RecordingPipeline:
    """Stands in for the pipeline: records what a front handler asks it to serve."""

    def __init__(self) -> None:
        self.served: list[tuple[str, str]] = []

    async def serve(self, exchange: Any, route: ProxyRoute, key: str) -> int:
        self.served.append((route.name, key))
        return 200


class PathOnly:
    def __init__(self, path: str) -> None:
        self.path = path


SOURCE_QUERY = "/api/v2/sources/{source_id}/query"
CLAIMED = [
    ("GET", "/api/datasources/proxy/uid/abc", "/api/datasources/proxy/uid/{uid}", "abc"),
    ("PUT", "/api/datasources/proxy/uid/abc/", "/api/datasources/proxy/uid/{uid}/{path}", "abc"),
    ("GET", "/api/datasources/proxy/uid/a/b/c", "/api/datasources/proxy/uid/{uid}/{path}", "a"),
    ("PATCH", "/api/datasources/proxy/5", "/api/datasources/proxy/{id}", "5"),
    ("DELETE", "/api/datasources/proxy/5/x%2Fy", "/api/datasources/proxy/{id}/{path}", "5"),
    ("GET", "/api/datasources/proxy/uidx/q", "/api/datasources/proxy/{id}/{path}", "uidx"),
    ("POST", "/api/v2/write", "/api/v2/write", ""),
    ("POST", "/api/v2/query", "/api/v2/query", ""),
    ("GET", "/query", "/query", ""),
    ("HEAD", "/query", "/query", ""),
    ("POST", "/query", "/query", ""),
    ("POST", "/write", "/write", ""),
    (
        "POST",
        "/api/v2/sources/00000000000000a1/query",
        "/api/v2/sources/{source_id}/query",
        "00000000000000a1",
    ),
]
LEFT_TO_AIOHTTP = [
    ("GET", "/api/datasources/proxy/uid/a%62c/x"),  # aiohttp matches the decoded uid
    ("GET", "/api/datasources/proxy/%35/x"),
    ("GET", "/api/datasources/proxy/uid"),  # `/{id}` with id "uid": aiohttp's 400
    ("GET", "/api/datasources/proxy/uid/"),
    ("GET", "/api/datasources/proxy/"),
    ("GET", "/api/datasources/proxy"),
    ("GET", "/api/v2/write"),  # aiohttp's 405 with Allow
    ("PUT", "/query"),
    ("GET", "/write"),
    ("GET", "/api/v2/sources/00000000000000a1/query"),
    ("POST", "/api/v2/sources/00000000000000a1/health"),
    ("POST", "/api/v2/sources//query"),
    ("POST", "/api/v2/sources/a/b/query"),
    ("POST", "/api/v2/sources/a%31/query"),
    ("GET", "/api/datasources"),
    ("GET", "/health"),
]


@pytest.fixture
def recorded() -> tuple[RecordingPipeline, Callable[[str, str], Any]]:
    pipeline = RecordingPipeline()
    return pipeline, front_router(cast(ProxyPipeline, pipeline))


@pytest.mark.parametrize(("method", "path", "name", "key"), CLAIMED)
async def test_the_front_claims_the_unambiguous_forms(
    recorded: tuple[RecordingPipeline, Callable[[str, str], Any]],
    method: str,
    path: str,
    name: str,
    key: str,
) -> None:
    pipeline, router = recorded
    handler = router(method, path)
    assert handler is not None
    await cast(Callable[[PathOnly], Awaitable[None]], handler)(PathOnly(path))
    assert pipeline.served == [(name, key)]


@pytest.mark.parametrize(("method", "path"), LEFT_TO_AIOHTTP)
def test_the_front_leaves_the_other_forms_to_aiohttp(
    recorded: tuple[RecordingPipeline, Callable[[str, str], Any]], method: str, path: str
) -> None:
    assert recorded[1](method, path) is None


def test_every_route_is_declared_once_and_registered_with_aiohttp_under_its_name(
    app: web.Application,
) -> None:
    names = [route.name for route in ROUTES]
    assert len(set(names)) == len(names)
    registered: dict[str, set[str]] = {}
    for resource in app.router.resources():
        for route in resource:
            registered.setdefault(resource.canonical, set()).add(route.method)
    for proxy_route in ROUTES:
        assert registered[proxy_route.name] == set(proxy_route.methods or {"*"}), proxy_route


async def test_unclaimed_forms_are_answered_by_aiohttp_alike_on_both_carriers(
    client: AppClient,
) -> None:
    not_allowed = await client.get("/api/v2/write", headers=AUTH)
    assert not_allowed.status == 405
    answer = {"code": "method not allowed", "message": "allow: POST"}
    assert await not_allowed.json() == answer
    assert not_allowed.headers["Allow"] == "POST"
    no_uid = await client.get("/api/datasources/proxy/uid", headers=AUTH)
    assert no_uid.status == 400
    assert await no_uid.json() == {"message": "UID is invalid"}


async def test_head_query_is_passed_through_and_put_is_told_what_is_allowed(
    client: AppClient, upstream: RawServer
) -> None:
    """InfluxDB 1.x clients probe `/query` with HEAD: it is the GET route's, as aiohttp's
    `add_get` registers it."""
    spec = DataSourceSpec(name="influx", type="influxdb", url=f"http://127.0.0.1:{upstream.port}")
    await client.app[STORE].create_source(1, spec)
    head = await client.head("/query?db=x", headers=AUTH)
    assert head.status == 200
    assert await head.read() == b""
    put = await client.put("/query", headers=AUTH)
    assert put.status == 405
    assert await put.json() == {"code": "method not allowed", "message": "allow: GET,HEAD,POST"}
    assert put.headers["Allow"] == "GET,HEAD,POST"


def test_only_routes_that_need_nothing_but_the_registry_resolve_without_a_coroutine() -> None:
    """The pipeline calls `resolve_now` while the source snapshot is current: a query route has
    none (a viewer's query is read first), nor does a route that reads its body to resolve."""
    synchronous = {route.name for route in ROUTES if route.resolve_now is not None}
    assert synchronous == {
        "/api/datasources/proxy/uid/{uid}",
        "/api/datasources/proxy/uid/{uid}/{path}",
        "/api/datasources/proxy/{id}",
        "/api/datasources/proxy/{id}/{path}",
        "/api/v2/write",
        "/write",
    }
    assert all(route.resolve_now is None for route in ROUTES if route.queries)


async def test_a_source_changed_just_before_is_resolved_afresh(
    client: AppClient, source: DataSource, upstream: RawServer, raw_server: StartRawServer
) -> None:
    """A change makes the snapshot stale: the next request waits for the reload (the
    coroutine path) and goes where the source points now; the one after takes the fresh
    snapshot without waiting, to the same place."""
    assert (await client.get(proxy_path(source, "x"), headers=AUTH)).status == 200
    other = await raw_server(bare_upstream)
    store = client.app[STORE]
    spec = DataSourceSpec(name="bare", type="acme-json", url=f"http://127.0.0.1:{other.port}")
    await store.update_source(1, source.id, lambda current: spec)
    for _ in range(2):
        response = await client.get(proxy_path(source, "named"), headers=AUTH)
        assert (response.status, response.headers.get("Server")) == (200, "upstream/1.0")
    assert other.connections == 1  # the new target took both, on one kept-alive connection

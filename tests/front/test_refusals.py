"""Requests refused before any handler runs, on the gateway as `gateway serve` serves it: each gets
the JSON error of its route's dialect (Grafana's when not even the path is known), an
`X-Request-Id`, `Connection: close` when the connection cannot go on, and one `request` log line.

Raw sockets send what no well-behaved client would. Every test runs on both carriers of proxied
requests (the front server's fast path and aiohttp's handlers) and on both loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, MutableMapping
from typing import Any, cast

import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from gateway.keys import STORE
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import ADMIN_TOKEN, CARRIERS, FRONT, FrontTestServer
from tests.types import AppClient

pytestmark = pytest.mark.parametrize("carrier", CARRIERS)

T = 5.0
GRAFANA_JSON = "application/json; charset=utf-8"
Logs = list[MutableMapping[str, Any]]


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {
            name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def logs() -> Iterator[Logs]:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        yield captured


def request_lines(logs: Logs) -> Logs:
    return [entry for entry in logs if entry["event"] == "request"]


async def exchange(client: AppClient, *parts: bytes) -> Response:
    """Send `parts` on a new connection, one write each; the whole answer, read to the close."""
    server = cast(FrontTestServer, client.server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
        with contextlib.suppress(ConnectionResetError):
            return Response(await asyncio.wait_for(reader.read(), T))
        raise AssertionError("reset before an answer")
    finally:
        writer.close()


def assert_refused(
    response: Response, status: int, body: dict[str, str], logs: Logs, method: str, path: str
) -> None:
    assert response.status == status
    assert response.json() == body
    assert response.headers["connection"] == "close"
    request_id = response.headers["x-request-id"]
    (line,) = request_lines(logs)
    assert line["status"] == status
    assert (line["method"], line["path"]) == (method, path)
    assert line["request_id"] == request_id
    assert isinstance(line["duration_ms"], float)


# --- refused by the front server, while the head arrives -------------------------------------


async def test_an_overlong_target_on_a_grafana_route_gets_414_in_grafana_json(
    client: AppClient, logs: Logs
) -> None:
    path = "/api/datasources/proxy/uid/abc/" + "a" * 9000
    response = await exchange(client, f"GET {path}?p=secret HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert response.headers["content-type"] == GRAFANA_JSON
    assert_refused(
        response,
        414,
        {"message": "request target (URI) too long"},
        logs,
        "GET",
        path[:200] + "...",
    )


async def test_an_overlong_target_on_an_influx_route_gets_414_in_influx_json(
    client: AppClient, logs: Logs
) -> None:
    target = "/api/v2/query?org=" + "o" * 9000
    response = await exchange(client, f"POST {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert response.headers["x-platform-error-code"] == "invalid"
    assert_refused(
        response,
        414,
        {"code": "invalid", "message": "request target (URI) too long"},
        logs,
        "POST",
        "/api/v2/query",
    )


async def test_oversized_headers_on_an_influx_write_get_431_with_the_asked_request_id(
    client: AppClient, logs: Logs
) -> None:
    fields = "".join(f"X-Filler-{i}: {'v' * 1000}\r\n" for i in range(70))
    head = f"POST /write?db=x HTTP/1.1\r\nHost: t\r\nX-Request-Id: asked-1\r\n{fields}\r\n"
    response = await exchange(client, head.encode())
    assert response.headers["x-request-id"] == "asked-1"
    assert_refused(
        response,
        431,
        {"code": "request too large", "message": "request header fields too large"},
        logs,
        "POST",
        "/write",
    )


async def test_a_bad_request_line_gets_400_in_grafana_json(client: AppClient, logs: Logs) -> None:
    response = await exchange(client, b"G@T /write HTTP/1.1\r\nHost: t\r\n\r\n")
    assert_refused(
        response, 400, {"message": "malformed request: Invalid method encountered"}, logs, "-", "-"
    )


async def test_an_unsupported_version_gets_505_in_the_routes_dialect(
    client: AppClient, logs: Logs
) -> None:
    response = await exchange(client, b"GET /api/v2/buckets HTTP/2.0\r\nHost: t\r\n\r\n")
    assert response.json()["code"] == "internal error"
    assert_refused(
        response,
        505,
        {
            "code": "internal error",
            "message": "HTTP version not supported: only HTTP/1.0 and HTTP/1.1",
        },
        logs,
        "GET",
        "/api/v2/buckets",
    )


# --- a proxied request whose chunked body breaks off --------------------------------------------


async def consume(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="read")


@pytest.fixture
async def source(client: AppClient, aiohttp_server: AiohttpServer) -> DataSource:
    upstream = web.Application()
    upstream.router.add_route("*", "/{tail:.*}", consume)
    server = await aiohttp_server(upstream)
    spec = DataSourceSpec(name="sink", type="acme-json", url=f"http://127.0.0.1:{server.port}")
    return await client.app[STORE].create_source(1, spec)


async def test_bad_chunked_framing_of_a_proxied_body_gets_400_json(
    client: AppClient, source: DataSource, logs: Logs, carrier: str
) -> None:
    """On the front server the request's own pipeline answers, as for any error of the body it
    reads (its id, its route's line). aiohttp's parser, given the request and its broken body in
    one read, drops the request unrun and answers the refusal, under an id of its own: the one
    answer and the one line. (Sent in one write, so that neither waits for a body to go on.)"""
    head = (
        f"POST /api/datasources/proxy/uid/{source.uid}/upload HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nX-Request-Id: chunky-1\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    response = await exchange(client, head.encode() + b"3\r\nabc\r\nzz\r\n")
    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == GRAFANA_JSON
    (line,) = request_lines(logs)
    assert line["status"] == 400
    assert line["request_id"] == response.headers["x-request-id"]
    if carrier == FRONT:
        assert response.json() == {"message": "malformed request: Invalid character in chunk size"}
        assert line["request_id"] == "chunky-1"
        assert line["path"] == "/api/datasources/proxy/uid/{uid}/{path}"
    else:
        # aiohttp's own message quotes the bytes it refused: not repeated to the client.
        assert response.json() == {"message": "malformed request"}
        assert (line["method"], line["path"]) == ("-", "-")


# --- refused by aiohttp's parser, on a connection handed over to it -----------------------------


API_REQUEST = b"GET /ping HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_bad_request_line_after_an_api_request_gets_grafana_json(
    client: AppClient, logs: Logs
) -> None:
    server = cast(FrontTestServer, client.server)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(API_REQUEST)  # hands the connection to aiohttp
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 204")
        writer.write(b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            response = Response(await asyncio.wait_for(reader.read(), T))
    finally:
        writer.close()
    assert response.status == 400
    assert response.headers["content-type"] == GRAFANA_JSON
    assert response.json() == {"message": "malformed request: invalid method"}
    assert response.headers["connection"] == "close"
    _, line = request_lines(logs)  # the /ping's, then the refusal's
    assert (line["method"], line["path"], line["status"]) == ("-", "-", 400)
    assert line["request_id"] == response.headers["x-request-id"]


async def test_a_header_field_over_aiohttps_limit_gets_grafana_json(
    client: AppClient, logs: Logs
) -> None:
    head = f"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Long: {'v' * 9000}\r\n\r\n"
    response = await exchange(client, head.encode())
    assert response.status == 400
    assert response.json() == {
        "message": "malformed request: a request line or header field is too long"
    }
    assert response.headers["connection"] == "close"
    (line,) = request_lines(logs)
    assert (line["path"], line["status"]) == ("-", 400)
    assert line["request_id"] == response.headers["x-request-id"]


# --- what aiohttp's router refuses: the middlewares answer ----------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/api/nothing", 404, {"message": "Not found"}),
        ("GET", "/api/v2/nothing", 404, {"code": "not found", "message": "path not found"}),
        ("DELETE", "/ping", 405, {"message": "Method Not Allowed"}),
        ("DELETE", "/api/v2/sources", 405, None),
    ],
)
async def test_routing_errors_are_json_in_the_paths_dialect_with_a_request_id(
    client: AppClient, logs: Logs, method: str, path: str, status: int, body: Any
) -> None:
    headers = {"X-Request-Id": "routed-1", "Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await client.request(method, path, headers=headers)
    assert response.status == status
    assert response.headers["X-Request-Id"] == "routed-1"
    answer = await response.json(content_type=None)
    if body is not None:
        assert answer == body
    else:
        assert answer["code"] == "method not allowed"
    (line,) = request_lines(logs)
    assert (line["status"], line["request_id"]) == (status, "routed-1")

"""influxdb-client (the v2 API writer) through the spool.

InfluxDB 1.6, the one Debian ships, has no /api/v2/write (1.8 added it), so the upstream here
is a v2 stand-in: an aiohttp server answering /api/v2/write with 204 — or 503 while it is
"down" — and recording the bytes it received, compressed as they came.
"""

from __future__ import annotations

import asyncio
import gzip
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from pytest_aiohttp import AiohttpServer

from tests.conftest import ADMIN_TOKEN, Headers
from tests.types import AppClient
from tests.waiting import wait_for

UPSTREAM_TOKEN = "v2-upstream-token"


@dataclass
class Received:
    path_qs: str
    authorization: str | None
    encoding: str | None
    body: bytes


@dataclass
class V2Upstream:
    url: str = ""
    down: bool = False
    received: list[Received] = field(default_factory=list)


@pytest.fixture
async def v2(aiohttp_server: AiohttpServer) -> V2Upstream:
    upstream = V2Upstream()

    async def write(request: web.Request) -> web.Response:
        body = await request.read()
        if upstream.down:
            return web.json_response({"code": "unavailable", "message": "down"}, status=503)
        headers = request.headers
        upstream.received.append(
            Received(
                request.path_qs,
                headers.get("Authorization"),
                headers.get("Content-Encoding"),
                body,
            )
        )
        return web.Response(status=204)

    async def health(request: web.Request) -> web.Response:
        status = "fail" if upstream.down else "pass"
        return web.json_response({"name": "influxdb", "status": status, "version": "v2.7.12"})

    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_post("/api/v2/write", write)
    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    upstream.url = str(server.make_url("")).rstrip("/")
    return upstream


async def test_influxdb_client_gzip_writes_are_queued_and_delivered_as_sent(
    client: AppClient, admin_headers: Headers, v2: V2Upstream
) -> None:
    body = {"name": "influx2", "type": "influxdb", "access": "proxy", "url": v2.url,
            "jsonData": {"version": "Flux", "organization": "acme", "defaultBucket": "metrics"},
            "secureJsonData": {"token": UPSTREAM_TOKEN}}  # fmt: skip
    assert (await client.post("/api/datasources", json=body, headers=admin_headers)).status == 200
    v2.down = True
    records = [f"cpu,host=h{n % 2} value={n} {1_700_000_000_000_000_000 + n}" for n in range(30)]
    gateway = str(client.make_url("")).rstrip("/")
    influx = InfluxDBClient(url=gateway, token=ADMIN_TOKEN, org="acme", enable_gzip=True)
    try:
        write_api = influx.write_api(write_options=SYNCHRONOUS)
        for start in range(0, 30, 10):  # raises on anything but 2xx
            await asyncio.to_thread(
                write_api.write, bucket="metrics", record=records[start : start + 10]
            )
    finally:
        await asyncio.to_thread(influx.close)
    assert v2.received == []
    v2.down = False

    await wait_for(lambda: len(v2.received) == 3, what="the three writes delivered")
    sent = ["\n".join(records[start : start + 10]).encode() for start in range(0, 30, 10)]
    assert [gzip.decompress(received.body) for received in v2.received] == sent  # in order
    for received in v2.received:
        assert received.encoding == "gzip"  # sent as received, never recompressed
        assert received.authorization == f"Token {UPSTREAM_TOKEN}"  # the source's token
        assert received.path_qs.startswith("/api/v2/write?")
        assert "bucket=metrics" in received.path_qs
        assert "org=acme" in received.path_qs
        assert ADMIN_TOKEN not in received.path_qs

"""SIGTERM with a real process: /ready turns 503, in-flight requests finish, exit code 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from pytest_aiohttp import AiohttpServer

from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.process import GatewayProcess
from tests.waiting import wait_for

SOURCE_PASSWORD = "pw-5b0e1c7d-never-logged"
UPSTREAM_DELAY = 1.5


def slow_upstream(arrived: list[str]) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        arrived.append(request.path)
        await asyncio.sleep(UPSTREAM_DELAY)
        return web.Response(text="ok")

    return handle


async def test_sigterm_drains_in_flight_requests_then_exits_0(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    upstream_app = web.Application()
    arrived: list[str] = []
    upstream_app.router.add_get("/{tail:.*}", slow_upstream(arrived))
    upstream = await aiohttp_server(upstream_app)
    gateway = await asyncio.to_thread(
        GatewayProcess,
        tmp_path / "data",
        {"GATEWAY_DRAIN_DELAY": "1", "GATEWAY_DRAIN_TIMEOUT": "10"},
    )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with aiohttp.ClientSession(gateway.url, headers=headers) as http:
            created = await http.post(
                "/api/datasources",
                json={
                    "name": "slow",
                    "type": "testdata-slow",
                    "access": "proxy",
                    "url": str(upstream.make_url("/")),
                    "basicAuth": True,
                    "basicAuthUser": "u",
                    "secureJsonData": {"basicAuthPassword": SOURCE_PASSWORD},
                },
            )
            assert created.status == 200, await created.text()
            uid = (await created.json())["datasource"]["uid"]

            in_flight = asyncio.create_task(http.get(f"/api/datasources/uid/{uid}/health"))
            # A proxied request on a connection of its own: served by the front protocol,
            # which drains its connections before aiohttp drains its own.
            proxy_session = aiohttp.ClientSession(gateway.url, headers=headers)
            proxied = asyncio.create_task(proxy_session.get(f"/api/datasources/proxy/uid/{uid}/x"))
            # Both now wait on the slow upstream: the proxied request, and a probe.
            await wait_for(lambda: "/x" in arrived and len(arrived) >= 2, what=str(arrived))
            gateway.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(gateway.wait_for, "gateway_draining")

            async with aiohttp.ClientSession(gateway.url) as fresh:  # a new connection
                ready = await fresh.get("/ready")
                assert ready.status == 503
                assert await ready.json() == {"status": "draining"}

            finished = await in_flight
            assert finished.status == 200
            assert (await finished.json())["status"] == "OK"
            async with proxy_session:
                answer = await proxied
                assert answer.status == 200
                assert await answer.text() == "ok"
        exit_code = await asyncio.to_thread(gateway.stop)
    finally:
        if gateway.proc.poll() is None:
            gateway.proc.kill()
    assert exit_code == 0
    events = [record.get("event") for record in gateway.events()]
    assert events.index("gateway_draining") < events.index("gateway_stopped")
    output = "\n".join(gateway.lines)
    for secret in (ADMIN_TOKEN, SOURCE_PASSWORD, SECRET_KEY):
        assert secret not in output

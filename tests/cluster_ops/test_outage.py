"""Losing PostgreSQL while serving (issue 20): proxied requests go on from the in-memory caches,
API calls that need the database answer 503 in their dialect with Retry-After, /ready turns 503
only after the grace period, and everything recovers by itself once the server is back.

The gateway runs in-process on a PostgreSQL of the test's own (conftest.py), which the test
stops (`pg_ctl stop -m fast`) or freezes (SIGSTOP) under a steady load of proxied requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from gateway.config import Settings
from gateway.keys import SOURCES
from tests.cluster_ops.conftest import OwnPostgres
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, Headers
from tests.types import AppClient
from tests.waiting import wait_for

QUERY_TIMEOUT = 1.0
GRACE_SECONDS = 3.0


@pytest.fixture
def settings(data_dir: Path, own_postgres: OwnPostgres) -> Settings:
    return Settings(
        port=0,
        data_dir=data_dir,
        database_url=own_postgres.url,
        database_query_timeout=QUERY_TIMEOUT,
        database_outage_grace_period=GRACE_SECONDS,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        log_format="console",
        health_interval=30.0,
        health_timeout=2.0,
    )


async def answer(request: web.Request) -> web.Response:
    return web.Response(text="upstream answered")


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return await aiohttp_server(app)


class ProxiedLoad:
    """A few clients sending proxied requests back to back; every answer is recorded."""

    def __init__(self, client: AppClient, uid: str, concurrency: int = 4) -> None:
        self._client = client
        self._path = f"/api/datasources/proxy/uid/{uid}/api/v1/query"
        self._headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self._concurrency = concurrency
        self.served = 0
        self.failures: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ProxiedLoad:
        self._tasks = [asyncio.create_task(self._send()) for _ in range(self._concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send(self) -> None:
        while True:
            try:
                async with self._client.get(self._path, headers=self._headers) as response:
                    body = await response.text()
                    if response.status == 200 and body == "upstream answered":
                        self.served += 1
                    else:
                        self.failures.append(f"{response.status} {body[:200]}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures.append(repr(exc))
            await asyncio.sleep(0.005)

    async def serves(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` more requests were served."""
        target = self.served + count
        await wait_for(lambda: self.served >= target, timeout, f"{count} proxied requests")


def source_body(name: str, upstream: TestServer) -> dict[str, Any]:
    return {
        "name": name,
        "type": "prometheus",
        "access": "proxy",
        "url": str(upstream.make_url("/")),
    }


async def ready_status(client: AppClient) -> int:
    async with client.get("/ready") as response:
        return response.status


async def until_ready_is(client: AppClient, status: int, timeout: float) -> float:
    started = time.monotonic()
    while (got := await ready_status(client)) != status:
        assert time.monotonic() - started < timeout, f"/ready still {got} after {timeout:g} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def create(client: AppClient, headers: Headers, body: dict[str, Any]) -> str:
    async with client.post("/api/datasources", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        uid: str = (await response.json())["datasource"]["uid"]
        return uid


async def check_refused(client: AppClient, headers: Headers, upstream: TestServer) -> str:
    """An API write and an API read during the outage: 503 in each API's dialect."""
    async with client.post(
        "/api/datasources", json=source_body("during", upstream), headers=headers
    ) as response:
        assert response.status == 503, await response.text()
        assert response.headers["Retry-After"] == "5"
        message: str = (await response.json())["message"]
        assert message.startswith("registry database unavailable: "), message
    async with client.get("/api/v2/sources", headers=headers) as response:
        assert response.status == 503
        assert response.headers["X-Platform-Error-Code"] == "unavailable"
        assert response.headers["Retry-After"] == "5"
        body = await response.json()
        assert body["code"] == "unavailable"
        assert body["message"].startswith("registry database unavailable: ")
    return message


async def ride_out(
    client: AppClient,
    headers: Headers,
    upstream: TestServer,
    take_away: Callable[[], None],
    bring_back: Callable[[], None],
) -> str:
    """Take PostgreSQL away under load, check what the gateway does, bring it back: returns the
    503's message."""
    uid = await create(client, headers, source_body("before", upstream))
    async with ProxiedLoad(client, uid) as load:
        await load.serves(20)
        await asyncio.to_thread(take_away)
        away = time.monotonic()
        # As if another gateway's change to sources was heard just before the loss: the source
        # cache is stale now and cannot reload, and must go on serving what it has. (Tokens are
        # not kept so: a token cache cleared then answers 503 until the database is back, as a
        # revocation may be what was heard.)
        client.app[SOURCES]._invalidate()
        message = await check_refused(client, headers, upstream)
        # Lost, but not for the grace period yet: still in the balancer; then out of it.
        await until_ready_is(client, 503, timeout=GRACE_SECONDS + 4 * QUERY_TIMEOUT + 10)
        assert time.monotonic() - away >= GRACE_SECONDS - 0.5, "503 before the grace period"
        async with client.get("/ready") as response:
            assert "unreachable" in (await response.json())["message"]
        await load.serves(50)  # served from memory, the database still away
        await asyncio.to_thread(bring_back)
        await until_ready_is(client, 200, timeout=20)
        after = await create(client, headers, source_body("after", upstream))
        async with client.get(f"/api/datasources/proxy/uid/{after}/", headers=headers) as got:
            assert got.status == 200
        await load.serves(20)
    assert load.failures == [], load.failures[:5]
    return message


async def test_postgresql_stopped_under_load_and_restarted(
    client: AppClient, admin_headers: Headers, upstream: TestServer, own_postgres: OwnPostgres
) -> None:
    message = await ride_out(client, admin_headers, upstream, own_postgres.stop, own_postgres.start)
    assert "did not answer in time" not in message  # refused at once: no waiting for a timeout


async def test_postgresql_frozen_under_load_and_thawed(
    client: AppClient, admin_headers: Headers, upstream: TestServer, own_postgres: OwnPostgres
) -> None:
    started = time.monotonic()
    message = await ride_out(
        client, admin_headers, upstream, own_postgres.freeze, own_postgres.thaw
    )
    assert "did not answer in time" in message
    assert time.monotonic() - started < 50

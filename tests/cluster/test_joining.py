"""Two members in one process on a real PostgreSQL: a gateway joining a cluster takes its share
from the stored states, so a source failing for a while is not logged failing again because it
changed hands; and the share moves back when the member leaves."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from gateway.app import prober
from gateway.cluster import SharedProbing, open_shared_probing
from gateway.config import Settings
from gateway.health.monitor import HealthMonitor
from gateway.proxy.ssrf import SsrfPolicy
from gateway.registry.cache import SourceCache
from gateway.registry.models import DEFAULT_ORG_ID, DataSourceSpec
from gateway.registry.postgres import PostgresBackend
from gateway.registry.secrets import SecretBox

INTERVAL = 0.5
UIDS = [f"s{n}" for n in range(8)]


@pytest.fixture
async def failing_upstream(aiohttp_server: AiohttpServer) -> str:
    async def unavailable(_request: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/{source}", unavailable)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@contextlib.asynccontextmanager
async def member(settings: Settings) -> AsyncIterator[tuple[HealthMonitor, SharedProbing]]:
    """One gateway's registry, monitor and shared probing, as the app composes them."""
    assert settings.database_url is not None
    backend = PostgresBackend(settings.database_url)
    async with (
        backend.open(SecretBox("k")) as registry,
        aiohttp.ClientSession() as session,
        open_shared_probing(settings) as shared,
    ):
        assert shared is not None
        monitor = HealthMonitor(
            SourceCache(registry),
            prober(session, SsrfPolicy.from_rules((), ())),
            interval=INTERVAL,
            timeout=0.3,
            owns=shared.owns,
            on_result=shared.stored_changed,
        )
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(shared.run(monitor))]
        try:
            yield monitor, shared
        finally:
            for task in reversed(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def wait_until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not done():
            await asyncio.sleep(0.02)


async def test_a_joining_member_takes_its_share_without_logging_old_failures_again(
    settings: Settings, postgres_url: str, failing_upstream: str
) -> None:
    settings = dataclasses.replace(
        settings, database_url=postgres_url, health_interval=INTERVAL, health_timeout=0.3
    )
    with structlog.testing.capture_logs() as logs:
        async with member(settings) as (first, _):
            async with PostgresBackend(postgres_url).open(SecretBox("k")) as registry:
                for uid in UIDS:
                    url = f"{failing_upstream}/{uid}"
                    spec = DataSourceSpec(uid=uid, name=uid, type="generic-http", url=url)
                    await registry.create_source(DEFAULT_ORG_ID, spec)
            await wait_until(lambda: len([s for s in first.states() if s.status == "fail"]) == 8)
            await asyncio.sleep(INTERVAL)  # stored
            async with member(settings) as (second, joined):
                await wait_until(lambda: len(joined.members) == 2)
                await wait_until(lambda: any(s.owned for s in second.states()))
                taken = [s for s in second.states() if s.owned]
                # It probes its share from the stored state on: still failing, no new change.
                await wait_until(lambda: all(s.consecutive_failures >= 6 for s in taken))
                assert all(s.status == "fail" for s in second.states())
            # It left: the first takes its share back, again without a new change.
            await wait_until(lambda: all(s.owned for s in first.states()))
            await asyncio.sleep(2 * INTERVAL)
    unhealthy = [log["source_uid"] for log in logs if log["event"] == "source_unhealthy"]
    assert sorted(unhealthy) == UIDS

"""The monitor's shared-probing hooks, on a real SQLite registry's source cache, the app's prober
and a real upstream: only owned sources are probed, one taken over is probed soon, and an adopted
state is served and heard by the proxy's target listeners without being logged again."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from gateway.app import prober
from gateway.bootstrap import open_registry
from gateway.cluster import open_shared_probing
from gateway.config import Settings
from gateway.health.monitor import HealthMonitor
from gateway.health.state import StoredSource, StoredTarget
from gateway.proxy.ssrf import SsrfPolicy
from gateway.registry.cache import SourceCache
from gateway.registry.interface import Registry
from gateway.registry.models import DEFAULT_ORG_ID, DataSource, DataSourceSpec

INTERVAL = 0.3
FAIL = {"name": "s", "status": "fail", "message": "503 from the owner's probe", "checks": []}


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> tuple[str, Counter[str]]:
    """An upstream at which each source has its own path; counts the requests to each."""
    requests: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.Response:
        requests[request.match_info["source"]] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{source}", handler)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}", requests


class Sharing:
    """A HealthMonitor on the registry's sources, owning the uids in `owned`."""

    def __init__(self, registry: Registry, session: aiohttp.ClientSession) -> None:
        self.registry = registry
        self.owned: set[str] = set()
        self.heard: list[tuple[str, bool]] = []
        self.monitor = HealthMonitor(
            SourceCache(registry),
            prober(session, SsrfPolicy.from_rules((), ())),
            interval=INTERVAL,
            timeout=0.5,
            owns=lambda source: source.uid in self.owned,
        )
        self.monitor.add_target_listener(
            lambda source, _url, healthy: self.heard.append((source.uid, healthy))
        )


@pytest.fixture
async def sharing(settings: Settings) -> AsyncIterator[Sharing]:
    async with open_registry(settings) as registry, aiohttp.ClientSession() as session:
        sharing = Sharing(registry, session)
        task = asyncio.create_task(sharing.monitor.run())
        yield sharing
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def add_source(sharing: Sharing, base: str, uid: str) -> DataSource:
    spec = DataSourceSpec(name=uid, uid=uid, type="generic-http", url=f"{base}/{uid}")
    return await sharing.registry.create_source(DEFAULT_ORG_ID, spec)


async def wait_until_known(sharing: Sharing, *sources: DataSource) -> None:
    async with asyncio.timeout(5):
        while any(sharing.monitor.state(source.id) is None for source in sources):
            await asyncio.sleep(0.01)


async def test_only_owned_sources_are_probed_and_one_taken_over_soon(
    sharing: Sharing, upstream: tuple[str, Counter[str]]
) -> None:
    base, requests = upstream
    sharing.owned = {"mine"}
    await add_source(sharing, base, "mine")
    await add_source(sharing, base, "theirs")
    await asyncio.sleep(1 + 2 * INTERVAL)  # a new source is probed within a second
    assert requests["mine"] >= 2
    assert requests["theirs"] == 0

    sharing.owned = {"mine", "theirs"}
    sharing.monitor.ownership_changed()
    started = time.monotonic()
    async with asyncio.timeout(5):
        while requests["theirs"] == 0:
            await asyncio.sleep(0.005)
    assert time.monotonic() - started < INTERVAL / 10 + 0.1

    sharing.owned = {"theirs"}
    sharing.monitor.ownership_changed()
    await asyncio.sleep(0.1)  # a probe in flight at the change may still land
    given_up = requests["mine"]
    await asyncio.sleep(3 * INTERVAL)
    assert requests["mine"] == given_up


async def test_an_adopted_state_is_served_and_heard_but_not_logged(
    sharing: Sharing, upstream: tuple[str, Counter[str]]
) -> None:
    base, requests = upstream
    source = await add_source(sharing, base, "theirs")
    await wait_until_known(sharing, source)
    monitor = sharing.monitor

    def stored(status: str, version: int = source.version) -> StoredSource:
        now = datetime.now(UTC)
        result = FAIL if status == "fail" else {**FAIL, "status": "pass", "message": "ok"}
        target = StoredTarget(0, status, now, result, now, int(status == "fail") * 3, 0)
        return StoredSource(source.id, version, status, now, (target,))

    with structlog.testing.capture_logs() as logs:
        monitor.adopt(stored("fail"))
        assert monitor.latest(source.id) == FAIL
        assert not monitor.target_healthy(source.id, source.url)
        assert sharing.heard == [("theirs", False)]

        monitor.adopt(stored("pass", version=source.version + 1))  # another version: ignored
        assert not monitor.target_healthy(source.id, source.url)

        monitor.record(source, {**FAIL, "status": "pass"})  # an on-demand probe: not its to keep
        assert monitor.latest(source.id) == FAIL

        monitor.adopt(stored("pass"))
        assert monitor.target_healthy(source.id, source.url)
        assert sharing.heard == [("theirs", False), ("theirs", True)]
    assert logs == []
    assert requests["theirs"] == 0


async def test_a_sqlite_gateway_has_no_cluster(settings: Settings) -> None:
    async with open_shared_probing(dataclasses.replace(settings, database_url=None)) as shared:
        assert shared is None

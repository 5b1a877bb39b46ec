"""Health per target (issue 15): every URL of a source (`url`, `jsonData.replicaUrls`) probed and
judged on its own, inside the real app, against aiohttp servers the tests switch up and down.

The monitor runs on a fake clock (tests/health/fake_clock.py); time bounds are schedule seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.config import Settings
from gateway.health.monitor import PASSIVE_MIN_GAP, HealthMonitor, current_health
from gateway.health.probes import HealthCheck, probe_source
from gateway.keys import STORE
from gateway.registry.models import DataSource, DataSourceSpec, target_label
from tests.conftest import ADMIN_TOKEN
from tests.health import fake_upstreams as fakes
from tests.health.fake_clock import FakeClock, Schedule
from tests.health.sources import make_source
from tests.types import AppClient
from tests.upstreams import free_port

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INTERVAL = 0.2
TIMEOUT = 0.5
FALL, RISE = 3, 2
SETTLE = 1.2  # a new source's first results are in within a second of schedule
SECRET = "replica-pass-5c1e"


@dataclasses.dataclass
class Upstream:
    """An aiohttp server standing in for one replica: the test sets what it answers."""

    url: str = ""
    status: int = 200
    requests: int = 0
    gate: asyncio.Event | None = None  # while set to an unset event, answers wait for it

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].rstrip("/"))


StartUpstream = Callable[[], Awaitable[Upstream]]


@pytest.fixture
def start_upstream(aiohttp_server: AiohttpServer) -> StartUpstream:
    async def start() -> Upstream:
        upstream = Upstream()

        async def answer(request: web.Request) -> web.Response:
            upstream.requests += 1
            if upstream.gate is not None:
                await upstream.gate.wait()
            return web.Response(status=upstream.status, text="ok")

        app = web.Application()
        app.router.add_get("/", answer)
        server = await aiohttp_server(app)
        upstream.url = str(server.make_url("/"))
        return upstream

    return start


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, health_interval=INTERVAL, health_timeout=TIMEOUT)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient,
    app: web.Application,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> AppClient:
    # The monitor as gateway/app.py builds it (target transitions counted through the hook the
    # app wires), on the fake clock.
    monkeypatch.setattr(
        "gateway.app.HealthMonitor",
        functools.partial(
            HealthMonitor,
            clock=clock,
            random=random.Random(14),
            wait=clock.wait,
        ),
    )
    return await aiohttp_client(app)


async def add_source(
    client: AppClient, url: str, *replicas: str, type: str = "generic-http", **json_data: object
) -> DataSource:
    spec = DataSourceSpec(
        name=f"source at {target_label(url)}",
        type=type,
        url=url,
        json_data={"replicaUrls": list(replicas), **json_data},
    )
    return await client.app[STORE].create_source(1, spec)


async def influxdb(aiohttp_server: AiohttpServer) -> str:
    """The URL of a faithful InfluxDB 1.x stand-in: the InfluxDB sources API serves only
    influxdb sources."""
    return str((await aiohttp_server(fakes.influxql_app())).make_url("/"))


async def known(schedule: Schedule, source: DataSource, within: float = SETTLE) -> None:
    """Until every target of `source` has a state."""

    def all_known() -> bool:
        state = schedule.monitor.state(source.id)
        return state is not None and all(t.status for t in state.targets.values())

    await schedule.run_until(all_known, within)


def latest(schedule: Schedule, source: DataSource) -> HealthCheck:
    check = schedule.monitor.latest(source.id)
    assert check is not None
    return check


def by_target(check: HealthCheck) -> dict[str, HealthCheck]:
    return {entry["name"]: entry for entry in check["checks"]}


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


class TestSourceState:
    async def test_one_target_down_the_source_passes_and_names_it(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        up, down = (await start_upstream()).url, dead_url()
        source = await add_source(client, up, down)
        await known(schedule, source)
        check = latest(schedule, source)
        assert check["name"] == source.name
        assert check["status"] == "pass"
        assert check["message"] == f"1 of 2 targets failing: {down}"
        assert [entry["name"] for entry in check["checks"]] == [up, down]
        entries = by_target(check)
        assert entries[up]["status"] == "pass"
        assert entries[down]["status"] == "fail"
        assert entries[down]["message"].startswith("GET /: connection refused after ")
        # Each entry holds that target's own probe checks.
        assert [c["name"] for c in entries[up]["checks"]] == ["reachable"]
        assert entries[down]["checks"][0]["status"] == "fail"
        assert set(entries[up]) == {"name", "status", "message", "checks"}

    async def test_every_target_down_the_source_fails(
        self, client: AppClient, schedule: Schedule
    ) -> None:
        first, second = dead_url(), dead_url()
        with structlog.testing.capture_logs() as logs:
            source = await add_source(client, first, second)
            await known(schedule, source)
        check = latest(schedule, source)
        assert check["status"] == "fail"
        assert check["message"] == f"2 of 2 targets failing: {first}, {second}"
        assert [entry["status"] for entry in check["checks"]] == ["fail", "fail"]
        events = [(e["event"], e.get("target")) for e in logs if "unhealthy" in e["event"]]
        assert sorted(events, key=str) == sorted(
            [("target_unhealthy", first), ("target_unhealthy", second), ("source_unhealthy", None)],
            key=str,
        )

    async def test_a_target_label_never_shows_userinfo(
        self,
        client: AppClient,
        schedule: Schedule,
        start_upstream: StartUpstream,
        metrics_registry: CollectorRegistry,
    ) -> None:
        # Writers refuse credentials in URLs; a source stored before that still must not leak.
        replica = await start_upstream()
        dead_port = free_port()
        with_userinfo = f"http://viewer:{SECRET}@127.0.0.1:{replica.port}/"
        dead_with_userinfo = f"http://viewer:{SECRET}@127.0.0.1:{dead_port}/"
        with structlog.testing.capture_logs() as logs:
            source = await add_source(client, with_userinfo, dead_with_userinfo)
            await known(schedule, source)
        check = latest(schedule, source)
        assert [entry["name"] for entry in check["checks"]] == [
            f"http://127.0.0.1:{replica.port}/",
            f"http://127.0.0.1:{dead_port}/",
        ]
        assert check["status"] == "pass"
        assert SECRET not in json.dumps(check)
        assert SECRET not in json.dumps(logs, default=str)
        assert SECRET not in generate_latest(metrics_registry).decode()


class TestThresholdsPerTarget:
    async def test_fall_and_rise_count_per_target(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        monitor = schedule.monitor
        primary, replica = await start_upstream(), await start_upstream()
        source = await add_source(client, primary.url, replica.url)
        await known(schedule, source)
        state = monitor.state(source.id)
        assert state is not None
        target = state.targets[replica.url]
        replica.status = 503

        await schedule.run_until(lambda: target.consecutive_failures == 1, within=INTERVAL * 2)
        entry = by_target(latest(schedule, source))[replica.url]
        assert entry["status"] == "pass"
        assert entry["message"].startswith(f"still pass (1 of {FALL} probes needed to change)")
        assert monitor.target_healthy(source.id, replica.url)

        await schedule.run_until(lambda: target.status == "fail", within=INTERVAL * 1.15 * FALL)
        assert target.consecutive_failures == FALL
        assert not monitor.target_healthy(source.id, replica.url)
        assert monitor.target_healthy(source.id, primary.url)
        assert latest(schedule, source)["status"] == "pass"  # the primary still passes
        assert state.targets[primary.url].consecutive_failures == 0

        replica.status = 200
        await schedule.run_until(lambda: target.consecutive_passes == 1, within=INTERVAL * 2)
        assert target.status == "fail"  # one pass is below rise
        await schedule.run_until(lambda: target.status == "pass", within=INTERVAL * 1.15 * RISE)
        assert target.consecutive_passes == RISE
        assert monitor.target_healthy(source.id, replica.url)

    async def test_targets_of_a_source_are_probed_concurrently(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        monitor = schedule.monitor
        primary, replica = await start_upstream(), await start_upstream()
        replica.gate = asyncio.Event()  # the replica does not answer until the test says so
        source = await add_source(client, primary.url, replica.url)
        state = None

        def primary_known() -> bool:
            nonlocal state
            state = monitor.state(source.id)
            return state is not None and state.targets[primary.url].status is not None

        await schedule.run_until(primary_known, within=SETTLE)
        assert state is not None
        assert state.targets[replica.url].probing  # still waiting on the replica
        assert state.status == "pass"  # one target passes: that is enough
        assert monitor.target_healthy(source.id, replica.url)  # unknown: healthy
        assert by_target(latest(schedule, source))[replica.url]["message"] == (
            "not probed yet; taken as healthy"
        )
        replica.gate.set()
        await known(schedule, source)


class TestTheProxysInterface:
    async def test_target_healthy_is_true_while_unknown(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        monitor = schedule.monitor
        down = dead_url()
        assert monitor.target_healthy(12345, down)  # no such source
        disabled = await add_source(client, dead_url(), down, healthCheck={"enabled": False})
        source = await add_source(client, (await start_upstream()).url, down)
        await known(schedule, source)
        assert not monitor.target_healthy(source.id, down)
        assert monitor.target_healthy(source.id, "http://not-a-target.example/")
        assert monitor.target_healthy(disabled.id, down)  # never probed: unknown

    async def test_a_listener_hears_each_transition_once(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        monitor = schedule.monitor
        heard: list[tuple[int, str, bool]] = []
        monitor.add_target_listener(lambda source, url, ok: heard.append((source.id, url, ok)))
        primary, replica = await start_upstream(), await start_upstream()
        source = await add_source(client, primary.url, replica.url)
        await known(schedule, source)
        assert heard == []  # unknown to pass is no change: it was taken as healthy already
        state = monitor.state(source.id)
        assert state is not None
        target = state.targets[replica.url]

        with structlog.testing.capture_logs() as logs:
            replica.status = 503
            await schedule.run_until(lambda: target.status == "fail", within=2)
            await schedule.let_pass(INTERVAL * 3)  # further failures change nothing
            replica.status = 200
            await schedule.run_until(lambda: target.status == "pass", within=2)
            await schedule.let_pass(INTERVAL * 3)
        assert heard == [(source.id, replica.url, False), (source.id, replica.url, True)]
        transitions = [e for e in logs if e["event"].startswith("target_")]
        assert [e["event"] for e in transitions] == ["target_unhealthy", "target_recovered"]
        assert transitions[0]["source_uid"] == source.uid
        assert transitions[0]["target"] == replica.url
        assert "HTTP 503" in transitions[0]["reason"]
        assert not [e for e in logs if e["event"].startswith("source_")]  # the source passed

    async def test_a_pass_after_failures_below_fall_is_heard_as_healthy(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        # The proxy may have ejected the target on its own (outlier detection): an active
        # pass ends that early (Envoy's successful_active_health_check_uneject_host).
        monitor = schedule.monitor
        heard: list[bool] = []
        monitor.add_target_listener(lambda source, url, ok: heard.append(ok))
        primary, replica = await start_upstream(), await start_upstream()
        source = await add_source(client, primary.url, replica.url)
        await known(schedule, source)
        state = monitor.state(source.id)
        assert state is not None
        target = state.targets[replica.url]
        replica.status = 503
        await schedule.run_until(lambda: target.consecutive_failures == 1, within=2)
        replica.status = 200
        await schedule.run_until(lambda: target.consecutive_passes == 1, within=2)
        assert target.status == "pass"
        assert heard == [True]

    async def test_a_reported_failure_probes_that_target_early(
        self, client: AppClient, schedule: Schedule, start_upstream: StartUpstream
    ) -> None:
        monitor = schedule.monitor
        primary, replica = await start_upstream(), await start_upstream()
        source = await add_source(client, primary.url, replica.url, healthCheck={"interval": 60})
        await known(schedule, source)
        state = monitor.state(source.id)
        assert state is not None
        target = state.targets[replica.url]
        monitor.report_failure(source.id, replica.url)  # too soon after its first probe
        await schedule.let_pass(0.2)
        assert (primary.requests, replica.requests) == (1, 1)

        await schedule.let_pass(PASSIVE_MIN_GAP)
        replica.status = 503
        monitor.report_failure(source.id, replica.url)
        monitor.report_failure(source.id, replica.url)  # a burst: one probe, not a storm
        await schedule.run_until(lambda: target.consecutive_failures == 1, within=1.0)
        await schedule.let_pass(0.3)
        assert (primary.requests, replica.requests) == (1, 2)  # that target alone, in 1 s not 60
        assert target.status == "pass"  # one failure is below fall

        await schedule.let_pass(PASSIVE_MIN_GAP)
        monitor.report_failure(source.id)  # no URL: every target of the source
        await schedule.run_until(lambda: primary.requests == 2 and replica.requests == 3, 1.0)


class TestReadSurfaces:
    async def test_target_up_series_and_transitions(
        self,
        client: AppClient,
        schedule: Schedule,
        start_upstream: StartUpstream,
        metrics_registry: CollectorRegistry,
    ) -> None:
        registry = metrics_registry
        primary, replica = await start_upstream(), await start_upstream()
        single = await add_source(client, (await start_upstream()).url)
        source = await add_source(client, primary.url, replica.url)
        await known(schedule, source)
        await known(schedule, single)

        def up(src: DataSource, target: str) -> float | None:
            labels = {"org": "1", "source_uid": src.uid, "target": target}
            return registry.get_sample_value("gateway_target_up", labels)

        def transitions(target: str, to: str) -> float | None:
            labels = {"org": "1", "source_uid": source.uid, "target": target, "to": to}
            return registry.get_sample_value("gateway_health_target_transitions_total", labels)

        assert (up(source, primary.url), up(source, replica.url)) == (1, 1)
        assert up(single, single.url) == 1  # a source without replicas has its one target
        replica.status = 503
        await schedule.run_until(lambda: up(source, replica.url) == 0, within=2)
        assert up(source, primary.url) == 1
        replica.status = 200
        await schedule.run_until(lambda: up(source, replica.url) == 1, within=2)
        assert (transitions(replica.url, "down"), transitions(replica.url, "up")) == (1, 1)
        assert transitions(primary.url, "down") is None
        text = generate_latest(registry).decode()
        series = [line for line in text.splitlines() if line.startswith("gateway_target_up{")]
        assert len(series) == 3  # one per URL, not per probe or request

    async def test_every_health_route_shows_the_targets(
        self, client: AppClient, schedule: Schedule, aiohttp_server: AiohttpServer
    ) -> None:
        up, down = await influxdb(aiohttp_server), dead_url()
        half = await add_source(client, up, down, type="influxdb")
        none = await add_source(client, dead_url(), down, type="influxdb")
        await known(schedule, half)
        await known(schedule, none)

        health = await (await client.get("/health", headers=AUTH)).json()
        entries = {entry["name"]: entry for entry in health["checks"]}
        assert entries[half.name]["status"] == "pass"
        assert entries[half.name]["message"] == f"1 of 2 targets failing: {down}"
        assert entries[none.name]["status"] == "fail"
        assert entries[none.name]["message"].startswith("2 of 2 targets failing: ")

        for source, code, grafana in ((half, 200, (200, "OK")), (none, 503, (400, "ERROR"))):
            influx = await client.get(f"/api/v2/sources/{source.id:016x}/health", headers=AUTH)
            body = await influx.json()
            assert influx.status == code
            assert [entry["name"] for entry in body["checks"]] == [source.url, down]
            assert by_target(body)[down]["status"] == "fail"
            answer = await client.get(f"/api/datasources/uid/{source.uid}/health", headers=AUTH)
            said = await answer.json()
            assert (answer.status, said["status"]) == grafana
            assert down in said["message"]

    async def test_without_monitor_state_every_target_is_probed_on_demand(
        self, client: AppClient, schedule: Schedule, aiohttp_server: AiohttpServer
    ) -> None:
        up, down = await influxdb(aiohttp_server), dead_url()
        source = await add_source(client, up, down, type="influxdb", healthCheck={"enabled": False})
        await schedule.let_pass(SETTLE)
        assert schedule.monitor.latest(source.id) is None  # probing disabled: no state
        for _ in range(2):  # each time a probe now, never remembered
            response = await client.get(f"/api/v2/sources/{source.id:016x}/health", headers=AUTH)
            body = await response.json()
            assert response.status == 200
            assert body["message"] == f"1 of 2 targets failing: {down}"
            assert [entry["status"] for entry in body["checks"]] == ["pass", "fail"]
            ping = by_target(body)[up]["checks"][0]
            assert ping["message"].startswith("GET /ping: HTTP 204 in ")


async def test_current_health_without_a_monitor_probes_each_target(
    start_upstream: StartUpstream,
) -> None:
    up, dead_port = await start_upstream(), free_port()
    down = f"http://viewer:{SECRET}@127.0.0.1:{dead_port}/base"
    source = make_source(up.url, "generic-http", json_data={"replicaUrls": [down]})
    async with aiohttp.ClientSession() as session:

        async def prober(view: DataSource, seconds: float) -> HealthCheck:
            return await probe_source(session, view, seconds)

        check = await current_health(None, source, prober, default_timeout=TIMEOUT)
    entries: dict[str, Any] = by_target(check)
    label = f"http://127.0.0.1:{dead_port}/base"
    assert list(entries) == [up.url, label]
    assert entries[label]["checks"][0]["message"].startswith("GET /base: connection refused")
    assert check["status"] == "pass"
    assert SECRET not in json.dumps(check)

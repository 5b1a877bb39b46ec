"""HealthMonitor inside the real app, against upstreams that the tests stop and start.

The monitor runs on a fake clock (tests/health/fake_clock.py): the tests move its schedule on
instead of sleeping through it, and every time bound below is in schedule seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.config import Settings
from gateway.health.monitor import PASSIVE_MIN_GAP, ProbePolicy
from gateway.keys import STORE
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import ADMIN_TOKEN as ADMIN
from tests.health.fake_clock import FakeClock, Schedule
from tests.health.sources import make_source
from tests.types import AppClient
from tests.upstreams import UpstreamProcess, free_port
from tests.waiting import wait_for

INTERVAL = 0.2
TIMEOUT = 0.5
FALL, RISE = 3, 2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, health_interval=INTERVAL, health_timeout=TIMEOUT)


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, app: web.Application, clock: FakeClock
) -> AppClient:
    return await aiohttp_client(app)


async def add_source(client: AppClient, url: str, **json_data: object) -> DataSource:
    store = client.app[STORE]
    spec = DataSourceSpec(name=f"s-{url}", type="generic-http", url=url, json_data=json_data)
    return await store.create_source(1, spec)


async def wait_for_status(
    schedule: Schedule, source: DataSource, status: str, within: float
) -> float:
    """Schedule seconds until the monitor's state for `source` is `status`; fails after `within`."""

    def reached() -> bool:
        latest = schedule.monitor.latest(source.id)
        return latest is not None and latest["status"] == status

    return await schedule.run_until(reached, within)


# Detection bound from the issue: interval * fall + timeout (plus the 15% jitter on intervals).
DOWN_BOUND = INTERVAL * 1.15 * FALL + TIMEOUT + 0.3
UP_BOUND = INTERVAL * 1.15 * RISE + TIMEOUT + 0.3


class TestStateChanges:
    async def test_a_new_source_is_probed_within_a_second(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        source = await add_source(client, upstream_process.url)
        await wait_for_status(schedule, source, "pass", within=1.2)

    async def test_first_failure_sets_fail_directly(
        self, client: AppClient, schedule: Schedule
    ) -> None:
        source = await add_source(client, f"http://127.0.0.1:{free_port()}/")
        await wait_for_status(schedule, source, "fail", within=1.2)

    async def test_pass_to_fail_to_pass_with_a_real_process(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(client, upstream_process.url)
        await wait_for_status(schedule, source, "pass", within=1.2)
        with structlog.testing.capture_logs() as logs:
            upstream_process.kill()
            await wait_for_status(schedule, source, "fail", within=DOWN_BOUND)
            state = monitor.state(source.id)
            assert state is not None
            assert state.consecutive_failures >= FALL
            upstream_process.start()
            await wait_for_status(schedule, source, "pass", within=UP_BOUND)
        events = [entry["event"] for entry in logs if entry["event"].startswith("source_")]
        assert events == ["source_unhealthy", "source_recovered"]
        unhealthy = next(entry for entry in logs if entry["event"] == "source_unhealthy")
        assert unhealthy["source_uid"] == source.uid
        assert "Connect" in unhealthy["reason"] or "refused" in unhealthy["reason"].lower()


class TestHysteresis:
    @pytest.fixture
    async def flaky(self, aiohttp_server: AiohttpServer) -> dict[str, int]:
        """An upstream whose next N answers are 503, as the test sets `fail_next`."""
        control = {"fail_next": 0, "requests": 0}

        async def handler(request: web.Request) -> web.Response:
            control["requests"] += 1
            if control["fail_next"] > 0:
                control["fail_next"] -= 1
                return web.Response(status=503)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/", handler)
        server = await aiohttp_server(app)
        assert server.port is not None
        control["port"] = server.port
        return control

    async def test_a_single_blip_does_not_flip_the_state(
        self, client: AppClient, schedule: Schedule, flaky: dict[str, int]
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(client, f"http://127.0.0.1:{flaky['port']}/")
        await wait_for_status(schedule, source, "pass", within=1.2)
        flaky["fail_next"] = FALL - 1
        seen_before = flaky["requests"]

        def blip_and_one_pass_seen() -> bool:
            latest = monitor.latest(source.id)  # checked after every probe of the blip
            assert latest is not None
            assert latest["status"] == "pass"
            return flaky["requests"] >= seen_before + FALL + 1

        await schedule.run_until(blip_and_one_pass_seen, within=INTERVAL * 1.15 * (FALL + 1))
        state = monitor.state(source.id)
        assert state is not None
        assert state.status == "pass"

    async def test_failing_probes_below_fall_are_reported_but_not_applied(
        self, client: AppClient, schedule: Schedule, flaky: dict[str, int]
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(client, f"http://127.0.0.1:{flaky['port']}/")
        await wait_for_status(schedule, source, "pass", within=1.2)
        flaky["fail_next"] = 1000
        state = monitor.state(source.id)
        assert state is not None
        await schedule.run_until(lambda: state.consecutive_failures == 1, within=2)
        latest = monitor.latest(source.id)
        assert latest is not None
        assert latest["status"] == "pass"
        assert latest["message"].startswith("still pass (1 of 3 probes needed to change)")
        assert latest["checks"][0]["status"] == "fail"  # the latest probe's own checks
        await wait_for_status(schedule, source, "fail", within=DOWN_BOUND)

    async def test_recovery_needs_rise_passes(
        self, client: AppClient, schedule: Schedule, flaky: dict[str, int]
    ) -> None:
        flaky["fail_next"] = 1000
        source = await add_source(client, f"http://127.0.0.1:{flaky['port']}/")
        await wait_for_status(schedule, source, "fail", within=1.2)
        flaky["fail_next"] = 0
        start_requests = flaky["requests"]
        await wait_for_status(schedule, source, "pass", within=UP_BOUND)
        assert flaky["requests"] - start_requests >= RISE


class TestConfiguration:
    async def test_per_source_overrides_are_applied(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(
            client, upstream_process.url, healthCheck={"interval": 5, "fall": 1, "timeout": 0.3}
        )
        await wait_for_status(schedule, source, "pass", within=1.2)
        state = monitor.state(source.id)
        assert state is not None
        assert state.policy == ProbePolicy(enabled=True, interval=5, timeout=0.3, rise=2, fall=1)
        checked = state.last_checked
        await schedule.let_pass(1.0)  # several global intervals: this source must not be re-probed
        assert state.last_checked == checked

    def test_invalid_overrides_fall_back_to_the_defaults(self) -> None:
        source = make_source(
            "", type="t", uid="u", name="n",
            json_data={"healthCheck": {"enabled": "no", "interval": -1, "rise": "x", "fall": "2"}},
        )  # fmt: skip
        policy = ProbePolicy.for_source(source, interval=15, timeout=5)
        assert policy == ProbePolicy(enabled=True, interval=15, timeout=5, rise=2, fall=2)

    async def test_disabled_sources_are_not_probed(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(client, upstream_process.url, healthCheck={"enabled": False})
        await schedule.let_pass(1.5)
        state = monitor.state(source.id)
        assert state is not None
        assert state.last_checked is None
        assert monitor.latest(source.id) is None

    async def test_deleted_sources_stop_being_probed(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(client, upstream_process.url)
        await wait_for_status(schedule, source, "pass", within=1.2)
        await client.app[STORE].delete_source(1, source.id)
        await wait_for(lambda: monitor.state(source.id) is None, timeout=2)
        assert monitor.state(source.id) is None

    async def test_passive_failure_triggers_an_immediate_probe(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        monitor = schedule.monitor
        source = await add_source(client, upstream_process.url, healthCheck={"interval": 60})
        await wait_for_status(schedule, source, "pass", within=1.2)
        state = monitor.state(source.id)
        assert state is not None
        first = state.last_checked
        monitor.report_failure(source.id)  # too soon after the first probe: ignored
        await schedule.let_pass(0.2)
        assert state.last_checked == first
        await schedule.let_pass(PASSIVE_MIN_GAP)
        monitor.report_failure(source.id)
        await schedule.run_until(lambda: state.last_checked != first, within=1.0)
        assert state.last_checked != first
        assert state.status == "pass"  # one probe, and it passed: nothing flips


class TestHealthEndpoint:
    async def test_gateway_health_lists_each_of_the_callers_sources_by_name(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        up = await add_source(client, upstream_process.url)
        down = await add_source(client, f"http://127.0.0.1:{free_port()}/")
        other_org = await client.app[STORE].create_org("Other")
        hidden = await client.app[STORE].create_source(
            other_org.id, DataSourceSpec(name="secret-name", type="t", url=upstream_process.url)
        )
        for source, status in ((up, "pass"), (down, "fail"), (hidden, "pass")):
            await wait_for_status(schedule, source, status, within=1.2)
        response = await client.get("/health", headers={"Authorization": f"Bearer {ADMIN}"})
        body = await response.json()
        assert response.status == 200  # the gateway itself is fine
        assert body["status"] == "pass"
        assert body["message"] == (
            "ready for queries and writes; "
            "this status is the gateway's own, and data sources are failing: see checks"
        )
        by_name = {check["name"]: check for check in body["checks"]}
        assert by_name[up.name]["status"] == "pass"
        assert by_name[down.name]["status"] == "fail"
        assert by_name["store"]["status"] == "pass"
        assert "secret-name" not in by_name  # another org's source

    async def test_anonymous_callers_get_a_summary_without_names(
        self, client: AppClient, schedule: Schedule, upstream_process: UpstreamProcess
    ) -> None:
        up = await add_source(client, upstream_process.url)
        down = await add_source(client, f"http://127.0.0.1:{free_port()}/")
        await wait_for_status(schedule, up, "pass", within=1.2)
        await wait_for_status(schedule, down, "fail", within=1.2)
        body = await (await client.get("/health")).json()
        assert [check["name"] for check in body["checks"]] == ["store", "sources"]
        summary = body["checks"][1]
        assert summary["status"] == "fail"
        assert summary["message"].startswith("1 of 2 monitored sources pass")
        assert body["message"].endswith("data sources are failing: see checks")
        assert up.name not in str(body)

"""HealthMonitor inside the real app, against upstreams that the tests stop and start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.config import Settings
from gateway.health.monitor import PASSIVE_MIN_GAP, HealthMonitor, ProbePolicy
from gateway.keys import MONITOR, STORE
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import ADMIN_TOKEN as ADMIN
from tests.upstreams import UpstreamProcess, free_port

INTERVAL = 0.2
TIMEOUT = 0.5
FALL, RISE = 3, 2


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    from tests.conftest import ADMIN_TOKEN, SECRET_KEY

    return Settings(
        port=0,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        health_interval=INTERVAL,
        health_timeout=TIMEOUT,
    )


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings))


async def add_source(client: TestClient, url: str, **json_data: object) -> DataSource:
    store = client.server.app[STORE]
    spec = DataSourceSpec(name=f"s-{url}", type="generic-http", url=url, json_data=json_data)
    return await store.create_source(1, spec)


async def wait_for_status(
    monitor: HealthMonitor, source: DataSource, status: str, within: float
) -> float:
    """Seconds until the monitor's state for `source` is `status`; fails after `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        latest = monitor.latest(source.id)
        if latest is not None and latest["status"] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    pytest.fail(f"{source.name} not {status} within {within} s: {monitor.latest(source.id)}")


# Detection bound from the issue: interval * fall + timeout (plus the 15% jitter on intervals).
DOWN_BOUND = INTERVAL * 1.15 * FALL + TIMEOUT + 0.3
UP_BOUND = INTERVAL * 1.15 * RISE + TIMEOUT + 0.3


class TestStateChanges:
    async def test_a_new_source_is_probed_within_a_second(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        source = await add_source(client, upstream_process.url)
        await wait_for_status(client.server.app[MONITOR], source, "pass", within=1.2)

    async def test_first_failure_sets_fail_directly(self, client: TestClient) -> None:
        source = await add_source(client, f"http://127.0.0.1:{free_port()}/")
        await wait_for_status(client.server.app[MONITOR], source, "fail", within=1.2)

    async def test_pass_to_fail_to_pass_with_a_real_process(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(client, upstream_process.url)
        await wait_for_status(monitor, source, "pass", within=1.2)
        with structlog.testing.capture_logs() as logs:
            upstream_process.kill()
            await wait_for_status(monitor, source, "fail", within=DOWN_BOUND)
            state = monitor.state(source.id)
            assert state is not None
            assert state.consecutive_failures >= FALL
            upstream_process.start()
            await wait_for_status(monitor, source, "pass", within=UP_BOUND)
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
        control["port"] = server.port
        return control

    async def test_a_single_blip_does_not_flip_the_state(
        self, client: TestClient, flaky: dict[str, int]
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(client, f"http://127.0.0.1:{flaky['port']}/")
        await wait_for_status(monitor, source, "pass", within=1.2)
        flaky["fail_next"] = FALL - 1
        seen_before = flaky["requests"]
        while flaky["requests"] < seen_before + FALL + 1:  # the blip and one pass after it
            latest = monitor.latest(source.id)
            assert latest is not None
            assert latest["status"] == "pass"
            await asyncio.sleep(0.01)
        state = monitor.state(source.id)
        assert state is not None
        assert state.status == "pass"

    async def test_failing_probes_below_fall_are_reported_but_not_applied(
        self, client: TestClient, flaky: dict[str, int]
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(client, f"http://127.0.0.1:{flaky['port']}/")
        await wait_for_status(monitor, source, "pass", within=1.2)
        flaky["fail_next"] = 1000
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            state = monitor.state(source.id)
            assert state is not None
            if state.consecutive_failures == 1:
                latest = monitor.latest(source.id)
                assert latest is not None
                assert latest["status"] == "pass"
                assert latest["message"].startswith("still pass (1 of 3 probes needed to change)")
                assert latest["checks"][0]["status"] == "fail"  # the latest probe's own checks
                break
            await asyncio.sleep(0.005)
        else:
            pytest.fail("never saw a single failure counted")
        await wait_for_status(monitor, source, "fail", within=DOWN_BOUND)

    async def test_recovery_needs_rise_passes(
        self, client: TestClient, flaky: dict[str, int]
    ) -> None:
        monitor = client.server.app[MONITOR]
        flaky["fail_next"] = 1000
        source = await add_source(client, f"http://127.0.0.1:{flaky['port']}/")
        await wait_for_status(monitor, source, "fail", within=1.2)
        flaky["fail_next"] = 0
        start_requests = flaky["requests"]
        await wait_for_status(monitor, source, "pass", within=UP_BOUND)
        assert flaky["requests"] - start_requests >= RISE


class TestConfiguration:
    async def test_per_source_overrides_are_applied(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(
            client, upstream_process.url, healthCheck={"interval": 5, "fall": 1, "timeout": 0.3}
        )
        await wait_for_status(monitor, source, "pass", within=1.2)
        state = monitor.state(source.id)
        assert state is not None
        assert state.policy == ProbePolicy(enabled=True, interval=5, timeout=0.3, rise=2, fall=1)
        checked = state.last_checked
        await asyncio.sleep(1.0)  # several global intervals: this source must not be re-probed
        assert state.last_checked == checked

    def test_invalid_overrides_fall_back_to_the_defaults(self) -> None:
        source = DataSource(
            id=1, org_id=1, uid="u", name="n", type="t", access="proxy", url="", user="",
            database="", basic_auth=False, basic_auth_user="", with_credentials=False,
            is_default=False, secure_json_data={}, version=1, read_only=False, api_version="",
            created=None, updated=None,  # type: ignore[arg-type]
            json_data={"healthCheck": {"enabled": "no", "interval": -1, "rise": "x", "fall": "2"}},
        )  # fmt: skip
        policy = ProbePolicy.for_source(source, interval=15, timeout=5)
        assert policy == ProbePolicy(enabled=True, interval=15, timeout=5, rise=2, fall=2)

    async def test_disabled_sources_are_not_probed(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(client, upstream_process.url, healthCheck={"enabled": False})
        await asyncio.sleep(1.5)
        state = monitor.state(source.id)
        assert state is not None
        assert state.last_checked is None
        assert monitor.latest(source.id) is None

    async def test_deleted_sources_stop_being_probed(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(client, upstream_process.url)
        await wait_for_status(monitor, source, "pass", within=1.2)
        await client.server.app[STORE].delete_source(1, source.id)
        for _ in range(100):
            if monitor.state(source.id) is None:
                break
            await asyncio.sleep(0.02)
        assert monitor.state(source.id) is None

    async def test_passive_failure_triggers_an_immediate_probe(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        source = await add_source(client, upstream_process.url, healthCheck={"interval": 60})
        await wait_for_status(monitor, source, "pass", within=1.2)
        state = monitor.state(source.id)
        assert state is not None
        first = state.last_checked
        monitor.report_failure(source.id)  # too soon after the first probe: ignored
        await asyncio.sleep(0.2)
        assert state.last_checked == first
        await asyncio.sleep(PASSIVE_MIN_GAP)
        monitor.report_failure(source.id)
        for _ in range(50):
            if state.last_checked != first:
                break
            await asyncio.sleep(0.02)
        assert state.last_checked != first
        assert state.status == "pass"  # one probe, and it passed: nothing flips


class TestHealthEndpoint:
    async def test_gateway_health_lists_each_of_the_callers_sources_by_name(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        up = await add_source(client, upstream_process.url)
        down = await add_source(client, f"http://127.0.0.1:{free_port()}/")
        other_org = await client.server.app[STORE].create_org("Other")
        hidden = await client.server.app[STORE].create_source(
            other_org.id, DataSourceSpec(name="secret-name", type="t", url=upstream_process.url)
        )
        for source, status in ((up, "pass"), (down, "fail"), (hidden, "pass")):
            await wait_for_status(monitor, source, status, within=1.2)
        response = await client.get("/health", headers={"Authorization": f"Bearer {ADMIN}"})
        body = await response.json()
        assert response.status == 200  # the gateway itself is fine
        assert body["status"] == "pass"
        by_name = {check["name"]: check for check in body["checks"]}
        assert by_name[up.name]["status"] == "pass"
        assert by_name[down.name]["status"] == "fail"
        assert by_name["store"]["status"] == "pass"
        assert "secret-name" not in by_name  # another org's source

    async def test_anonymous_callers_get_a_summary_without_names(
        self, client: TestClient, upstream_process: UpstreamProcess
    ) -> None:
        monitor = client.server.app[MONITOR]
        up = await add_source(client, upstream_process.url)
        down = await add_source(client, f"http://127.0.0.1:{free_port()}/")
        await wait_for_status(monitor, up, "pass", within=1.2)
        await wait_for_status(monitor, down, "fail", within=1.2)
        body = await (await client.get("/health")).json()
        assert [check["name"] for check in body["checks"]] == ["store", "sources"]
        summary = body["checks"][1]
        assert summary["status"] == "fail"
        assert summary["message"].startswith("1 of 2 monitored sources pass")
        assert up.name not in str(body)

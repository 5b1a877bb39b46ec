"""Health as every surface reads it, from one monitor state; passive failures from the proxy."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.health.monitor import PASSIVE_MIN_GAP
from gateway.keys import MONITOR, STORE
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import ADMIN_TOKEN
from tests.health.fake_clock import FakeClock, Schedule
from tests.services.influxdb import InfluxDB1, closed_port_url
from tests.types import AppClient
from tests.upstreams import UpstreamProcess

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    metrics_registry: CollectorRegistry,
    clock: FakeClock,
) -> AppClient:
    settings = dataclasses.replace(settings, health_interval=0.3, health_timeout=1.0)
    return await aiohttp_client(create_app(settings, metrics_registry=metrics_registry))


async def settled(schedule: Schedule, source: DataSource, status: str) -> None:
    def reached() -> bool:
        state = schedule.monitor.state(source.id)
        return state is not None and state.status == status

    await schedule.run_until(reached, within=4)


async def test_every_read_surface_agrees(
    client: AppClient, schedule: Schedule, influxdb: InfluxDB1, metrics_registry: CollectorRegistry
) -> None:
    store = client.app[STORE]
    secure = {"password": influxdb.admin_password}
    up = await store.create_source(
        1,
        DataSourceSpec(
            name="influx-up", type="influxdb", url=influxdb.url, user=influxdb.admin_user,
            secure_json_data=secure,
        ),
    )  # fmt: skip
    down = await store.create_source(
        1, DataSourceSpec(name="influx-down", type="influxdb", url=closed_port_url())
    )
    await settled(schedule, up, "pass")
    await settled(schedule, down, "fail")

    expected = [(up, ("pass", 200, "OK", 200, 1.0)), (down, ("fail", 503, "ERROR", 400, 0.0))]
    health = await (await client.get("/health", headers=AUTH)).json()
    by_name = {check["name"]: check["status"] for check in health["checks"]}
    for source, (status, influx_code, grafana_status, grafana_code, gauge) in expected:
        assert by_name[source.name] == status
        influx = await client.get(f"/api/v2/sources/{source.id:016x}/health", headers=AUTH)
        assert influx.status == influx_code
        assert (await influx.json())["status"] == status
        grafana = await client.get(f"/api/datasources/uid/{source.uid}/health", headers=AUTH)
        assert grafana.status == grafana_code
        assert (await grafana.json())["status"] == grafana_status
        labels = {"org": "1", "source_uid": source.uid, "source_name": source.name,
                  "source_type": "influxdb"}  # fmt: skip
        assert metrics_registry.get_sample_value("gateway_source_up", labels) == gauge


async def test_a_proxied_connect_failure_triggers_a_probe_at_once(
    client: AppClient, schedule: Schedule, tmp_path: Path
) -> None:
    upstream = UpstreamProcess(tmp_path)
    upstream.start()
    try:
        store = client.app[STORE]
        # A long interval: any probe after the first one comes from the passive trigger.
        source = await store.create_source(
            1,
            DataSourceSpec(
                name="p",
                type="generic",
                url=upstream.url,
                json_data={"healthCheck": {"interval": 60}},
            ),
        )
        await settled(schedule, source, "pass")
        await schedule.let_pass(PASSIVE_MIN_GAP)  # passive probes are at most one a second
        state = client.app[MONITOR].state(source.id)
        assert state is not None
        assert state.consecutive_failures == 0
        upstream.kill()
        response = await client.get(f"/api/datasources/proxy/uid/{source.uid}/", headers=AUTH)
        assert response.status == 502
        await schedule.run_until(lambda: state.consecutive_failures == 1, within=2)
        assert state.consecutive_failures == 1  # probed within 2 s, not in a minute
        assert state.status == "pass"  # one failure is below fall=3: nothing flips yet
    finally:
        upstream.kill()


async def test_a_burst_of_proxied_failures_triggers_one_probe_not_a_storm(
    client: AppClient,
    schedule: Schedule,
    metrics_registry: CollectorRegistry,
    upstream_process: UpstreamProcess,
) -> None:
    store = client.app[STORE]
    source = await store.create_source(
        1,
        DataSourceSpec(
            name="dead",
            type="generic",
            url=upstream_process.url,
            json_data={"healthCheck": {"interval": 60}},
        ),
    )
    await settled(schedule, source, "pass")
    await schedule.let_pass(PASSIVE_MIN_GAP)
    upstream_process.kill()
    labels = {"org": "1", "source_uid": source.uid, "source_type": "generic"}

    def probes() -> float:
        return sum(
            metrics_registry.get_sample_value(
                "gateway_health_probes_total", {**labels, "result": r}
            )
            or 0.0
            for r in ("pass", "fail")
        )

    before = probes()
    url = f"/api/datasources/proxy/uid/{source.uid}/"
    statuses = await asyncio.gather(*(client.get(url, headers=AUTH) for _ in range(200)))
    assert {response.status for response in statuses} == {502}
    await schedule.let_pass(0.3)  # the schedule goes on: still only the one passive probe
    assert probes() - before == 1


async def test_a_source_with_no_url_is_not_probed_and_never_counts_as_failing(
    client: AppClient, schedule: Schedule, metrics_registry: CollectorRegistry
) -> None:
    store = client.app[STORE]
    # TestData may be saved without a URL; saved as Grafana's older id, answered as the new.
    testdata = await store.create_source(1, DataSourceSpec(name="test-data", type="testdata"))
    await schedule.monitor.synced()
    await schedule.let_pass(3)  # ten intervals: a probed source would have results by now

    state = schedule.monitor.state(testdata.id)
    assert state is not None
    assert (state.status, state.last_checked) == (None, None)  # never probed
    expected = "not probed: testdata sources have no URL"
    health = await (await client.get("/health", headers=AUTH)).json()
    (check,) = [check for check in health["checks"] if check["name"] == "test-data"]
    assert check == {"name": "test-data", "status": "pass", "message": expected}
    assert "failing" not in health["message"]
    grafana = await client.get(f"/api/datasources/uid/{testdata.uid}/health", headers=AUTH)
    assert grafana.status == 200
    assert await grafana.json() == {"status": "OK", "message": expected}
    assert state.last_checked is None  # not even on demand

    labels = {"org": "1", "source_uid": testdata.uid, "source_name": "test-data",
              "source_type": "grafana-testdata-datasource"}  # fmt: skip
    assert metrics_registry.get_sample_value("gateway_source_up", labels) is None
    registered = {"org": "1", "source_type": "grafana-testdata-datasource"}
    assert metrics_registry.get_sample_value("gateway_registry_sources", registered) == 1.0


async def test_a_sql_source_keeps_its_database_address_and_is_not_probed(
    client: AppClient, schedule: Schedule, metrics_registry: CollectorRegistry
) -> None:
    store = client.app[STORE]
    # Grafana's form of a SQL source's address: accepted as Grafana accepts it, never reached.
    spec = DataSourceSpec(name="orders-db", type="postgres", url="db.internal:5432")
    postgres = await store.create_source(1, spec)
    await schedule.monitor.synced()
    await schedule.let_pass(3)

    state = schedule.monitor.state(postgres.id)
    assert state is not None
    assert (state.status, state.last_checked) == (None, None)
    expected = "not probed: postgres sources are databases, not reached over HTTP"
    health = await (await client.get("/health", headers=AUTH)).json()
    (check,) = [check for check in health["checks"] if check["name"] == "orders-db"]
    assert check == {"name": "orders-db", "status": "pass", "message": expected}
    grafana = await client.get(f"/api/datasources/uid/{postgres.uid}/health", headers=AUTH)
    assert (grafana.status, await grafana.json()) == (200, {"status": "OK", "message": expected})
    labels = {"org": "1", "source_uid": postgres.uid, "source_name": "orders-db",
              "source_type": "grafana-postgresql-datasource"}  # fmt: skip
    assert metrics_registry.get_sample_value("gateway_source_up", labels) is None


async def test_the_anonymous_summary_counts_sources_not_probed_apart(
    client: AppClient, schedule: Schedule
) -> None:
    """A source with nothing to probe passes its own check only to say so: the summary an
    anonymous caller gets must not count it among the monitored sources that pass."""
    store = client.app[STORE]
    await store.create_source(1, DataSourceSpec(name="test-data", type="testdata"))
    await store.create_source(
        1, DataSourceSpec(name="orders-db", type="postgres", url="db.internal:5432")
    )
    down = await store.create_source(
        1, DataSourceSpec(name="down", type="generic-http", url=closed_port_url())
    )
    await settled(schedule, down, "fail")

    health = await (await client.get("/health")).json()
    assert [check["name"] for check in health["checks"]] == ["store", "sources"]
    summary = health["checks"][1]
    assert summary == {
        "name": "sources",
        "status": "fail",
        "message": "0 of 1 monitored sources pass, 2 not probed (nothing to probe); "
        "send a token to see your org's sources",
        "passing": 0,
        "failing": 1,
        "notProbed": 2,
    }

    await store.delete_source(1, down.id)
    await schedule.monitor.synced()
    summary = (await (await client.get("/health")).json())["checks"][1]
    assert summary["status"] == "pass"
    assert summary["message"].startswith("0 of 0 monitored sources pass, 2 not probed")
    assert (summary["passing"], summary["failing"], summary["notProbed"]) == (0, 0, 2)

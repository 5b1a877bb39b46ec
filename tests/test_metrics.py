"""/metrics: exposition, token, counters that move with real requests and probes."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import MONITOR, STORE
from gateway.registry.models import DataSourceSpec
from tests.conftest import ADMIN_TOKEN
from tests.types import AppClient
from tests.upstreams import UpstreamProcess
from tests.waiting import wait_for


async def scrape(client: AppClient) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.text()


async def test_metrics_need_no_token_by_default(client: AppClient) -> None:
    text = await scrape(client)
    assert "gateway_build_info{" in text


async def test_metrics_token_is_required_when_configured(
    aiohttp_client: AiohttpClient, settings: Settings
) -> None:
    settings = dataclasses.replace(settings, metrics_token="scrape-me")
    client = await aiohttp_client(create_app(settings, metrics_registry=CollectorRegistry()))
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert wrong.status == 401
    right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert right.status == 200


async def test_api_requests_are_counted_by_route_template(
    client: AppClient, metrics_registry: CollectorRegistry
) -> None:
    for _ in range(3):
        await client.get("/ready?x=1")
    await client.get("/api/nothing", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    labels = {"route": "/ready", "method": "GET", "code": "200"}
    assert metrics_registry.get_sample_value("gateway_api_requests_total", labels) == 3
    unmatched = {"route": "<unmatched>", "method": "GET", "code": "404"}
    assert metrics_registry.get_sample_value("gateway_api_requests_total", unmatched) == 1
    count = metrics_registry.get_sample_value(
        "gateway_api_request_duration_seconds_count", {"route": "/ready", "method": "GET"}
    )
    assert count == 3


async def test_build_info_names_the_version(
    metrics_registry: CollectorRegistry, client: AppClient
) -> None:
    from gateway import __version__

    samples = [
        sample
        for metric in metrics_registry.collect()
        if metric.name == "gateway_build_info"
        for sample in metric.samples
    ]
    assert len(samples) == 1
    assert samples[0].labels["version"] == __version__
    assert samples[0].value == 1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Probes every 0.2 s, so the health gauges move within the test."""
    return dataclasses.replace(settings, health_interval=0.2, health_timeout=0.5)


async def test_health_gauges_follow_a_real_upstream_down_and_up(
    client: AppClient, metrics_registry: CollectorRegistry, upstream_process: UpstreamProcess
) -> None:
    source = await client.app[STORE].create_source(
        1, DataSourceSpec(name="files", type="generic-http", url=upstream_process.url)
    )
    up_labels = {"org": "1", "source_uid": source.uid, "source_name": "files",
                 "source_type": "generic-http"}  # fmt: skip
    series = {"org": "1", "source_uid": source.uid, "source_type": "generic-http"}

    def up_value() -> float | None:
        return metrics_registry.get_sample_value("gateway_source_up", up_labels)

    def target_up() -> float | None:  # a source without replicas: one target, its url
        labels = {"org": "1", "source_uid": source.uid, "target": upstream_process.url}
        return metrics_registry.get_sample_value("gateway_target_up", labels)

    await wait_for(lambda: up_value() == 1)
    assert target_up() == 1
    registered = {"org": "1", "source_type": "generic-http"}
    assert metrics_registry.get_sample_value("gateway_registry_sources", registered) == 1
    upstream_process.kill()
    await wait_for(lambda: up_value() == 0)
    assert target_up() == 0
    upstream_process.start()
    await wait_for(lambda: up_value() == 1)

    transitions = {
        to: metrics_registry.get_sample_value(
            "gateway_health_transitions_total", {**series, "to": to}
        )
        for to in ("down", "up")
    }
    assert transitions == {"down": 1, "up": 1}
    assert metrics_registry.get_sample_value(
        "gateway_health_probes_total", {**series, "result": "fail"}
    )
    assert metrics_registry.get_sample_value(
        "gateway_health_probes_total", {**series, "result": "pass"}
    )
    probe_count = metrics_registry.get_sample_value(
        "gateway_health_probe_duration_seconds_count", series
    )
    assert probe_count is not None
    assert probe_count >= 4
    state = client.app[MONITOR].state(source.id)
    assert state is not None
    assert state.last_checked is not None
    last_probe = metrics_registry.get_sample_value(
        "gateway_source_last_probe_timestamp_seconds", series
    )
    assert last_probe == pytest.approx(state.last_checked.timestamp())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
async def test_promtool_accepts_the_exposition(
    client: AppClient, upstream_process: UpstreamProcess
) -> None:
    await client.app[STORE].create_source(
        1, DataSourceSpec(name="files", type="generic-http", url=upstream_process.url)
    )
    monitor = client.app[MONITOR]
    await wait_for(  # a probe result, so every family has samples
        lambda: any(state.last_checked is not None for state in monitor.states())
    )
    await client.get("/ready")
    text = await scrape(client)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gateway_source_up{" in text
    assert "gateway_target_up{" in text


async def test_the_readme_documents_every_gateway_metric(client: AppClient) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    exported = set(re.findall(r"^# TYPE (gateway_\S+) ", await scrape(client), re.MULTILINE))
    assert "gateway_target_up" in exported
    assert {name for name in exported if f"`{name}`" not in readme} == set()

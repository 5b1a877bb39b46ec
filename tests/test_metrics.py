"""/metrics: exposition, token, counters that move with real requests and probes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import MONITOR, STORE
from gateway.registry.models import DataSourceSpec
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.types import AppClient
from tests.upstreams import UpstreamProcess


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def app(settings: Settings, registry: CollectorRegistry) -> web.Application:
    return create_app(settings, metrics_registry=registry)


async def scrape(client: AppClient) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return await response.text()


async def test_metrics_need_no_token_by_default(client: AppClient) -> None:
    text = await scrape(client)
    assert "gateway_build_info{" in text


async def test_metrics_token_is_required_when_configured(
    aiohttp_client: AiohttpClient, data_dir: Path
) -> None:
    settings = Settings(
        data_dir=data_dir, secret_key=SECRET_KEY, admin_token=ADMIN_TOKEN, metrics_token="scrape-me"
    )
    client = await aiohttp_client(create_app(settings, metrics_registry=CollectorRegistry()))
    assert (await client.get("/metrics")).status == 401
    wrong = await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert wrong.status == 401
    right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert right.status == 200


async def test_api_requests_are_counted_by_route_template(
    client: AppClient, registry: CollectorRegistry
) -> None:
    for _ in range(3):
        await client.get("/ready?x=1")
    await client.get("/api/nothing", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    labels = {"route": "/ready", "method": "GET", "code": "200"}
    assert registry.get_sample_value("gateway_api_requests_total", labels) == 3
    unmatched = {"route": "<unmatched>", "method": "GET", "code": "404"}
    assert registry.get_sample_value("gateway_api_requests_total", unmatched) == 1
    count = registry.get_sample_value(
        "gateway_api_request_duration_seconds_count", {"route": "/ready", "method": "GET"}
    )
    assert count == 3


async def test_build_info_names_the_version(registry: CollectorRegistry, client: AppClient) -> None:
    from gateway import __version__

    samples = [
        sample
        for metric in registry.collect()
        if metric.name == "gateway_build_info"
        for sample in metric.samples
    ]
    assert len(samples) == 1
    assert samples[0].labels["version"] == __version__
    assert samples[0].value == 1


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(
        port=0,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        health_interval=0.2,
        health_timeout=0.5,
    )


async def wait_until(predicate: object, within: float = 5.0) -> None:
    assert callable(predicate)
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail("condition not met in time")


async def test_health_gauges_follow_a_real_upstream_down_and_up(
    client: AppClient, registry: CollectorRegistry, upstream_process: UpstreamProcess
) -> None:
    source = await client.app[STORE].create_source(
        1, DataSourceSpec(name="files", type="generic-http", url=upstream_process.url)
    )
    up_labels = {"org": "1", "source_uid": source.uid, "source_name": "files",
                 "source_type": "generic-http"}  # fmt: skip
    series = {"org": "1", "source_uid": source.uid, "source_type": "generic-http"}

    def up_value() -> float | None:
        return registry.get_sample_value("gateway_source_up", up_labels)

    def target_up() -> float | None:  # a source without replicas: one target, its url
        labels = {"org": "1", "source_uid": source.uid, "target": upstream_process.url}
        return registry.get_sample_value("gateway_target_up", labels)

    await wait_until(lambda: up_value() == 1)
    assert target_up() == 1
    assert registry.get_sample_value("gateway_registry_sources", {"org": "1",
                                     "source_type": "generic-http"}) == 1  # fmt: skip
    upstream_process.kill()
    await wait_until(lambda: up_value() == 0)
    assert target_up() == 0
    upstream_process.start()
    await wait_until(lambda: up_value() == 1)

    transitions = {
        to: registry.get_sample_value("gateway_health_transitions_total", {**series, "to": to})
        for to in ("down", "up")
    }
    assert transitions == {"down": 1, "up": 1}
    assert registry.get_sample_value("gateway_health_probes_total", {**series, "result": "fail"})
    assert registry.get_sample_value("gateway_health_probes_total", {**series, "result": "pass"})
    probe_count = registry.get_sample_value("gateway_health_probe_duration_seconds_count", series)
    assert probe_count is not None
    assert probe_count >= 4
    state = client.app[MONITOR].state(source.id)
    assert state is not None
    assert state.last_checked is not None
    last_probe = registry.get_sample_value("gateway_source_last_probe_timestamp_seconds", series)
    assert last_probe == pytest.approx(state.last_checked.timestamp())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) missing")
async def test_promtool_accepts_the_exposition(
    client: AppClient, upstream_process: UpstreamProcess
) -> None:
    await client.app[STORE].create_source(
        1, DataSourceSpec(name="files", type="generic-http", url=upstream_process.url)
    )
    await asyncio.sleep(1.2)  # a probe result, so every family has samples
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

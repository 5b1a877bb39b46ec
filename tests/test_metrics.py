"""/metrics: exposition, token, counters that move with real requests and probes."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import MONITOR, STORE
from gateway.metrics import GatewayMetrics
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


def _exercise(metrics: GatewayMetrics) -> None:
    """A few of every update the request path makes, through the same interface."""
    meters = metrics.source_meters(metrics.source_labels(1, "abc", "prometheus"))
    meters.in_flight.inc()
    meters.upstream_latency.observe(0.004)
    meters.upstream_latency.observe(0.3)
    meters.upstream_latency.observe(500)  # beyond the last bucket: +Inf only
    meters.duration.observe(0.01)  # on a bucket's bound: counted in that bucket
    meters.requests("GET", "200").inc()
    meters.requests("GET", "200").inc()
    meters.requests("POST", "502").inc()
    meters.request_bytes.inc(10)
    meters.response_bytes.inc(402)
    meters.failovers.inc()
    meters.upstream_errors("connect").inc()
    meters.in_flight.dec()
    meters.in_flight.inc()
    target = metrics.target_meters(1, "abc", "http://a:9090")
    target.requests("2xx").inc()
    target.requests("connect").inc()
    target.ejections.inc()
    target.returns.inc()
    metrics.record_api_request("/api/x", "GET", 200, 0.002)
    metrics.record_api_request("/api/x", "GET", 404, 7.5)
    metrics.source_meters(metrics.source_labels(2, "never-used", "loki"))  # no update: no samples


def _without_created_values(text: str) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)


def test_local_metrics_expose_what_prometheus_client_would() -> None:
    """Names, help, types, labels and values: the exposition of the local counters (one
    process) is prometheus-client's, line for line, but for the `_created` times."""
    local_registry, client_registry = CollectorRegistry(), CollectorRegistry()
    local = GatewayMetrics(local_registry, local=True)
    client = GatewayMetrics(client_registry, local=False)
    assert (local.local, client.local) == (True, False)
    for metrics in (local, client):
        _exercise(metrics)
    local_text = generate_latest(local_registry).decode()
    client_text = generate_latest(client_registry).decode()
    assert _without_created_values(local_text) == _without_created_values(client_text)
    assert 'gateway_proxy_requests_total{code="200",method="GET",org="1"' in local_text
    labels = {"org": "1", "source_uid": "abc", "source_type": "prometheus", "le": "+Inf"}
    bucket = "gateway_proxy_upstream_latency_seconds_bucket"
    assert local_registry.get_sample_value(bucket, labels) == 3
    assert local_registry.get_sample_value(bucket, {**labels, "le": "0.005"}) == 1
    created = local_registry.get_sample_value(
        "gateway_target_requests_created",
        {"org": "1", "source_uid": "abc", "target": "http://a:9090", "result": "2xx"},
    )
    assert created is not None
    assert abs(created - time.time()) < 60


def test_local_counters_refuse_what_prometheus_client_refuses() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), local=True)
    meters = metrics.source_meters(metrics.source_labels(1, "abc", "prometheus"))
    with pytest.raises(ValueError, match="non-negative"):
        meters.response_bytes.inc(-1)
    with pytest.raises(ValueError, match="label values"):
        metrics.api_requests.labels("/x", "GET")


def test_workers_keep_prometheus_client_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (gateway serve --workers N) the values go to the shared
    files, which every worker's scrape merges: local counters would count one worker only."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert not GatewayMetrics(CollectorRegistry()).local
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert GatewayMetrics(CollectorRegistry()).local

"""The shipped Grafana dashboard: importable as-is, and every query uses metrics we export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.types import AppClient

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "grafana-dashboards" / "gateway.json"
METRIC_NAME = re.compile(r"\b(gateway_[a-z_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    found += [variable["definition"] for variable in dashboard["templating"]["list"]]
    return found


def base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_the_dashboard_is_importable_with_a_prometheus_input() -> None:
    dashboard = load()
    (source_input,) = dashboard["__inputs"]
    assert source_input["name"] == "DS_PROMETHEUS"
    assert source_input["pluginId"] == "prometheus"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"org", "source"}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("rate", "error", "latency", "throughput", "in flight", "health", "probe",
                  "transitions", "target", "failover", "ejection"):  # fmt: skip
        assert topic in titles, topic


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_targets_and_failovers_have_their_panels() -> None:
    used = {name for query in queries(load()) for name in METRIC_NAME.findall(query)}
    for metric in ("gateway_target_up", "gateway_target_requests_total",
                   "gateway_proxy_failovers_total", "gateway_target_ejections_total",
                   "gateway_health_target_transitions_total"):  # fmt: skip
        assert metric in used, metric


def test_the_write_spool_has_its_row() -> None:
    dashboard = load()
    assert "Write spool" in [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    used = {name for query in queries(dashboard) for name in METRIC_NAME.findall(query)}
    for metric in ("gateway_spool_queued_entries", "gateway_spool_queued_bytes",
                   "gateway_spool_oldest_entry_age_seconds", "gateway_spool_replayed_points_total",
                   "gateway_spool_delivered_total", "gateway_spool_dead_lettered_total",
                   "gateway_spool_rejected_total", "gateway_spool_dead_letters"):  # fmt: skip
        assert metric in used, metric


async def test_every_metric_in_the_queries_is_exported(client: AppClient) -> None:
    text = await (await client.get("/metrics")).text()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))
    used = {base_name(name) for query in queries(load()) for name in METRIC_NAME.findall(query)}
    assert used, "the dashboard queries no gateway metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


async def test_every_query_parses_in_a_real_prometheus(prometheus_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for query in queries(load()):
            if query.startswith("label_values("):
                continue  # a Grafana function, not PromQL: checked by the name test above
            promql = (
                query.replace("$__rate_interval", "1m").replace("$org", ".*")
                .replace("$source", ".*")
            )  # fmt: skip
            response = await http.get(f"{prometheus_url}/api/v1/query", params={"query": promql})
            body = await response.json()
            assert response.status == 200, (query, body)
            assert body["status"] == "success"


@pytest.mark.parametrize("path", ["config/prometheus.yml"])
def test_the_example_scrape_config_targets_the_gateways_metrics(path: str) -> None:
    text = (REPO / path).read_text()
    assert "metrics_path: /metrics" in text
    assert "127.0.0.1:8480" in text

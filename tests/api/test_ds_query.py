"""`POST /api/ds/query` end to end: the real app, real upstreams, Grafana's frame shapes.

Upstreams: Debian's Prometheus (`prometheus_url`: it scrapes nothing, so the queries compute
their series, `vector(1)` and `label_replace`), Debian's InfluxDB 1.x (`influxdb`: points are
written first), and `FakeLoki`, an aiohttp server that answers Loki's query API as Loki does
(streams for log queries, matrix and vector for metric queries, text errors).

The expected frames are Grafana's, as the query layer's tests write them down from Grafana's
golden files (tests/query/): Prometheus' dataplane frames (a `Time` field with
`config.interval` = the step, a value field named after `__name__`, else `Value`, with the
series' labels and `config.displayNameFromDS`; the first frame's meta with
`executedQueryString`), Loki's log frames (labels, Time, Line, tsNs, id) and metric frames, and
InfluxQL's frames (`<measurement>.<column> { tag: value }`). Over the wire each frame also
carries its query's `refId`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from grafana_client.api import GrafanaApi
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer

from gateway.keys import STORE
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import Headers, MakeToken
from tests.query.frames import TIME, float_field, string_field
from tests.services.influxdb import InfluxDB1, quote_ident
from tests.services.prometheus import PROMETHEUS_PASSWORD, PROMETHEUS_USER, PrometheusProcess
from tests.types import AppClient

T = TypeVar("T")

# A minute boundary in the past: range queries over [T0, T0 + 5m] are deterministic.
T0 = 1_699_999_980_000
MINUTE = 60_000
RANGE = {"from": str(T0), "to": str(T0 + 5 * MINUTE)}
TIME_SERIES_META = {"type": "timeseries-multi", "typeVersion": [0, 1]}
PROM_RANGE_META = {**TIME_SERIES_META, "custom": {"resultType": "matrix"}}
JOB_API = 'label_replace(vector(1), "job", "api", "", "")'
# `up{job="api"} 2`: a series with a metric name, computed.
NAMED = 'label_replace(label_replace(vector(2), "__name__", "up", "", ""), "job", "api", "", "")'


async def add_source(client: AppClient, org_id: int = 1, **values: Any) -> DataSource:
    values.setdefault("name", values.get("uid") or f"source-{time.monotonic_ns()}")
    return await client.app[STORE].create_source(org_id, DataSourceSpec(**values))


async def ds_query(
    client: AppClient, headers: Headers, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    response = await client.post("/api/ds/query", json=body, headers=headers)
    assert response.headers["Content-Type"].startswith("application/json")
    answer: dict[str, Any] = await response.json()
    return response.status, answer


def results(answer: dict[str, Any]) -> dict[str, Any]:
    got: dict[str, Any] = answer["results"]
    return got


def minutes(count: int, start: int = T0) -> list[int]:
    return [start + index * MINUTE for index in range(count)]


# --- Prometheus ---------------------------------------------------------------------------------


@pytest.fixture
async def prom(client: AppClient, prometheus_url: str) -> DataSource:
    return await add_source(client, uid="prom", type="prometheus", url=prometheus_url)


async def test_prometheus_range_query_answers_grafanas_frames(
    client: AppClient, admin_headers: Headers, prom: DataSource
) -> None:
    query = {"refId": "A", "datasource": {"uid": "prom"}, "expr": NAMED, "intervalMs": 60000}
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": [query]})
    assert status == 200
    assert answer == {
        "results": {
            "A": {
                "status": 200,
                "frames": [
                    {
                        "schema": {
                            "refId": "A",
                            "meta": {
                                **PROM_RANGE_META,
                                "executedQueryString": f"Expr: {NAMED}\nStep: 1m0s",
                            },
                            "fields": [
                                {**TIME, "config": {"interval": 60000}},
                                float_field(
                                    "up",
                                    labels={"__name__": "up", "job": "api"},
                                    config={"displayNameFromDS": 'up{job="api"}'},
                                ),
                            ],
                        },
                        "data": {"values": [minutes(6), [2] * 6]},
                    }
                ],
            }
        }
    }


async def test_prometheus_step_from_max_data_points_legend_and_instant(
    client: AppClient, admin_headers: Headers, prom: DataSource
) -> None:
    queries = [
        # 5 minutes in at most 10 points: Grafana's step is 30s (intervalMs is smaller).
        {
            "refId": "range",
            "datasource": {"uid": "prom", "type": "prometheus"},
            "expr": JOB_API,
            "intervalMs": 15000,
            "maxDataPoints": 10,
            "legendFormat": "{{job}} calls",
            "range": True,
        },
        # Instant: evaluated at `to` itself (not aligned to the step), to the millisecond.
        {
            "refId": "instant",
            "datasource": {"uid": "prom"},
            "expr": NAMED,
            "instant": True,
            "range": False,
        },
    ]
    to = T0 + 5 * MINUTE + 123
    status, answer = await ds_query(
        client, admin_headers, {"from": str(T0), "to": str(to), "queries": queries}
    )
    assert status == 200
    ranged = results(answer)["range"]["frames"][0]
    assert ranged["schema"]["meta"]["executedQueryString"] == f"Expr: {JOB_API}\nStep: 30s"
    assert ranged["schema"]["fields"] == [
        {**TIME, "config": {"interval": 30000}},
        float_field("Value", labels={"job": "api"}, config={"displayNameFromDS": "api calls"}),
    ]
    assert ranged["data"]["values"][0] == [T0 + step * 30000 for step in range(11)]
    assert results(answer)["instant"] == {
        "status": 200,
        "frames": [
            {
                "schema": {
                    "refId": "instant",
                    "meta": {
                        "type": "numeric-multi",
                        "typeVersion": [0, 1],
                        "custom": {"resultType": "vector"},
                        "executedQueryString": f"Expr: {NAMED}\nStep: 2s",
                    },
                    "fields": [
                        # Grafana sets the step as the time field's interval here too.
                        {**TIME, "config": {"interval": 2000}},
                        float_field(
                            "up",
                            labels={"__name__": "up", "job": "api"},
                            config={"displayNameFromDS": 'up{job="api"}'},
                        ),
                    ],
                },
                "data": {"values": [[to], [2]]},
            }
        ],
    }


async def test_relative_times_are_read_against_now(
    client: AppClient, admin_headers: Headers, prom: DataSource
) -> None:
    query = {"datasource": {"uid": "prom"}, "expr": "vector(1)", "intervalMs": 60000}
    before = int(time.time() * 1000)
    status, answer = await ds_query(
        client, admin_headers, {"from": "now-10m", "to": "now", "queries": [query]}
    )
    after = int(time.time() * 1000)
    assert status == 200
    (frame,) = results(answer)["A"]["frames"]  # refId defaults to "A"
    stamps = frame["data"]["values"][0]
    # Aligned to the 1m step, within [now-10m, now]: 10 or 11 points.
    assert len(stamps) in (10, 11)
    assert all(stamp % MINUTE == 0 for stamp in stamps)
    assert stamps[0] > before - 11 * MINUTE
    assert stamps[-1] <= after


async def test_one_failing_query_does_not_fail_the_others_but_makes_it_a_400(
    client: AppClient, admin_headers: Headers, prom: DataSource
) -> None:
    queries = [
        {"refId": "good", "datasource": {"uid": "prom"}, "expr": "vector(1)"},
        {"refId": "bad", "datasource": {"uid": "prom"}, "expr": "sum(", "instant": True},
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": queries})
    assert status == 400  # Grafana: any failed query makes the whole answer a 400
    good, bad = results(answer)["good"], results(answer)["bad"]
    assert good["status"] == 200
    assert good["frames"][0]["data"]["values"][1][0] == 1
    # Prometheus' own error, its status, and (as Grafana's does) a frame with the query.
    assert bad["error"].startswith('bad_data: invalid parameter "query": 1:5: parse error')
    assert (bad["errorSource"], bad["status"]) == ("downstream", 400)
    assert bad["frames"][0]["schema"]["meta"]["executedQueryString"] == "Expr: sum(\nStep: 2s"

    only_bad = {**RANGE, "queries": [queries[1]]}
    status, answer = await ds_query(client, admin_headers, only_bad)
    assert status == 400  # total failure: the same status
    assert set(results(answer)) == {"bad"}


async def test_source_by_type_default_then_first_and_by_legacy_id(
    client: AppClient, admin_headers: Headers, prometheus_url: str, dead_url: str
) -> None:
    first = await add_source(client, uid="first", type="prometheus", url=prometheus_url)
    await add_source(client, uid="second", type="prometheus", url=dead_url)
    by_type = {"refId": "T", "datasource": {"type": "prometheus"}, "expr": "vector(1)"}
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": [by_type]})
    assert status == 200, answer  # the first (lowest id), not the dead one

    # The org's default of the type wins over the first.
    live_default = await add_source(
        client, uid="default", type="prometheus", url=prometheus_url, is_default=True
    )
    dead = await add_source(client, uid="dead", type="prometheus", url=dead_url)
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": [by_type]})
    assert status == 200, answer

    legacy = [
        {"refId": "L", "datasourceId": live_default.id, "expr": "vector(1)"},
        {"refId": "D", "datasourceId": dead.id, "expr": "vector(1)"},
        {"refId": "F", "datasourceId": first.id, "datasource": None, "expr": "vector(1)"},
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": legacy})
    assert status == 400
    assert results(answer)["L"]["status"] == results(answer)["F"]["status"] == 200
    assert results(answer)["D"]["status"] == 502
    assert results(answer)["D"]["errorSource"] == "downstream"
    assert "upstream connect error" in results(answer)["D"]["error"]


async def test_sources_not_found_unsupported_and_of_another_org_are_per_query_errors(
    client: AppClient, admin_headers: Headers, make_token: MakeToken, prom: DataSource
) -> None:
    other_org = await make_token(role="admin", org="Other Org")
    await add_source(client, uid="graphite", type="graphite", url="http://graphite.example")
    queries = [
        {"refId": "gone", "datasource": {"uid": "no-such"}, "expr": "1"},
        {"refId": "loki", "datasource": {"type": "loki"}, "expr": "{a=~'.+'}"},
        {"refId": "graphite", "datasource": {"uid": "graphite"}, "target": "a.b"},
        {"refId": "expr", "datasource": {"uid": "__expr__"}, "expression": "$A"},
        {"refId": "ok", "datasource": {"uid": "prom"}, "expr": "vector(1)"},
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": queries})
    assert status == 400
    got = results(answer)
    assert got["gone"] == {"error": "Data source not found", "errorSource": "plugin", "status": 404}
    assert got["loki"] == {
        "error": "Data source not found: no 'loki' data source in this organization",
        "errorSource": "plugin",
        "status": 404,
    }
    assert got["graphite"] == {
        "error": "data source type 'graphite' is not supported by /api/ds/query "
        "(supported: prometheus, loki, influxdb)",
        "errorSource": "plugin",
        "status": 400,
    }
    assert got["expr"]["error"] == (
        "server-side expressions is not supported by the gateway's /api/ds/query"
    )
    assert got["ok"]["status"] == 200

    # Another org does not see the source at all: not found, by uid or by id.
    mine = {**RANGE, "queries": [{"datasource": {"uid": "prom"}, "expr": "1"}]}
    status, answer = await ds_query(client, other_org, mine)
    assert (status, results(answer)["A"]["status"]) == (400, 404)
    by_id = {**RANGE, "queries": [{"datasourceId": prom.id, "expr": "1"}]}
    status, answer = await ds_query(client, other_org, by_id)
    assert results(answer)["A"]["error"] == "Data source not found"


async def test_a_body_grafana_cannot_use_is_a_400_of_its_own(
    client: AppClient, admin_headers: Headers
) -> None:
    cases: list[tuple[Any, str]] = [
        ({"queries": [{"datasource": {"uid": "x"}}], "to": "now"}, "from: required"),
        ({"from": "now-1h", "to": "now", "queries": []}, "queries: no queries found"),
        ({"from": "now-1h", "to": "now"}, "queries: required"),
        (
            {"from": "yesterday", "to": "now", "queries": [{"datasourceId": 1}]},
            'from: "yesterday" is not a time Grafana understands',
        ),
        (
            {"from": "now-1h", "to": "now", "queries": [{"expr": "1"}]},
            "queries[0].datasource: name a source by uid, type or datasourceId",
        ),
        (
            {"from": "now-1h", "to": "now", "queries": [{"datasourceId": 1, "intervalMs": "x"}]},
            "queries[0].intervalMs: must be a number, got a string",
        ),
        (
            {
                "from": "now-1h",
                "to": "now",
                "queries": [{"datasourceId": 1, "refId": f"Q{n}"} for n in range(5_000)],
            },
            "queries: at most 100 queries in one request, got 5000",
        ),
    ]
    for body, message in cases:
        response = await client.post("/api/ds/query", json=body, headers=admin_headers)
        assert response.status == 400
        assert await response.json() == {"message": message}
    unreadable = [
        (
            b"{nope",
            400,
            "request body: not valid JSON: "
            "Expecting property name enclosed in double quotes (line 1, column 2)",
        ),
        (b"[]", 400, "request body: must be a JSON object, got an array"),
        (b"", 400, "request body: empty, expected a JSON object"),
        (b"{" * 5_000_000, 413, "request body: larger than the limit of 4194304 bytes"),
    ]
    for raw, status, message in unreadable:
        broken = await client.post("/api/ds/query", data=io.BytesIO(raw), headers=admin_headers)
        assert (broken.status, await broken.json()) == (status, {"message": message})
    anonymous = await client.post("/api/ds/query", json=cases[0][0])
    assert anonymous.status == 401


async def test_queries_go_through_the_proxy_forwarder(
    client: AppClient,
    admin_headers: Headers,
    prometheus_basic_auth_url: str,
    dead_url: str,
    metrics_registry: CollectorRegistry,
) -> None:
    """The source's credentials are sent, its requests counted in the proxy's metrics, and its
    replicas take over when the primary is down."""
    await add_source(
        client,
        uid="auth",
        type="prometheus",
        url=dead_url,
        basic_auth=True,
        basic_auth_user=PROMETHEUS_USER,
        secure_json_data={"basicAuthPassword": PROMETHEUS_PASSWORD},
        json_data={"replicaUrls": [prometheus_basic_auth_url]},
    )
    await add_source(
        client, uid="wrong", type="prometheus", url=prometheus_basic_auth_url, basic_auth=True
    )
    queries = [
        {"refId": "auth", "datasource": {"uid": "auth"}, "expr": "vector(1)", "instant": True},
        {"refId": "wrong", "datasource": {"uid": "wrong"}, "expr": "vector(1)"},
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": queries})
    assert status == 400
    assert results(answer)["auth"]["status"] == 200  # failed over to the replica, with auth
    # The upstream's 401, as the proxy reports it (never a 401 of the gateway's own).
    assert results(answer)["wrong"] == {
        "error": "Authentication to data source failed",
        "errorSource": "downstream",
        "status": 400,
    }

    def requests(uid: str, code: str) -> float | None:
        labels = {"org": "1", "source_uid": uid, "source_type": "prometheus", "method": "POST"}
        return metrics_registry.get_sample_value(
            "gateway_proxy_requests_total", {**labels, "code": code}
        )

    assert requests("auth", "200") == 1
    assert requests("wrong", "400") == 1
    failovers = metrics_registry.get_sample_value(
        "gateway_proxy_failovers_total",
        {"org": "1", "source_uid": "auth", "source_type": "prometheus"},
    )
    assert failovers == 1


async def test_prometheus_get_method_and_queries_run_concurrently(
    client: AppClient, admin_headers: Headers, aiohttp_server: AiohttpServer
) -> None:
    """`jsonData.httpMethod: GET` sends the parameters in the URL; the queries of one request
    are in flight together (each answer waits until all of them arrived)."""
    seen: list[tuple[str, dict[str, str]]] = []
    arrived = asyncio.Event()
    count = 3

    async def query_range(request: web.Request) -> web.Response:
        seen.append((request.method, dict(request.query)))
        if len(seen) == count:
            arrived.set()
        await asyncio.wait_for(arrived.wait(), 5)
        empty = {"status": "success", "data": {"resultType": "matrix", "result": []}}
        return web.json_response(empty)

    app = web.Application()
    app.router.add_get("/api/v1/query_range", query_range)
    server = await aiohttp_server(app)
    await add_source(
        client,
        uid="get",
        type="prometheus",
        url=str(server.make_url("/")),
        json_data={"httpMethod": "GET", "queryTimeout": "20s"},
    )
    queries = [
        {"refId": f"q{n}", "datasource": {"uid": "get"}, "expr": f"up{{n='{n}'}}"}
        for n in range(count)
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": queries})
    assert status == 200
    # No series: Grafana still answers one empty frame per query, with its query string.
    assert results(answer)["q0"]["frames"][0]["schema"]["meta"]["executedQueryString"] == (
        "Expr: up{n='0'}\nStep: 2s"
    )
    assert sorted(query["query"] for _, query in seen) == [f"up{{n='{n}'}}" for n in range(3)]
    method, params = seen[0]
    assert method == "GET"
    assert (params["start"], params["end"], params["timeout"]) == (
        str(T0 // 1000),
        str((T0 + 5 * MINUTE) // 1000),
        "20s",
    )


class ExemplarPrometheus(PrometheusProcess):
    """Debian's Prometheus with exemplar storage on, scraping one OpenMetrics target every
    second."""

    def __init__(self, directory: Path, target: str) -> None:
        super().__init__(directory)
        config = (
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        (directory / "prometheus.yml").write_text(config)

    def _command(self) -> list[str]:
        return [*super()._command(), "--enable-feature=exemplar-storage"]


async def test_prometheus_exemplars_from_a_real_prometheus(
    client: AppClient, admin_headers: Headers, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """Exemplars as Grafana shows them: a target exposes three counters with exemplars in
    OpenMetrics (two in one step, one earlier), Prometheus scrapes and stores them, and
    `exemplar: true` adds Grafana's sampled exemplar frame: of the two in one step only the
    higher is kept (the lower is not two standard deviations below it)."""
    now_s = int(time.time())
    recent, earlier = now_s - 60, now_s - 180
    exposition = (
        "# TYPE app_requests counter\n"
        f'app_requests_total{{path="/a"}} 10 # {{trace_id="aaa"}} 8 {recent}\n'
        f'app_requests_total{{path="/b"}} 20 # {{trace_id="bbb"}} 9 {recent}\n'
        f'app_requests_total{{path="/c"}} 30 # {{trace_id="ccc"}} 100 {earlier}\n'
        "# EOF\n"
    )

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=exposition.encode(),
            headers={"Content-Type": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
        )

    target_app = web.Application()
    target_app.router.add_get("/metrics", metrics)
    target = await aiohttp_server(target_app)
    prometheus = ExemplarPrometheus(tmp_path / "prometheus", f"127.0.0.1:{target.port}")
    await asyncio.to_thread(prometheus.start)
    try:
        stored: list[Any] = []

        async def exemplars_stored() -> None:
            params = {
                "query": "app_requests_total",
                "start": str(now_s - 600),
                "end": str(now_s + 60),
            }
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{prometheus.url}/api/v1/query_exemplars", params=params) as got,
            ):
                stored[:] = (await got.json())["data"]

        async def poll() -> bool:
            await exemplars_stored()
            return sum(len(series["exemplars"]) for series in stored) == 3

        deadline = time.monotonic() + 30
        while not await poll():
            assert time.monotonic() < deadline, f"exemplars not scraped: {stored}"
            await asyncio.sleep(0.2)
        await add_source(client, uid="prom-exemplars", type="prometheus", url=prometheus.url)
        query = {
            "refId": "E",
            "datasource": {"uid": "prom-exemplars"},
            "expr": "app_requests_total",
            "range": True,
            "exemplar": True,
            "intervalMs": 15000,
        }
        body = {
            "from": str((now_s - 600) * 1000),
            "to": str((now_s + 60) * 1000),  # the aligned end after the first scrape
            "queries": [query],
        }
        status, answer = await ds_query(client, admin_headers, body)
    finally:
        await asyncio.to_thread(prometheus.stop)
    assert status == 200, answer
    frames = results(answer)["E"]["frames"]
    *series_frames, exemplar = frames
    assert len(series_frames) == 3
    instance = f"127.0.0.1:{target.port}"
    names = ["__name__", "instance", "job", "path", "trace_id"]
    assert exemplar == {
        "schema": {
            "name": "exemplar",
            "refId": "E",
            "meta": {"typeVersion": [0, 0], "custom": {"resultType": "exemplar"}},
            "fields": [TIME, float_field("Value"), *map(string_field, names)],
        },
        "data": {
            "values": [
                [earlier * 1000, recent * 1000],
                [100, 9],
                ["app_requests_total"] * 2,
                [instance] * 2,
                ["app"] * 2,
                ["/c", "/b"],
                ["ccc", "bbb"],
            ]
        },
    }


async def test_prometheus_native_histograms(
    client: AppClient, admin_headers: Headers, aiohttp_server: AiohttpServer
) -> None:
    """Native histograms as Grafana frames them (a `heatmap-cells` frame of buckets). Debian's
    Prometheus 2.42 stores native histograms only from protobuf scrapes, which nothing here
    produces, so the upstream is an aiohttp server answering query_range with the exact JSON of
    Prometheus' docs ("Native histograms" under the query API's formats): `histograms` of
    `[time, {count, sum, buckets: [[boundary_rule, left, right, count], ...]}]`."""
    seen: list[str] = []

    async def query_range(request: web.Request) -> web.Response:
        seen.append(str((await request.post())["query"]))
        histogram = {
            "count": "3",
            "sum": "0.6",
            "buckets": [[0, "0.1", "0.2", "1"], [3, "0.25", "0.5", "2"]],
        }
        result = [
            {
                "metric": {"__name__": "rpc_seconds", "job": "api"},
                "histograms": [[T0 / 1000, histogram], [T0 / 1000 + 60, histogram]],
            }
        ]
        return web.json_response(
            {"status": "success", "data": {"resultType": "matrix", "result": result}}
        )

    upstream_app = web.Application()
    upstream_app.router.add_post("/api/v1/query_range", query_range)
    upstream = await aiohttp_server(upstream_app)
    await add_source(client, uid="prom-native", type="prometheus", url=str(upstream.make_url("/")))
    query = {
        "refId": "H",
        "datasource": {"uid": "prom-native"},
        "expr": "rpc_seconds",
        "intervalMs": 60000,
        "format": "heatmap",
    }
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": [query]})
    assert status == 200, answer
    assert seen == ["rpc_seconds"]
    (frame,) = results(answer)["H"]["frames"]
    labels = {"__name__": "rpc_seconds", "job": "api"}
    assert frame == {
        "schema": {
            "refId": "H",
            "meta": {
                "type": "heatmap-cells",
                "typeVersion": [0, 0],
                "executedQueryString": "Expr: rpc_seconds\nStep: 1m0s",
            },
            "fields": [
                {
                    "name": "xMax",
                    "type": "time",
                    "typeInfo": {"frame": "time.Time"},
                    "config": {"interval": 60000},
                },
                float_field(
                    "rpc_seconds",
                    labels=labels,
                    config={"displayNameFromDS": 'rpc_seconds{job="api"}'},
                ),
                float_field("yMax"),
                float_field("count"),
                {"name": "yLayout", "type": "number", "typeInfo": {"frame": "int8"}},
            ],
        },
        "data": {
            "values": [
                [T0, T0, T0 + MINUTE, T0 + MINUTE],
                [0.1, 0.25] * 2,
                [0.2, 0.5] * 2,
                [1, 2] * 2,
                [0, 3] * 2,
            ]
        },
    }


# --- Loki ----------------------------------------------------------------------------------------


@dataclass
class FakeLoki:
    """Loki's query API: `/loki/api/v1/query_range` and `/loki/api/v1/query`. A log query
    (one starting with `{`) answers `streams`, a metric query `matrix` (range) or `vector`
    (instant); a query containing `syntax error` answers Loki's 400 with a text body.

    With `categorize` (Loki 3.x) a request carrying `X-Loki-Response-Encoding-Flags:
    categorize-labels` gets that encoding back, as Loki's docs describe it: `encodingFlags` in
    `data`, the stream's indexed labels only, and a third element per entry with the entry's
    `structuredMetadata` and `parsed` labels (here: `trace_id` metadata on the error line, and
    `level` parsed from it by a `| logfmt` stage). Without it (Loki 2.x) the header is ignored."""

    url: str = ""
    categorize: bool = False
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    flags: list[str | None] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/loki/api/v1/query_range", self._range)
        app.router.add_get("/loki/api/v1/query", self._instant)
        return app

    async def _range(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query)))
        flags = request.headers.get("X-Loki-Response-Encoding-Flags")
        self.flags.append(flags)
        expr = request.query["query"]
        if "syntax error" in expr:
            return web.Response(status=400, text="parse error at line 1, col 1: syntax error")
        if expr.startswith("{") and self.categorize and flags == "categorize-labels":
            body = {
                "status": "success",
                "data": {
                    "resultType": "streams",
                    "encodingFlags": ["categorize-labels"],
                    "result": [
                        {
                            "stream": {"app": "api"},
                            "values": [
                                [
                                    "1700000040000000001",
                                    "level=error msg=boom",
                                    {
                                        "structuredMetadata": {"trace_id": "7f3a"},
                                        "parsed": {"level": "error", "msg": "boom"},
                                    },
                                ],
                                ["1700000010000000000", "first", {}],
                            ],
                        }
                    ],
                },
            }
            return web.json_response(body)
        if expr.startswith("{"):
            return _loki_answer(
                "streams",
                [
                    {
                        "stream": {"app": "api", "level": "error"},
                        "values": [["1700000040000000001", "boom"]],
                    },
                    {
                        "stream": {"app": "api", "level": "info"},
                        "values": [
                            ["1700000030500000000", "second"],
                            ["1700000010000000000", "first"],
                        ],
                    },
                ],
            )
        start_s = int(request.query["start"]) // 10**9
        return _loki_answer(
            "matrix",
            [
                {
                    "metric": {"app": "api"},
                    "values": [[start_s, "3"], [start_s + 60, "4"]],
                }
            ],
        )

    async def _instant(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.query)))
        at = int(request.query["time"]) / 10**9
        return _loki_answer("vector", [{"metric": {"app": "api"}, "value": [at, "7"]}])


def _loki_answer(result_type: str, result: list[dict[str, Any]]) -> web.Response:
    body = {"status": "success", "data": {"resultType": result_type, "result": result}}
    return web.json_response(body)


@pytest.fixture
async def loki(client: AppClient, aiohttp_server: AiohttpServer) -> FakeLoki:
    fake = FakeLoki()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/"))
    await add_source(client, uid="loki", type="loki", url=fake.url)
    return fake


async def test_loki_log_query_answers_a_log_frame(
    client: AppClient, admin_headers: Headers, loki: FakeLoki
) -> None:
    query = {
        "refId": "logs",
        "datasource": {"uid": "loki"},
        "expr": '{app="api"}',
        "maxLines": 500,
        "direction": "forward",
    }
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": [query]})
    assert status == 200
    ((path, params),) = loki.requests
    assert path == "/loki/api/v1/query_range"
    assert params == {
        "query": '{app="api"}',
        "direction": "forward",
        "limit": "500",
        "start": f"{T0}000000",
        "end": f"{T0 + 5 * MINUTE}000000",
        "step": "1000ms",  # Loki's step for 5 minutes at intervalMs 1000: 1s
    }
    error, info = {"app": "api", "level": "error"}, {"app": "api", "level": "info"}
    stamps = ["1700000040000000001", "1700000030500000000", "1700000010000000000"]
    (frame,) = results(answer)["logs"]["frames"]
    assert frame["schema"] == {
        "refId": "logs",
        "meta": {
            "typeVersion": [0, 0],
            "custom": {"frameType": "LabeledTimeValues"},
            "executedQueryString": 'Expr: {app="api"}',
        },
        "fields": [
            {"name": "labels", "type": "other", "typeInfo": {"frame": "json.RawMessage"}},
            TIME,
            string_field("Line"),
            string_field("tsNs"),
            string_field("id"),
        ],
    }
    values = frame["data"]["values"]
    assert values[:4] == [
        [error, info, info],
        [1700000040000, 1700000030500, 1700000010000],
        ["boom", "second", "first"],
        stamps,
    ]
    # Grafana's ids: "<tsNs>_<fnv32 of the line and labels>" (no refId since Grafana 10).
    assert [value.split("_")[0] for value in values[4]] == stamps
    assert all(len(value.split("_")) == 2 for value in values[4])


async def test_loki_structured_metadata_and_parsed_labels(
    client: AppClient, admin_headers: Headers, loki: FakeLoki
) -> None:
    """Against a Loki that knows the categorize-labels encoding: the gateway asks for it as
    Grafana does, merges structured metadata and parsed labels into `labels`, and says which
    is which in `labelTypes` (I: indexed, S: structured metadata, P: parsed)."""
    loki.categorize = True
    query = {"refId": "L", "datasource": {"uid": "loki"}, "expr": '{app="api"} | logfmt'}
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": [query]})
    assert status == 200, answer
    assert loki.flags == ["categorize-labels"]
    (frame,) = results(answer)["L"]["frames"]
    json_field = {"type": "other", "typeInfo": {"frame": "json.RawMessage"}}
    assert frame["schema"]["fields"] == [
        {"name": "labels", **json_field},
        TIME,
        string_field("Line"),
        string_field("tsNs"),
        {"name": "labelTypes", **json_field, "config": {"custom": {"hidden": True}}},
        string_field("id"),
    ]
    labels, times, lines, stamps, types, ids = frame["data"]["values"]
    assert labels == [
        {"app": "api", "level": "error", "msg": "boom", "trace_id": "7f3a"},
        {"app": "api"},
    ]
    assert types == [{"app": "I", "level": "P", "msg": "P", "trace_id": "S"}, {"app": "I"}]
    assert (times, lines) == ([1700000040000, 1700000010000], ["level=error msg=boom", "first"])
    assert [value.split("_")[0] for value in ids] == stamps


async def test_loki_metric_range_and_instant_queries_and_a_loki_error(
    client: AppClient, admin_headers: Headers, loki: FakeLoki
) -> None:
    rate = 'sum by (app) (count_over_time({app="api"}[$__auto]))'
    queries = [
        {"refId": "range", "datasource": {"uid": "loki"}, "expr": rate, "intervalMs": 60000},
        {
            "refId": "instant",
            "datasource": {"uid": "loki"},
            "expr": 'count_over_time({app="api"}[$__range])',
            "queryType": "instant",
            "legendFormat": "{{app}}",
        },
        {"refId": "broken", "datasource": {"uid": "loki"}, "expr": "syntax error"},
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": queries})
    assert status == 400
    got = results(answer)
    executed = 'sum by (app) (count_over_time({app="api"}[1m]))'
    assert got["range"]["frames"] == [
        {
            "schema": {
                "refId": "range",
                "meta": {
                    **TIME_SERIES_META,
                    "executedQueryString": f"Expr: {executed}\nStep: 1m0s",
                },
                "fields": [
                    {**TIME, "config": {"interval": 60000}},
                    float_field(
                        "Value", labels={"app": "api"}, config={"displayNameFromDS": '{app="api"}'}
                    ),
                ],
            },
            "data": {"values": [[T0, T0 + MINUTE], [3, 4]]},
        }
    ]
    assert got["instant"]["frames"] == [
        {
            "schema": {
                "refId": "instant",
                "meta": {
                    "type": "numeric-multi",
                    "typeVersion": [0, 1],
                    "executedQueryString": 'Expr: count_over_time({app="api"}[300s])',
                },
                "fields": [
                    TIME,
                    float_field(
                        "Value", labels={"app": "api"}, config={"displayNameFromDS": "api"}
                    ),
                ],
            },
            "data": {"values": [[T0 + 5 * MINUTE], [7]]},
        }
    ]
    assert got["broken"] == {
        "error": "parse error at line 1, col 1: syntax error",
        "errorSource": "downstream",
        "status": 400,
    }


# --- InfluxDB 1.x (InfluxQL) ---------------------------------------------------------------------


@pytest.fixture
async def influx(client: AppClient, influxdb: InfluxDB1) -> str:
    """A fresh database with a source for it; the database's name."""
    database = await influxdb.create_database()
    await add_source(
        client,
        uid="influx",
        type="influxdb",
        url=influxdb.url,
        database=database,
        user=influxdb.admin_user,
        secure_json_data={"password": influxdb.admin_password},
        json_data={"httpMode": "POST"},
    )
    return database


async def write_points(influxdb: InfluxDB1, database: str, lines: str) -> None:
    auth = aiohttp.encode_basic_auth(influxdb.admin_user, influxdb.admin_password)
    async with (
        aiohttp.ClientSession(headers={"Authorization": auth}) as session,
        session.post(
            f"{influxdb.url}/write", params={"db": database, "precision": "ms"}, data=lines
        ) as response,
    ):
        assert response.status == 204, await response.text()


async def test_influxql_macros_and_grafanas_frames(
    client: AppClient, admin_headers: Headers, influxdb: InfluxDB1, influx: str
) -> None:
    await write_points(
        influxdb,
        influx,
        f"cpu,host=a value=1 {T0 + 10_000}\n"
        f"cpu,host=a value=3 {T0 + 20_000}\n"
        f"cpu,host=b value=5 {T0 + 70_000}\n",
    )
    query = {
        "refId": "cpu",
        "datasource": {"uid": "influx"},
        "rawQuery": True,
        "query": 'SELECT mean("value") FROM "cpu" WHERE $timeFilter '
        'GROUP BY time($__interval), "host"',
        "intervalMs": 60000,
    }
    body = {"from": str(T0), "to": str(T0 + 2 * MINUTE - 1), "queries": [query]}
    status, answer = await ds_query(client, admin_headers, body)
    assert status == 200, answer
    executed = (
        f'SELECT mean("value") FROM "cpu" WHERE time >= {T0}ms and time <= '
        f'{T0 + 2 * MINUTE - 1}ms GROUP BY time(1m), "host"'
    )

    def frame(host: str, values: list[float | None], meta: bool) -> dict[str, Any]:
        name = f"cpu.mean {{ host: {host} }}"
        schema: dict[str, Any] = {"name": name, "refId": "cpu"}
        if meta:
            schema["meta"] = {
                "typeVersion": [0, 0],
                "preferredVisualisationType": "graph",
                "executedQueryString": executed,
            }
        schema["fields"] = [
            TIME,
            float_field(
                "Value",
                typeInfo={"frame": "float64", "nullable": True},
                labels={"host": host},
                config={"displayNameFromDS": name},
            ),
        ]
        return {"schema": schema, "data": {"values": [[T0, T0 + MINUTE], values]}}

    assert answer == {
        "results": {
            "cpu": {
                "status": 200,
                "frames": [frame("a", [2, None], meta=True), frame("b", [None, 5], meta=False)],
            }
        }
    }


async def test_influxql_relative_time_table_format_and_errors(
    client: AppClient, admin_headers: Headers, influxdb: InfluxDB1, influx: str
) -> None:
    now = int(time.time() * 1000)
    await write_points(influxdb, influx, f"mem,host=a used=42i {now - 30_000}\n")
    queries = [
        {
            "refId": "table",
            "datasource": {"type": "influxdb"},
            "query": "SELECT used FROM mem WHERE $timeFilter",
            "rawQuery": True,
            "resultFormat": "table",
        },
        {"refId": "broken", "datasource": {"uid": "influx"}, "query": "SELEKT 1", "rawQuery": True},
        {
            "refId": "builder",
            "datasource": {"uid": "influx"},
            "select": [[{"type": "field", "params": ["used"]}]],
        },
    ]
    status, answer = await ds_query(
        client, admin_headers, {"from": "now-5m", "to": "now", "queries": queries}
    )
    assert status == 400
    got = results(answer)
    (table,) = got["table"]["frames"]
    assert table["schema"]["fields"] == [
        TIME,
        {
            **float_field("used", config={"displayNameFromDS": "used"}),
            "typeInfo": {"frame": "float64", "nullable": True},
        },
    ]
    assert table["data"]["values"] == [[now - 30_000], [42]]
    assert got["broken"]["status"] == 400
    assert got["broken"]["errorSource"] == "downstream"
    assert got["broken"]["error"].startswith("InfluxDB returned error: error parsing query")
    assert got["builder"] == {
        "error": "queries[2].measurement: required",
        "errorSource": "plugin",
        "status": 400,
    }


async def test_influxql_from_grafanas_visual_editor(
    client: AppClient, admin_headers: Headers, influxdb: InfluxDB1
) -> None:
    """A query as Grafana's InfluxQL editor saves it: field, aggregation, math, alias, tags
    with OR and a regex, GROUP BY time(auto)/tag/fill, a retention policy, ORDER BY time;
    rendered as Grafana renders it and answered by the real InfluxDB 1.x."""
    database = await influxdb.create_database(retention_policies={"forever": "INF"})
    await add_source(
        client,
        uid="influx-editor",
        type="influxdb",
        url=influxdb.url,
        database=database,
        user=influxdb.admin_user,
        secure_json_data={"password": influxdb.admin_password},
    )
    lines = (
        f"cpu,host=a,dc=eu value=1 {T0 + 10_000}\n"
        f"cpu,host=a,dc=eu value=3 {T0 + 20_000}\n"
        f"cpu,host=b,dc=us value=5 {T0 + 70_000}\n"
        f"cpu,host=c,dc=ap value=100 {T0 + 80_000}\n"
    )
    auth = aiohttp.encode_basic_auth(influxdb.admin_user, influxdb.admin_password)
    async with (
        aiohttp.ClientSession(headers={"Authorization": auth}) as session,
        session.post(
            f"{influxdb.url}/write",
            params={"db": database, "rp": "forever", "precision": "ms"},
            data=lines,
        ) as response,
    ):
        assert response.status == 204, await response.text()
    query = {
        "refId": "editor",
        "datasource": {"uid": "influx-editor"},
        "intervalMs": 60000,
        "rawQuery": False,
        "query": "",
        "policy": "forever",
        "measurement": "cpu",
        "resultFormat": "time_series",
        "orderByTime": "ASC",
        "select": [
            [
                {"type": "field", "params": ["value"]},
                {"type": "mean", "params": []},
                {"type": "math", "params": ["* 10"]},
                {"type": "alias", "params": ["ten"]},
            ]
        ],
        "tags": [
            {"key": "host", "operator": "=", "value": "a"},
            {"key": "host", "operator": "=~", "value": "/^b$/", "condition": "OR"},
        ],
        "groupBy": [
            {"type": "time", "params": ["auto"]},
            {"type": "tag", "params": ["host"]},
            {"type": "fill", "params": ["0"]},
        ],
    }
    body = {"from": str(T0), "to": str(T0 + 2 * MINUTE - 1), "queries": [query]}
    status, answer = await ds_query(client, admin_headers, body)
    assert status == 200, answer
    executed = (
        'SELECT mean("value") * 10 AS "ten" FROM "forever"."cpu" WHERE ("host" = \'a\' OR '
        f'"host" =~ /^b$/) AND time >= {T0}ms and time <= {T0 + 2 * MINUTE - 1}ms '
        'GROUP BY time(1m), "host" fill(0) ORDER BY time ASC'
    )
    frames = results(answer)["editor"]["frames"]
    assert frames[0]["schema"]["meta"]["executedQueryString"] == executed
    assert [f["schema"]["name"] for f in frames] == ["cpu.ten { host: a }", "cpu.ten { host: b }"]
    assert [f["data"]["values"] for f in frames] == [
        [[T0, T0 + MINUTE], [20, 0]],
        [[T0, T0 + MINUTE], [0, 50]],
    ]
    assert frames[1]["schema"]["fields"][1]["labels"] == {"host": "b"}


# --- mixed ---------------------------------------------------------------------------------------


async def test_one_request_across_prometheus_loki_and_influxdb(
    client: AppClient,
    admin_headers: Headers,
    prom: DataSource,
    loki: FakeLoki,
    influxdb: InfluxDB1,
    influx: str,
) -> None:
    await write_points(influxdb, influx, f"cpu,host=a value=1 {T0 + 10_000}\n")
    queries = [
        {"refId": "P", "datasource": {"uid": "prom"}, "expr": NAMED, "intervalMs": 60000},
        {"refId": "L", "datasource": {"uid": "loki"}, "expr": '{app="api"}'},
        {
            "refId": "I",
            "datasource": {"uid": "influx"},
            "query": f"SELECT value FROM {quote_ident('cpu')} WHERE $timeFilter",
            "rawQuery": True,
        },
    ]
    status, answer = await ds_query(client, admin_headers, {**RANGE, "queries": queries})
    assert status == 200
    got = results(answer)
    assert list(got) == ["I", "L", "P"]  # refIds sorted, as Grafana writes them
    assert got["P"]["frames"][0]["data"]["values"] == [minutes(6), [2] * 6]
    assert got["L"]["frames"][0]["data"]["values"][2] == ["boom", "second", "first"]
    assert got["I"]["frames"][0]["schema"]["name"] == "cpu.value"
    assert got["I"]["frames"][0]["data"]["values"] == [[T0 + 10_000], [1]]


# --- grafana-client ------------------------------------------------------------------------------


async def call(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args)


@pytest.fixture
def grafana(client: AppClient) -> Iterator[GrafanaApi]:
    api = GrafanaApi(
        auth="dsg_test-admin-token",
        host=client.server.host,
        port=client.server.port,
        protocol="http",
    )
    yield api
    api.client.s.close()


async def test_grafana_client_health_check_and_smartquery(
    client: AppClient,
    grafana: GrafanaApi,
    prom: DataSource,
    loki: FakeLoki,
    influxdb: InfluxDB1,
    influx: str,
    dead_url: str,
) -> None:
    datasource = grafana.datasource
    prometheus = await call(datasource.get_datasource_by_uid, "prom")
    health = await call(datasource.health_check, prometheus)
    assert (health.success, health.status) == (True, "OK")
    # grafana-client reports the executed query of the first frame.
    assert health.message.startswith("Expr: 1+1\nStep: ")

    answer = await call(datasource.smartquery, prometheus, NAMED)
    assert answer["results"]["test"]["status"] == 200
    (frame,) = answer["results"]["test"]["frames"]
    assert frame["schema"]["fields"][1]["labels"] == {"__name__": "up", "job": "api"}

    lokis = await call(datasource.get_datasource_by_uid, "loki")
    health = await call(datasource.health_check, lokis)
    assert (health.success, health.message) == (True, "Success")
    assert loki.requests[-1][1]["query"] == 'count_over_time({job=~".+"} [5m])'

    # InfluxQL goes through the data source proxy (grafana-client's choice): unchanged too.
    await influxdb.create_database("_internal")
    influx_source = await call(datasource.get_datasource_by_uid, "influx")
    health = await call(datasource.health_check, influx_source)
    assert (health.success, health.status) == (True, "OK"), health.message

    await add_source(client, uid="down", type="prometheus", url=dead_url)
    down = await call(datasource.get_datasource_by_uid, "down")
    health = await call(datasource.health_check, down)
    assert (health.success, health.status) == (False, "ERROR")
    assert "upstream connect error" in health.message

    # The native health endpoint keeps its own answer.
    native = await call(datasource.health, "prom")
    assert native["status"] == "OK"


# --- a large answer ------------------------------------------------------------------------------

SERIES, POINTS = 100, 10_000


def large_matrix() -> bytes:
    """A Prometheus range answer of 100 series x 10,000 points, as Prometheus writes it."""
    start = T0 // 1000
    series = []
    for index in range(SERIES):
        values = ",".join(f'[{start + step},"{index + step / 4}"]' for step in range(POINTS))
        series.append(f'{{"metric":{{"__name__":"m","i":"{index}"}},"values":[{values}]}}')
    body = '{"status":"success","data":{"resultType":"matrix","result":[' + ",".join(series)
    return (body + "]}}").encode()


def resident_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


async def test_a_large_range_answer_streams_back_within_a_small_multiple_of_its_size(
    client: AppClient, admin_headers: Headers, aiohttp_server: AiohttpServer
) -> None:
    upstream_body = large_matrix()

    async def query_range(request: web.Request) -> web.Response:
        return web.Response(body=upstream_body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/query_range", query_range)
    server = await aiohttp_server(app)
    await add_source(client, uid="big", type="prometheus", url=str(server.make_url("/")))
    query = {"refId": "big", "datasource": {"uid": "big"}, "expr": "m", "intervalMs": 1000}
    body = {"from": str(T0), "to": str(T0 + POINTS * 1000), "queries": [query]}

    baseline = resident_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    response = await client.post("/api/ds/query", json=body, headers=admin_headers)
    assert response.status == 200
    head, tail, answer_size = b"", b"", 0
    async for chunk in response.content.iter_any():  # the test holds none of it
        head = head or chunk[:200]
        tail = (tail + chunk)[-200:]
        answer_size += len(chunk)
    # What the process (the gateway, and the test client reading) held at most meanwhile: the
    # upstream answer, its frames, the JSON being written; a small multiple of the answer.
    grown = resident_bytes("VmHWM") - baseline
    assert grown < 4 * len(upstream_body), (grown, len(upstream_body))
    assert answer_size > len(upstream_body) * 0.9
    assert head.startswith(b'{"results":{"big":{"status":200,"frames":[{"schema":{"refId":"big"')
    # The last series' last value ends the answer.
    assert tail.endswith(f",{SERIES - 1 + (POINTS - 1) / 4}]]}}}}]}}}}}}".encode())

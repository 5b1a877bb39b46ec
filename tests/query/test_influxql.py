"""InfluxQL frames against Grafana's golden, macros and the request Grafana sends.

Expected frames from grafana/grafana
pkg/tsdb/influxdb/influxql/converter/testdata/select_multiple_from_cpu_group_by_tag.golden.jsonc
(input: select_multiple_from_cpu_group_by_tag.json, trimmed to two rows)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from gateway.query import durations as d
from gateway.query.frames import frame_dict
from gateway.query.influxql import (
    InfluxQLQuery,
    convert_influxql_response,
    expand_macros,
    frame_name,
    plan_influxql,
)
from gateway.query.request import QueryRequestError, parse_query_request
from gateway.query.timerange import TimeRange

from .frames import TIME


def influx_query(**overrides: Any) -> InfluxQLQuery:
    values: dict[str, Any] = {
        "ref_id": "A",
        "raw_query": "select_multiple values from cpu grouped by a tag",
        "interval_ns": 10 * d.SECOND,
        "alias": "",
        "result_format": "time_series",
        "policy": "default",
    }
    return InfluxQLQuery(**{**values, **overrides})


ANSWER = {
    "results": [
        {
            "statement_id": 0,
            "series": [
                {
                    "name": "cpu",
                    "tags": {"cpu": "cpu-total"},
                    "columns": ["time", "usage_iowait", "usage_idle"],
                    "values": [
                        [1698605930000, 0.02010454362684515, 98.59268194621318],
                        [1698605940000, 0.02013693113161679, 97.88562223108454],
                    ],
                }
            ],
        }
    ]
}


def nullable_float(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "number",
        "typeInfo": {"frame": "float64", "nullable": True},
        **extra,
    }


def test_group_by_tag_golden() -> None:
    result = convert_influxql_response(orjson.dumps(ANSWER), 200, influx_query())
    frames = [frame_dict(f) for f in result.frames or []]
    assert frames == [
        {
            "schema": {
                "name": "cpu.usage_iowait { cpu: cpu-total }",
                "meta": {
                    "typeVersion": [0, 0],
                    "preferredVisualisationType": "graph",
                    "executedQueryString": "select_multiple values from cpu grouped by a tag",
                },
                "fields": [
                    TIME,
                    nullable_float(
                        "Value",
                        labels={"cpu": "cpu-total"},
                        config={"displayNameFromDS": "cpu.usage_iowait { cpu: cpu-total }"},
                    ),
                ],
            },
            "data": {
                "values": [
                    [1698605930000, 1698605940000],
                    [0.02010454362684515, 0.02013693113161679],
                ]
            },
        },
        {
            "schema": {
                "name": "cpu.usage_idle { cpu: cpu-total }",
                "fields": [
                    TIME,
                    nullable_float(
                        "Value",
                        labels={"cpu": "cpu-total"},
                        config={"displayNameFromDS": "cpu.usage_idle { cpu: cpu-total }"},
                    ),
                ],
            },
            "data": {
                "values": [[1698605930000, 1698605940000], [98.59268194621318, 97.88562223108454]]
            },
        },
    ]


def test_table_format_and_nulls() -> None:
    answer = {
        "results": [
            {
                "series": [
                    {
                        "name": "cpu",
                        "tags": {"host": "a"},
                        "columns": ["time", "v", "s"],
                        "values": [[1, None, "x"], [2, 3, None]],
                    }
                ]
            }
        ]
    }
    result = convert_influxql_response(
        orjson.dumps(answer), 200, influx_query(result_format="table")
    )
    (frame,) = [frame_dict(f) for f in result.frames or []]
    assert [f["name"] for f in frame["schema"]["fields"]] == ["Time", "host", "v", "s"]
    assert frame["data"]["values"] == [[1, 2], ["a", "a"], [None, 3], ["x", None]]
    assert frame["schema"]["meta"]["preferredVisualisationType"] == "table"


def test_errors() -> None:
    failed = convert_influxql_response(b'{"error":"database not found: x"}', 404, influx_query())
    assert (failed.error, failed.status) == ("InfluxDB returned error: database not found: x", 404)
    statement = {"results": [{"statement_id": 0, "error": "error parsing query"}]}
    assert convert_influxql_response(orjson.dumps(statement), 200, influx_query()).error == (
        "error parsing query"
    )


def test_alias_patterns() -> None:
    q = influx_query(alias="$m $col [[tag_cpu]] $1 $__interval $nope")
    assert frame_name("cpu.x", "usage", {"cpu": "c0"}, q) == "cpu.x usage c0 x 10s $nope"


def test_macros() -> None:
    tr = TimeRange(1000, 2000)
    text = expand_macros(
        "WHERE $timeFilter AND $__timeFilter "
        "GROUP BY time($__interval), time($interval) $__interval_ms",
        tr,
        90 * d.SECOND,
    )
    assert text == (
        "WHERE time >= 1000ms and time <= 2000ms AND time >= 1000ms and time <= 2000ms "
        "GROUP BY time(1m), time(1m) 90000"
    )


def plan(model: dict[str, Any], json_data: dict[str, Any]) -> Any:
    request = parse_query_request(
        {"from": "1000", "to": "2000", "queries": [{"datasource": {"uid": "i"}, **model}]},
        datetime(2024, 5, 15, tzinfo=UTC),
    )
    return plan_influxql(request.queries[0], request.time_range, "telegraf", json_data)


def test_plan_get_and_post() -> None:
    model = {"query": "SELECT 1 WHERE $timeFilter", "rawQuery": True, "policy": "week"}
    (get,) = plan(model, {}).requests
    assert (get.method, get.path) == ("GET", "query")
    assert get.params == (
        ("db", "telegraf"),
        ("epoch", "ms"),
        ("q", "SELECT 1 WHERE time >= 1000ms and time <= 2000ms"),
        ("rp", "week"),
    )
    (post,) = plan(model, {"httpMode": "POST"}).requests
    assert post.params == (("db", "telegraf"), ("epoch", "ms"), ("rp", "week"))
    assert parse_qsl(post.body.decode()) == [
        ("q", "SELECT 1 WHERE time >= 1000ms and time <= 2000ms")
    ]


def test_builder_queries_need_a_measurement() -> None:
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.measurement: required"):
        plan({"select": [[{"type": "field", "params": ["value"]}]]}, {})

"""Prometheus frames against Grafana's golden files, and the requests Grafana sends.

Expected frames are copied from grafana/grafana:
- pkg/promlib/testdata/range_simple.result.golden.jsonc (the full querydata path: dataplane
  names, interval and displayNameFromDS config, executedQueryString);
- pkg/promlib/converter/testdata/prom-{vector,scalar,string,matrix-with-nans,
  warnings-no-data}-frame.jsonc (the converter alone; the tests strip what response.go adds).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from gateway.query import durations as d
from gateway.query.exchange import UpstreamResponse
from gateway.query.frames import frame_dict
from gateway.query.prometheus import (
    PrometheusQuery,
    convert_prometheus_response,
    interpolate_variables,
    plan_prometheus,
)
from gateway.query.promstyle import _read_matrix_fast, read_prom_style
from gateway.query.request import ParsedQuery, QueryRequestError, parse_query_request
from gateway.query.timerange import TimeRange

from .frames import TIME, float_field, string_field


def query(expr: str = "", step_s: int = 1, legend: str = "") -> PrometheusQuery:
    return PrometheusQuery(
        ref_id="A",
        expr=expr,
        step_ns=step_s * d.SECOND,
        start_ms=0,
        end_ms=0,
        utc_offset_s=0,
        range=True,
        instant=False,
        legend_format=legend,
        format="time_series",
    )


def frames_of(body: Any, q: PrometheusQuery) -> list[dict[str, Any]]:
    result = convert_prometheus_response(orjson.dumps(body), 200, q)
    assert result.error is None
    return [frame_dict(frame) for frame in result.frames or []]


def test_range_simple_golden() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {
                    "metric": {
                        "__name__": "prometheus_http_requests_total",
                        "code": "200",
                        "handler": "/api/v1/query_range",
                        "job": "prometheus",
                    },
                    "values": [
                        [1641889530.123, "21"],
                        [1641889531.123, "32"],
                        [1641889532.123, "43"],
                    ],
                },
                {
                    "metric": {
                        "__name__": "prometheus_http_requests_total",
                        "code": "400",
                        "handler": "/api/v1/query_range",
                        "job": "prometheus",
                    },
                    "values": [[1641889529.123, "54"], [1641889532.123, "76"]],
                },
            ],
        },
    }
    name = (
        'prometheus_http_requests_total{code="%s", handler="/api/v1/query_range", job="prometheus"}'
    )
    labels = {
        "__name__": "prometheus_http_requests_total",
        "handler": "/api/v1/query_range",
        "job": "prometheus",
    }
    meta = {"type": "timeseries-multi", "typeVersion": [0, 1], "custom": {"resultType": "matrix"}}
    time_field = {**TIME, "config": {"interval": 1000}}
    assert frames_of(body, query()) == [
        {
            "schema": {
                "meta": {**meta, "executedQueryString": "Expr: \nStep: 1s"},
                "fields": [
                    time_field,
                    float_field(
                        "prometheus_http_requests_total",
                        labels={**labels, "code": "200"},
                        config={"displayNameFromDS": name % "200"},
                    ),
                ],
            },
            "data": {"values": [[1641889530123, 1641889531123, 1641889532123], [21, 32, 43]]},
        },
        {
            "schema": {
                "meta": meta,
                "fields": [
                    time_field,
                    float_field(
                        "prometheus_http_requests_total",
                        labels={**labels, "code": "400"},
                        config={"displayNameFromDS": name % "400"},
                    ),
                ],
            },
            "data": {"values": [[1641889529123, 1641889532123], [54, 76]]},
        },
    ]


def converter_frames(body: Any) -> list[dict[str, Any]]:
    return [frame_dict(f) for f in read_prom_style(orjson.dumps(body), dataplane=True).frames]


def test_vector_golden_with_special_values() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {
                    "metric": {"__name__": "up", "job": "prometheus", "instance": "localhost:9090"},
                    "value": [1435781451.781, "1"],
                },
                {"metric": {"level": "error", "location": "moon"}, "value": [1645029699, "+Inf"]},
                {"metric": {"level": "debug", "location": "moon"}, "value": [1645029699, "NaN"]},
            ],
        },
    }
    meta = {"type": "numeric-multi", "typeVersion": [0, 1], "custom": {"resultType": "vector"}}
    frames = converter_frames(body)
    assert frames[0] == {
        "schema": {
            "meta": meta,
            "fields": [
                TIME,
                float_field(
                    "Value",
                    labels={"__name__": "up", "instance": "localhost:9090", "job": "prometheus"},
                ),
            ],
        },
        "data": {"values": [[1435781451781], [1]]},
    }
    assert frames[1]["data"] == {
        "values": [[1645029699000], [None]],
        "entities": [None, {"Inf": [0]}],
    }
    assert frames[2]["data"]["entities"] == [None, {"NaN": [0]}]


def test_matrix_with_nans_golden() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {
                    "metric": {"handler": "/api/v1/query_range", "job": "prometheus"},
                    "values": [[1641889530, "+Inf"], [1641889531, "NaN"], [1641889532, "-Inf"]],
                }
            ],
        },
    }
    (frame,) = converter_frames(body)
    assert frame["data"] == {
        "values": [[1641889530000, 1641889531000, 1641889532000], [None, None, None]],
        "entities": [None, {"NaN": [1], "Inf": [0], "NegInf": [2]}],
    }


def test_scalar_and_string_goldens() -> None:
    scalar = {
        "status": "success",
        "data": {"resultType": "scalar", "result": [1651680139.104, "2.482e-05"]},
    }
    assert converter_frames(scalar) == [
        {
            "schema": {
                "meta": {
                    "type": "numeric-multi",
                    "typeVersion": [0, 1],
                    "custom": {"resultType": "scalar"},
                },
                "fields": [TIME, float_field("Value", labels={})],
            },
            "data": {"values": [[1651680139104], [0.00002482]]},
        }
    ]
    string = {
        "status": "success",
        "data": {"resultType": "string", "result": [1651680139.104, "example"]},
    }
    assert converter_frames(string) == [
        {
            "schema": {
                "meta": {
                    "type": "timeseries-multi",
                    "typeVersion": [0, 0],
                    "custom": {"resultType": "string"},
                },
                "fields": [TIME, string_field("Value", labels={})],
            },
            "data": {"values": [[1651680139104], ["example"]]},
        }
    ]


def test_warnings_without_data_golden() -> None:
    body = {
        "status": "success",
        "warnings": ["warning 1", "warning 2"],
        "data": {"resultType": "matrix", "result": []},
    }
    assert converter_frames(body) == [
        {
            "schema": {
                "name": "Warnings",
                "meta": {
                    "typeVersion": [0, 0],
                    "notices": [
                        {"severity": "warning", "text": "warning 1"},
                        {"severity": "warning", "text": "warning 2"},
                    ],
                },
                "fields": [],
            },
            "data": {"values": []},
        }
    ]


def test_fast_and_full_readers_agree() -> None:
    body = orjson.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "matrix",
                "result": [
                    {"metric": {"a": 'q"uo}te{', "b": "ü"}, "values": [[1.5, "1e3"], [2, "-0.25"]]},
                    {"metric": {}, "values": []},
                ],
            },
            "warnings": ["w"],
        }
    )
    assert _read_matrix_fast(body, dataplane=True) is not None
    fast = [frame_dict(f) for f in read_prom_style(body, dataplane=True).frames]
    spaced = body.replace(b",", b" , ").replace(b":", b" : ")
    again = [frame_dict(f) for f in read_prom_style(spaced, dataplane=True).frames]
    # "values" before "metric": not the shape the fast path knows, so the full reader runs
    reordered = body.replace(b'{"metric":{},"values":[]}', b'{"values":[],"metric":{}}')
    assert _read_matrix_fast(reordered, dataplane=True) is None
    full = [frame_dict(f) for f in read_prom_style(reordered, dataplane=True).frames]
    assert fast == again == full
    assert fast[0]["data"]["values"] == [[1500, 2000], [1000.0, -0.25]]
    assert fast[0]["schema"]["meta"]["notices"] == [{"severity": "warning", "text": "w"}]


def test_error_answer_keeps_a_frame_with_the_executed_query() -> None:
    body = {"status": "error", "errorType": "bad_data", "error": 'invalid parameter "query"'}
    result = convert_prometheus_response(orjson.dumps(body), 400, query("up(", 15))
    assert result.error == 'bad_data: invalid parameter "query"'
    assert result.status == 400
    assert [frame_dict(f) for f in result.frames or []] == [
        {
            "schema": {
                "meta": {"typeVersion": [0, 0], "executedQueryString": "Expr: up(\nStep: 15s"},
                "fields": [],
            },
            "data": {"values": []},
        }
    ]


def test_legend_formats() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"__name__": "up", "job": "node"}, "value": [1, "1"]}],
        },
    }

    def name(legend: str) -> Any:
        return frames_of(body, query("up", legend=legend))[0]["schema"]["fields"][1].get("config")

    assert name("") == {"displayNameFromDS": 'up{job="node"}'}
    assert name("{{job}} / {{ missing }}") == {"displayNameFromDS": "node / "}
    assert name("__auto") is None  # labels present: Grafana leaves the name to the frontend


def parsed(
    model: dict[str, Any], range_: tuple[str, str] = ("1715774400000", "1715778000000")
) -> tuple[ParsedQuery, TimeRange]:
    from datetime import UTC, datetime

    request = parse_query_request(
        {"from": range_[0], "to": range_[1], "queries": [{"datasource": {"uid": "p"}, **model}]},
        datetime(2024, 5, 15, tzinfo=UTC),
    )
    return request.queries[0], request.time_range


def test_plan_range_query_post_form() -> None:
    q, tr = parsed(
        {"expr": "rate(x[$__rate_interval])", "intervalMs": 15000, "maxDataPoints": 1000}
    )
    plan = plan_prometheus(q, tr, {"timeInterval": "15s"})
    (request,) = plan.requests
    assert (request.method, request.path) == ("POST", "api/v1/query_range")
    assert request.headers == (("Content-Type", "application/x-www-form-urlencoded"),)
    # step: max(3600s/1000 -> 3.6s below the 15s min -> 15s, safe 0.33s) = 15s
    assert parse_qsl(request.body.decode()) == [
        ("end", "1715778000"),
        ("query", "rate(x[1m0s])"),  # $__rate_interval = max(15s + 15s, 4 * 15s)
        ("start", "1715774400"),
        ("step", "15"),
    ]
    answer = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    result = plan.convert([UpstreamResponse(200, orjson.dumps(answer))])
    assert result.status == 200
    assert frame_dict((result.frames or [])[0])["schema"]["meta"]["executedQueryString"] == (
        "Expr: rate(x[1m0s])\nStep: 15s"
    )


def test_plan_instant_and_range_get() -> None:
    q, tr = parsed({"expr": "up", "instant": True, "range": True, "intervalMs": 60000})
    plan = plan_prometheus(q, tr, {"httpMethod": "GET", "queryTimeout": "30s"})
    instant, ranged = plan.requests
    assert (instant.method, instant.path) == ("GET", "api/v1/query")
    assert instant.params == (("query", "up"), ("time", "1715778000"), ("timeout", "30s"))
    assert ranged.path == "api/v1/query_range"
    assert dict(ranged.params)["step"] == "60"


def test_plan_aligns_range_to_step() -> None:
    q, tr = parsed({"expr": "up", "intervalMs": 60000}, ("1715774430500", "1715778059999"))
    (request,) = plan_prometheus(q, tr, {}).requests
    form = dict(parse_qsl(request.body.decode()))
    assert (form["start"], form["end"]) == ("1715774400", "1715778000")


def test_plan_validation_names_fields() -> None:
    q, tr = parsed({"instant": "yes", "expr": "up"})
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.instant"):
        plan_prometheus(q, tr, {})
    q, tr = parsed({"format": "graph", "expr": "up"})
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.format: must be one of"):
        plan_prometheus(q, tr, {})
    q, tr = parsed({})
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.expr: required"):
        plan_prometheus(q, tr, {})


def test_interpolate_variables() -> None:
    text = interpolate_variables(
        "$__interval $__interval_ms ${__range} $__range_s $__range_ms $__rate_interval_ms",
        query_interval_ns=15 * d.SECOND,
        calculated_step=30 * d.SECOND,
        requested_min_step="",
        scrape_interval="15s",
        range_ns=d.HOUR,
    )
    assert text == "30s 30000 3600s 3600 3600000 60000"


def test_the_matrix_fast_path_reads_pairs_only() -> None:
    """Points that are not [time, "value"] pairs leave the fast path to the full reader."""

    def matrix(values: str) -> bytes:
        head = b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":'
        return head + values.encode() + b"}]}}"

    def fast_columns(values: str) -> tuple[list[int], list[float]]:
        answer = _read_matrix_fast(matrix(values), dataplane=True)
        assert answer is not None
        (frame,) = answer.frames
        return list(frame.fields[0].values), list(frame.fields[1].values)

    assert fast_columns('[[1.5,"2"],[3,"4e3"]]') == ([1500, 3000], [2, 4000])
    assert fast_columns("[]") == ([], [])
    # whole seconds are made milliseconds in the text; zero, negative or fractional seconds
    # go through timeFromFloat's arithmetic
    assert fast_columns('[[0,"1"],[15,"2.5"]]') == ([0, 15000], [1, 2.5])
    assert fast_columns('[[-15,"1"],[10,"-2"]]') == ([-15000, 10000], [1, -2])
    assert fast_columns('[[1700000000,"1"],[1700000015,"0.5"]]') == (
        [1700000000000, 1700000015000],
        [1, 0.5],
    )
    odd_values = (
        "[[1],[2,3,4]]",
        '[[1,"2",3]]',
        '[[1,"x"]]',
        '[ [1, "2"] ]',
        '[[1,"2"],[2,"3","4"]]',
        '[[1,"2"],[true,"3"]]',
        '[[1,"null"]]',
        '[[{},"1"]]',
        '[["1",2]]',
        '[[1,"2,3"]]',
    )
    for odd in odd_values:
        assert _read_matrix_fast(matrix(odd), dataplane=True) is None, odd
    (spaced,) = read_prom_style(matrix('[ [1, "2"] ]'), dataplane=True).frames
    assert list(spaced.fields[1].values) == [2]

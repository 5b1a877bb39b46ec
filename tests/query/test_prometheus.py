"""Prometheus frames against Grafana's golden files, and the requests Grafana sends.

Expected frames are copied from grafana/grafana:
- pkg/promlib/testdata/range_simple.result.golden.jsonc (the full querydata path: dataplane
  names, interval and displayNameFromDS config, executedQueryString);
- pkg/promlib/converter/testdata/prom-{vector,scalar,string,matrix-with-nans,
  warnings-no-data}-frame.jsonc (the converter alone; the tests strip what response.go adds).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from gateway.query import durations as d
from gateway.query.exchange import UpstreamResponse
from gateway.query.frames import frame_dict, frame_json
from gateway.query.prometheus import (
    PrometheusQuery,
    convert_prometheus_response,
    interpolate_variables,
    plan_prometheus,
)
from gateway.query.promstyle import MatrixFeed, _read_matrix_fast, read_prom_style
from gateway.query.request import ParsedQuery, QueryRequestError, parse_query_request
from gateway.query.timerange import TimeRange

from .frames import TIME, float_field, string_field


def query(
    expr: str = "", step_s: int = 1, legend: str = "", *, exemplar: bool = False
) -> PrometheusQuery:
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
        exemplar=exemplar,
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


@pytest.mark.parametrize(
    ("result_type", "result", "frame_type", "type_version", "value_field", "value"),
    [
        pytest.param(
            "scalar",
            [1651680139.104, "2.482e-05"],
            "numeric-multi",
            [0, 1],
            float_field("Value", labels={}),
            0.00002482,
            id="scalar",
        ),
        pytest.param(
            "string",
            [1651680139.104, "example"],
            "timeseries-multi",
            [0, 0],
            string_field("Value", labels={}),
            "example",
            id="string",
        ),
    ],
)
def test_scalar_and_string_goldens(
    result_type: str,
    result: list[Any],
    frame_type: str,
    type_version: list[int],
    value_field: dict[str, Any],
    value: Any,
) -> None:
    body = {"status": "success", "data": {"resultType": result_type, "result": result}}
    assert converter_frames(body) == [
        {
            "schema": {
                "meta": {
                    "type": frame_type,
                    "typeVersion": type_version,
                    "custom": {"resultType": result_type},
                },
                "fields": [TIME, value_field],
            },
            "data": {"values": [[1651680139104], [value]]},
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
        '[[1,"2"],[2,"3","4"]]',
        '[[1,"2"],[true,"3"]]',
        '[[1,"null"]]',
        '[[{},"1"]]',
        '[["1",2]]',
        '[[1,"2,3"]]',
    )
    for odd in odd_values:
        assert _read_matrix_fast(matrix(odd), dataplane=True) is None, odd
    # spaced out: not Prometheus' own spelling, but pairs still, read point by point
    assert fast_columns('[ [1, "2"] ]') == ([1000], [2])
    (spaced,) = read_prom_style(matrix('[ [1, "2"] ]'), dataplane=True).frames
    assert list(spaced.fields[1].values) == [2]


def test_the_matrix_fast_path_keeps_prometheus_numbers_and_shares_a_time_grid() -> None:
    """Values go out as the text Prometheus wrote (its strconv 'f' spelling is the SDK's
    WriteFloat64 spelling between 1e-6 and 1e21: "895", not "895.0"); series on one regular
    grid of whole seconds share one time column; times off the grid are read one by one."""

    def matrix(*series: str) -> bytes:
        listed = ",".join(f'{{"metric":{{"i":"{i}"}},"values":{v}}}' for i, v in enumerate(series))
        return (
            b'{"status":"success","data":{"resultType":"matrix","result":['
            + listed.encode()
            + b"]}}"
        )

    on_grid = '[[1700000000,"895"],[1700000015,"0.000001"],[1700000030,"-12.5"]]'
    answer = _read_matrix_fast(matrix(on_grid, on_grid, '[[1700000000,"1"]]'), dataplane=True)
    assert answer is not None
    first, second, single = answer.frames
    assert first.fields[0].values is second.fields[0].values
    assert frame_json(first).endswith(
        b'"data":{"values":[[1700000000000,1700000015000,1700000030000],[895,0.000001,-12.5]]}}'
    )
    assert list(single.fields[0].values) == [1700000000000]
    cases = {
        '[[15,"1"],[45,"2"],[60,"3"]]': [15000, 45000, 60000],  # a gap
        '[[60,"1"],[45,"2"]]': [60000, 45000],  # backwards
        '[[15,"1"],[30.5,"2"],[46,"3"]]': [15000, 30500, 46000],  # a fraction
        '[[15,"1"],[3e1,"2"],[45,"3"]]': [15000, 30000, 45000],  # another spelling
        '[[-30,"1"],[-15,"2"],[0,"3"]]': [-30000, -15000, 0],
        '[[9007199254741,"1"],[9007199254742,"2"]]': [9007199254741000, 9007199254742000],
    }
    for values, times in cases.items():
        answer = _read_matrix_fast(matrix(values), dataplane=True)
        assert answer is not None, values
        assert list(answer.frames[0].fields[0].values) == times, values
        assert list(answer.frames[0].fields[1].values) == [1, 2, 3][: len(times)], values
    # numbers JSON cannot spell as Prometheus wrote them: read as Go's ParseFloat reads them
    for text, number in (("+1", 1.0), (".5", 0.5), ("01", 1.0), ("1.", 1.0)):
        answer = _read_matrix_fast(matrix(f'[[1,"{text}"]]'), dataplane=True)
        assert answer is not None, text
        assert list(answer.frames[0].fields[1].values) == [number], text
    # pieces cut elsewhere: the time pieces joined would read as the grid [1, 2]
    off_grid = ('[[1,],["5"2,"6"]]', '[[1,],[2,"5""6"]]', '[[1,],["5"2,"6"],[3,"7"]]')
    for odd in ('[[1,""]]', '[[1,"1e"]]', '[[1,"1}"]]', '[[1,"--1"]]', '[[1,"1,2"]]', *off_grid):
        assert _read_matrix_fast(matrix(odd), dataplane=True) is None, odd


def exemplar_query(step_s: int) -> PrometheusQuery:
    return query("rpc_seconds_bucket", step_s, exemplar=True)


def test_stddev_sampler_golden() -> None:
    """grafana/grafana pkg/promlib/querydata/exemplar/testdata/stddev_sampler.jsonc: one
    exemplar a second for 100,000 s, each valued its own second, a 10-minute step: per bucket
    only the highest is kept (the others are far less than two standard deviations lower)."""
    exemplars = [
        {"labels": {}, "value": str(second), "timestamp": second} for second in range(100_000)
    ]
    body = {"status": "success", "data": [{"seriesLabels": {}, "exemplars": exemplars}]}
    result = convert_prometheus_response(orjson.dumps(body), 200, exemplar_query(600))
    (frame,) = [frame_dict(f) for f in result.frames or []]
    assert frame["schema"]["name"] == "exemplar"
    assert frame["schema"]["fields"] == [TIME, float_field("Value")]
    expected_seconds = [*range(599, 100_000, 600), 99_999]
    assert len(expected_seconds) == 167
    times, values = frame["data"]["values"]
    assert times == [second * 1000 for second in expected_seconds]
    assert values == expected_seconds


def test_exemplar_frame_merges_series_and_exemplar_labels() -> None:
    """The shape of Prometheus' /api/v1/query_exemplars answer (Prometheus docs, "Querying
    exemplars"), two series: one frame, label fields sorted, an exemplar's label field over
    its series' label, "" where neither has it; within a bucket a lower exemplar is kept only
    more than two standard deviations below the last kept one."""
    body = {
        "status": "success",
        "data": [
            {
                "seriesLabels": {"__name__": "rpc_total", "job": "api", "service": "bar"},
                "exemplars": [
                    {
                        "labels": {"trace_id": "EpTxMJ40fUus7aGY"},
                        "value": "6",
                        "timestamp": 1600096945.479,
                    },
                    {"labels": {"trace_id": "low"}, "value": "5", "timestamp": 1600096945.9},
                ],
            },
            {
                "seriesLabels": {"__name__": "rpc_total", "job": "api", "service": "foo"},
                "exemplars": [
                    {
                        "labels": {"trace_id": "Olp9XHlq763ccsfa", "span": "1"},
                        "value": "100",
                        "timestamp": 1600096955.479,
                    },
                    {"labels": {"job": "override"}, "value": "1", "timestamp": 1600096955.6},
                ],
            },
        ],
    }
    result = convert_prometheus_response(orjson.dumps(body), 200, exemplar_query(1))
    assert result.error is None
    (frame,) = [frame_dict(f) for f in result.frames or []]
    names = ["__name__", "job", "service", "span", "trace_id"]
    assert frame["schema"]["fields"] == [TIME, float_field("Value"), *map(string_field, names)]
    assert frame["schema"]["meta"]["custom"] == {"resultType": "exemplar"}
    # mean 28, standard deviation ~48: 6 -> 5 is no outlier (dropped), 100 -> 1 is (kept)
    assert frame["data"]["values"] == [
        [1600096945479, 1600096955479, 1600096955600],
        [6, 100, 1],
        ["rpc_total", "rpc_total", "rpc_total"],
        # Grafana's framer quirk, kept: a label one exemplar of a series has is "" (not the
        # series' value) for the series' other exemplars
        ["api", "", "override"],
        ["bar", "foo", "foo"],
        ["", "1", ""],
        ["EpTxMJ40fUus7aGY", "Olp9XHlq763ccsfa", ""],
    ]


def test_exemplar_request_and_its_failure_is_ignored() -> None:
    request = parse_query_request(
        {
            "from": "1700000000000",
            "to": "1700000600000",
            "queries": [
                {"datasource": {"uid": "p"}, "expr": "up", "exemplar": True, "interval": "1m"}
            ],
        },
        datetime(2024, 5, 15, tzinfo=UTC),
    )
    plan = plan_prometheus(request.queries[0], request.time_range, {"httpMethod": "GET"})
    ranged, exemplars = plan.requests
    assert ranged.path == "api/v1/query_range"
    assert exemplars.path == "api/v1/query_exemplars"
    assert exemplars.params == (("end", "1700000580"), ("query", "up"), ("start", "1699999980"))
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    broken = {"status": "error", "errorType": "bad_data", "error": "exemplars off"}
    result = plan.convert(
        [UpstreamResponse(200, orjson.dumps(matrix)), UpstreamResponse(400, orjson.dumps(broken))]
    )
    assert (result.error, result.status) == (None, 200)
    # an exemplar query answers no empty frame for no data (response.go: !q.ExemplarQuery)
    assert result.frames == []


HISTOGRAM_BUCKETS = [
    [0, "0.000004536465129862675", "0.000004947050303081549", "0.0912281686682326"],
    [0, "0.000004947050303081549", "0.000005394796609394436", "1.5052655709601983"],
    [3, "-0.001", "0.001", "0"],
]


def test_native_histogram_golden() -> None:
    """grafana/grafana pkg/promlib/converter/testdata/prom-matrix-histogram-no-labels.json and
    its -frame.jsonc, trimmed to two samples of three buckets (the third bucket, with boundary
    rule 3 and a zero count, is from Prometheus' docs on the native histogram format)."""
    histogram = {
        "count": "316.9547490576795",
        "sum": "3.5039780556575875",
        "buckets": HISTOGRAM_BUCKETS,
    }
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {}, "histograms": [[1649963300, histogram], [1649963400, histogram]]}
            ],
        },
    }
    (frame,) = read_prom_style(orjson.dumps(body), dataplane=True).frames
    assert frame_dict(frame) == {
        "schema": {
            "meta": {"type": "heatmap-cells", "typeVersion": [0, 0]},
            "fields": [
                {"name": "xMax", "type": "time", "typeInfo": {"frame": "time.Time"}},
                float_field("yMin", labels={}),
                float_field("yMax"),
                float_field("count"),
                {"name": "yLayout", "type": "number", "typeInfo": {"frame": "int8"}},
            ],
        },
        "data": {
            "values": [
                [1649963300000] * 3 + [1649963400000] * 3,
                [4.536465129862675e-06, 4.947050303081549e-06, -0.001] * 2,
                [4.947050303081549e-06, 5.394796609394436e-06, 0.001] * 2,
                [0.0912281686682326, 1.5052655709601983, 0.0] * 2,
                [0, 0, 3] * 2,
            ]
        },
    }


def test_native_histogram_through_the_prometheus_response() -> None:
    """response.go then names the second field (yMin) as dataplane names a value field."""
    histogram = {"count": "2", "sum": "0.5", "buckets": HISTOGRAM_BUCKETS[:1]}
    metric = {"__name__": "rpc_seconds", "job": "api"}
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": metric, "histogram": [1649963300.5, histogram]}],
        },
    }
    (frame,) = frames_of(body, query("rpc_seconds", 15))
    fields = frame["schema"]["fields"]
    assert fields[0]["config"] == {"interval": 15000}
    assert fields[1] == float_field(
        "rpc_seconds", labels=metric, config={"displayNameFromDS": 'rpc_seconds{job="api"}'}
    )
    assert frame["data"]["values"][0] == [1649963300500]
    for broken in (
        [[1, histogram]],
        [1, {"buckets": [[0, "a", "1", "1"]]}],
        [1, {"buckets": [[9000, "0", "1", "1"]]}],
    ):
        body["data"]["result"][0]["histogram"] = broken  # type: ignore[index]
        result = convert_prometheus_response(orjson.dumps(body), 200, query("x", 15))
        assert result.error is not None, broken


def test_the_matrix_feed_converts_series_as_the_body_arrives() -> None:
    """Fed in chunks of any size (labels holding "]]" and braces included), the feed gives the
    same frames as reading the whole body; series are converted before the body is complete,
    and the feed holds no more than about one series' text."""
    values = [[1_700_000_000 + 15 * i, str(i * 0.5)] for i in range(200)]
    body = orjson.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "matrix",
                "result": [
                    {"metric": {"__name__": "up", "odd": 'a]]b}{"'}, "values": values},
                    {"metric": {"job": "x"}, "values": [[1.5, "NaN"], [3, "+Inf"]]},
                    {"metric": {"job": "y"}, "values": values},
                ],
                "stats": {"seriesFetched": "3"},
            },
            "warnings": ["w"],
        }
    )
    expected = [frame_dict(f) for f in read_prom_style(body, dataplane=True).frames]
    for size in (1, 7, 100, 4096, len(body)):
        feed = MatrixFeed(dataplane=True)
        largest_buffer = 0
        converted_early = False
        for offset in range(0, len(body), size):
            feed.feed(body[offset : offset + size])
            largest_buffer = max(largest_buffer, len(feed._buffer))
            converted_early |= bool(feed._frames) and offset + size < len(body) // 2
        answer = feed.finish(body)  # the feed's own answer, not the full reader's
        assert answer is not None, size
        assert [frame_dict(f) for f in answer.frames] == expected, size
        assert largest_buffer <= len(orjson.dumps(values)) + 200 + size
        if size < 4096:
            assert converted_early, size


def test_the_matrix_feed_leaves_other_answers_to_the_full_reader() -> None:
    vector = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "2"]}]},
    }
    error = {"status": "error", "errorType": "bad_data", "error": "no"}
    truncated = orjson.dumps(
        {
            "status": "success",
            "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "2"]]}]},
        }
    )[:-3]
    for body in (orjson.dumps(vector), orjson.dumps(error), truncated, b"x" * 70_000):
        feed = MatrixFeed(dataplane=True)
        feed.feed(body)
        assert feed.finish(body) is None
    feed = MatrixFeed(dataplane=True)
    feed.feed(orjson.dumps(vector))
    (frame,) = read_prom_style(orjson.dumps(vector), dataplane=True, feed=feed).frames
    assert frame_dict(frame)["data"]["values"] == [[1000], [2.0]]


def test_the_matrix_feed_gives_up_on_a_head_that_never_ends() -> None:
    """A label that never closes, full of "]]": the feed stops past its head limit instead of
    matching a growing head again for every chunk."""
    feed = MatrixFeed(dataplane=True)
    feed.feed(b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"')
    for _ in range(40):
        feed.feed(b"]]" * 2048)
    assert feed._failed
    assert feed.finish(b"") is None

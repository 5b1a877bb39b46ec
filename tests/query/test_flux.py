"""Flux: annotated CSV against Grafana's golden, macros and the request.

Expected frame from grafana/grafana pkg/tsdb/influxdb/flux/testdata/simple.golden.jsonc (input
testdata/simple.csv). Delta from the older golden: its `meta` is `{}`; Grafana's executor.go
sets `executedQueryString` on the first frame, and the modern SDK always writes `typeVersion`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.query import durations as d
from gateway.query.exchange import UpstreamResponse
from gateway.query.flux import (
    FluxQuery,
    convert_flux_response,
    interpolate,
    plan_flux,
    rfc3339_nano,
)
from gateway.query.frames import frame_dict
from gateway.query.request import parse_query_request
from gateway.query.timerange import TimeRange

SIMPLE_CSV = (
    "#datatype,string,long,dateTime:RFC3339,dateTime:RFC3339,dateTime:RFC3339,double,string,string,string,string\n"
    "#group,false,false,true,true,false,false,true,true,true,true\n"
    "#default,_result,,,,,,,,,\n"
    ",result,table,_start,_stop,_time,_value,_field,_measurement,a,b\n"
    ",,0,2020-02-17T22:19:49.747562847Z,2020-02-18T22:19:49.747562847Z,2020-02-18T10:34:08.135814545Z,1.4,f,test,1,adsfasdf\n"
    ",,0,2020-02-17T22:19:49.747562847Z,2020-02-18T22:19:49.747562847Z,2020-02-18T22:08:44.850214724Z,6.6,f,test,1,adsfasdf\n"
)


def flux_query(max_points: int = 1000) -> FluxQuery:
    return FluxQuery(ref_id="A", flux='from(bucket: "b")', max_points=max_points, max_series=2)


def test_simple_golden() -> None:
    result = convert_flux_response(SIMPLE_CSV.encode(), 200, flux_query())
    assert [frame_dict(f) for f in result.frames or []] == [
        {
            "schema": {
                "name": "test",
                "meta": {"typeVersion": [0, 0], "executedQueryString": 'from(bucket: "b")'},
                "fields": [
                    {
                        "name": "Time",
                        "type": "time",
                        "typeInfo": {"frame": "time.Time", "nullable": True},
                    },
                    {
                        "name": "f",
                        "type": "number",
                        "typeInfo": {"frame": "float64", "nullable": True},
                        "labels": {"a": "1", "b": "adsfasdf"},
                    },
                ],
            },
            "data": {"values": [[1582022048135, 1582063724850], [1.4, 6.6]]},
        }
    ]


def test_tables_split_and_limits() -> None:
    two_tables = SIMPLE_CSV + SIMPLE_CSV.splitlines()[-1].replace(",,0,", ",,1,") + "\n"
    result = convert_flux_response(two_tables.encode(), 200, flux_query())
    assert len(result.frames or []) == 2
    assert result.error is None
    too_many = convert_flux_response(SIMPLE_CSV.encode(), 200, flux_query(max_points=1))
    assert too_many.error == "returned too many points in a series: 1"


def test_table_without_measurement_keeps_columns() -> None:
    csv = (
        "#datatype,string,long,string,long\n#group,false,false,true,false\n"
        "#default,_result,,,\n,result,table,name,n\n,,0,x,3\n"
    )
    (frame,) = [
        frame_dict(f) for f in convert_flux_response(csv.encode(), 200, flux_query()).frames or []
    ]
    assert [f["name"] for f in frame["schema"]["fields"]] == ["result", "table", "name", "n"]
    assert frame["data"]["values"] == [["_result"], [0], ["x"], [3]]


def test_errors() -> None:
    failed = convert_flux_response(
        b'{"code":"invalid","message":"compilation failed"}', 400, flux_query()
    )
    assert (failed.error, failed.status) == ("compilation failed", 400)
    assert frame_dict((failed.frames or [])[0])["schema"]["meta"]["executedQueryString"]
    in_csv = "#datatype,string,string\n#group,true,true\n#default,,\n,error,reference\n,boom,897\n"
    assert convert_flux_response(in_csv.encode(), 200, flux_query()).error == "boom"


def test_macros_as_grafana_rewrites_them() -> None:
    text = interpolate(
        "range(start: v.timeRangeStart, stop: v.timeRangeStop) "
        "|> aggregateWindow(every: v.windowPeriod) "
        "|> from(bucket: v.defaultBucket) $__interval $__interval_ms",
        TimeRange(1715774400000, 1715778000123),
        30 * d.SECOND,
        bucket="b1",
        organization="o",
    )
    assert text == (
        "range(start: 2024-05-15T12:00:00Z, stop: 2024-05-15T13:00:00.123Z) "
        '|> aggregateWindow(every: 30s) |> from(bucket: "b1") 30s 30000'
    )
    assert rfc3339_nano(1500) == "1970-01-01T00:00:01.5Z"


def test_plan_posts_json_to_api_v2_query() -> None:
    request = parse_query_request(
        {
            "from": "1715774400000",
            "to": "1715778000000",
            "queries": [
                {
                    "datasource": {"uid": "f"},
                    "query": "x(every: v.windowPeriod)",
                    "intervalMs": 60000,
                }
            ],
        },
        datetime(2024, 5, 15, tzinfo=UTC),
    )
    plan = plan_flux(request.queries[0], request.time_range, {"organization": "my-org"})
    (upstream,) = plan.requests
    assert (upstream.method, upstream.path, upstream.params) == (
        "POST",
        "api/v2/query",
        (("org", "my-org"),),
    )
    body: dict[str, Any] = orjson.loads(upstream.body)
    assert body == {
        "query": "x(every: 1m0s)",
        "dialect": {
            "annotations": ["datatype", "group", "default"],
            "delimiter": ",",
            "header": True,
        },
        "type": "flux",
    }
    empty = plan.convert([UpstreamResponse(200, b"")])
    assert [frame_dict(f) for f in empty.frames or []] == [
        {
            "schema": {
                "meta": {"typeVersion": [0, 0], "executedQueryString": "x(every: 1m0s)"},
                "fields": [],
            },
            "data": {"values": []},
        }
    ]

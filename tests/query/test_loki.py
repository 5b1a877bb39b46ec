"""Loki frames against Grafana's goldens, and the request Grafana sends.

Expected frames from grafana/grafana pkg/tsdb/loki/testdata/streams_simple.golden.jsonc
(log frame: labels, Time, Line, tsNs, id; input testdata/streams_simple.json) and
testdata_dataplane/vector_simple.golden.jsonc (metric frames). Two deltas, both from the
current code rather than the older golden: the golden's `stats` meta is left out (the input
here has none) and the modern SDK always writes `typeVersion`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.query import durations as d
from gateway.query.exchange import UpstreamResponse
from gateway.query.frames import frame_dict
from gateway.query.loki import LokiQuery, convert_loki_response, fnv32, go_json, plan_loki
from gateway.query.promstyle import read_prom_style
from gateway.query.request import parse_query_request

from .frames import TIME, float_field, string_field


def loki_query(expr: str = "query1", query_type: str = "range", ref_id: str = "") -> LokiQuery:
    return LokiQuery(
        ref_id=ref_id,
        expr=expr,
        query_type=query_type,
        direction="backward",
        max_lines=0,
        legend_format="",
        step_ns=42 * d.SECOND,
        start_ms=0,
        end_ms=0,
    )


def test_streams_simple_golden() -> None:
    """grafana/grafana pkg/tsdb/loki/testdata/streams_simple.json and its golden frame as
    today's Grafana writes it (the ids and nanos as in testdata_dataplane/
    streams_structured_metadata.golden.jsonc, which has the same lines): the ids carry no
    "_<refId>" any more (frame.go makeIdField takes the refId and leaves it unused since
    grafana/grafana#68119; older goldens end in "_" or "_sq"), and the SDK's frame JSON
    (data/frame_json.go writeDataFrameData) adds `nanos` for times finer than a millisecond."""
    body = {
        "status": "success",
        "data": {
            "resultType": "streams",
            "result": [
                {
                    "stream": {"code": 'one",', "location": "moon🌙"},
                    "values": [["1645030244810757120", "log line error 1"]],
                },
                {
                    "stream": {"code": '",two', "location": "moon🌙"},
                    "values": [
                        ["1645030247027735040", "log line info 1"],
                        ["1645030246277587968", "log line info 2"],
                        ["1645030246277587968", "log line info 2"],
                        ["1645030245539423744", "log line info 3"],
                        ["1645030244091700992", "log line info 4"],
                    ],
                },
            ],
        },
    }
    result = convert_loki_response(orjson.dumps(body), 200, loki_query(query_type="range"))
    (frame,) = [frame_dict(f) for f in result.frames or []]
    one = {"code": 'one",', "location": "moon🌙"}
    two = {"code": '",two', "location": "moon🌙"}
    assert frame == {
        "schema": {
            "meta": {
                "typeVersion": [0, 0],
                "custom": {"frameType": "LabeledTimeValues"},
                "executedQueryString": "Expr: query1",
            },
            "fields": [
                {"name": "labels", "type": "other", "typeInfo": {"frame": "json.RawMessage"}},
                TIME,
                string_field("Line"),
                string_field("tsNs"),
                string_field("id"),
            ],
        },
        "data": {
            "values": [
                [one, two, two, two, two, two],
                [
                    1645030244810,
                    1645030247027,
                    1645030246277,
                    1645030246277,
                    1645030245539,
                    1645030244091,
                ],
                [
                    "log line error 1",
                    "log line info 1",
                    "log line info 2",
                    "log line info 2",
                    "log line info 3",
                    "log line info 4",
                ],
                [
                    "1645030244810757120",
                    "1645030247027735040",
                    "1645030246277587968",
                    "1645030246277587968",
                    "1645030245539423744",
                    "1645030244091700992",
                ],
                [
                    "1645030244810757120_1d8c2178",
                    "1645030247027735040_87a7aed2",
                    "1645030246277587968_318d05c9",
                    "1645030246277587968_318d05c9_1",
                    "1645030245539423744_fd17f65c",
                    "1645030244091700992_62ae07f3",
                ],
            ],
            "nanos": [None, [757120, 735040, 587968, 587968, 423744, 700992], None, None, None],
        },
    }


def test_vector_dataplane_golden() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"level": "error", "location": "moon"}, "value": [1645029699, "23"]},
                {"metric": {"level": "info", "location": "moon"}, "value": [1645029699, "47"]},
            ],
        },
    }
    result = convert_loki_response(orjson.dumps(body), 200, loki_query(query_type="instant"))
    frames = [frame_dict(f) for f in result.frames or []]
    assert frames[0] == {
        "schema": {
            "meta": {
                "type": "numeric-multi",
                "typeVersion": [0, 1],
                "executedQueryString": "Expr: query1",
            },
            "fields": [
                TIME,
                float_field(
                    "Value",
                    labels={"level": "error", "location": "moon"},
                    config={"displayNameFromDS": '{level="error", location="moon"}'},
                ),
            ],
        },
        "data": {"values": [[1645029699000], [23]]},
    }
    assert frames[1]["data"] == {"values": [[1645029699000], [47]]}


def test_matrix_range_has_step_and_interval() -> None:
    body = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [{"metric": {"level": "error"}, "values": [[1639125366.989, "0.4"]]}],
        },
    }
    result = convert_loki_response(orjson.dumps(body), 200, loki_query("up(ALERTS)"))
    (frame,) = [frame_dict(f) for f in result.frames or []]
    assert frame["schema"]["meta"] == {
        "type": "timeseries-multi",
        "typeVersion": [0, 1],
        "executedQueryString": "Expr: up(ALERTS)\nStep: 42s",
    }
    assert frame["schema"]["fields"][0]["config"] == {"interval": 42000}


def test_errors() -> None:
    bad = convert_loki_response(b'{"message":"parse error at line 1"}', 400, loki_query())
    assert (bad.error, bad.status, bad.frames) == ("parse error at line 1", 400, None)
    plain = convert_loki_response(b"too many outstanding requests", 429, loki_query())
    assert plain.error == "too many outstanding requests"


def test_fnv_and_label_json_as_go() -> None:
    assert go_json({"b": "<&>", "a": "1"}) == b'{"a":"1","b":"\\u003c\\u0026\\u003e"}'
    assert fnv32(b"") == 0x811C9DC5


def plan(model: dict[str, Any]) -> Any:
    request = parse_query_request(
        {
            "from": "1715774400000",
            "to": "1715778000000",
            "queries": [{"datasource": {"uid": "l"}, "intervalMs": 2000, **model}],
        },
        datetime(2024, 5, 15, tzinfo=UTC),
    )
    return plan_loki(request.queries[0], request.time_range)


def test_plan_range_and_instant() -> None:
    (ranged,) = plan({"expr": 'rate({a="b"}[$__auto])', "maxLines": 100}).requests
    assert (ranged.method, ranged.path) == ("GET", "loki/api/v1/query_range")
    assert ranged.params == (
        ("direction", "backward"),
        ("end", "1715778000000000000"),
        ("limit", "100"),
        ("query", 'rate({a="b"}[2s])'),
        ("start", "1715774400000000000"),
        ("step", "2000ms"),
    )
    (instant,) = plan(
        {"expr": 'count_over_time({a="b"}[$__range])', "queryType": "instant", "direction": "scan"}
    ).requests
    assert instant.path == "loki/api/v1/query"
    assert instant.params == (
        ("direction", "backward"),
        ("query", 'count_over_time({a="b"}[3600s])'),
        ("time", "1715778000000000000"),
    )
    answer = plan({"expr": "x"}).convert([UpstreamResponse(500, b"boom")])
    assert (answer.error, answer.status) == ("boom", 500)


def test_structured_metadata_golden() -> None:
    """grafana/grafana pkg/promlib/converter/testdata/loki-streams-structured-metadata.json and
    its -frame.jsonc: the converter's frame, before the Loki backend renames its fields.
    Checked against pkg/promlib/converter/prom.go `readCategorizedStream` (fields `__labels`,
    Time, Line, TS, `__labelTypes`; indexed labels "I", then structured metadata "S", then
    parsed "P", a later kind winning a shared name). The golden writes `__labelTypes` as
    {"nonIndexed":"S","label":"I"}: Go map order, the same object."""
    body = {
        "status": "success",
        "data": {
            "encodingFlags": ["categorize-labels"],
            "resultType": "streams",
            "result": [
                {
                    "stream": {"label": "value"},
                    "values": [
                        [
                            "1697025310236000000",
                            "text",
                            {"structuredMetadata": {"nonIndexed": "value"}},
                        ]
                    ],
                }
            ],
        },
    }
    (frame,) = read_prom_style(orjson.dumps(body), dataplane=True).frames
    json_field = {"type": "other", "typeInfo": {"frame": "json.RawMessage"}}
    assert frame_dict(frame) == {
        "schema": {
            "meta": {"typeVersion": [0, 0]},
            "fields": [
                {"name": "__labels", **json_field},
                TIME,
                string_field("Line"),
                string_field("TS"),
                {"name": "__labelTypes", **json_field},
            ],
        },
        "data": {
            "values": [
                [{"label": "value", "nonIndexed": "value"}],
                [1697025310236],
                ["text"],
                ["1697025310236000000"],
                [{"nonIndexed": "S", "label": "I"}],
            ]
        },
    }


def test_log_frame_with_structured_metadata_and_parsed_labels() -> None:
    """The Loki backend's log frame for a categorized answer: labels merged (a parsed label
    wins over structured metadata and the stream's label of the same name), `labelTypes`
    hidden, the id computed over the merged labels. As grafana/grafana pkg/tsdb/loki/frame.go
    `adjustLegacyLogsFrame` does for a 5-field frame (labelTypes stays 5th, config
    `custom.hidden`, then `id`), its golden testdata/streams_structured_metadata.golden.jsonc."""
    body = {
        "status": "success",
        "data": {
            "encodingFlags": ["categorize-labels"],
            "resultType": "streams",
            "result": [
                {
                    "stream": {"app": "api", "level": "info"},
                    "values": [
                        [
                            "1700000000000000000",
                            "level=error msg=boom",
                            {
                                "structuredMetadata": {"trace_id": "abc", "level": "warn"},
                                "parsed": {"level": "error"},
                            },
                        ],
                        ["1699999999000000000", "plain", {}],
                    ],
                }
            ],
        },
    }
    result = convert_loki_response(orjson.dumps(body), 200, loki_query(ref_id="A"))
    assert result.error is None
    (frame,) = [frame_dict(f) for f in result.frames or []]
    names = [field["name"] for field in frame["schema"]["fields"]]
    assert names == ["labels", "Time", "Line", "tsNs", "labelTypes", "id"]
    assert frame["schema"]["fields"][4]["config"] == {"custom": {"hidden": True}}
    labels, _, _, _, types, ids = frame["data"]["values"]
    assert labels == [
        {"app": "api", "level": "error", "trace_id": "abc"},
        {"app": "api", "level": "info"},
    ]
    assert types == [
        {"app": "I", "level": "P", "trace_id": "S"},
        {"app": "I", "level": "I"},
    ]
    merged = go_json({"app": "api", "level": "error", "trace_id": "abc"})
    checksum = fnv32(b"level=error msg=boom_" + merged)
    assert ids[0] == f"1700000000000000000_{checksum:x}"


def test_categorized_entries_must_be_well_formed() -> None:
    for entry in (["1", "line"], ["1", "line", {"parsed": {"a": 1}}], ["1", "line", []]):
        body = {
            "status": "success",
            "data": {
                "encodingFlags": ["categorize-labels"],
                "resultType": "streams",
                "result": [{"stream": {}, "values": [entry]}],
            },
        }
        result = convert_loki_response(orjson.dumps(body), 200, loki_query())
        assert result.error is not None, entry
        assert result.error_source is not None
        assert result.error_source.value == "downstream"


def test_grafana_asks_for_categorized_labels() -> None:
    (request,) = plan({"expr": '{a="b"}'}).requests
    assert request.headers == (("X-Loki-Response-Encoding-Flags", "categorize-labels"),)

"""Per-query results and the answer's status (grafana/grafana pkg/api/ds_query.go
toJsonStreamingResponse; grafana-plugin-sdk-go backend/json.go writeDataResponseJSON)."""

from __future__ import annotations

import orjson

from gateway.query.frames import Field, FieldType, Frame, frame_json
from gateway.query.results import (
    ErrorSource,
    QueryResult,
    query_failed,
    response_status,
    results_json,
)


def ok() -> QueryResult:
    return QueryResult(frames=[Frame(fields=[Field("Value", FieldType.FLOAT64, [1.0])])])


def test_status_ok_partial_total() -> None:
    failed = query_failed("boom", status=502, source=ErrorSource.DOWNSTREAM)
    assert response_status({"A": ok(), "B": ok()}) == 200
    assert response_status({"A": ok(), "B": failed}) == 400  # partial failure
    assert response_status({"A": failed}) == 400  # total failure


def test_answer_shape() -> None:
    failed = query_failed("bad_data: parse error", status=400, source=ErrorSource.DOWNSTREAM)
    answer = orjson.loads(results_json({"B": failed, "A": ok()}))
    assert list(answer["results"]) == ["A", "B"]  # refIds sorted, as the SDK writes them
    assert answer["results"]["A"] == {
        "status": 200,
        "frames": [
            {
                "schema": {
                    "refId": "A",
                    "fields": [
                        {"name": "Value", "type": "number", "typeInfo": {"frame": "float64"}}
                    ],
                },
                "data": {"values": [[1.0]]},
            }
        ],
    }
    # error, errorSource, status; no frames key when the query produced none
    assert answer["results"]["B"] == {
        "error": "bad_data: parse error",
        "errorSource": "downstream",
        "status": 400,
    }
    raw = results_json({"B": failed})
    assert raw.index(b'"error"') < raw.index(b'"errorSource"') < raw.index(b'"status"')


def test_frame_data_writes_entities_then_nanos() -> None:
    """grafana-plugin-sdk-go data/frame_json.go writeDataFrameData: after `values`, `entities`
    (NaN, Inf, NegInf by field) and then `nanos` (each time's nanoseconds past its millisecond,
    for a time field that has any), one entry per field, null for the others."""
    frame = Frame(
        fields=[
            Field("Time", FieldType.TIME, [1, 2], nanos=[5, 0]),
            Field("Value", FieldType.FLOAT64, [float("nan"), 1.0]),
        ]
    )
    raw = frame_json(frame)
    assert raw.endswith(
        b'"data":{"values":[[1,2],[null,1.0]],"entities":[null,{"NaN":[0]}],"nanos":[[5,0],null]}}'
    )

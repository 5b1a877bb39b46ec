"""The /api/ds/query body (defaults from grafana/grafana pkg/services/query/query.go)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.errors import BadRequest
from gateway.query.request import (
    MAX_QUERIES,
    DataSourceRef,
    QueryRequestError,
    parse_query_request,
)

NOW = datetime(2024, 5, 15, 12, 0, tzinfo=UTC)


def body(*queries: Any, **extra: Any) -> dict[str, Any]:
    return {"from": "now-1h", "to": "now", "queries": list(queries), **extra}


def test_defaults_as_grafana() -> None:
    request = parse_query_request(body({"datasource": {"uid": "p1"}, "expr": "up"}), NOW)
    (query,) = request.queries
    assert (query.ref_id, query.interval_ms, query.max_data_points) == ("A", 1000, 100)
    assert query.datasource == DataSourceRef(uid="p1")
    assert query.model["expr"] == "up"
    assert request.time_range.to_ms - request.time_range.from_ms == 3_600_000


def test_source_by_type_or_legacy_id() -> None:
    request = parse_query_request(
        body(
            {"refId": "A", "datasource": {"type": "prometheus"}, "intervalMs": 15000.0},
            {"refId": "B", "datasourceId": 3, "maxDataPoints": "500"},
        ),
        NOW,
    )
    first, second = request.queries
    assert first.datasource == DataSourceRef(type="prometheus")
    assert first.interval_ms == 15000
    assert second.datasource == DataSourceRef(id=3)
    assert second.max_data_points == 500


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "body: expected a JSON object, got an array$"),
        ({"to": "now", "queries": []}, "from: required$"),
        ({"from": "now-1h", "to": "now"}, "queries: required$"),
        (
            {"from": "now-1h", "to": "now", "queries": "A"},
            "queries: expected a list, got a string$",
        ),
        (body(), "queries: no queries found$"),
        (body("x"), r"queries\[0\]: expected a JSON object, got a string$"),
        (
            body({"refId": 7, "datasource": {"uid": "a"}}),
            r"queries\[0\]\.refId: must be a string, got a number$",
        ),
        (body({"refId": "A"}), r"queries\[0\]\.datasource: name a source"),
        (
            body({"datasource": 5}),
            r"queries\[0\]\.datasource: expected an object with uid or type, got a number$",
        ),
        (
            body({"datasource": {"uid": 5}}),
            r"queries\[0\]\.datasource\.uid: must be a string, got a number$",
        ),
        (
            body({"datasourceId": "x"}),
            r"queries\[0\]\.datasourceId: must be an integer, got a string$",
        ),
        (
            body({"datasourceId": 1.5}),
            r"queries\[0\]\.datasourceId: must be an integer, got a decimal number$",
        ),
        (
            body({"datasourceId": 1, "intervalMs": "fast"}),
            r"queries\[0\]\.intervalMs: must be a number, got a string$",
        ),
        (
            body({"datasourceId": 1, "maxDataPoints": -1}),
            r"queries\[0\]\.maxDataPoints: must be at least 0$",
        ),
        (
            body({"datasourceId": 1}, {"datasourceId": 1}),
            r'queries\[1\]\.refId: "A" is used by another query$',
        ),
        (
            body({"datasourceId": 1, "refId": "it's"}, {"datasourceId": 1, "refId": "it's"}),
            r'queries\[1\]\.refId: "it\'s" is used by another query$',
        ),
        (
            {"from": "yesterday", "to": "now", "queries": [{}]},
            'from: "yesterday" is not a time Grafana understands$',
        ),
        (
            {"from": "now-1h", "to": "2024-13-01", "queries": [{}]},
            'to: "2024-13-01" is not a time Grafana understands$',
        ),
        (
            {"from": True, "to": "now", "queries": [{}]},
            "from: expected epoch milliseconds or a relative time, got a boolean$",
        ),
        (
            {"from": "now-1h", "to": ["now"], "queries": [{}]},
            "to: expected epoch milliseconds or a relative time, got an array$",
        ),
        (
            body(*({"datasourceId": 1, "refId": f"Q{n}"} for n in range(101))),
            r"queries: at most 100 queries in one request, got 101$",
        ),
    ],
)
def test_errors_name_the_field(payload: object, message: str) -> None:
    with pytest.raises(BadRequest, match=f"^{message}") as caught:
        parse_query_request(payload, NOW)
    assert caught.value.status == 400


def test_as_many_queries_as_the_cap() -> None:
    queries = [{"datasourceId": 1, "refId": f"Q{n}"} for n in range(MAX_QUERIES)]
    assert len(parse_query_request(body(*queries), NOW).queries) == MAX_QUERIES


def test_query_fields_helpers() -> None:
    request = parse_query_request(body({"datasourceId": 1, "range": "yes", "format": "x"}), NOW)
    fields = request.queries[0].fields()
    with pytest.raises(
        QueryRequestError, match=r"^queries\[0\]\.range: must be true or false, got a string$"
    ):
        fields.flag("range")
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.format: must be one of a, b"):
        fields.choice("format", ("a", "b"), "a")
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.expr: required"):
        fields.required_string("expr")

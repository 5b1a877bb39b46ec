"""The body of `POST /api/ds/query`, validated into typed queries.

Grafana binds the body to `dtos.MetricRequest` (`from` and `to` required, `queries` a list of
JSON objects) and reads each query in pkg/services/query/query.go (`parseMetricRequest`):
`refId` defaults to "A", `maxDataPoints` to 100, `intervalMs` to 1000; the data source is
`datasource.uid`, else the older `datasourceId`; `datasource.type` alone (no uid) asks for the
org's default source of that type. The rest of the object is the type's own query model
(`expr`, `query`, ...), kept as sent for the type's planner to read.

Every error is a `QueryRequestError` (a `BadRequest`, 400) whose message starts with the path
of the field at fault, e.g. `queries[1].intervalMs: must be a number, got a string`; client
text is quoted as JSON shows it (`"A"`), never as Python does.

Grafana sets no limit on the number of queries in one request; the gateway takes at most
`MAX_QUERIES` (a dashboard panel rarely has more than a few dozen), since each one is planned
and may cost upstream requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.errors import BadRequest
from gateway.query.timerange import TimeRange, parse_time_range
from gateway.registry.validation import json_type, shown

DEFAULT_REF_ID = "A"
DEFAULT_MAX_DATA_POINTS = 100
DEFAULT_INTERVAL_MS = 1000
MAX_QUERIES = 100


class QueryRequestError(BadRequest):
    """A `/api/ds/query` body, or one field of it, that cannot be used."""


@dataclass(frozen=True, slots=True)
class DataSourceRef:
    """Which source a query names: by uid, by type (the org's default of it), or legacy id."""

    uid: str = ""
    type: str = ""
    id: int | None = None


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    index: int  # position in `queries`, for error messages
    ref_id: str
    datasource: DataSourceRef
    interval_ms: int
    max_data_points: int
    model: Mapping[str, Any]  # the query object as sent; the type's own fields live here

    def fields(self) -> QueryFields:
        return QueryFields(self.model, f"queries[{self.index}]")


@dataclass(frozen=True, slots=True)
class QueryRequest:
    time_range: TimeRange
    queries: tuple[ParsedQuery, ...]


def parse_query_request(body: object, now: datetime) -> QueryRequest:
    if not isinstance(body, Mapping):
        raise QueryRequestError(f"body: expected a JSON object, got {json_type(body)}")
    for bound in ("from", "to"):
        if bound not in body:
            raise QueryRequestError(f"{bound}: required")
    time_range = parse_time_range(body["from"], body["to"], now)
    if "queries" not in body:
        raise QueryRequestError("queries: required")
    raw_queries = body["queries"]
    if not isinstance(raw_queries, list):
        raise QueryRequestError(f"queries: expected a list, got {json_type(raw_queries)}")
    if not raw_queries:
        raise QueryRequestError("queries: no queries found")
    if len(raw_queries) > MAX_QUERIES:
        raise QueryRequestError(
            f"queries: at most {MAX_QUERIES} queries in one request, got {len(raw_queries)}"
        )
    queries = tuple(_parse_query(index, raw) for index, raw in enumerate(raw_queries))
    seen: set[str] = set()
    for query in queries:
        # Results are keyed by refId: a repeated one would silently hide an answer.
        if query.ref_id in seen:
            raise QueryRequestError(
                f"queries[{query.index}].refId: {shown(query.ref_id)} is used by another query"
            )
        seen.add(query.ref_id)
    return QueryRequest(time_range=time_range, queries=queries)


def _parse_query(index: int, raw: object) -> ParsedQuery:
    path = f"queries[{index}]"
    if not isinstance(raw, Mapping):
        raise QueryRequestError(f"{path}: expected a JSON object, got {json_type(raw)}")
    fields = QueryFields(raw, path)
    return ParsedQuery(
        index=index,
        ref_id=fields.string("refId", DEFAULT_REF_ID) or DEFAULT_REF_ID,
        datasource=_datasource(raw, path),
        interval_ms=fields.integer("intervalMs", DEFAULT_INTERVAL_MS, minimum=0),
        max_data_points=fields.integer("maxDataPoints", DEFAULT_MAX_DATA_POINTS, minimum=0),
        model=raw,
    )


def _datasource(raw: Mapping[str, Any], path: str) -> DataSourceRef:
    reference = raw.get("datasource")
    uid = source_type = ""
    if isinstance(reference, Mapping):
        uid = _optional_string(reference, "uid", f"{path}.datasource")
        source_type = _optional_string(reference, "type", f"{path}.datasource")
    elif reference is not None and not isinstance(reference, str):
        raise QueryRequestError(
            f"{path}.datasource: expected an object with uid or type, got {json_type(reference)}"
        )
    legacy_id = raw.get("datasourceId")
    if legacy_id is not None and (isinstance(legacy_id, bool) or not isinstance(legacy_id, int)):
        raise QueryRequestError(
            f"{path}.datasourceId: must be an integer, got {_described(legacy_id)}"
        )
    if not uid and not source_type and legacy_id is None:
        raise QueryRequestError(f"{path}.datasource: name a source by uid, type or datasourceId")
    return DataSourceRef(uid=uid, type=source_type, id=legacy_id)


def _optional_string(mapping: Mapping[str, Any], key: str, path: str) -> str:
    value = mapping.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise QueryRequestError(f"{path}.{key}: must be a string, got {json_type(value)}")
    return value


def _described(value: object) -> str:
    """`json_type`, but a number with a decimal point or exponent (`1.5`, `1.0`, `1e3`, which
    Grafana's Int64 refuses too) says so: it is the wrong kind of number."""
    if isinstance(value, float):
        return "a decimal number"
    return json_type(value)


class QueryFields:
    """Typed reads of one query's fields; errors name `queries[i].<field>`."""

    def __init__(self, model: Mapping[str, Any], path: str) -> None:
        self._model = model
        self._path = path

    def error(self, key: str, problem: str) -> QueryRequestError:
        return QueryRequestError(f"{self._path}.{key}: {problem}")

    def string(self, key: str, default: str = "") -> str:
        value = self._model.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {json_type(value)}")
        return value

    def required_string(self, key: str) -> str:
        value = self.string(key)
        if not value.strip():
            raise self.error(key, "required")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._model.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {json_type(value)}")
        return value

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self._model.get(key)
        if value is None:
            return default
        # Grafana's simplejson MustInt64 also takes a float (the frontend sends intervalMs as
        # one) and a numeric string; it truncates.
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {json_type(value)}")
        number = int(value)
        if minimum is not None and number < minimum:
            raise self.error(key, f"must be at least {minimum}")
        return number

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.string(key, default) or default
        if value not in allowed:
            raise self.error(key, f"must be one of {', '.join(allowed)}")
        return value

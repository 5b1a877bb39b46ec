"""Flux queries (InfluxDB 2.x API): the request, and annotated CSV read into frames.

Sources, all in grafana/grafana pkg/tsdb/influxdb/flux:
- macros.go `interpolate`: Grafana does not send `v` as an option record; it rewrites the
  query text. Every `<word>.<word>` whose second word is `timeRangeStart` or `timeRangeStop`
  becomes the range's bound in RFC 3339 with nanoseconds (Go's RFC3339Nano: no trailing zeros),
  `windowPeriod` the interval as a Go duration ("1m0s"), `bucket`/`defaultBucket` and
  `organization` the source's settings in double quotes; then `$__interval_ms` and
  `$__interval` as for InfluxQL. The gateway sends the same rewritten text, so a query reads
  `range(start: 2024-01-01T00:00:00Z, stop: ...)` upstream, exactly as under Grafana.
- Grafana runs the query with influxdb-client-go: POST <url>/api/v2/query?org=<organization>,
  JSON `{"query", "dialect": {"annotations": ["datatype", "group", "default"],
  "delimiter": ",", "header": true}, "type": "flux"}`, and reads the annotated CSV answer.
  The source's token (`Authorization: Token ...`) is the credentials layer's business.
- builder.go `FrameBuilder` and executor.go `readDataFrames`: one frame per table. A table with
  a `_measurement` column is a time series: frame name = `_measurement`, fields `Time` and a
  value field named after `_field`, labelled with every column that is not `result`, `table`
  or `_`-prefixed; any other table keeps all its columns. Every field is nullable (the
  Optional converters). More than maxDataPoints * 1.5 points in a series, or more series than
  `jsonData.maxSeries` (1000 by default), fail the query. The first frame's meta carries
  `executedQueryString` (the interpolated query); an answer without tables is one empty frame.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.query import durations
from gateway.query.exchange import QueryPlan, UpstreamRequest, UpstreamResponse
from gateway.query.frames import Field, FieldType, Frame, frame_meta
from gateway.query.request import ParsedQuery
from gateway.query.results import ErrorSource, QueryResult
from gateway.query.timerange import TimeRange

DEFAULT_MAX_SERIES = 1000
_VARIABLE = re.compile(r"([a-zA-Z]+)\.([a-zA-Z]+)")
_DIALECT = {"annotations": ["datatype", "group", "default"], "delimiter": ",", "header": True}


@dataclass(frozen=True, slots=True)
class FluxQuery:
    ref_id: str
    flux: str  # interpolated: what InfluxDB receives
    max_points: int
    max_series: int


def parse_flux_query(
    query: ParsedQuery, time_range: TimeRange, json_data: Mapping[str, Any]
) -> FluxQuery:
    fields = query.fields()
    interval_ns = query.interval_ms * durations.MILLISECOND
    max_series = json_data.get("maxSeries")
    return FluxQuery(
        ref_id=query.ref_id,
        flux=interpolate(
            fields.required_string("query"),
            time_range,
            interval_ns,
            bucket=str(json_data.get("defaultBucket") or ""),
            organization=str(json_data.get("organization") or ""),
        ),
        max_points=int(query.max_data_points * 1.5),
        max_series=max_series if isinstance(max_series, int) and max_series > 0 else 1000,
    )


def interpolate(
    flux: str, time_range: TimeRange, interval_ns: int, *, bucket: str, organization: str
) -> str:
    """macros.go interpolate: the flux-specific variables, then the interval macros."""
    values = {
        "timeRangeStart": rfc3339_nano(time_range.from_ms),
        "timeRangeStop": rfc3339_nano(time_range.to_ms),
        "windowPeriod": durations.go_duration_string(interval_ns),
        "bucket": f'"{bucket}"',
        "defaultBucket": f'"{bucket}"',
        "organization": f'"{organization}"',
    }
    for match in _VARIABLE.finditer(flux):
        replacement = values.get(match.group(2))
        if replacement is not None:
            flux = flux.replace(match.group(0), replacement)
    flux = flux.replace("$__interval_ms", str(interval_ns // durations.MILLISECOND))
    return flux.replace("$__interval", durations.format_interval(interval_ns))


def rfc3339_nano(epoch_ms: int) -> str:
    """Go's time.RFC3339Nano in UTC: fraction without trailing zeros, none when whole."""
    moment = datetime.fromtimestamp(epoch_ms // 1000, tz=UTC)
    fraction = f"{epoch_ms % 1000:03d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def plan_flux(query: ParsedQuery, time_range: TimeRange, json_data: Mapping[str, Any]) -> QueryPlan:
    parsed = parse_flux_query(query, time_range, json_data)
    organization = str(json_data.get("organization") or "")
    request = UpstreamRequest(
        method="POST",
        path="api/v2/query",
        params=(("org", organization),),
        body=orjson.dumps({"query": parsed.flux, "dialect": _DIALECT, "type": "flux"}),
        headers=(("Content-Type", "application/json"), ("Accept", "application/csv")),
    )

    def convert(responses: Sequence[UpstreamResponse]) -> QueryResult:
        (response,) = responses
        return convert_flux_response(response.body, response.status, parsed)

    return QueryPlan(requests=(request,), convert=convert)


def convert_flux_response(body: bytes, status: int, query: FluxQuery) -> QueryResult:
    result = _read(body, status, query)
    frames = result.frames if result.frames else [Frame(fields=[])]
    first = frames[0]
    first.meta = first.meta if first.meta is not None else frame_meta()
    first.meta["executedQueryString"] = query.flux
    result.frames = frames
    return result


def _read(body: bytes, status: int, query: FluxQuery) -> QueryResult:
    if status // 100 != 2:
        return QueryResult(
            frames=[], status=status, error=_v2_error(body), error_source=ErrorSource.DOWNSTREAM
        )
    builder = _FrameBuilder(query)
    try:
        for table in _tables(body.decode()):
            builder.add_table(table)
    except FluxAnswerError as error:
        return QueryResult(
            frames=builder.frames,
            status=status,
            error=str(error),
            error_source=ErrorSource.DOWNSTREAM,
        )
    return QueryResult(frames=builder.frames, status=status)


class FluxAnswerError(ValueError):
    """An error table in the CSV, or an answer past the limits Grafana sets."""


@dataclass(slots=True)
class _Table:
    datatypes: list[str]
    defaults: list[str]
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


def _tables(text: str) -> list[_Table]:
    """Annotated CSV: blocks of #annotations, a header and rows; a block may hold many
    tables (its `table` column tells them apart)."""
    tables: list[_Table] = []
    annotations: dict[str, list[str]] = {}
    current: _Table | None = None
    for row in csv.reader(io.StringIO(text)):
        if not row or all(cell == "" for cell in row):
            current, annotations = None, {}
            continue
        if row[0].startswith("#"):
            annotations[row[0][1:]] = row
            current = None
            continue
        if current is None:
            width = len(row)
            current = _Table(
                datatypes=annotations.get("datatype", [""] * width),
                defaults=annotations.get("default", [""] * width),
                header=row,
            )
            tables.append(current)
            continue
        current.rows.append(row)
    return [part for table in tables for part in _split_by_table_id(table)]


def _split_by_table_id(table: _Table) -> list[_Table]:
    if "error" in table.header[1:3] and "reference" in table.header:
        index = table.header.index("error")
        message = table.rows[0][index] if table.rows else "unknown flux error"
        raise FluxAnswerError(message)
    if "table" not in table.header:
        return [table]
    index = table.header.index("table")
    parts: dict[str, _Table] = {}
    for row in table.rows:
        parts.setdefault(row[index], _Table(table.datatypes, table.defaults, table.header))
        parts[row[index]].rows.append(row)
    return list(parts.values())


class _FrameBuilder:
    def __init__(self, query: FluxQuery) -> None:
        self.query = query
        self.frames: list[Frame] = []

    def add_table(self, table: _Table) -> None:
        if len(self.frames) >= self.query.max_series:
            raise FluxAnswerError(f"reached max series limit ({self.query.max_series})")
        columns = [_column(table, index) for index in range(1, len(table.header))]
        if any(column.name == "_measurement" for column in columns):
            frame = _time_series_frame(columns)
        else:
            frame = Frame(
                fields=[
                    Field(c.name, c.field_type, c.values, nullable=True, nanos=c.nanos)
                    for c in columns
                ]
            )
        self.frames.append(frame)
        if frame.fields and len(frame.fields[0].values) > self.query.max_points:
            raise FluxAnswerError(f"returned too many points in a series: {self.query.max_points}")


@dataclass(slots=True)
class _Column:
    name: str
    datatype: str
    field_type: FieldType
    values: list[Any]
    # A time column's nanoseconds past each millisecond, when any is not zero (see frames.py).
    nanos: list[int] | None = None


def _column(table: _Table, index: int) -> _Column:
    datatype = table.datatypes[index] if index < len(table.datatypes) else "string"
    field_type, parse = _CONVERTERS.get(datatype, (FieldType.STRING, str))
    default = table.defaults[index] if index < len(table.defaults) else ""
    values: list[Any] = []
    for row in table.rows:
        cell = row[index] if index < len(row) and row[index] != "" else default
        values.append(parse(cell) if cell != "" else None)
    if field_type is FieldType.TIME:
        return _time_column(table.header[index], datatype, values)
    return _Column(table.header[index], datatype, field_type, values)


def _time_column(name: str, datatype: str, epoch_ns: list[int | None]) -> _Column:
    """Milliseconds as values, and the nanoseconds past them as the SDK writes a time.Time
    finer than a millisecond (grafana/grafana pkg/tsdb/influxdb/flux/testdata/simple.golden.jsonc:
    `data.nanos`)."""
    millis = [None if ns is None else ns // 1_000_000 for ns in epoch_ns]
    nanos = [0 if ns is None else ns % 1_000_000 for ns in epoch_ns]
    return _Column(name, datatype, FieldType.TIME, millis, nanos if any(nanos) else None)


def _time_series_frame(columns: list[_Column]) -> Frame:
    by_name = {column.name: column for column in columns}
    labels = {
        c.name: str(c.values[0]) if c.values and c.values[0] is not None else ""
        for c in columns
        if c.name not in ("result", "table") and not c.name.startswith("_")
    }
    value = by_name.get("_value")
    times = by_name.get("_time")
    return Frame(
        name=_first_value(by_name, "_measurement"),
        fields=[
            Field(
                "Time",
                FieldType.TIME,
                times.values if times else [],
                nullable=True,
                nanos=times.nanos if times else None,
            ),
            Field(
                _first_value(by_name, "_field"),
                value.field_type if value else FieldType.FLOAT64,
                value.values if value else [],
                labels=labels,
                nullable=True,
            ),
        ],
    )


def _first_value(columns: Mapping[str, _Column], name: str) -> str:
    column = columns.get(name)
    if column is None or not column.values or column.values[0] is None:
        return ""
    return str(column.values[0])


def _parse_time(text: str) -> int:
    """RFC 3339 with up to nanoseconds, to epoch nanoseconds."""
    main, _, fraction = text.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(main).replace(tzinfo=UTC)
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def _parse_bool(text: str) -> bool:
    return text == "true"


_CONVERTERS: dict[str, tuple[FieldType, Callable[[str], Any]]] = {
    "string": (FieldType.STRING, str),
    "base64Binary": (FieldType.STRING, str),
    "double": (FieldType.FLOAT64, float),
    "long": (FieldType.INT64, int),
    "unsignedLong": (FieldType.UINT64, int),
    "duration": (FieldType.INT64, int),
    "boolean": (FieldType.BOOL, _parse_bool),
    "bool": (FieldType.BOOL, _parse_bool),
    "dateTime:RFC3339": (FieldType.TIME, _parse_time),
    "dateTime:RFC3339Nano": (FieldType.TIME, _parse_time),
}


def _v2_error(body: bytes) -> str:
    """InfluxDB 2's error body is {"code", "message"}; the client reports the message."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")
    if isinstance(document, Mapping) and isinstance(document.get("message"), str):
        return str(document["message"])
    return body.decode(errors="replace")

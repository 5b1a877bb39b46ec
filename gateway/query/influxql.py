"""InfluxQL queries (InfluxDB 1.x API): the request Grafana sends, and the frames it answers.

Sources, all in grafana/grafana pkg/tsdb/influxdb:
- models/query.go `Build`: a raw query (`rawQuery: true` with `query`) gets its macros
  replaced: `$timeFilter` -> `time >= <from>ms and time <= <to>ms`, `$interval` and
  `$__interval` -> gtime.FormatInterval(interval), `$__interval_ms` -> milliseconds; the
  interval is the query's `intervalMs`, at least 1ms (models/model_parser.go);
- influxql/influxql.go `createRequest`: GET <url>/query with `db`, `epoch=ms`, `q` (or POST with
  `q` in a form body when `jsonData.httpMode` is POST), and `rp` for a policy other than
  "default"; Go sorts the parameters;
- influxql/buffered/response_parser.go: a non-2xx answer fails with
  "InfluxDB returned error: <error>"; a top-level or statement `error` fails with its text;
  time series: one frame per series and column (other than `time`), named
  "<measurement>.<column> { tag: value, ... }" or by `alias`, fields `Time` and `Value`
  (nullable float64, string or bool by the first non-null value; the series' tags as labels;
  config `displayNameFromDS` = the frame's name); a series without a time column becomes one
  `Value` string column; `resultFormat: table` makes one frame with `Time`, one column per tag
  and one per value column;
- the first frame's meta carries `preferredVisualisationType` (graph, table or logs by
  `resultFormat`) and `executedQueryString` (the query sent), as the converter's golden files
  show (influxql/converter/testdata/*.golden.jsonc).

Two choices of the gateway's own: with several tags Go iterates a map (the order of the tags in
a frame's name varies between runs); here they are sorted. And `$__timeFilter` is read as
`$timeFilter`: Grafana's InfluxQL backend leaves it untouched (InfluxDB then rejects the query).
Queries built with the visual editor (`measurement`, `select`, `tags`, `groupBy`... without
`rawQuery`) are rendered to InfluxQL as Grafana renders them (influxql_builder.py), then take
the same path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.query import durations
from gateway.query.exchange import QueryPlan, UpstreamRequest, UpstreamResponse, form_request
from gateway.query.frames import Field, FieldType, Frame, frame_meta
from gateway.query.influxql_builder import build_influxql, is_builder_query
from gateway.query.request import ParsedQuery
from gateway.query.results import ErrorSource, QueryResult
from gateway.query.timerange import TimeRange

RESULT_FORMATS = ("time_series", "table", "logs")
_ALIAS_PATTERN = re.compile(r"\$(\w+)|\[\[([\s\S]+?)\]\]")
_VISUALISATION = {"table": "table", "logs": "logs"}


@dataclass(frozen=True, slots=True)
class InfluxQLQuery:
    ref_id: str
    raw_query: str  # macros expanded: what InfluxDB receives
    interval_ns: int
    alias: str
    result_format: str
    policy: str


def parse_influxql_query(query: ParsedQuery, time_range: TimeRange) -> InfluxQLQuery:
    fields = query.fields()
    fields.flag("rawQuery")  # checked for its type
    if is_builder_query(query.model):
        statement = build_influxql(fields, query.model)
    else:
        statement = fields.required_string("query")
    interval_ns = max(query.interval_ms * durations.MILLISECOND, durations.MILLISECOND)
    return InfluxQLQuery(
        ref_id=query.ref_id,
        raw_query=expand_macros(statement, time_range, interval_ns),
        interval_ns=interval_ns,
        alias=fields.string("alias"),
        result_format=fields.choice("resultFormat", RESULT_FORMATS, "time_series"),
        policy=fields.string("policy", "default"),
    )


def expand_macros(text: str, time_range: TimeRange, interval_ns: int) -> str:
    time_filter = f"time >= {time_range.from_ms}ms and time <= {time_range.to_ms}ms"
    interval_text = durations.format_interval(interval_ns)
    text = text.replace("$__timeFilter", time_filter)  # the gateway's extension, see above
    text = text.replace("$timeFilter", time_filter)
    text = text.replace("$interval", interval_text)
    text = text.replace("$__interval_ms", str(interval_ns // durations.MILLISECOND))
    return text.replace("$__interval", interval_text)


def plan_influxql(
    query: ParsedQuery, time_range: TimeRange, database: str, json_data: Mapping[str, Any]
) -> QueryPlan:
    parsed = parse_influxql_query(query, time_range)
    method = str(json_data.get("httpMode") or "GET").upper()
    params = [("db", database or str(json_data.get("dbName") or "")), ("epoch", "ms")]
    if parsed.policy and parsed.policy != "default":
        params.append(("rp", parsed.policy))
    if method == "POST":
        # The query goes in the form body; db, epoch and rp stay in the URL.
        posted = form_request("POST", "query", [("q", parsed.raw_query)])
        request = UpstreamRequest(
            "POST", "query", tuple(sorted(params)), posted.body, posted.headers
        )
    else:
        request = form_request("GET", "query", sorted([*params, ("q", parsed.raw_query)]))

    def convert(responses: Sequence[UpstreamResponse]) -> QueryResult:
        (response,) = responses
        return convert_influxql_response(response.body, response.status, parsed)

    return QueryPlan(requests=(request,), convert=convert)


def convert_influxql_response(body: bytes, status: int, query: InfluxQLQuery) -> QueryResult:
    parse_error: str | None = None
    loaded: object = None
    try:
        loaded = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        parse_error = str(error)
    document: Mapping[str, Any] = loaded if isinstance(loaded, Mapping) else {}
    if status // 100 != 2:
        return _downstream_error(f"InfluxDB returned error: {document.get('error', '')}", status)
    if parse_error is not None:
        return _downstream_error(parse_error, status)
    if document.get("error"):
        return _downstream_error(str(document["error"]), status)
    results = document.get("results") or [{}]
    first = results[0] if isinstance(results[0], Mapping) else {}
    if first.get("error"):
        return _downstream_error(str(first["error"]), status)
    rows = [row for row in first.get("series") or () if isinstance(row, Mapping)]
    if query.result_format == "table":
        frames = _table_frames(rows)
    else:
        frames = _time_series_frames(rows, query)
    if frames:
        frames[0].meta = frame_meta(
            preferred_visualisation=_VISUALISATION.get(query.result_format, "graph"),
            executed_query=query.raw_query,
        )
    return QueryResult(frames=frames, status=status)


def _downstream_error(message: str, status: int) -> QueryResult:
    return QueryResult(
        frames=None, status=status, error=message, error_source=ErrorSource.DOWNSTREAM
    )


def _time_series_frames(rows: list[Mapping[str, Any]], query: InfluxQLQuery) -> list[Frame]:
    frames = []
    for row in rows:
        columns: list[str] = list(row.get("columns") or ())
        values: list[list[Any]] = [v for v in row.get("values") or () if isinstance(v, list)]
        tags = {str(k): str(v) for k, v in (row.get("tags") or {}).items()}
        if not any(column.lower() == "time" for column in columns):
            frames.append(_frame_without_time(row, values))
            continue
        timed = [v for v in values if _is_timestamp(v[0] if v else None)]
        times = [int(v[0]) for v in timed]
        for index, column in enumerate(columns):
            if column == "time":
                continue
            name = frame_name(str(row.get("name", "")), column, tags, query)
            value_type, column_values = _typed_column(timed, index)
            value = Field(
                "Value",
                value_type,
                column_values,
                labels=tags,
                config={"displayNameFromDS": name},
                nullable=True,
            )
            frames.append(Frame(fields=[Field("Time", FieldType.TIME, times), value], name=name))
    return frames


def _frame_without_time(row: Mapping[str, Any], values: list[list[Any]]) -> Frame:
    strings = [_as_string(v[0]) for v in values if v]
    return Frame(
        fields=[Field("Value", FieldType.STRING, strings, nullable=True)],
        name=str(row.get("name", "")),
    )


def _table_frames(rows: list[Mapping[str, Any]]) -> list[Frame]:
    """transformRowsForTable: one frame, the time (or first) column, the tags, the values."""
    if not rows:
        return []
    first_columns: list[str] = list(rows[0].get("columns") or ())
    all_values = [[v for v in row.get("values") or () if isinstance(v, list)] for row in rows]
    fields: list[Field] = []
    if first_columns and first_columns[0] == "time":
        times = [int(v[0]) for vs in all_values for v in vs if _is_timestamp(v[0])]
        fields.append(Field("Time", FieldType.TIME, times))
    else:
        fields.append(_table_value_field(first_columns, all_values, 0))
    for tag in sorted(rows[0].get("tags") or {}):
        column = [
            str((row.get("tags") or {}).get(tag, ""))
            for row, values in zip(rows, all_values, strict=True)
            for _ in values
        ]
        fields.append(
            Field(tag, FieldType.STRING, column, config={"displayNameFromDS": tag}, nullable=True)
        )
    for index in range(1, len(first_columns)):
        fields.append(_table_value_field(first_columns, all_values, index))
    return [Frame(fields=fields, name=str(rows[0].get("name", "")))]


def _table_value_field(columns: list[str], all_values: list[list[list[Any]]], index: int) -> Field:
    flat = [v for vs in all_values for v in vs]
    value_type, column = _typed_column(flat, index)
    name = columns[index]
    return Field(name, value_type, column, config={"displayNameFromDS": name}, nullable=True)


def _typed_column(rows: list[list[Any]], index: int) -> tuple[FieldType, list[Any]]:
    """util.Typeof: the first non-null value decides; numbers (and all-null) are float64."""
    cells = [row[index] if index < len(row) else None for row in rows]
    kind = next((cell for cell in cells if cell is not None), None)
    if isinstance(kind, bool):
        return FieldType.BOOL, [cell if isinstance(cell, bool) else None for cell in cells]
    if isinstance(kind, str):
        return FieldType.STRING, [cell if isinstance(cell, str) else None for cell in cells]
    numbers = [
        float(cell) if isinstance(cell, int | float) and not isinstance(cell, bool) else None
        for cell in cells
    ]
    return FieldType.FLOAT64, numbers


def frame_name(row_name: str, column: str, tags: Mapping[str, str], query: InfluxQLQuery) -> str:
    """util.FormatFrameName: the alias with its patterns filled, else measurement.column."""
    if not query.alias:
        name = column if query.result_format == "table" else f"{row_name}.{column}"
        if tags:
            name += " { " + ", ".join(f"{key}: {tags[key]}" for key in sorted(tags)) + " }"
        return name
    segments = row_name.split(".")

    def substitute(match: re.Match[str]) -> str:
        pattern = match.group(0)
        key = pattern.replace("[[", "", 1).replace("]]", "", 1).replace("$", "", 1)
        if key in ("m", "measurement"):
            return row_name
        if key == "col":
            return column
        if key == "__interval":
            return durations.format_interval(query.interval_ns)
        if key == "__interval_ms":
            return str(query.interval_ns // durations.MILLISECOND)
        if key.isdigit() and int(key) < len(segments):
            return segments[int(key)]
        if key.startswith("tag_") and key[4:] in tags:
            return tags[key[4:]]
        return pattern

    return _ALIAS_PATTERN.sub(substitute, query.alias)


def _is_timestamp(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_string(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()

"""Loki queries: the upstream request Grafana sends, and the frames it answers.

Sources, all in grafana/grafana pkg/tsdb/loki:
- parse_query.go: `queryType` range (the default) or instant; `direction` backward (also for
  "scan") or forward; `maxLines`; `legendFormat`; `resolution` 1-5 or 10 (else 1); variable
  interpolation; step.go for the step (see gateway.query.step);
- api.go `makeDataRequest`: GET /loki/api/v1/query_range with `start`/`end` in nanoseconds and
  `step` as "<ms>ms", or /loki/api/v1/query with `time` = the range's end; `direction` always,
  `limit` only when maxLines > 0; a non-2xx answer's error is its JSON `message`, else its text;
- the answer is read by the Prometheus converter (gateway.query.promstyle) with the metric
  dataplane option, then frame.go `adjustFrame`:
  - metric frames: meta `custom` dropped (stats kept), `executedQueryString`
    "Expr: <expr>\\nStep: <step>" (range) or "Expr: <expr>" (instant); the time field's config
    `{"interval": <step ms>}` for range queries; the value field's config
    `{"displayNameFromDS": <legend or {a="b", ...}>}`;
  - log frames (the legacy, default form): fields renamed `labels`, `Time`, `Line`,
    `tsNs` (and `labelTypes`, "I"/"S"/"P" per label, config `custom.hidden`, when Loki
    answered with the `categorize-labels` encoding Grafana asks for: structured metadata and
    parsed labels are then merged into `labels`), an `id` field added
    ("<tsNs>_<fnv32 of line_labels, hex>[_<n> for repeats]", no refId since Grafana 10), meta
    `custom: {"frameType": "LabeledTimeValues"}`, `executedQueryString` "Expr: <expr>".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from gateway.query import durations, step
from gateway.query.exchange import QueryPlan, UpstreamRequest, UpstreamResponse
from gateway.query.frames import Field, FieldType, Frame, frame_meta
from gateway.query.names import fill_legend, quoted_labels
from gateway.query.promstyle import CATEGORIZE_LABELS, PromStyleError, read_prom_style
from gateway.query.request import ParsedQuery
from gateway.query.results import ErrorSource, QueryResult
from gateway.query.timerange import TimeRange

QUERY_TYPES = ("range", "instant")
# Asks Loki (3.x) to answer structured metadata and parsed labels apart from the stream's own
# labels, as Grafana does (api.go, feature lokiStructuredMetadata, on by default); older Lokis
# ignore it.
ENCODING_FLAGS_HEADER = "X-Loki-Response-Encoding-Flags"
DIRECTIONS = ("backward", "forward", "scan")
RESOLUTIONS = frozenset({1, 2, 3, 4, 5, 10})


@dataclass(frozen=True, slots=True)
class LokiQuery:
    ref_id: str
    expr: str
    query_type: str
    direction: str
    max_lines: int
    legend_format: str
    step_ns: int
    start_ms: int
    end_ms: int


def parse_loki_query(query: ParsedQuery, time_range: TimeRange) -> LokiQuery:
    fields = query.fields()
    resolution = fields.integer("resolution", 1)
    if resolution not in RESOLUTIONS:
        resolution = 1
    try:
        step_ns = step.loki_step(
            range_ns=time_range.duration_ns,
            interval_ms=query.interval_ms,
            resolution=resolution,
            query_step=fields.string("step"),
        )
    except durations.DurationError as error:
        raise fields.error("step", str(error)) from None
    query_type = fields.choice("queryType", QUERY_TYPES, "range")
    direction = fields.choice("direction", DIRECTIONS, "backward")
    expr = interpolate_variables(
        fields.required_string("expr"),
        interval_ns=query.interval_ms * durations.MILLISECOND,
        range_ns=time_range.duration_ns,
        query_type=query_type,
        step_ns=step_ns,
    )
    return LokiQuery(
        ref_id=query.ref_id,
        expr=expr,
        query_type=query_type,
        direction="backward" if direction == "scan" else direction,
        max_lines=fields.integer("maxLines", 0, minimum=0),
        legend_format=fields.string("legendFormat"),
        step_ns=step_ns,
        start_ms=time_range.from_ms,
        end_ms=time_range.to_ms,
    )


def plan_loki(query: ParsedQuery, time_range: TimeRange) -> QueryPlan:
    parsed = parse_loki_query(query, time_range)
    params = [("query", parsed.expr), ("direction", parsed.direction)]
    if parsed.max_lines > 0:
        params.append(("limit", str(parsed.max_lines)))
    if parsed.query_type == "range":
        params += [
            ("start", str(parsed.start_ms * durations.MILLISECOND)),
            ("end", str(parsed.end_ms * durations.MILLISECOND)),
            ("step", f"{parsed.step_ns // durations.MILLISECOND}ms"),
        ]
        path = "loki/api/v1/query_range"
    else:
        params.append(("time", str(parsed.end_ms * durations.MILLISECOND)))
        path = "loki/api/v1/query"
    # Go's url.Values.Encode sorts by key.
    request = UpstreamRequest(
        method="GET",
        path=path,
        params=tuple(sorted(params)),
        headers=((ENCODING_FLAGS_HEADER, CATEGORIZE_LABELS),),
    )

    def convert(responses: Sequence[UpstreamResponse]) -> QueryResult:
        (response,) = responses
        return convert_loki_response(response.body, response.status, parsed)

    return QueryPlan(requests=(request,), convert=convert)


def convert_loki_response(body: bytes, status: int, query: LokiQuery) -> QueryResult:
    if status // 100 != 2:
        return QueryResult(
            frames=None,
            status=status,
            error=loki_error_message(body),
            error_source=ErrorSource.DOWNSTREAM,
        )
    try:
        answer = read_prom_style(body, dataplane=True)
    except PromStyleError as problem:
        return QueryResult(
            frames=None, status=status, error=str(problem), error_source=ErrorSource.DOWNSTREAM
        )
    if answer.error is not None:
        return QueryResult(
            frames=None, status=status, error=answer.error, error_source=ErrorSource.DOWNSTREAM
        )
    for frame in answer.frames:
        adjust_frame(frame, query)
    return QueryResult(frames=answer.frames, status=status)


def loki_error_message(body: bytes) -> str:
    """api.go makeLokiError: the JSON `message`, else the whole text."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")
    message = document.get("message") if isinstance(document, Mapping) else None
    return message if isinstance(message, str) and message else body.decode(errors="replace")


def adjust_frame(frame: Frame, query: LokiQuery) -> None:
    if len(frame.fields) >= 2 and frame.fields[1].type is FieldType.FLOAT64:
        _adjust_metric_frame(frame, query)
    elif len(frame.fields) >= 4:
        _adjust_logs_frame(frame, query)


def _adjust_metric_frame(frame: Frame, query: LokiQuery) -> None:
    time_field, value_field = frame.fields[0], frame.fields[1]
    labels: dict[str, str] = {}
    for field_ in frame.fields:
        labels.update(field_.labels or {})
    meta = frame.meta if frame.meta is not None else frame_meta()
    meta.pop("custom", None)
    is_range = query.query_type == "range"
    executed = f"Expr: {query.expr}"
    if is_range:
        executed += f"\nStep: {durations.go_duration_string(query.step_ns)}"
        time_field.config = {"interval": query.step_ns // durations.MILLISECOND}
    meta["executedQueryString"] = executed
    frame.meta = meta
    value_field.config = {"displayNameFromDS": format_name(labels, query.legend_format)}


def _adjust_logs_frame(frame: Frame, query: LokiQuery) -> None:
    labels_field, time_field, line_field, stamp_field = frame.fields[:4]
    labels_field.name = "labels"
    stamp_field.name = "tsNs"
    time_field.name = "Time"
    if len(frame.fields) == 5:  # categorized labels: Grafana hides the types' column
        types_field = frame.fields[4]
        types_field.name = "labelTypes"
        types_field.config = {"custom": {"hidden": True}}
    frame.meta = frame_meta(
        custom={"frameType": "LabeledTimeValues"}, executed_query=f"Expr: {query.expr}"
    )
    frame.fields.append(
        Field("id", FieldType.STRING, make_ids(stamp_field, line_field, labels_field))
    )


def make_ids(stamps: Field, lines: Field, labels: Field) -> list[str]:
    """frame.go makeIdField: "<tsNs>_<fnv32(line + "_" + labels json) hex>[_n]". Grafana's
    backends of 2022-23 appended "_<refId>"; today's takes the refId but leaves it unused
    (grafana/grafana pkg/tsdb/loki/frame.go makeIdField; grafana/grafana#68119)."""
    seen: dict[str, int] = {}
    ids = []
    for stamp, line, label_set in zip(stamps.values, lines.values, labels.values, strict=True):
        checksum = f"{stamp}_{fnv32((line + '_').encode() + go_json(label_set)):x}"
        count = seen.get(checksum, 0)
        seen[checksum] = count + 1
        ids.append(f"{checksum}_{count}" if count else checksum)
    return ids


def fnv32(data: bytes) -> int:
    """Go's hash/fnv New32 (FNV-1, not FNV-1a)."""
    value = 0x811C9DC5
    for byte in data:
        value = (value * 0x01000193) & 0xFFFFFFFF
        value ^= byte
    return value


def go_json(labels: Mapping[str, str]) -> bytes:
    """jsoniter.Marshal of data.Labels: sorted keys, compact, HTML characters escaped."""
    text = orjson.dumps({key: labels[key] for key in sorted(labels)})
    return text.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")


def format_name(labels: Mapping[str, str], legend_format: str) -> str:
    """frame.go formatName: the legend template, else `{a="1", b="2"}`."""
    if not legend_format:
        return "{" + ", ".join(quoted_labels(labels)) + "}"
    return fill_legend(legend_format, labels)


def interpolate_variables(
    expr: str, *, interval_ns: int, range_ns: int, query_type: str, step_ns: int
) -> str:
    """parse_query.go interpolateVariables."""
    interval_text = durations.format_interval(interval_ns)
    interval_ms = str(interval_ns // durations.MILLISECOND)
    range_ms = range_ns // durations.MILLISECOND
    range_s = str(math.floor(range_ms / 1000 + 0.5))
    replacements: list[tuple[str, str]] = [
        ("$__interval_ms", interval_ms),
        ("$__interval", interval_text),
        ("$__range_ms", str(range_ms)),
        ("$__range_s", range_s),
        ("$__range", range_s + "s"),
    ]
    if query_type == "instant":
        replacements.append(("$__auto", range_s + "s"))
    else:
        replacements.append(("$__auto", durations.format_interval(step_ns)))
    replacements += [
        ("${__interval_ms}", interval_ms),
        ("${__interval}", interval_text),
        ("${__range_ms}", str(range_ms)),
        ("${__range_s}", range_s),
        ("${__range}", range_s + "s"),
    ]
    for variable, value in replacements:
        expr = expr.replace(variable, value)
    return expr

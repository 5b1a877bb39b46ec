"""Prometheus queries: the upstream requests Grafana sends, and the frames it answers.

Sources, all in grafana/grafana:
- pkg/promlib/models/query.go: `Parse` (neither `range` nor `instant` means range; variable
  interpolation), `AlignTimeRange` (start and end rounded down to a multiple of the step);
- pkg/promlib/client/client.go: `QueryRange` (`query`, `start`, `end`, `step` in seconds) to
  api/v1/query_range and `QueryInstant` (`query`, `time` = the range's end, unaligned) to
  api/v1/query; POST with a form body unless the source's `jsonData.httpMethod` is GET;
  `jsonData.queryTimeout` as `timeout`;
- pkg/promlib/querydata/request.go `fetch`: a query asking for both range and instant runs
  both and answers the frames of both (instant first);
- request.go `exemplarQuery` and client.go `QueryExemplars`: `exemplar: true` adds a request
  to api/v1/query_exemplars (`query`, aligned `start` and `end`); its failure is ignored;
  response.go `processExemplars` samples the exemplars into one frame (`sample_exemplars`);
- pkg/promlib/querydata/response.go: the upstream status becomes the result's status; a query
  with no frames still answers one empty frame; the first frame's meta carries
  `executedQueryString` ("Expr: <expr>\\nStep: <Go duration>"); the time field's config is
  `{"interval": <step ms>}`; the value field's config `{"displayNameFromDS": <name>}` (legend).
  The value field is named after `__name__` (the dataplane form, on by default).

`format` (time_series, table, heatmap) is validated and carried, but changes nothing here:
Grafana's backend answers the same frames for all three and its frontend reshapes them
(public/app/plugins/datasource/prometheus/result_transformer.ts, `transformDFToTable`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.query import durations, step
from gateway.query.exchange import QueryPlan, UpstreamRequest, UpstreamResponse, form_request
from gateway.query.frames import Field, FieldType, Frame, frame_meta, set_meta
from gateway.query.names import fill_legend, quoted_labels
from gateway.query.promstyle import MatrixFeed, PromStyleError, read_prom_style
from gateway.query.request import ParsedQuery
from gateway.query.results import ErrorSource, QueryResult
from gateway.query.timerange import TimeRange

FORMATS = ("time_series", "table", "heatmap")
LEGEND_AUTO = "__auto"


@dataclass(frozen=True, slots=True)
class PrometheusQuery:
    ref_id: str
    expr: str  # with Grafana's built-in variables interpolated
    step_ns: int
    start_ms: int
    end_ms: int
    utc_offset_s: int
    range: bool
    instant: bool
    legend_format: str
    format: str
    exemplar: bool = False


def parse_prometheus_query(
    query: ParsedQuery, time_range: TimeRange, json_data: Mapping[str, Any]
) -> PrometheusQuery:
    fields = query.fields()
    scrape_interval = _string(json_data.get("timeInterval"))
    query_interval = fields.string("interval")
    try:
        step_ns = step.prometheus_step(
            range_ns=time_range.duration_ns,
            query_interval=query_interval,
            interval_ms=query.interval_ms,
            max_data_points=query.max_data_points,
            scrape_interval=scrape_interval,
            interval_factor=fields.integer("intervalFactor", 0, minimum=0),
        )
    except durations.DurationError as error:
        raise fields.error("interval", str(error)) from None
    if step_ns <= 0:
        raise fields.error("interval", "the step must be positive")
    is_range = fields.flag("range")
    is_instant = fields.flag("instant")
    expr = interpolate_variables(
        fields.required_string("expr"),
        query_interval_ns=query.interval_ms * durations.MILLISECOND,
        calculated_step=step_ns,
        requested_min_step=query_interval,
        scrape_interval=scrape_interval,
        range_ns=time_range.duration_ns,
    )
    return PrometheusQuery(
        ref_id=query.ref_id,
        expr=expr,
        step_ns=step_ns,
        start_ms=time_range.from_ms,
        end_ms=time_range.to_ms,
        utc_offset_s=fields.integer("utcOffsetSec", 0),
        # Older dashboards set neither: that ran as a range query.
        range=is_range or not is_instant,
        instant=is_instant,
        legend_format=fields.string("legendFormat"),
        format=fields.choice("format", FORMATS, "time_series"),
        exemplar=fields.flag("exemplar"),
    )


def plan_prometheus(
    query: ParsedQuery, time_range: TimeRange, json_data: Mapping[str, Any]
) -> QueryPlan:
    parsed = parse_prometheus_query(query, time_range, json_data)
    method = _string(json_data.get("httpMethod")).upper() or "POST"
    timeout = _string(json_data.get("queryTimeout"))
    requests: list[UpstreamRequest] = []
    if parsed.instant:
        params = [("query", parsed.expr), ("time", format_seconds_ms(parsed.end_ms))]
        requests.append(form_request(method, "api/v1/query", _with_timeout(params, timeout)))
    if parsed.range:
        params = [
            ("query", parsed.expr),
            ("start", format_seconds_ns(align(parsed.start_ms, parsed))),
            ("end", format_seconds_ns(align(parsed.end_ms, parsed))),
            ("step", _format_float(parsed.step_ns / durations.SECOND)),
        ]
        ranged = form_request(method, "api/v1/query_range", _with_timeout(params, timeout))
        requests.append(dataclasses.replace(ranged, feed=_matrix_feed))
    if parsed.exemplar:
        params = [
            ("query", parsed.expr),
            ("start", format_seconds_ns(align(parsed.start_ms, parsed))),
            ("end", format_seconds_ns(align(parsed.end_ms, parsed))),
        ]
        requests.append(form_request(method, "api/v1/query_exemplars", params))

    def convert(responses: Sequence[UpstreamResponse]) -> QueryResult:
        *answers, last = responses
        results = [_convert(response, parsed) for response in answers]
        if parsed.exemplar:
            # request.go: a failed exemplar query is only logged; its frames (if any) are
            # added, and nothing else of it.
            exemplars = _convert(last, parsed)
            merged = merge_results(results)
            assert merged.frames is not None
            merged.frames.extend(exemplars.frames or [])
            return merged
        results.append(_convert(last, parsed))
        return merge_results(results)

    return QueryPlan(requests=tuple(requests), convert=convert)


def _matrix_feed() -> MatrixFeed:
    return MatrixFeed(dataplane=True)


def _convert(response: UpstreamResponse, query: PrometheusQuery) -> QueryResult:
    feed = response.feed if isinstance(response.feed, MatrixFeed) else None
    return convert_prometheus_response(response.body, response.status, query, feed=feed)


def align(epoch_ms: int, query: PrometheusQuery) -> int:
    """models.AlignTimeRange, in nanoseconds: round down to a multiple of the step."""
    offset = query.utc_offset_s * durations.SECOND
    moment = epoch_ms * durations.MILLISECOND
    return (moment + offset) // query.step_ns * query.step_ns - offset


def convert_prometheus_response(
    body: bytes, status: int, query: PrometheusQuery, *, feed: MatrixFeed | None = None
) -> QueryResult:
    """querydata.parseResponse for one upstream answer (`feed`: the series read from it as it
    arrived)."""
    error: str | None = None
    try:
        answer = read_prom_style(body, dataplane=True, feed=feed)
        frames, error = answer.frames, answer.error
    except PromStyleError as problem:
        frames, error = [], str(problem)
    if not frames and not query.exemplar:
        frames = [Frame(fields=[])]  # "Add frame to attach metadata"
    for index, frame in enumerate(frames):
        add_metadata(frame, query)
        if index == 0:
            assert frame.meta is not None
            set_meta(frame.meta, "executedQueryString", executed_query_string(query))
    if error is None:
        frames = sample_exemplars(frames, query.step_ns)
    return QueryResult(
        frames=frames,
        status=status,
        error=error,
        error_source=ErrorSource.DOWNSTREAM if error is not None else None,
    )


def sample_exemplars(frames: list[Frame], step_ns: int) -> list[Frame]:
    """response.go processExemplars with Grafana's default sampler (exemplar/
    sampler_stddev.go): the exemplar frames become one frame named "exemplar" (the last
    exemplar frame's meta; fields `Time`, `Value`, then every series and exemplar label name,
    sorted); per step-aligned bucket the highest exemplar is kept, and lower ones only when they
    sit more than two standard deviations (over all exemplars) below the last one kept; rows
    ordered by time. Other frames pass through, before it."""
    kept = [frame for frame in frames if not _is_exemplar_frame(frame)]
    exemplar_frames = [frame for frame in frames if _is_exemplar_frame(frame)]
    if not exemplar_frames:
        return frames
    names: set[str] = set()
    buckets: dict[int, list[_Exemplar]] = {}
    welford = _Welford()
    meta: dict[str, Any] | None = None
    for frame in exemplar_frames:
        meta = frame.meta
        series_labels = dict(frame.fields[1].labels or {})
        names.update(series_labels)
        label_fields = frame.fields[2:]
        names.update(field_.name for field_ in label_fields)
        times, values = list(frame.fields[0].values), list(frame.fields[1].values)
        for row, (moment, value) in enumerate(zip(times, values, strict=True)):
            labels = dict(series_labels)
            labels.update({field_.name: field_.values[row] for field_ in label_fields})
            welford.add(value)
            bucket = moment * durations.MILLISECOND // step_ns
            buckets.setdefault(bucket, []).append(_Exemplar(moment, value, labels))
    spread = welford.standard_deviation()
    sampled: list[_Exemplar] = []
    for bucket in sorted(buckets):
        ranked = sorted(buckets[bucket], key=lambda exemplar: -exemplar.value)
        taken = [ranked[0]]
        for exemplar in ranked[1:]:
            if spread != 0.0 and taken[-1].value - exemplar.value > spread * 2.0:
                taken.append(exemplar)
        sampled += taken
    sampled.sort(key=lambda exemplar: exemplar.time_ms)
    label_names = sorted(names)
    fields = [
        Field("Time", FieldType.TIME, [exemplar.time_ms for exemplar in sampled]),
        Field("Value", FieldType.FLOAT64, [exemplar.value for exemplar in sampled]),
    ]
    fields += [
        Field(name, FieldType.STRING, [exemplar.labels.get(name, "") for exemplar in sampled])
        for name in label_names
    ]
    return [*kept, Frame(fields=fields, name="exemplar", meta=meta)]


@dataclass(frozen=True, slots=True)
class _Exemplar:
    time_ms: int
    value: float
    labels: dict[str, str]


class _Welford:
    """Welford's online mean and variance, as the sampler keeps them."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def standard_deviation(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count >= 2 else 0.0


def _is_exemplar_frame(frame: Frame) -> bool:
    custom = (frame.meta or {}).get("custom")
    return isinstance(custom, Mapping) and custom.get("resultType") == "exemplar"


def merge_results(results: Sequence[QueryResult]) -> QueryResult:
    """querydata.addDataResponse: frames appended; errors joined; the failing status wins."""
    merged = QueryResult(frames=[])
    for result in results:
        if result.error is not None:
            earlier = merged.error
            merged.error = result.error if earlier is None else f"{earlier} {result.error}"
            merged.status = result.status
            merged.error_source = result.error_source
        elif merged.error is None:
            merged.status = result.status
        assert merged.frames is not None
        merged.frames.extend(result.frames or [])
    return merged


def add_metadata(frame: Frame, query: PrometheusQuery) -> None:
    """response.go addMetadataToMultiFrame, dataplane form."""
    if frame.meta is None:
        frame.meta = frame_meta()
    if len(frame.fields) < 2:
        return
    frame.fields[0].config = {"interval": query.step_ns // durations.MILLISECOND}
    value_field = frame.fields[1]
    name = display_name(query, value_field)
    if name:
        value_field.config = {"displayNameFromDS": name}
    if value_field.labels and "__name__" in value_field.labels:
        value_field.name = value_field.labels["__name__"]


def display_name(query: PrometheusQuery, value_field: Field) -> str:
    """response.go getName: the legend template, or the series as Prometheus prints it."""
    labels = value_field.labels or {}
    legend = metric_name_from_labels(labels)
    if query.legend_format == LEGEND_AUTO:
        if labels:
            legend = ""
    elif query.legend_format:
        legend = fill_legend(query.legend_format, labels)
    return query.expr if legend == "{}" else legend


def metric_name_from_labels(labels: Mapping[str, str]) -> str:
    """`name{a="1", b="2"}` with sorted labels; `{}` for none (model.Metric.String())."""
    name = labels.get("__name__", "")
    pairs = quoted_labels({key: value for key, value in labels.items() if key != "__name__"})
    if not pairs:
        return name or "{}"
    return f"{name}{{{', '.join(pairs)}}}"


def executed_query_string(query: PrometheusQuery) -> str:
    return f"Expr: {query.expr}\nStep: {durations.go_duration_string(query.step_ns)}"


def interpolate_variables(
    expr: str,
    *,
    query_interval_ns: int,
    calculated_step: int,
    requested_min_step: str,
    scrape_interval: str,
    range_ns: int,
) -> str:
    """models.interpolateVariables: $__interval, $__range, $__rate_interval and friends."""
    range_ms = range_ns // durations.MILLISECOND
    range_s = math.floor(range_ms / 1000 + 0.5)  # Go's math.Round: halves away from zero
    if requested_min_step in ("$__rate_interval", "${__rate_interval}"):
        rate = calculated_step
    else:
        if requested_min_step in ("$__interval", "${__interval}"):
            requested_min_step = durations.go_duration_string(calculated_step)
        rate = step.rate_interval(query_interval_ns, requested_min_step or scrape_interval)
    step_ms = str(calculated_step // durations.MILLISECOND)
    step_text = durations.format_interval(calculated_step)
    rate_ms = str(rate // durations.MILLISECOND)
    rate_text = durations.go_duration_string(rate)
    for prefix, suffix in (("$", ""), ("${", "}")):
        # Longer names first: $__interval_ms before $__interval, as Grafana orders them.
        expr = expr.replace(f"{prefix}__interval_ms{suffix}", step_ms)
        expr = expr.replace(f"{prefix}__interval{suffix}", step_text)
        expr = expr.replace(f"{prefix}__range_ms{suffix}", str(range_ms))
        expr = expr.replace(f"{prefix}__range_s{suffix}", str(range_s))
        expr = expr.replace(f"{prefix}__range{suffix}", f"{range_s}s")
        expr = expr.replace(f"{prefix}__rate_interval_ms{suffix}", rate_ms)
        expr = expr.replace(f"{prefix}__rate_interval{suffix}", rate_text)
    return expr


def format_seconds_ms(epoch_ms: int) -> str:
    return format_seconds_ns(epoch_ms * durations.MILLISECOND)


def format_seconds_ns(epoch_ns: int) -> str:
    """client.formatTime: seconds with the shortest decimals (strconv 'f', -1)."""
    seconds, nanos = divmod(epoch_ns, durations.SECOND)
    return _format_float(seconds + nanos / 1e9)


def _format_float(value: float) -> str:
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = f"{value:.20f}".rstrip("0")
    return text[:-2] if text.endswith(".0") else text.rstrip(".")


def _with_timeout(params: list[tuple[str, str]], timeout: str) -> list[tuple[str, str]]:
    return [*params, ("timeout", timeout)] if timeout else params


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""

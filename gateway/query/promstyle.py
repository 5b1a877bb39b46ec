"""Prometheus-style query answers (Prometheus and Loki) read into data frames.

A port of grafana/grafana pkg/promlib/converter/prom.go (`ReadPrometheusStyleResult`), which
both Grafana's Prometheus and Loki backends use, with its options as Grafana runs them today:

- matrix: one frame per series, fields `Time` (time) and `Value` (float64, the series'
  labels), meta `type: timeseries-multi`, `custom: {resultType: matrix}`;
- vector: the same with one row, `type: numeric-multi` when dataplane (Prometheus) else
  `timeseries-multi` (Loki);
- scalar: one frame `Time`/`Value` with `labels: {}`, `type: numeric-multi`;
- string: one frame `Time`/`Value` (a string field), `type: timeseries-multi`;
- native histograms (`histogram` / `histograms` in a series): a `heatmap-cells` frame of
  buckets (`xMax`, `yMin`, `yMax`, `count`, `yLayout`);
- exemplars (`data` a list of `{seriesLabels, exemplars}`): one frame per series, meta
  `custom: {resultType: exemplar}`, an exemplar label per string field;
- streams (Loki): one frame `__labels` (json), `Time`, `Line`, `TS` (nanoseconds as text);
  with Loki's `categorize-labels` encoding also `__labelTypes` (readCategorizedStream);
- `typeVersion` [0, 1] under the dataplane option, else [0, 0];
- `status: error` becomes the error "<errorType>: <error>"; `warnings` and `infos` become
  notices on every frame (a frame named "Warnings" when there is none);
- a time is `int(seconds * 1000.0)` milliseconds, as `timeFromFloat` truncates.

Large matrices take a fast path: the series are found by their heads and closing braces in
the bytes, and each series' values array is split at its quotes into time and value pieces:
the values column is Prometheus' own number text (checked, not re-written), and times on a
regular grid of whole seconds are one column written once per answer. The body is never a
tree of Python objects. Anything the fast path does not recognise falls back to a full parse.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.query.frames import Column, EncodedColumn, Field, FieldType, Frame, frame_meta

# Loki's response encoding flag (header X-Loki-Response-Encoding-Flags, echoed in
# `data.encodingFlags`): structured metadata and parsed labels apart from the stream's labels.
CATEGORIZE_LABELS = "categorize-labels"


class PromStyleError(ValueError):
    """An answer the converter cannot read (Grafana reports the parser's error)."""


@dataclass(slots=True)
class PromStyleAnswer:
    frames: list[Frame] = field(default_factory=list)
    error: str | None = None
    result_type: str = ""


_STATUS = re.compile(rb'"status"\s*:\s*"(\w+)"')
_RESULT_TYPE = re.compile(rb'"resultType"\s*:\s*"(\w+)"')
_RESULT_START = re.compile(rb'"result"\s*:\s*\[')
# The head of one matrix series in the shape Prometheus writes it: its labels (values may hold
# any character, escaped quotes included), then the opening bracket of its values.
_SERIES_HEAD = re.compile(
    rb'\s*\{\s*"metric"\s*:\s*(\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\})\s*,\s*"values"\s*:\s*\['
)
# After the values: the series' closing brace, and a comma when another series follows.
_SERIES_TAIL = re.compile(rb"\s*\}\s*(,?)")
_STAMP = re.compile(rb"\[\s*([-+0-9.eE]+)\s*,")
_VALUE = re.compile(rb',\s*"([^"\\]*)"\s*\]')
_TO_MS = (1000.0).__mul__
_RESULT_END = re.compile(rb"\s*\]")


def read_prom_style(
    body: bytes, *, dataplane: bool, feed: MatrixFeed | None = None
) -> PromStyleAnswer:
    """The answer's frames. `feed`, when the body went through one as it arrived, holds the
    series it has converted already."""
    if feed is not None:
        fast = feed.finish(body)
        if fast is not None:
            return fast
    fast = _read_matrix_fast(body, dataplane=dataplane)
    if fast is not None:
        return fast
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise PromStyleError(f"could not parse the answer as JSON: {error}") from None
    if not isinstance(document, Mapping):
        raise PromStyleError("expected a JSON object")
    return read_document(document, dataplane=dataplane)


def read_document(document: Mapping[str, Any], *, dataplane: bool) -> PromStyleAnswer:
    answer = PromStyleAnswer()
    data = document.get("data")
    if isinstance(data, list):
        answer.frames = _read_array_data(data)
    elif data is not None:
        if not isinstance(data, Mapping):
            raise PromStyleError("expected object type")
        answer = _read_data(data, dataplane=dataplane)
    if document.get("status") == "error":
        return PromStyleAnswer(
            error=f"{document.get('errorType', '')}: {document.get('error', '')}"
        )
    _attach_notices(answer, document)
    return answer


def _read_data(data: Mapping[str, Any], *, dataplane: bool) -> PromStyleAnswer:
    if "resultType" not in data:
        raise PromStyleError("no resultType found")
    result_type = data["resultType"]
    result = data.get("result")
    answer = PromStyleAnswer(result_type=result_type)
    if result_type in ("matrix", "vector"):
        answer.frames = [_series_frame(series, result_type, dataplane) for series in result or ()]
    elif result_type == "streams":
        flags = data.get("encodingFlags") or ()
        if isinstance(flags, list) and CATEGORIZE_LABELS in flags:
            answer.frames = [_categorized_streams_frame(result or [])]
        else:
            answer.frames = [_streams_frame(result or [])]
    elif result_type == "scalar":
        answer.frames = [_scalar_frame(result, dataplane)]
    elif result_type == "string":
        answer.frames = [_string_frame(result)]
    else:
        answer.error = f"unknown result type: {result_type}"
    _apply_stats(answer, data)
    return answer


def _apply_stats(answer: PromStyleAnswer, data: Mapping[str, Any]) -> None:
    """`data.stats` replaces the first frame's `meta.custom` (prom.go does just that)."""
    stats = data.get("stats")
    if stats is not None and answer.frames:
        first = answer.frames[0]
        first.meta = first.meta if first.meta is not None else frame_meta()
        first.meta["custom"] = {"stats": stats}


def _series_meta(result_type: str, dataplane: bool) -> dict[str, Any]:
    frame_type = "numeric-multi" if dataplane and result_type == "vector" else "timeseries-multi"
    return frame_meta(
        type=frame_type,
        type_version=(0, 1) if dataplane else (0, 0),
        custom={"resultType": result_type},
    )


def _time_value_frame(
    labels: Mapping[str, str],
    times: Any,
    values: Any,
    meta: dict[str, Any],
    value_type: FieldType = FieldType.FLOAT64,
) -> Frame:
    return Frame(
        fields=[
            Field("Time", FieldType.TIME, times),
            Field("Value", value_type, values, labels=dict(labels)),
        ],
        meta=meta,
    )


def _series_frame(series: Mapping[str, Any], result_type: str, dataplane: bool) -> Frame:
    if "histogram" in series or "histograms" in series:
        return _histogram_frame(series)
    labels = series.get("metric") or {}
    points = series.get("values") or ([series["value"]] if "value" in series else [])
    times = array("q", (time_ms(point[0]) for point in points))
    values = array("d", (float(point[1]) for point in points))
    return _time_value_frame(labels, times, values, _series_meta(result_type, dataplane))


def _histogram_frame(series: Mapping[str, Any]) -> Frame:
    """Native histogram samples as prom.go's `readHistogram` frames them: one row per bucket
    of each sample, fields `xMax` (the sample's time), `yMin` and `yMax` (the bucket's bounds;
    `yMin` carries the series' labels), `count`, and `yLayout` (Prometheus' boundary rule,
    int8: 0 open left, 1 open right, 2 open both, 3 closed both), meta `heatmap-cells`. The
    sample's own count and sum are not shown, as in Grafana. A series with float samples too
    shows only its histograms, as in Grafana."""
    samples: list[Any] = []
    if "histogram" in series:
        samples.append(series["histogram"])
    samples.extend(series.get("histograms") or ())
    times: list[int] = []
    lower: list[float] = []
    upper: list[float] = []
    counts: list[float] = []
    layouts: list[int] = []
    for sample in samples:
        if not isinstance(sample, list | tuple) or len(sample) != 2:
            raise PromStyleError("a histogram sample must be [time, histogram]")
        stamp, histogram = sample
        if not isinstance(histogram, Mapping):
            raise PromStyleError("a histogram must be an object")
        moment = time_ms(stamp)
        for bucket in histogram.get("buckets") or ():
            if not isinstance(bucket, list | tuple) or len(bucket) != 4:
                raise PromStyleError("expected close array")
            rule, low, high, count = bucket
            if isinstance(rule, bool) or not isinstance(rule, int) or not -128 <= rule <= 127:
                raise PromStyleError(f"a histogram bucket's boundary rule must be an int8: {rule}")
            times.append(moment)
            layouts.append(rule)
            lower.append(_float_text(low))
            upper.append(_float_text(high))
            counts.append(_float_text(count))
    labels = series.get("metric") or {}
    return Frame(
        fields=[
            Field("xMax", FieldType.TIME, times),
            Field("yMin", FieldType.FLOAT64, lower, labels=dict(labels)),
            Field("yMax", FieldType.FLOAT64, upper),
            Field("count", FieldType.FLOAT64, counts),
            Field("yLayout", FieldType.INT8, layouts),
        ],
        meta=frame_meta(type="heatmap-cells"),
    )


def _float_text(value: Any) -> float:
    """strconv.ParseFloat of a JSON string (Prometheus writes numbers as text)."""
    if not isinstance(value, str):
        raise PromStyleError(f"expected a number as a string, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise PromStyleError(f"strconv.ParseFloat: parsing {value!r}: invalid syntax") from None


def _scalar_frame(pair: Any, dataplane: bool) -> Frame:
    meta = frame_meta(
        type="numeric-multi",
        type_version=(0, 1) if dataplane else (0, 0),
        custom={"resultType": "scalar"},
    )
    return _time_value_frame({}, [time_ms(pair[0])], [float(pair[1])], meta)


def _string_frame(pair: Any) -> Frame:
    meta = frame_meta(type="timeseries-multi", custom={"resultType": "string"})
    return _time_value_frame({}, [time_ms(pair[0])], [str(pair[1])], meta, FieldType.STRING)


def _streams_frame(streams: list[Any]) -> Frame:
    labels_column: list[Any] = []
    stamps: list[str] = []
    lines: list[str] = []
    for stream in streams:
        labels = {key: stream["stream"][key] for key in sorted(stream.get("stream") or {})}
        for stamp, line, *_ in stream.get("values") or ():
            labels_column.append(labels)
            lines.append(line)
            stamps.append(stamp)
    return _log_frame(labels_column, stamps, lines)


def _log_frame(
    labels_column: list[Any],
    stamps: list[str],
    lines: list[str],
    types_column: list[Any] | None = None,
) -> Frame:
    """`__labels`, `Time` (with the nanoseconds past each millisecond, as the SDK writes a
    time.Time finer than that), `Line`, `TS` (the nanoseconds as Loki wrote them), and
    `__labelTypes` when given."""
    nanoseconds = [loki_time_ns(stamp) for stamp in stamps]
    times = [value // 1_000_000 for value in nanoseconds]
    nanos = [value % 1_000_000 for value in nanoseconds]
    fields = [
        Field("__labels", FieldType.JSON, labels_column),
        Field("Time", FieldType.TIME, times, nanos=nanos if any(nanos) else None),
        Field("Line", FieldType.STRING, lines),
        Field("TS", FieldType.STRING, stamps),
    ]
    if types_column is not None:
        fields.append(Field("__labelTypes", FieldType.JSON, types_column))
    return Frame(fields=fields, meta=frame_meta())


def _categorized_streams_frame(streams: list[Any]) -> Frame:
    """prom.go readCategorizedStream, for Loki's `categorize-labels` encoding: each entry is
    `[ts, line, {"structuredMetadata": {...}, "parsed": {...}}]` and the stream holds the indexed
    labels only. `__labels` merges them (indexed, then structured metadata, then parsed labels,
    a later kind winning a shared name) and `__labelTypes` says which is which: "I", "S", "P"."""
    labels_column: list[Any] = []
    types_column: list[Any] = []
    lines: list[str] = []
    stamps: list[str] = []
    for stream in streams:
        indexed = _string_map(stream.get("stream") if isinstance(stream, Mapping) else None)
        for entry in stream.get("values") or ():
            if not isinstance(entry, list) or len(entry) != 3:
                raise PromStyleError("a categorized log entry must be [ts, line, {labels}]")
            stamp, line, categories = entry
            if not isinstance(stamp, str) or not isinstance(line, str):
                raise PromStyleError("a log entry's time and line must be strings")
            if not isinstance(categories, Mapping):
                raise PromStyleError("a log entry's labels must be an object")
            merged = dict(indexed)
            kinds = dict.fromkeys(indexed, "I")
            for key, kind in (("structuredMetadata", "S"), ("parsed", "P")):
                for name, value in _string_map(categories.get(key)).items():
                    merged[name] = value
                    kinds[name] = kind
            labels_column.append({name: merged[name] for name in sorted(merged)})
            types_column.append({name: kinds[name] for name in sorted(kinds)})
            lines.append(line)
            stamps.append(stamp)
    return _log_frame(labels_column, stamps, lines, types_column)


def _string_map(value: object) -> dict[str, str]:
    """A label set: an object of strings (None is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(item, str) for pair in value.items() for item in pair
    ):
        raise PromStyleError("labels must be an object of strings")
    return dict(value)


def _read_array_data(data: list[Any]) -> list[Frame]:
    """`data` as a list (prom.go readArrayData): strings (label names or values) as one
    `Value` column after the other frames; objects with `exemplars` as one exemplar frame each
    (`/api/v1/query_exemplars`)."""
    frames: list[Frame] = []
    strings: list[str] = []
    for item in data:
        if isinstance(item, Mapping):
            if "exemplars" in item:
                frames.append(_exemplar_frame(item))
        else:
            strings.append(item if isinstance(item, str) else str(item))
    if strings:
        frames.append(Frame(fields=[Field("Value", FieldType.STRING, strings)]))
    return frames


def _exemplar_frame(item: Mapping[str, Any]) -> Frame:
    """readLabelsOrExemplars: `Time`, `Value` (the series' labels), then one string field per
    exemplar label in the order first seen, "" where an exemplar lacks it; meta
    `custom: {resultType: exemplar}`."""
    series_labels = item.get("seriesLabels") or {}
    if not isinstance(series_labels, Mapping):
        raise PromStyleError("seriesLabels must be an object")
    times: list[int] = []
    values: list[float] = []
    label_columns: dict[str, list[str]] = {}
    for index, exemplar in enumerate(item.get("exemplars") or ()):
        if not isinstance(exemplar, Mapping):
            raise PromStyleError("an exemplar must be an object")
        values.append(_float_text(exemplar.get("value")))
        times.append(time_ms(exemplar.get("timestamp")))
        labels = exemplar.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise PromStyleError("an exemplar's labels must be an object")
        for key, value in labels.items():
            column = label_columns.setdefault(str(key), [""] * index)
            column.append(str(value))
        for column in label_columns.values():
            column.extend([""] * (index + 1 - len(column)))
    fields = [
        Field("Time", FieldType.TIME, times),
        Field("Value", FieldType.FLOAT64, values, labels=dict(series_labels)),
    ]
    fields += [Field(name, FieldType.STRING, column) for name, column in label_columns.items()]
    return Frame(fields=fields, meta=frame_meta(custom={"resultType": "exemplar"}))


def _attach_notices(answer: PromStyleAnswer, document: Mapping[str, Any]) -> None:
    notices = [
        {"severity": severity, "text": text}
        for key, severity in (("warnings", "warning"), ("infos", "info"))
        for text in document.get(key) or ()
        if isinstance(text, str)
    ]
    if not notices:
        return
    if not answer.frames:
        answer.frames.append(Frame(fields=[], name="Warnings"))
    for frame in answer.frames:
        frame.meta = frame.meta if frame.meta is not None else frame_meta()
        frame.meta["notices"] = list(notices)


def time_ms(seconds: Any) -> int:
    """converter.timeFromFloat: time.UnixMilli(int64(fv * 1000.0))."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise PromStyleError(f"expected a time in seconds, got {seconds!r}")
    try:
        return int(float(seconds) * 1000.0)
    except (OverflowError, ValueError):
        raise PromStyleError(f"time out of range: {seconds!r}") from None


def loki_time_ns(nanoseconds: str) -> int:
    """converter.timeFromLokiString, in nanoseconds."""
    try:
        return int(nanoseconds)
    except ValueError:
        raise PromStyleError(
            f"unexpected time format '{nanoseconds}' in response. response may have been truncated"
        ) from None


def _read_matrix_fast(body: bytes, *, dataplane: bool) -> PromStyleAnswer | None:
    """The matrix fast path, or None when the answer is not a plain successful matrix."""
    status = _STATUS.search(body)
    result_type = _RESULT_TYPE.search(body)
    start = _RESULT_START.search(body)
    if status is None or result_type is None or start is None:
        return None
    if status.group(1) != b"success" or result_type.group(1) != b"matrix":
        return None
    return _finish_matrix(body, dataplane, start.end(), start.end(), [], TimeGrids(), done=False)


def _finish_matrix(
    body: bytes,
    dataplane: bool,
    result_start: int,
    position: int,
    frames: list[Frame],
    grids: TimeGrids,
    *,
    done: bool,
) -> PromStyleAnswer | None:
    """Read the series from `position` on (after `frames`, read already), then check the rest
    of the document around the result array (which starts at `result_start`)."""
    if not done:
        for series in _iter_series(body, position):
            if series is None:
                return None
            values, labels_bytes, position = series
            frame = _fast_series_frame(values, labels_bytes, dataplane, grids)
            if frame is None:
                return None
            frames.append(frame)
    end = _RESULT_END.match(body, position)
    if end is None:
        return None
    try:
        # The rest of the document (status, warnings, stats...) with the result emptied: the
        # full reader checks and uses it, and it is small.
        skeleton = orjson.loads(body[:result_start] + body[end.start() :])
    except orjson.JSONDecodeError:
        return None
    data = skeleton.get("data") if isinstance(skeleton, Mapping) else None
    if not isinstance(data, Mapping) or skeleton.get("status") != "success":
        return None
    if data.get("resultType") != "matrix":
        return None
    answer = PromStyleAnswer(frames=frames, result_type="matrix")
    _apply_stats(answer, data)
    _attach_notices(answer, skeleton)
    return answer


class MatrixFeed:
    """The matrix fast path while the body is still arriving: each series is converted as soon
    as all of its text is in, so for a large answer the conversion keeps pace with the upstream
    writing it and little is left to do after its last byte. Opportunistic: what it cannot
    read yet it leaves, and `finish` (with the whole body) reads the rest, checks the document
    around the result, or answers None for the full reader to take over. Converted text is
    dropped from its buffer, so it holds about one series of the body at a time."""

    # The document's head ("status", "data", "resultType") comes before the result in
    # Prometheus' answers; past this many bytes without `"result":[` the feed gives up.
    HEAD_LIMIT = 64 * 1024

    def __init__(self, *, dataplane: bool) -> None:
        self._dataplane = dataplane
        self._buffer = bytearray()
        self._offset = 0  # where `_buffer` starts in the body
        self._result_start = -1  # in the body: just after `"result":[`
        self._search_from = 0  # in `_buffer`: where the next "}" may be
        self._frames: list[Frame] = []
        self._grids = TimeGrids()
        self._done = False  # the result array's last series has been read
        self._failed = False

    def feed(self, chunk: bytes) -> None:
        if self._failed or self._done:
            return
        self._buffer += chunk
        if self._result_start < 0:
            start = _RESULT_START.search(self._buffer)
            if start is None:
                self._failed = len(self._buffer) > self.HEAD_LIMIT
                return
            self._result_start = start.end()
            self._consume(start.end())
        while not self._failed and not self._done and self._read_one():
            pass

    def _read_one(self) -> bool:
        """Convert the next series if all of it is in the buffer; False to wait for more."""
        buffer = self._buffer
        head = _SERIES_HEAD.match(buffer)
        if head is None:
            # Not all of a series head yet, or not one at all: `finish` decides with the
            # whole body. A head is small: with HEAD_LIMIT bytes in and still no head the feed
            # stops (a label that never ends must not cost a match of a growing head per chunk).
            self._failed = len(buffer) > self.HEAD_LIMIT
            return False
        close = buffer.find(b"}", max(head.end(), self._search_from))
        if close < 0:
            self._search_from = len(buffer)
            return False
        tail = _SERIES_TAIL.match(buffer, close)
        if tail is None or (not tail.group(1) and tail.end() == len(buffer)):
            self._search_from = close  # the same "}" again, once more has come
            return False  # whether another series follows is not known yet
        with memoryview(buffer) as view:  # one copy of the series' text, not two
            values = bytes(view[head.end() - 1 : close]).rstrip()
        frame = _fast_series_frame(values, head.group(1), self._dataplane, self._grids)
        if frame is None:
            self._failed = True
            return False
        self._frames.append(frame)
        self._done = not tail.group(1)
        self._consume(tail.end())
        return True

    def _consume(self, length: int) -> None:
        del self._buffer[:length]
        self._offset += length
        self._search_from = 0

    def finish(self, body: bytes) -> PromStyleAnswer | None:
        """The answer from the whole body: the series read so far plus the rest, or None when
        the body is not a plain successful matrix (the full reader's case)."""
        if self._failed or self._result_start < 0 or len(body) < self._offset:
            return None
        frames, self._frames = self._frames, []
        return _finish_matrix(
            body,
            self._dataplane,
            self._result_start,
            self._offset,
            frames,
            self._grids,
            done=self._done,
        )


def _iter_series(body: bytes, position: int) -> Iterator[tuple[bytes, bytes, int] | None]:
    """(values array's text, labels JSON, next position) for each series; None when the text
    is not in the shape expected. The values array holds no brace, so the first "}" after its
    start closes the series (a malformed array cut there fails its own checks)."""
    while True:
        if _RESULT_END.match(body, position):
            return
        head = _SERIES_HEAD.match(body, position)
        if head is None:
            yield None
            return
        close = body.find(b"}", head.end())
        if close < 0:
            yield None
            return
        tail = _SERIES_TAIL.match(body, close)
        if tail is None:
            yield None
            return
        yield body[head.end() - 1 : close].rstrip(), head.group(1), tail.end()
        position = tail.end()
        if not tail.group(1):  # no comma: the array must end here
            return


def _fast_series_frame(
    values: bytes, labels_bytes: bytes, dataplane: bool, grids: TimeGrids
) -> Frame | None:
    try:
        labels = orjson.loads(labels_bytes)
    except orjson.JSONDecodeError:
        return None
    columns = _numeric_columns(values, grids) or _text_columns(values)
    if columns is None:
        return None  # a point of another shape: let the full reader decide
    times, floats = columns
    return _time_value_frame(labels, times, floats, _series_meta("matrix", dataplane))


Columns = tuple[Column, Column]

# What JSON numbers are written with, and the comma between them.
_NUMBER_TEXT = b"0123456789+-.eE,"
# Whole seconds this large or smaller make exact milliseconds both as integers and through
# timeFromFloat's float64 arithmetic (below 2**53 either way).
_EXACT_SECONDS = 2**53 // 1000


def _numeric_columns(values: bytes, grids: TimeGrids) -> Columns | None:
    """The quickest way, for a values array as Prometheus writes it (`[[<seconds>,"<number>"],
    ...]`, no NaN or infinities): both columns come out already encoded, with no Python code
    run per point and the only Python objects per point the pieces of one split.

    1. Split at the quotes, the array falls into the time pieces (`[[<t0>,`, `],[<t1>,`, ...,
       `]]`) and the value pieces between them.
    2. The value pieces joined by commas are the values column's JSON as it is: Prometheus
       writes a float64 the way Grafana's SDK does (strconv 'f', shortest), so the text is
       kept; orjson reads it once only to check that each piece is exactly one finite JSON
       number (NaN, "+Inf", 1e999 or "+1" take the text route, as Grafana's float parse
       would give them).
    3. The time pieces, joined again by the quotes (so that where each one ends still shows),
       are compared with the text of a regular grid of whole seconds (Prometheus' range
       queries are one), whose milliseconds column is then written once for every series on
       it (`TimeGrids`); other times are read and converted (`_listed_times`).
    """
    if values == b"[]":
        return EncodedColumn(b"[]", 0), EncodedColumn(b"[]", 0)
    pieces = values.split(b'"')
    points = len(pieces) // 2
    if points < 1 or len(pieces) % 2 == 0:
        return None
    value_pieces = pieces[1::2]
    # The brackets go on in the join, which then makes the column in one copy.
    value_pieces[0] = b"[" + value_pieces[0]
    value_pieces[-1] += b"]"
    value_column = _number_column(b",".join(value_pieces), points)
    del value_pieces
    if value_column is None:
        return None
    # `[[<t0>,"],[<t1>,"],...,"]]`: the array with its values emptied.
    time_text = b'"'.join(pieces[0::2])
    del pieces
    times = grids.column(time_text, points) or _listed_times(time_text, points)
    if times is None:
        return None
    return times, value_column


def _number_column(encoded: bytes, points: int) -> EncodedColumn | None:
    """`encoded` (a bracketed, comma-separated list) as a column, if it is exactly `points`
    finite JSON numbers."""
    if encoded.translate(None, _NUMBER_TEXT) != b"[]":  # only its own two brackets
        return None  # letters (NaN, Inf, true, null), brackets within, braces, spaces
    try:
        # orjson refuses what JSON does not allow ("+1", ".5", "01", "1.") and infinities.
        # An empty piece is refused too, so a piece holding a comma shows in the count.
        numbers = orjson.loads(encoded)
    except orjson.JSONDecodeError:
        return None
    if len(numbers) != points:
        return None
    return EncodedColumn(encoded, points)


class TimeGrids:
    """The time columns of regular grids of whole seconds, by the text of the values array
    they come from, its values emptied. The series of one range answer are on the same grid
    (start + k * step), mostly with the same points, so one column written serves them all;
    only the last grid is kept."""

    def __init__(self) -> None:
        self._text = b""
        self._column: EncodedColumn | None = None

    def column(self, time_text: bytes, points: int) -> EncodedColumn | None:
        """The milliseconds column when `time_text` is exactly `[[<t0>,"],[<t0 + step>,"],
        ...,"]]` with whole seconds and a positive step, else None."""
        if time_text == self._text:
            return self._column
        column = _grid_column(time_text, points)
        if column is not None:
            self._text, self._column = time_text, column
        return column


def _grid_column(time_text: bytes, points: int) -> EncodedColumn | None:
    first_end = time_text.find(b",")
    try:
        first = int(time_text[2:first_end])
        step = 1
        if points > 1:  # after `,"],[`
            second_end = time_text.find(b",", first_end + 5)
            step = int(time_text[first_end + 5 : second_end]) - first
    except ValueError:
        return None
    last = first + (points - 1) * step
    if step < 1 or max(abs(first), abs(last)) > _EXACT_SECONDS:
        return None
    expected = b'"'.join(
        (b"[[%d," % first, *map(b"],[%d,".__mod__, range(first + step, last + 1, step)), b"]]")
    )
    if expected != time_text:  # a gap, fractions, or other spellings: read them
        return None
    milliseconds = list(range(first * 1000, last * 1000 + 1, step * 1000))
    return EncodedColumn(_compact(orjson.dumps(milliseconds)), points)


def _listed_times(time_text: bytes, points: int) -> Column | None:
    """Times off a regular grid, from the array with its values emptied,
    `[[<t0>,"],[<t1>,"],...,"]]`: every time must sit between `,"],[` and `,"` exactly."""
    if not (time_text.startswith(b"[[") and time_text.endswith(b',"]]')):
        return None
    listed = time_text[2:-4].replace(b',"],[', b",")
    if listed.translate(None, _NUMBER_TEXT):
        return None  # a piece of another shape (or letters)
    try:
        stamps = orjson.loads(b"[" + listed + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(stamps) != points:
        return None
    stamps_json = orjson.dumps(stamps)
    if (
        any(mark in stamps_json for mark in (b".", b"e", b"-"))
        or stamps_json.startswith(b"[0")
        or b",0" in stamps_json  # a zero: "0000" is no number
        or max(stamps) > _EXACT_SECONDS
    ):
        return _float_times(stamps)
    # Whole seconds made milliseconds in the text: exactly timeFromFloat for them.
    return EncodedColumn(stamps_json.replace(b",", b"000,")[:-1] + b"000]", points)


def _compact(encoded: bytes) -> bytes:
    """A copy at its exact size: orjson's output keeps the capacity it grew to (about twenty
    times the text for a column of numbers), which would be held until the frame is written."""
    return bytes(memoryview(encoded))


def _float_times(stamps: list[Any]) -> Column | None:
    """Times with fractions of a second (or negative, or zero, or huge): timeFromFloat, point
    by point but in C-level maps."""
    try:
        return array("q", map(int, map(_TO_MS, stamps)))
    except (TypeError, ValueError, OverflowError):
        return None


# Every byte but the four that make a values array's structure: `[`, `]`, `,` and `"`.
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'[],"')
_POINT_SKELETON = b',""],['


def _count_pairs(values: bytes) -> int | None:
    """How many `[<bare>,"<quoted>"]` points a non-empty values array holds, checked in C: with
    everything but `[],"` deleted it must read exactly `[[,""],[,""],...]`. None otherwise."""
    skeleton = values.translate(None, _NOT_STRUCTURE)
    points = (len(skeleton) - 1) // 6  # "[" + n * '[,""]' + (n - 1) * "," + "]"
    if points < 1 or skeleton != b"[[" + _POINT_SKELETON * (points - 1) + b',""]]':
        return None
    return points


def _text_columns(values: bytes) -> Columns | None:
    """Values with NaN or infinities, which JSON cannot spell (or spaced out): each read as
    text."""
    points = _count_pairs(values)
    stamps = _STAMP.findall(values)
    numbers = _VALUE.findall(values)
    if points is None or not len(stamps) == len(numbers) == points:
        return None
    try:
        return array("q", map(int, map(_TO_MS, map(float, stamps)))), array(
            "d", map(float, numbers)
        )
    except ValueError:
        return None

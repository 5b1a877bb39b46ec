"""The `from`/`to` of a `/api/ds/query` body, read as Grafana's backend reads them.

Grafana parses each bound with the plugin SDK's `gtime.TimeRange` (backend/gtime/time_range.go,
`parsableTime.parse`), trying in order:

1. an integer: epoch milliseconds ("1700000000000", or a JSON number);
2. a Go duration, read as that long before now ("1h", "90m", "1h30m");
3. date math, as the jszwedko/go-datemath library evaluates it (it mimics the frontend's):
   an anchor, `now` or an ISO-8601 date followed by `||`, then any number of `+<n><unit>`,
   `-<n><unit>` and `/<unit>` (round to the start of that unit). Units: y M w d h H m s.
   `to` is parsed with round-up: `now/d` as `to` is the last millisecond of today.

Rounding and calendar arithmetic run in UTC (Grafana passes no location for `/api/ds/query`),
and weeks start on Monday (go-datemath's default).

One difference, on purpose: where Grafana's `MustGetFrom`/`MustGetTo` silently turn a bound it
cannot parse into the Unix epoch, this module refuses it with a `BadRequest` naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.errors import BadRequest
from gateway.query import durations
from gateway.registry.validation import json_type, shown

_DATEMATH_OPERATION = re.compile(r"([+-])(\d*)([yMwdhHms])|/([yMwdhHms])")
_UNIT_TIMEDELTA = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "H": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}


class TimeRangeError(BadRequest):
    """A `from` or `to` that Grafana's time parser would not understand."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Both bounds in epoch milliseconds (what Grafana hands its data source plugins)."""

    from_ms: int
    to_ms: int

    @property
    def duration_ns(self) -> int:
        return (self.to_ms - self.from_ms) * durations.MILLISECOND


def parse_time_range(raw_from: object, raw_to: object, now: datetime) -> TimeRange:
    """`from` and `to` of a query body; `now` is the request's clock (aware, any zone)."""
    return TimeRange(
        from_ms=parse_time(raw_from, now, round_up=False, field="from"),
        to_ms=parse_time(raw_to, now, round_up=True, field="to"),
    )


def parse_time(raw: object, now: datetime, *, round_up: bool, field: str) -> int:
    """One bound as epoch milliseconds. `round_up` is Grafana's choice for `to`."""
    if isinstance(raw, bool) or raw is None:
        raise _wrong_type(field, raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if not raw.is_integer():
            raise TimeRangeError(f"{field}: epoch milliseconds must be a whole number")
        return int(raw)
    if not isinstance(raw, str):
        raise _wrong_type(field, raw)
    text = raw.strip()
    if not text:
        raise TimeRangeError(f"{field}: must not be empty")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    now_utc = now.astimezone(UTC)
    try:
        # "1h" means an hour ago: Grafana tries time.ParseDuration("-" + text).
        ago = durations.parse_go_duration("-" + text)
    except durations.DurationError:
        pass
    else:
        return _epoch_ms(now_utc) + ago // durations.MILLISECOND
    return _datemath(text, now_utc, round_up=round_up, field=field)


def _wrong_type(field: str, raw: object) -> TimeRangeError:
    return TimeRangeError(
        f"{field}: expected epoch milliseconds or a relative time, got {json_type(raw)}"
    )


def _datemath(text: str, now: datetime, *, round_up: bool, field: str) -> int:
    if text.startswith("now"):
        anchor, operations = now, text[3:]
    else:
        date_text, separator, operations = text.partition("||")
        anchor = _parse_anchor(date_text, field)
        if not separator and operations:
            raise TimeRangeError(f"{field}: {shown(text)} is not a time Grafana understands")
    moment = anchor
    position = 0
    while position < len(operations):
        match = _DATEMATH_OPERATION.match(operations, position)
        if match is None:
            raise TimeRangeError(f"{field}: {shown(text)} is not a time Grafana understands")
        sign, amount, unit, round_unit = match.groups()
        if round_unit is not None:
            moment = _round(moment, round_unit, up=round_up)
        else:
            count = int(amount) if amount else 1
            moment = _add(moment, unit, -count if sign == "-" else count)
        position = match.end()
    return _epoch_ms(moment)


def _parse_anchor(text: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimeRangeError(f"{field}: {shown(text)} is not a time Grafana understands") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _add(moment: datetime, unit: str, count: int) -> datetime:
    if unit in ("y", "M"):
        # Go's AddDate: months overflow into the next month (Jan 31 + 1M = Mar 3 or 2).
        months = moment.month - 1 + count * (12 if unit == "y" else 1)
        year, month = moment.year + months // 12, months % 12 + 1
        first = moment.replace(year=year, month=month, day=1)
        return first + timedelta(days=moment.day - 1)
    return moment + count * _UNIT_TIMEDELTA[unit]


def _round(moment: datetime, unit: str, *, up: bool) -> datetime:
    start = _start_of(moment, unit)
    if not up:
        return start
    # Round-up ends the period on its last nanosecond; in milliseconds, its last millisecond.
    return _add(start, unit, 1) - timedelta(milliseconds=1)


def _start_of(moment: datetime, unit: str) -> datetime:
    if unit == "y":
        return moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if unit == "M":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "w":
        return day - timedelta(days=moment.weekday())  # Monday is weekday 0
    if unit == "d":
        return day
    if unit in ("h", "H"):
        return moment.replace(minute=0, second=0, microsecond=0)
    if unit == "m":
        return moment.replace(second=0, microsecond=0)
    return moment.replace(microsecond=0)


def _epoch_ms(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000

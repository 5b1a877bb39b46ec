"""Durations as Grafana's Go backend reads, rounds and prints them.

Everything is integer nanoseconds, like Go's `time.Duration`, so that a step computed from a
time range and a resolution comes out exactly as Grafana's (it divides nanoseconds).

Sources (grafana/grafana-plugin-sdk-go, backend/gtime/gtime.go): `ParseDuration`,
`ParseIntervalStringToTimeDuration`, `FormatInterval`, `RoundInterval`; Go's `time.Duration`
`String()` and `time.ParseDuration` for the rest.
"""

from __future__ import annotations

import re

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
# gtime.ParseDuration: a year is 365.25 days (Julian), a month a twelfth of that.
YEAR_AVERAGE = int(DAY * 365.25)
MONTH_AVERAGE = YEAR_AVERAGE // 12

_GO_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "µs": MICROSECOND,
    "μs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DATE_UNIT = re.compile(r"^(\d+)([dwMy])$")
_DATE_UNIT_NS = {"d": DAY, "w": WEEK, "M": MONTH_AVERAGE, "y": YEAR_AVERAGE}


class DurationError(ValueError):
    """Text that is no duration Grafana would accept."""


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration`: "300ms", "-1.5h", "2h45m"; "0" alone is zero."""
    if text in ("0", "+0", "-0"):
        return 0
    sign = 1
    rest = text
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if not rest:
        raise DurationError(f"invalid duration {text!r}")
    total = 0.0
    position = 0
    while position < len(rest):
        match = _GO_DURATION.match(rest, position)
        if match is None or match.group(1) in ("", "."):
            raise DurationError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    return sign * round(total)


def parse_duration(text: str) -> int:
    """gtime.ParseDuration: Go durations plus "<n>d", "<n>w", "<n>M", "<n>y"."""
    match = _DATE_UNIT.match(text)
    if match is None:
        return parse_go_duration(text)
    return int(match.group(1)) * _DATE_UNIT_NS[match.group(2)]


def parse_interval_string(text: str) -> int:
    """gtime.ParseIntervalStringToTimeDuration: what a query's `interval` (min step) may be.

    "<10s>" loses its brackets; bare digits are seconds; anything else is `parse_duration`."""
    if not text:
        raise DurationError("invalid interval")
    if text.startswith("<"):
        text = text[1:]
    if text.endswith(">"):
        text = text[:-1]
    if text.isdigit():
        return int(text) * SECOND
    return parse_duration(text)


def format_interval(duration: int) -> str:
    """gtime.FormatInterval: the largest whole unit, truncated ("90s" is "1m")."""
    year = 365 * DAY
    for unit, suffix in ((year, "y"), (DAY, "d"), (HOUR, "h"), (MINUTE, "m"), (SECOND, "s")):
        if duration >= unit:
            return f"{duration // unit}{suffix}"
    if duration >= MILLISECOND:
        return f"{duration // MILLISECOND}ms"
    return "1ms"


# gtime.RoundInterval: (upper bound inclusive, rounded value), in milliseconds.
_ROUNDING_MS: tuple[tuple[int, int], ...] = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (172_800_000, 86_400_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
)


def round_interval(duration: int) -> int:
    """gtime.RoundInterval: a lower, rounder duration than the one given."""
    for bound_ms, rounded_ms in _ROUNDING_MS:
        if duration <= bound_ms * MILLISECOND:
            return rounded_ms * MILLISECOND
    # The last two cases: below 6 weeks (3628800000ms, strict) 30d, else 1y.
    if duration < 3_628_800_000 * MILLISECOND:
        return 2_592_000_000 * MILLISECOND
    return 31_536_000_000 * MILLISECOND


def go_duration_string(duration: int) -> str:
    """Go's `time.Duration.String()`: "15s", "1m0s", "1h30m0s", "500ms", "1.5s"."""
    if duration == 0:
        return "0s"
    negative = duration < 0
    remaining = -duration if negative else duration
    if remaining < SECOND:
        for unit, suffix in ((MILLISECOND, "ms"), (MICROSECOND, "µs"), (NANOSECOND, "ns")):
            if remaining >= unit:
                text = _fraction(remaining, unit) + suffix
                break
    else:
        hours, remaining = divmod(remaining, HOUR)
        minutes, remaining = divmod(remaining, MINUTE)
        seconds = _fraction(remaining, SECOND) + "s"
        if hours:
            text = f"{hours}h{minutes}m{seconds}"
        elif minutes:
            text = f"{minutes}m{seconds}"
        else:
            text = seconds
    return "-" + text if negative else text


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    if not part:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{part:0{digits}d}".rstrip("0")

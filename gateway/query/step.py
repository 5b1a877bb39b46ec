"""The step of a range query, as Grafana's backend derives it.

Prometheus (grafana/grafana pkg/promlib/models/query.go `calculatePrometheusInterval`, with
pkg/promlib/intervalv2/intervalv2.go and the SDK's gtime.GetIntervalFrom / RoundInterval):

1. min interval = the query's `interval` (the "Min step" box) unless empty, "0s" or a variable
   ($__interval, $__rate_interval, ...); else the query's `intervalMs` if non-zero; else the
   source's `jsonData.timeInterval` (scrape interval); else 15s.
2. calculated = (to - from) / maxDataPoints (1500 when maxDataPoints is 0); below the min
   interval it is the min interval, else `RoundInterval(calculated)`.
3. safe = RoundInterval((to - from) / 11000): Prometheus refuses more than 11,000 points.
4. step = max(calculated, safe); `$__rate_interval` as interval gives
   max(step + scrape, 4 * scrape) instead; otherwise step * intervalFactor (if set).

Loki (pkg/tsdb/loki/step.go `calculateStep`): with no `step` in the query,
ceil_ms(max(interval * resolution, (to - from) / 11000)) where interval is the query's
intervalMs; with a `step`, ParseIntervalStringToTimeDuration(step) * resolution.
"""

from __future__ import annotations

from gateway.query import durations

PROMETHEUS_DEFAULT_MIN_INTERVAL = 15 * durations.SECOND
DEFAULT_RESOLUTION = 1500  # intervalv2.DefaultRes
SAFE_RESOLUTION = 11_000  # Prometheus' limit of points per series

_INTERVAL_VARIABLES = frozenset(
    {
        "$__interval",
        "$__interval_ms",
        "$__rate_interval",
        "$__rate_interval_ms",
        "${__interval}",
        "${__interval_ms}",
        "${__rate_interval}",
        "${__rate_interval_ms}",
    }
)
_RATE_INTERVAL = frozenset({"$__rate_interval", "${__rate_interval}"})


def min_interval(query_interval: str, interval_ms: int, scrape_interval: str, default: int) -> int:
    """gtime.GetIntervalFrom, after Grafana blanks a variable used as the interval."""
    interval = "" if query_interval in _INTERVAL_VARIABLES else query_interval
    if interval == "0s":
        interval = ""
    if not interval and interval_ms:
        return interval_ms * durations.MILLISECOND
    if not interval:
        interval = scrape_interval
    if not interval:
        return default
    return durations.parse_interval_string(interval)


def prometheus_step(
    *,
    range_ns: int,
    query_interval: str,
    interval_ms: int,
    max_data_points: int,
    scrape_interval: str,
    interval_factor: int,
) -> int:
    """The step Grafana sends Prometheus, in nanoseconds (see the module docstring)."""
    minimum = min_interval(
        query_interval, interval_ms, scrape_interval, PROMETHEUS_DEFAULT_MIN_INTERVAL
    )
    resolution = max_data_points or DEFAULT_RESOLUTION
    calculated = _go_div(range_ns, resolution)
    calculated = minimum if calculated < minimum else durations.round_interval(calculated)
    safe = durations.round_interval(_go_div(range_ns, SAFE_RESOLUTION))
    adjusted = max(calculated, safe)
    if query_interval in _RATE_INTERVAL:
        return rate_interval(adjusted, scrape_interval)
    return adjusted * (interval_factor or 1)


def rate_interval(interval: int, scrape_interval: str) -> int:
    """models.calculateRateInterval: max(interval + scrape, 4 * scrape), scrape default 15s."""
    try:
        scrape = durations.parse_interval_string(scrape_interval or "15s")
    except durations.DurationError:
        return 0
    return max(interval + scrape, 4 * scrape)


def loki_step(*, range_ns: int, interval_ms: int, resolution: int, query_step: str) -> int:
    """The step Grafana sends Loki, in nanoseconds (see the module docstring)."""
    if query_step:
        return durations.parse_interval_string(query_step) * resolution
    chosen = max(interval_ms * durations.MILLISECOND * resolution, range_ns // SAFE_RESOLUTION)
    return -(-chosen // durations.MILLISECOND) * durations.MILLISECOND  # ceil to a millisecond


def _go_div(numerator: int, denominator: int) -> int:
    """Go's integer division truncates toward zero (Python's floors)."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient

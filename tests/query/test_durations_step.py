"""Durations and steps as Grafana's Go backend computes them.

Rules: grafana-plugin-sdk-go backend/gtime/gtime.go; grafana/grafana
pkg/promlib/models/query.go (calculatePrometheusInterval), pkg/promlib/intervalv2/intervalv2.go,
pkg/tsdb/loki/step.go."""

from __future__ import annotations

import pytest

from gateway.query import durations as d
from gateway.query.step import loki_step, min_interval, prometheus_step, rate_interval


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (15 * d.SECOND, "15s"),
        (60 * d.SECOND, "1m0s"),
        (90 * d.MINUTE, "1h30m0s"),
        (500 * d.MILLISECOND, "500ms"),
        (1500 * d.MILLISECOND, "1.5s"),
        (0, "0s"),
        (25 * d.HOUR, "25h0m0s"),
    ],
)
def test_go_duration_string(duration: int, text: str) -> None:
    assert d.go_duration_string(duration) == text


@pytest.mark.parametrize(
    ("duration", "text"),
    [(90 * d.SECOND, "1m"), (2 * d.DAY, "2d"), (400 * d.DAY, "1y"), (0, "1ms"), (d.SECOND, "1s")],
)
def test_format_interval(duration: int, text: str) -> None:
    assert d.format_interval(duration) == text


@pytest.mark.parametrize(
    ("duration_ms", "rounded_ms"),
    [
        (2400, 2000),
        (10, 1),
        (11, 10),
        (60_000, 60_000),
        (3_000_000, 3_600_000),
        (10**12, 31_536_000_000),
    ],
)
def test_round_interval(duration_ms: int, rounded_ms: int) -> None:
    assert d.round_interval(duration_ms * d.MILLISECOND) == rounded_ms * d.MILLISECOND


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("10s", 10 * d.SECOND),
        ("<10s>", 10 * d.SECOND),
        ("30", 30 * d.SECOND),
        ("1d", d.DAY),
        ("1m30s", 90 * d.SECOND),
        ("2w", 2 * d.WEEK),
    ],
)
def test_parse_interval_string(text: str, duration: int) -> None:
    assert d.parse_interval_string(text) == duration


def test_min_interval_precedence() -> None:
    # the query's interval, unless a variable; then intervalMs; then the scrape interval; 15s
    assert min_interval("30s", 1000, "5s", 15 * d.SECOND) == 30 * d.SECOND
    assert min_interval("$__interval", 2000, "5s", 15 * d.SECOND) == 2 * d.SECOND
    assert min_interval("", 0, "5s", 15 * d.SECOND) == 5 * d.SECOND
    assert min_interval("0s", 0, "", 15 * d.SECOND) == 15 * d.SECOND


@pytest.mark.parametrize(
    ("range_ns", "query_interval", "interval_ms", "max_points", "scrape", "factor", "step"),
    [
        # 3600s / 1000 = 3.6s, above the 1s min interval: RoundInterval(3.6s) = 5s
        pytest.param(d.HOUR, "", 1000, 1000, "", 0, 5 * d.SECOND, id="one-hour-1000-points"),
        pytest.param(d.HOUR, "1m", 15_000, 1000, "15s", 0, 60 * d.SECOND, id="min-interval-wins"),
        # 30 days at 100000 points would be 25.9s; the 11000-point limit gives
        # RoundInterval(235s) = 5m
        pytest.param(30 * d.DAY, "", 1, 100_000, "", 0, 5 * d.MINUTE, id="safe-resolution-wins"),
        pytest.param(d.HOUR, "", 1000, 1000, "15s", 2, 10 * d.SECOND, id="interval-factor"),
        # $__rate_interval: max(step + scrape, 4 * scrape) = max(5s + 15s, 60s)
        pytest.param(
            d.HOUR, "$__rate_interval", 1000, 1000, "15s", 0, 60 * d.SECOND, id="rate-interval"
        ),
    ],
)
def test_prometheus_step(
    range_ns: int,
    query_interval: str,
    interval_ms: int,
    max_points: int,
    scrape: str,
    factor: int,
    step: int,
) -> None:
    assert (
        prometheus_step(
            range_ns=range_ns,
            query_interval=query_interval,
            interval_ms=interval_ms,
            max_data_points=max_points,
            scrape_interval=scrape,
            interval_factor=factor,
        )
        == step
    )


def test_rate_interval() -> None:
    assert rate_interval(90 * d.SECOND, "15s") == 105 * d.SECOND


def test_loki_step() -> None:
    # max(intervalMs * resolution, range / 11000), ceiled to a millisecond
    assert (
        loki_step(range_ns=3600 * d.SECOND, interval_ms=2000, resolution=1, query_step="")
        == 2 * d.SECOND
    )
    assert (
        loki_step(range_ns=30 * d.DAY, interval_ms=1, resolution=1, query_step="")
        == 235_637 * d.MILLISECOND
    )
    assert (
        loki_step(range_ns=d.HOUR, interval_ms=1000, resolution=2, query_step="30s")
        == 60 * d.SECOND
    )

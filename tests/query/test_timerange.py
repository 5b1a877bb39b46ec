"""Grafana's from/to parsing (grafana-plugin-sdk-go backend/gtime/time_range.go, go-datemath)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.errors import BadRequest
from gateway.query.timerange import TimeRange, parse_time, parse_time_range

# Wednesday 2024-05-15 13:45:30.250 UTC
NOW = datetime(2024, 5, 15, 13, 45, 30, 250_000, tzinfo=UTC)
NOW_MS = 1715780730250


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1700000000000, 1700000000000),
        ("1700000000000", 1700000000000),
        (1700000000000.0, 1700000000000),
        ("now", NOW_MS),
        ("now-1h", NOW_MS - 3_600_000),
        ("now-7d", NOW_MS - 7 * 86_400_000),
        ("now+5m", NOW_MS + 300_000),
        ("now-90s", NOW_MS - 90_000),
        ("1h", NOW_MS - 3_600_000),  # a bare Go duration is that long ago
        ("1h30m", NOW_MS - 5_400_000),
        ("now/d", ms(2024, 5, 15)),
        ("now-1d/d", ms(2024, 5, 14)),
        ("now/w", ms(2024, 5, 13)),  # weeks start on Monday
        ("now/M", ms(2024, 5, 1)),
        ("now/y", ms(2024, 1, 1)),
        ("now/h", ms(2024, 5, 15, 13)),
        ("now-1M", ms(2024, 4, 15, 13, 45, 30) + 250),
        ("2024-01-31T00:00:00Z||+1M", ms(2024, 3, 2)),  # Go's AddDate overflows the month
        ("2024-01-01T00:00:00Z", ms(2024, 1, 1)),
    ],
)
def test_from_bound(raw: object, expected: int) -> None:
    assert parse_time(raw, NOW, round_up=False, field="from") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("now/d", ms(2024, 5, 16) - 1),  # `to` rounds up to the period's last millisecond
        ("now-1d/d", ms(2024, 5, 15) - 1),
        ("now/M", ms(2024, 6, 1) - 1),
        ("now", NOW_MS),
    ],
)
def test_to_bound_rounds_up(raw: str, expected: int) -> None:
    assert parse_time(raw, NOW, round_up=True, field="to") == expected


def test_range() -> None:
    assert parse_time_range("now-1h", "now", NOW) == TimeRange(NOW_MS - 3_600_000, NOW_MS)
    assert parse_time_range("now-1h", "now", NOW).duration_ns == 3_600_000_000_000


@pytest.mark.parametrize("raw", ["", "yesterday", "now-1x", "now/q", None, True, [], 1.5, "now-"])
def test_bad_bounds_name_the_field(raw: object) -> None:
    with pytest.raises(BadRequest, match=r"^to: "):
        parse_time(raw, NOW, round_up=True, field="to")

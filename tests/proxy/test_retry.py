"""Which requests may be sent to a second target (gateway/proxy/retry.py): the pure rules. The
requests themselves are in test_replicas.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest

from gateway.proxy.http1 import RequestBody
from gateway.proxy.policy import ProxyPath, UpstreamPath
from gateway.proxy.retry import RetryPolicy, replayable

FORM = b"application/x-www-form-urlencoded"


def eligible(
    source_type: str,
    method: str,
    path: str,
    body: RequestBody = None,
    content_type: bytes | None = None,
    query: str = "",
) -> bool:
    return replayable(
        source_type, method, UpstreamPath(ProxyPath.parse(path), query), body, content_type
    )


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_are_eligible_on_any_path(method: str) -> None:
    assert eligible("acme-json", method, "anything/at/all")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE"])
def test_writes_and_other_methods_are_not(method: str) -> None:
    assert not eligible("prometheus", method, "api/v1/query", b"")


@pytest.mark.parametrize(
    "path", ["api/v1/query", "api/v1/query_range", "api/v1/series", "api/v1/labels",
             "api/v1/query_exemplars"],
)  # fmt: skip
def test_prometheus_read_posts_are_eligible(path: str) -> None:
    assert eligible("prometheus", "POST", path, b"query=up", FORM)
    assert eligible("grafana-amazonprometheus-datasource", "POST", path, b"query=up", FORM)


@pytest.mark.parametrize(
    "path", ["api/v1/admin/tsdb/delete_series", "api/v1/write", "rules", "api/v1/query/x"]
)
def test_other_prometheus_posts_are_not(path: str) -> None:
    assert not eligible("prometheus", "POST", path, b"x", FORM)


def test_a_read_path_of_another_type_is_not_eligible_for_post() -> None:
    assert not eligible("acme-json", "POST", "api/v1/query", b"query=up", FORM)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("loki/api/v1/query", True),
        ("loki/api/v1/query_range", True),
        ("loki/api/v1/labels", True),
        ("loki/api/v1/label/job/values", True),
        ("loki/api/v1/series", True),
        ("loki/api/v1/push", False),
        ("loki/api/v1/rules", False),
    ],
)
def test_loki_query_endpoints(path: str, expected: bool) -> None:
    assert eligible("loki", "POST", path, b"query=x", FORM) is expected


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("SELECT mean(v) FROM cpu WHERE time > now() - 1h", True),
        ("show databases", True),
        ("SELECT * FROM a; SHOW MEASUREMENTS;", True),
        ("  \n select 1", True),
        ("SELECT * INTO copy FROM cpu", False),
        ("DROP DATABASE telegraf", False),
        ("CREATE DATABASE x", False),
        ("SELECT * FROM a; DROP SERIES FROM b", False),
        ("SELECT 'x;DROP'", False),  # a false split only makes it ineligible
        ("-- c\nSELECT 1", False),  # a comment could hide a statement's start
        ("", False),
        ("selection", False),
    ],
)
def test_influxql_every_statement_must_only_read(q: str, expected: bool) -> None:
    form = urlencode({"q": q, "db": "telegraf"}).encode()
    assert eligible("influxdb", "POST", "query", form, FORM + b"; charset=utf-8") is expected
    assert eligible("influxdb", "POST", "query", query=urlencode({"q": q})) is expected
    assert eligible("influxdb", "GET", "query", query=urlencode({"q": q})) is expected


def test_influxql_statements_in_both_places_must_all_read() -> None:
    query = urlencode({"q": "SELECT 1"})
    assert not eligible("influxdb", "POST", "query", b"q=DROP+DATABASE+x", FORM, query)
    assert not eligible("influxdb", "POST", "query", b"q=SELECT+1", b"multipart/form-data", query)
    assert not eligible("influxdb", "POST", "query", None)  # no statement: not Grafana's
    assert eligible("influxdb", "GET", "query")


@pytest.mark.parametrize(
    ("flux", "expected"),
    [
        (b'{"query": "from(bucket: \\"b\\") |> range(start: -1h)"}', True),
        (b'import "influxdata/influxdb/schema"\nschema.measurements(bucket: "b")', True),
        (b'from(bucket: "b") |> range(start: -1h) |> to(bucket: "c")', False),
        (b'from(bucket: "b") |> experimental.to(bucket: "c")', False),
        (b'from(bucket: "b") |> wideTo(bucket: "c")', False),
        (b'import "http"\nhttp.post(url: "http://x")', False),
        (b'{"query": "import \\"sql\\"\\nsql.to(driverName: \\"x\\")"}', False),
        (b'import "contrib/sranka/telegram"', False),
    ],
)
def test_flux_queries_are_eligible_unless_they_write_or_send(flux: bytes, expected: bool) -> None:
    assert eligible("influxdb", "POST", "api/v2/query", flux, b"application/json") is expected


def test_a_streamed_body_is_never_eligible() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"query=up"

    assert not eligible("prometheus", "POST", "api/v1/query", chunks(), FORM)


def test_retry_policy_defaults_and_tolerant_reading() -> None:
    assert RetryPolicy.of({}) == RetryPolicy(1, None)
    assert RetryPolicy.of({"retry": {"attempts": 3, "perTryTimeout": 0.5}}) == RetryPolicy(3, 0.5)
    assert RetryPolicy.of({"retry": {"attempts": 0}}) == RetryPolicy(0, None)
    bad = {"retry": {"attempts": -1, "perTryTimeout": 0}}
    assert RetryPolicy.of(bad) == RetryPolicy(1, None)
    assert RetryPolicy.of({"retry": "yes"}) == RetryPolicy()

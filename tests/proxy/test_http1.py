"""Request heads as the pool writes them, and origins: pure functions, no sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.proxy.http1 import Timeouts, encode_request_head
from gateway.proxy.upstream import Origin, _host_header


async def no_chunks() -> AsyncIterator[bytes]:
    nothing: tuple[bytes, ...] = ()
    for chunk in nothing:
        yield chunk


def head(
    method: str = "GET",
    target: str = "/",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
    content_length: int | None = None,
) -> tuple[bytes, bool]:
    return encode_request_head(
        method,
        target,
        headers or [],
        host_header=b"upstream:8086",
        body=body,
        content_length=content_length,
    )


class TestRequestHead:
    def test_get_without_headers(self) -> None:
        assert head() == (b"GET / HTTP/1.1\r\nHost: upstream:8086\r\n\r\n", False)

    def test_caller_headers_keep_order_case_and_duplicates_and_come_first(self) -> None:
        encoded, _ = head(
            target="/q?a=%20&a=2",
            headers=[(b"x-B", b"2"), (b"X-A", b"1"), (b"x-B", b"3"), (b"Host", b"grafana.example")],
        )
        assert encoded == (
            b"GET /q?a=%20&a=2 HTTP/1.1\r\n"
            b"x-B: 2\r\nX-A: 1\r\nx-B: 3\r\nHost: grafana.example\r\n\r\n"
        )

    def test_bytes_body_is_framed_by_its_length(self) -> None:
        encoded, _ = head("POST", body=b"cpu value=1", headers=[(b"Content-Length", b"1")])
        assert encoded.endswith(b"Host: upstream:8086\r\nContent-Length: 11\r\n\r\n")
        assert encoded.count(b"Content-Length") == 1

    def test_streamed_body_is_chunked_unless_its_length_is_given(self) -> None:
        chunked, _ = head("POST", body=no_chunks(), headers=[(b"Transfer-Encoding", b"gzip")])
        assert chunked.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
        assert chunked.count(b"Transfer-Encoding") == 1
        sized, _ = head("POST", body=no_chunks(), content_length=42)
        assert sized.endswith(b"Content-Length: 42\r\n\r\n")

    @pytest.mark.parametrize(
        ("method", "framing"),
        [("POST", b"Content-Length: 0\r\n"), ("PATCH", b"Content-Length: 0\r\n"), ("GET", b"")],
    )
    def test_no_body(self, method: str, framing: bytes) -> None:
        encoded, _ = head(method)
        assert encoded.endswith(b"Host: upstream:8086\r\n" + framing + b"\r\n")

    @pytest.mark.parametrize(
        "name", [b"Connection", b"keep-alive", b"TE", b"Upgrade", b"Proxy-Connection"]
    )
    def test_connection_management_fields_are_dropped(self, name: bytes) -> None:
        encoded, _ = head(headers=[(name, b"close"), (b"X-Kept", b"1")])
        assert encoded == b"GET / HTTP/1.1\r\nX-Kept: 1\r\nHost: upstream:8086\r\n\r\n"

    def test_expect_continue_is_honoured_only_with_a_body(self) -> None:
        expect = [(b"Expect", b" 100-Continue ")]
        with_body, asked = head("PUT", headers=expect, body=b"x")
        assert asked
        assert with_body.endswith(b"Content-Length: 1\r\nExpect: 100-continue\r\n\r\n")
        for body in (None, b""):
            encoded, asked = head("PUT", headers=expect, body=body)
            assert not asked
            assert b"Expect" not in encoded
        _, asked = head("PUT", headers=expect, body=no_chunks(), content_length=0)
        assert not asked

    def test_other_expectations_are_not_forwarded(self) -> None:
        encoded, asked = head("PUT", headers=[(b"Expect", b"something-else")], body=b"x")
        assert not asked
        assert b"Expect" not in encoded

    @pytest.mark.parametrize("method", ["GET", "PROPFIND", "M-SEARCH"])
    def test_any_token_is_a_method(self, method: str) -> None:
        assert head(method)[0].startswith(method.encode() + b" / ")

    @pytest.mark.parametrize("method", ["", "GET /", "G\r\nET", "GÉT"])
    def test_method_that_is_not_a_token_is_refused(self, method: str) -> None:
        with pytest.raises(ValueError, match="method"):
            head(method)

    def test_length_given_for_a_bytes_body_must_match(self) -> None:
        with pytest.raises(ValueError, match="content_length"):
            head("POST", body=b"abc", content_length=4)
        with pytest.raises(ValueError, match="negative"):
            head("POST", body=no_chunks(), content_length=-1)


class TestOrigin:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("http://prometheus:9090/api/v1", Origin("http", "prometheus", 9090)),
            ("HTTPS://Influx.Example/", Origin("https", "influx.example", 443)),
            ("http://user:pw@10.0.0.1", Origin("http", "10.0.0.1", 80)),
            ("https://[::1]:8443/x?y", Origin("https", "::1", 8443)),
        ],
    )
    def test_from_url_keeps_only_the_origin(self, url: str, expected: Origin) -> None:
        assert Origin.from_url(url) == expected

    @pytest.mark.parametrize(
        "url", ["ftp://host/", "http:///path", "http://host:99999/", "unix:/run/x.sock"]
    )
    def test_from_url_refuses_what_is_no_http_origin(self, url: str) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - urlsplit's and ours
            Origin.from_url(url)

    def test_tls_settings_are_part_of_the_identity(self) -> None:
        verified = Origin.from_url("https://h")
        assert Origin.from_url("https://h", tls_skip_verify=True) != verified
        assert hash(Origin.from_url("https://h")) == hash(verified)

    @pytest.mark.parametrize(
        ("origin", "host_header"),
        [
            (Origin("http", "prometheus", 80), b"prometheus"),
            (Origin("http", "prometheus", 9090), b"prometheus:9090"),
            (Origin("https", "influx", 443), b"influx"),
            (Origin("https", "::1", 8443), b"[::1]:8443"),
            (Origin("http", "bücher.example", 80), b"xn--bcher-kva.example"),
        ],
    )
    def test_host_header(self, origin: Origin, host_header: bytes) -> None:
        assert _host_header(origin) == host_header

    def test_authority(self) -> None:
        assert Origin("https", "::1", 8443).authority == "[::1]:8443"


def test_default_timeouts_have_no_total() -> None:
    assert Timeouts() == Timeouts(connect=10.0, headers=30.0, body=60.0, expect_continue=1.0)
    assert not hasattr(Timeouts(), "total")

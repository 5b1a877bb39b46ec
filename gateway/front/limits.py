"""What a request head may be, and how the front server refuses one that is not.

`ServerLimits` holds the per-connection sizes and timeouts. The checks here run on a complete
head before any routing, so a refused request never reaches a handler or aiohttp, and no
smuggled second request can follow it: 400 for every body framing but one Content-Length or a
plain `Transfer-Encoding: chunked` and for an HTTP/1.1 request without exactly one Host
(RFC 9112 §3.2), 431 for an oversized head, 505 for a version other than 1.0 and 1.1. (414 for
an overlong target is raised while the target arrives.) A check raises `Refused` from inside a
parser callback; the protocol answers it with `closing_error` and closes the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from gateway.errors import RawHeaders


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-connection limits; sizes in bytes, timeouts in seconds."""

    keepalive_timeout: float = 75.0
    head_timeout: float = 60.0
    max_head_size: int = 64 * 1024
    max_target_length: int = 8190
    max_buffered_body: int = 256 * 1024


DEFAULT_LIMITS: Final = ServerLimits()

HTTP11: Final = (1, 1)
VERSIONS: Final = {"1.1": HTTP11, "1.0": (1, 0)}


class Interrupt(Exception):
    """Raised from a parser callback to stop llhttp; it comes back as the error's __context__."""


class Refused(Interrupt):
    """The request is refused with `status`, then the connection closes; `detail` says why
    (a fixed text, never bytes of the request)."""

    def __init__(self, status: int, detail: str | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.detail = detail


def head_size(url: bytes, headers: RawHeaders) -> int:
    """The size of a request head as received (give or take the method and whitespace)."""
    return len(url) + 16 + sum(len(name) + len(value) + 4 for name, value in headers)


def check_framing(headers: RawHeaders, version: tuple[int, int]) -> tuple[int | None, bool, bool]:
    """The request's Content-Length, whether it is chunked, and whether it expects 100 Continue;
    `Refused(400)` for an ambiguous body framing or Host."""
    content_length: int | None = None
    chunked = expect = False
    hosts = 0
    for name, value in headers:
        # Only names of the lengths of those looked for are lowered.
        size = len(name)
        if size == 4:
            if name.lower() == b"host":
                hosts += 1
        elif size == 14:
            if name.lower() == b"content-length":
                content_length = int(value)  # llhttp checked the digits and duplicates
        elif size == 17:
            if name.lower() == b"transfer-encoding":
                # llhttp reads a body for "gzip, chunked" and rejects a bare "gzip" only
                # after the head is complete: anything but plain chunked is refused here.
                if value.strip().lower() != b"chunked" or chunked:
                    raise Refused(400, "only a plain Transfer-Encoding: chunked is accepted")
                chunked = True
        elif size == 6 and name.lower() == b"expect":
            expect = value.strip().lower() == b"100-continue"
    if chunked and content_length is not None:
        # llhttp refuses it before this point; kept explicit
        raise Refused(400, "Transfer-Encoding and Content-Length together")
    if hosts > 1 or (hosts == 0 and version == HTTP11):
        # RFC 9112 §3.2 (and aiohttp would refuse it too)
        raise Refused(400, "an HTTP/1.1 request needs exactly one Host field")
    return content_length, chunked, expect


def closing_error(status: int, parts: tuple[RawHeaders, bytes], date: bytes) -> bytes:
    """A whole error response that closes the connection, from the headers and body that
    gateway/errors.py built for it."""
    headers, body = parts
    fields = b"".join(b"%s: %s\r\n" % field for field in headers)
    return b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\nDate: %s\r\n\r\n%s" % (
        status,
        HTTPStatus(status).phrase.encode("ascii"),
        fields,
        len(body),
        date,
        body,
    )

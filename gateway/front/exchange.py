"""The object a fast handler gets: one request (head and streamed body) and its response.

The exchange frames the response itself (Content-Length, chunked, or until close for HTTP/1.0),
drops the hop-by-hop fields a handler passes, and decides as late as possible, when the head goes
out, whether the connection stays open: not if it is shutting down, if the request asked for
it, or if the request body cannot be read to its end cheaply. What it needs from its connection
is `ExchangeConnection`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Final, Protocol, TypeAlias

from gateway.bodies import BodyTooLarge, read_limited
from gateway.errors import HttpRefusal, RawHeaders, http_refusal_parts, unanswered_parts
from gateway.front.body import RequestBody
from gateway.front.limits import HTTP11, closing_error
from gateway.requests import choose_request_id

FastHandler: TypeAlias = Callable[["Exchange"], Awaitable[object]]
Router: TypeAlias = Callable[[str, str], FastHandler | None]

# Response fields the protocol owns: it frames the body and manages the connection itself.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection"}
)
# The lengths of every response field name _prepare inspects: other names are not lowered.
_WATCHED_LENGTHS: Final = frozenset({4, 10, 14, 16, 17})

# Response body framing (an exchange's mode); 0 until the response has started.
_CHUNKED: Final = 1
_LENGTH: Final = 2
_NO_BODY: Final = 3
_UNTIL_CLOSE: Final = 4


class ExchangeConnection(Protocol):
    """What an exchange needs from its connection (a `FrontProtocol`)."""

    @property
    def transport(self) -> asyncio.Transport: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def closed(self) -> bool:
        """Closing, closed or handed off: nothing more may be written."""

    @property
    def write_paused(self) -> bool: ...
    @property
    def date_header(self) -> Callable[[], bytes]: ...
    def will_close(self) -> bool:
        """The connection closes once the exchanges it already has are done."""

    async def drain(self) -> None:
        """Until the client reads again; ConnectionResetError if it goes away meanwhile."""

    @property
    def written(self) -> Awaitable[None]:
        """Done already: what a write that need not wait returns."""

    def close(self) -> None: ...
    def abort(self) -> None: ...


class Exchange:
    """One request and its response on a `FrontProtocol` connection."""

    __slots__ = (
        "_close", "_conn", "_head", "_iterated", "_mode", "_remaining", "_transport",
        "content_length", "finished", "handler", "has_body", "headers", "method", "path",
        "query_string", "remote", "request_body", "response_started", "target", "version",
    )  # fmt: skip

    def __init__(
        self,
        conn: ExchangeConnection,
        handler: FastHandler,
        request_body: RequestBody,
        method: str,
        target: str,
        path: str,
        query_string: str,
        headers: RawHeaders,
        version: tuple[int, int],
        content_length: int | None,
        has_body: bool,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.remote = conn.remote
        self.version = version
        self.content_length = content_length
        self.has_body = has_body
        self.response_started = False
        self.finished = False  # the response was finished, or the connection aborted
        self.handler = handler
        self.request_body = request_body
        self._conn = conn
        self._transport = conn.transport
        self._close = not keep_alive  # the connection closes after this response
        self._iterated = False
        self._head: bytes | None = None  # the response head, until it goes out
        self._mode = 0
        self._remaining = 0  # Content-Length framing: body bytes still owed

    def __repr__(self) -> str:
        return f"<Exchange {self.method} {self.target}>"

    def header(self, lower_name: bytes) -> bytes | None:
        """The first value of a request field, or None; `lower_name` is given lower-case."""
        size = len(lower_name)
        for name, value in self.headers:
            if len(name) == size and name.lower() == lower_name:
                return value
        return None

    # The request body.

    def body(self) -> AsyncIterator[bytes]:
        """The request body as chunks, as they arrive (iterate once)."""
        if self._iterated:
            raise RuntimeError("the request body can be iterated only once")
        self._iterated = True
        return self.request_body

    async def read_body(self, limit: int) -> bytes:
        """The whole request body; BodyTooLarge when it is longer than `limit`."""
        if self.content_length is not None and self.content_length > limit:
            raise BodyTooLarge(f"request body of {self.content_length} bytes exceeds {limit}")
        return await read_limited(self.body(), limit)

    # The response.

    def start_response(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        """Prepare the response head; it goes out with the first `write` or with `finish`."""
        self._prepare(status, reason, headers, -1)

    def write(self, data: bytes) -> Awaitable[None]:
        """Send body bytes, then await what this returns: it waits while the client does not
        read (ConnectionResetError if gone). Not a coroutine: most writes need no wait, and
        then return a future that is done already."""
        mode = self._mode
        if mode == 0 or self.finished:
            raise RuntimeError("write() outside of a started, unfinished response")
        conn = self._conn
        transport = self._transport
        # A send that failed closes the transport at once but reports connection_lost only on a
        # later loop iteration; a handler whose writes never wait must still see it now.
        if conn.closed or transport.is_closing():
            raise ConnectionResetError("the client connection is closed")
        if mode == _LENGTH:
            remaining = self._remaining - len(data)
            if remaining < 0:
                raise RuntimeError("write() past the response's Content-Length")
            self._remaining = remaining
        head = self._take_head() if self._head is not None else None
        if mode == _CHUNKED:
            if not data:  # an empty chunk would end the body
                if head:
                    transport.write(head)
            elif head:
                transport.writelines((head, b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        elif mode == _NO_BODY:
            if head:
                transport.write(head)
        elif head:
            transport.write(head + data)
        elif data:
            transport.write(data)
        if conn.write_paused:
            return conn.drain()
        return conn.written

    def finish(self) -> None:
        """End the response; a Content-Length body that is short aborts the connection."""
        if self._mode == 0:
            raise RuntimeError("finish() before start_response()")
        if self.finished:
            return
        if self._mode == _LENGTH and self._remaining:
            self.abort()  # never a short body that looks complete
            return
        self.finished = True
        conn = self._conn
        if conn.closed:
            return
        data = self._take_head() if self._head is not None else b""
        if self._mode == _CHUNKED:
            data += b"0\r\n\r\n"
        if data:
            self._transport.write(data)
        if self._close:
            conn.close()

    def close_after_response(self) -> None:
        """No keep-alive: the response says `Connection: close` and the connection then closes
        (for a request whose body will never be read to its end, e.g. one that stalled)."""
        if self._head is not None or not self.response_started:
            self._close = True

    def abort(self) -> None:
        """Drop the connection at once: the client sees the response cut off."""
        self.finished = True
        self._conn.abort()

    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """A whole response with a Content-Length, sent in one write."""
        self._prepare(status, reason, headers, len(body))
        self.finished = True
        conn = self._conn
        if conn.closed:
            return
        head = self._take_head()
        self._transport.write(head if self._mode == _NO_BODY or not body else head + body)
        if self._close:
            conn.close()

    def end_unanswered(self) -> None:
        """After the handler returned: a response it left unfinished is cut off (the client
        must not take it for complete), and one it never started is a 500 in the dialect of
        its path, or the refusal of its body when the protocol refused that (no log line: that
        is its handler's to write)."""
        if self.finished:
            return
        self.finished = True
        conn = self._conn
        if conn.closed:
            return
        if self.response_started:
            conn.abort()
            return
        # The id the client asked for, as the handler took it; else a new one (the handler's own
        # is not known here).
        request_id = choose_request_id(
            *(
                _text(self.header(name))
                for name in (b"x-request-id", b"traceparent", b"zap-trace-span")
            )
        )
        refusal = self.request_body.error
        if isinstance(refusal, HttpRefusal):
            status = refusal.status
            parts = http_refusal_parts(status, self.path, request_id, refusal.detail)
        else:
            status = 500
            parts = unanswered_parts(self.path, request_id)
        self._transport.write(closing_error(status, parts, conn.date_header()))
        conn.close()

    def _prepare(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], length: int
    ) -> None:
        # `length` is the size of respond()'s body, or -1 when the caller frames the body.
        if self.response_started:
            raise RuntimeError("the response has already started")
        no_body = status < 200 or status == 204 or status == 304 or self.method == "HEAD"
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1"))]
        lines = 1
        declared: int | None = None
        has_date = False
        for name, value in headers:
            if len(name) in _WATCHED_LENGTHS:
                lowered = name.lower()
                if lowered in _HOP_BY_HOP:
                    continue
                if lowered == b"content-length":
                    if length >= 0 and not no_body:
                        continue  # respond() writes the length of the body it was given
                    declared = int(value)
                elif lowered == b"date":
                    has_date = True
            parts += (name, b": ", value, b"\r\n")
            lines += 1
        if not has_date:
            parts += (b"Date: ", self._conn.date_header(), b"\r\n")
            lines += 1
        if no_body:
            mode = _NO_BODY
            if length >= 0 and declared is None and status >= 200 and status not in (204, 304):
                # respond() to HEAD: the length the same response to GET would have
                parts.append(b"Content-Length: %d\r\n" % length)
                lines += 1
        elif length >= 0:
            mode = _LENGTH
            self._remaining = length
            parts.append(b"Content-Length: %d\r\n" % length)
            lines += 1
        elif declared is not None:
            if declared < 0:
                raise ValueError("negative Content-Length")
            mode = _LENGTH
            self._remaining = declared
        elif self.version == HTTP11:
            mode = _CHUNKED
            parts.append(b"Transfer-Encoding: chunked\r\n")
            lines += 1
        else:
            mode = _UNTIL_CLOSE  # an HTTP/1.0 client reads the body until the connection closes
            self._close = True
        head = b"".join(parts)
        # One scan each instead of a check per field: every CR and LF must be a line end we wrote.
        if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
            raise ValueError("response reason or header contains CR, LF or NUL")
        self._head = head
        self._mode = mode
        self.response_started = True
        if self.request_body.awaiting_continue:
            self.request_body.response_started()

    def _take_head(self) -> bytes:
        """The head to send now, ended by the connection's fate (decided as late as possible)."""
        head = self._head
        assert head is not None
        self._head = None
        body = self.request_body
        if (
            self._close
            or self._conn.will_close()
            or (not body.complete and not body.rest_can_be_dropped())
        ):
            self._close = True
            return head + b"Connection: close\r\n\r\n"
        if self.version != HTTP11:
            return head + b"Connection: keep-alive\r\n\r\n"
        return head + b"\r\n"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")

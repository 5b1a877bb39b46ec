"""One HTTP/1.1 client connection of the upstream pool: an asyncio.Protocol fed to httptools.

An `Http1Connection` owns one socket and carries one exchange at a time (no pipelining). It writes
the request head and body with back-pressure, parses the response with llhttp through
`httptools.HttpResponseParser`, and hands the body over through an `UpstreamResponse` whose buffer
is bounded: reading from the socket pauses while the consumer lags. When an exchange ends, the
connection tells its owner (the pool's per-origin state, see `upstream.py`) whether the socket is
clean enough to carry another request; in every other case it closes the socket.

Errors raised to callers (by the pool, by `Http1Connection.send` and by the body iterator):

    UpstreamError                  kind      meaning
    ├── UpstreamConnectError       connect   DNS failure, connection refused or unreachable
    ├── UpstreamTLSError           tls       TLS handshake or certificate verification failed
    ├── UpstreamTimeout            timeout   `.phase` is "connect", "headers" or "body"
    ├── UpstreamResetError         reset     closed or reset before the response was complete
    └── UpstreamProtocolError      protocol  the bytes received are not a valid HTTP/1.x response
    RequestBodyError (ValueError)            the caller's body did not match its declared length

Whatever the caller's own body iterator raises is passed through unchanged: that is the client's
failure, not the upstream's. `kind` is meant for metric labels. The low-level cause is always
chained (`__cause__`), as `raise ... from exc` does.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Protocol, TypeAlias, cast

import httptools

TimeoutPhase: TypeAlias = Literal["connect", "headers", "body"]
RawHeaders: TypeAlias = list[tuple[bytes, bytes]]
RequestBody: TypeAlias = bytes | AsyncIterable[bytes] | None

# The response body buffer: reading from the socket pauses above the high mark and resumes at the
# low one, so a slow consumer holds at most the high mark plus one socket read (256 KiB) per
# connection, whatever the size of the body.
READ_HIGH_WATER: Final = 256 * 1024
READ_LOW_WATER: Final = 64 * 1024
# A bytes body up to this size is joined to the head (one copy, one send) instead of two sends.
_INLINE_BODY_MAX: Final = 16 * 1024
# A timer may run this much before its deadline without being re-armed for the rest.
_TIMER_SLACK: Final = 0.001

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods that define a meaning for content get `Content-Length: 0` when sent without a body, as
# RFC 9110 §8.6 asks (some servers answer 411 Length Required otherwise).
_METHODS_WITH_CONTENT: Final = frozenset({"POST", "PUT", "PATCH"})
_KNOWN_METHODS: Final = IDEMPOTENT_METHODS | _METHODS_WITH_CONTENT
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Fields the pool must own. It frames the body and manages the connection itself, so a caller's
# copy would at best be stale and at worst smuggle a second message (two Content-Lengths, or a
# Content-Length next to chunked). Host is only inspected: the caller's value wins.
_POOL_OWNED_FIELDS: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"expect",
    }
)


class UpstreamError(Exception):
    """Base of every failure to get a response from an upstream."""

    kind: ClassVar[str] = "error"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTLSError(UpstreamError):
    kind = "tls"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"

    def __init__(self, message: str, *, phase: TimeoutPhase) -> None:
        super().__init__(message)
        self.phase: TimeoutPhase = phase


class UpstreamResetError(UpstreamError):
    """The connection ended before the response was complete.

    `replay_safe` is true when the upstream cannot have acted on the request: nothing of the
    response arrived, the body can be sent again, and the method is idempotent or none of the body
    was written (see the retry rule in `upstream.py`).
    """

    kind = "reset"

    def __init__(self, message: str, *, replay_safe: bool = False) -> None:
        super().__init__(message)
        self.replay_safe = replay_safe


class UpstreamProtocolError(UpstreamError):
    kind = "protocol"


class RequestBodyError(ValueError):
    """The request body yielded more or fewer bytes than the `content_length` given for it."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Limits per phase of an exchange, in seconds; `None` turns one off.

    There is deliberately no total timeout: a long stream that keeps moving is legitimate.

    - `connect`: TCP connect plus TLS handshake.
    - `headers`: from the moment the request is fully written until the final response head has
      arrived (Go's `ResponseHeaderTimeout`, Grafana's `[dataproxy] timeout`).
    - `body`: the longest pause, in either direction, while a body moves: the upstream sending
      nothing while we wait for response bytes, or not taking request bytes while we have some to
      write. Waiting on our own consumer or on the caller's body iterator does not count: the
      upstream is not the one idling then.
    - `expect_continue`: how long to wait for `100 Continue` before sending the body anyway
      (RFC 9110 §10.1.1; Go and Grafana wait 1 s).
    """

    connect: float | None = 10.0
    headers: float | None = 30.0
    body: float | None = 60.0
    expect_continue: float = 1.0


def encode_request_head(
    method: str,
    target: str,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    host_header: bytes,
    body: RequestBody,
    content_length: int | None,
) -> tuple[bytes, bool]:
    """Serialize a request head; return it and whether it carries `Expect: 100-continue`.

    `target` is written as given (it must already be percent-encoded ASCII in origin form). The
    caller's headers keep their order and case, minus the fields the pool owns; Host is added from
    the origin when absent; the framing field follows from `body` and `content_length`. The
    caller asks for 100-continue by passing `Expect: 100-continue`; it is honoured only when there
    is a body to hold back. CR, LF or NUL anywhere in the head raise ValueError: a field value
    must never be able to start another header or another request.
    """
    if method not in _KNOWN_METHODS and _TOKEN.fullmatch(method) is None:
        raise ValueError(f"invalid request method {method!r}")
    if not (target.startswith("/") or target == "*") or " " in target:
        raise ValueError(f"request target must be an encoded path in origin form, not {target!r}")
    framing, has_content = _framing(method, body, content_length)

    parts = [method.encode("ascii"), b" ", target.encode("ascii"), b" HTTP/1.1\r\n"]
    lines = 1
    has_host = False
    expect_continue = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in _POOL_OWNED_FIELDS:
            if lowered == b"host":
                has_host = True
            else:
                if lowered == b"expect" and value.strip().lower() == b"100-continue":
                    expect_continue = True
                continue
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    if not has_host:
        parts += (b"Host: ", host_header, b"\r\n")
        lines += 1
    if framing:
        parts.append(framing)
        lines += 1
    expect_continue = expect_continue and has_content
    if expect_continue:
        parts.append(b"Expect: 100-continue\r\n")
        lines += 1
    parts.append(b"\r\n")
    lines += 1
    head = b"".join(parts)
    # One scan each instead of a check per field: every CR and LF must be a line end we wrote.
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise ValueError("request target or header contains CR, LF or NUL")
    return head, expect_continue


def _framing(method: str, body: RequestBody, content_length: int | None) -> tuple[bytes, bool]:
    """The framing header line for `body` (b"" when none is needed), and whether there is
    content to send."""
    if body is None:
        return (b"Content-Length: 0\r\n" if method in _METHODS_WITH_CONTENT else b""), False
    if isinstance(body, bytes):
        if content_length is not None and content_length != len(body):
            raise ValueError("content_length does not match the length of the bytes body")
        return b"Content-Length: %d\r\n" % len(body), bool(body)
    if content_length is None:
        return b"Transfer-Encoding: chunked\r\n", True
    if content_length < 0:
        raise ValueError("content_length must not be negative")
    return b"Content-Length: %d\r\n" % content_length, content_length > 0


class ConnectionOwner(Protocol):
    """What a connection reports to whoever pools it."""

    def release(self, conn: Http1Connection) -> None:
        """The exchange ended cleanly and the socket may carry another request."""

    def forget(self, conn: Http1Connection) -> None:
        """The connection is closing: never hand it out again (idempotent)."""


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _chained(error: UpstreamError, cause: BaseException | None) -> UpstreamError:
    error.__cause__ = cause
    return error


class UpstreamResponse:
    """The head of an upstream response, and its body as an async iterator of chunks.

    `status`, `reason` and `headers` are set when the pool returns the response. `headers` is the
    raw list of (name, value) bytes in wire order, case and duplicates kept (several Set-Cookie
    stay several). Iterate the response (`async for chunk in response`) to stream the body: the
    chunks are the bytes as received (never decompressed; chunked framing and trailers removed).
    A bounded amount is buffered; reading from the upstream pauses while the consumer lags.

    Always `close()` it, or use `async with`: closing before the whole body arrived closes the
    connection rather than returning it to the pool. The connection goes back to the pool by itself
    as soon as the whole body has arrived, even if the consumer has not taken all of it yet.
    """

    __slots__ = (
        "_body_timeout",
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_loop",
        "_waiter",
        "headers",
        "reason",
        "status",
    )

    def __init__(self, conn: Http1Connection, body_timeout: float | None) -> None:
        self.status = 0  # stays 0 until the final (non-1xx) response head has arrived
        self.reason = ""
        self.headers: RawHeaders = []
        self._conn: Http1Connection | None = conn  # None once detached: complete or failed
        self._loop = conn.loop
        self._body_timeout = body_timeout
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason}>"

    @property
    def complete(self) -> bool:
        """True once the whole body has arrived from the upstream."""
        return self._complete

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self._complete:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            await self._wait(self._body_timeout)
        return self._take()

    def take_buffered(self) -> bytes | None:
        """The next chunk if one is buffered now, else None (then `__anext__` waits for one,
        or ends the body, or raises its failure): a chunk without a coroutine."""
        return self._take() if self._chunks else None

    def _take(self) -> bytes:
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered <= READ_LOW_WATER:
            conn = self._conn
            if conn is not None and conn.reading_paused:
                conn.resume_reading()
        return chunk

    async def read(self) -> bytes:
        """The whole body; only for bodies known to be small."""
        return b"".join([chunk async for chunk in self])

    def close(self) -> None:
        """Release the response; before the body's end this closes the connection."""
        conn = self._conn
        if conn is not None:
            conn.abandon(self)
        if not self._complete and self._error is None:
            self._error = RuntimeError("the upstream response was closed before its end")
        self._chunks.clear()
        self._buffered = 0

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # Called by the connection.

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        waiter = self._waiter  # _wake, inlined: this runs for every chunk
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self._complete = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        _wake(self._waiter)

    async def _wait(self, stall_limit: float | None) -> None:
        # A timer of our own rather than asyncio.timeout(): this runs per chunk on the hot path.
        waiter = self._loop.create_future()
        self._waiter = waiter
        timer = None
        if stall_limit is not None:
            timer = self._loop.call_later(stall_limit, self._body_stalled)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _body_stalled(self) -> None:
        conn = self._conn
        if conn is not None:
            timeout = self._body_timeout
            conn.fail_exchange(
                UpstreamTimeout(f"upstream sent nothing for {timeout} s", phase="body")
            )


class Http1Connection(asyncio.Protocol):
    """One client socket to an upstream, carrying one request/response exchange at a time."""

    __slots__ = (
        "_body_pulled",
        "_body_written",
        "_closed",
        "_continue_waiter",
        "_drain_waiter",
        "_has_body",
        "_header_sink",
        "_headers_deadline",
        "_headers_timeout",
        "_headers_timer",
        "_idempotent",
        "_is_head",
        "_keep_alive",
        "_lost",
        "_lost_waiter",
        "_owner",
        "_parser",
        "_parser_spent",
        "_pump",
        "_received_any",
        "_request_sent",
        "_response",
        "_transport",
        "_write_paused",
        "idle_since",
        "loop",
        "pool_slot",
        "reading_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: ConnectionOwner) -> None:
        self.loop = loop
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        # True once the parser finished a message whose end we decided (a HEAD response): llhttp
        # would still wait for the body its headers announce, so it is replaced after this read.
        self._parser_spent = False
        self._closed = False  # close or abort requested, or the transport is gone
        self._lost = False  # connection_lost has run
        self._lost_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        # Bookkeeping that belongs to the owner.
        self.pool_slot = 0
        self.idle_since = 0.0
        # The exchange in progress; reset by send().
        self._response: UpstreamResponse | None = None
        self._header_sink: RawHeaders | None = None
        self._pump: asyncio.Task[None] | None = None
        self._continue_waiter: asyncio.Future[None] | None = None
        # The headers timeout is a deadline checked by one timer per connection that re-arms
        # itself only when it fired early: a request costs a clock read, not a TimerHandle.
        self._headers_deadline: float | None = None
        self._headers_timer: asyncio.TimerHandle | None = None
        self._headers_timeout: float | None = None
        self._is_head = False
        self._idempotent = False
        self._has_body = False
        self._received_any = False
        self._body_pulled = False
        self._body_written = False
        self._request_sent = False
        self._keep_alive = False

    @property
    def is_usable(self) -> bool:
        """Connected, not closing, and carrying no exchange."""
        transport = self._transport
        return (
            not self._closed
            and self._response is None
            and transport is not None
            and not transport.is_closing()
        )

    def close(self) -> None:
        """Close gracefully (pending writes are flushed first)."""
        self._closed = True
        self._stop_headers_timer()
        if self._transport is not None:
            self._transport.close()
        self._owner.forget(self)

    def abort(self) -> None:
        """Close at once, dropping whatever is buffered either way."""
        self._closed = True
        self._stop_headers_timer()
        if self._transport is not None:
            self._transport.abort()
        self._owner.forget(self)

    def _stop_headers_timer(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def lost_future(self) -> asyncio.Future[None]:
        """A future done once the transport is gone."""
        if self._lost_waiter is None:
            self._lost_waiter = self.loop.create_future()
            if self._lost:
                self._lost_waiter.set_result(None)
        return self._lost_waiter

    # The exchange.

    async def send(
        self,
        head: bytes,
        body: RequestBody,
        *,
        content_length: int | None,
        expect_continue: bool,
        is_head: bool,
        idempotent: bool,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """Write a request and return the response once its final head has arrived."""
        transport = self._transport
        if transport is None or not self.is_usable:
            raise RuntimeError("connection cannot carry a request now")
        response = UpstreamResponse(self, timeouts.body)
        self._response = response
        self._is_head = is_head
        self._idempotent = idempotent
        self._has_body = body is not None and not (isinstance(body, bytes) and not body)
        self._received_any = False
        self._body_pulled = False
        self._body_written = False
        self._request_sent = False
        self._keep_alive = False
        self._headers_timeout = timeouts.headers
        try:
            if not expect_continue and (body is None or isinstance(body, bytes)):
                if not body:
                    transport.write(head)
                elif len(body) <= _INLINE_BODY_MAX:
                    transport.write(head + body)
                else:
                    transport.write(head)
                    transport.write(body)
                self._body_written = bool(body)
                self._request_sent = True
                self._arm_headers_timer()
            else:
                # The body goes out from a task of its own, so that a response arriving early
                # (a 413, say) is seen while the upload is still running.
                transport.write(head)
                self._pump = self.loop.create_task(
                    self._send_body(response, body, content_length, expect_continue, timeouts)
                )
            loop = self.loop
            while response.status == 0:
                if response._error is not None:
                    raise response._error
                # `response._wait(None)`, inlined: one coroutine less per request.
                waiter = response._waiter = loop.create_future()
                try:
                    await waiter
                finally:
                    response._waiter = None
        except BaseException:
            self.abandon(response)
            raise
        return response

    def abandon(self, response: UpstreamResponse) -> None:
        """The caller gave up on `response`: if it is still in progress, drop the connection."""
        if self._response is response:
            self._detach()
            self.abort()

    def fail_exchange(self, error: BaseException) -> None:
        """End the exchange in progress with `error` and drop the connection."""
        response = self._detach()
        if response is not None:
            response._fail(error)
            self.abort()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self._transport is not None:
            self._transport.resume_reading()

    async def _send_body(
        self,
        response: UpstreamResponse,
        body: RequestBody,
        content_length: int | None,
        expect_continue: bool,
        timeouts: Timeouts,
    ) -> None:
        try:
            if expect_continue:
                await self._wait_for_continue(timeouts.expect_continue)
                if self._response is not response or response.status != 0:
                    # A final status (or a failure) came first: the body is never sent, so the
                    # exchange ends with the request incomplete and the connection is closed.
                    return
            if isinstance(body, bytes):
                if self._transport is not None and not self._closed:
                    self._body_written = True
                    self._transport.write(body)
            elif body is not None:
                await self._stream_body(body, content_length, timeouts.body)
            if self._response is response and not self._closed:
                self._request_sent = True
                if response.status == 0:
                    self._arm_headers_timer()
        except Exception as exc:
            # The consumer re-raises it (from send() or from the body iterator).
            if self._response is response:
                self._pump = None  # finishing by itself: must not be cancelled by the cleanup
                self.fail_exchange(exc)

    async def _stream_body(
        self, body: AsyncIterable[bytes], content_length: int | None, idle_timeout: float | None
    ) -> None:
        transport = self._transport
        assert transport is not None
        remaining = content_length
        self._body_pulled = True  # from here on the iterator cannot be replayed
        async for chunk in body:
            if self._closed:
                return  # connection_lost has already told the consumer
            if not chunk:
                continue  # a zero-size chunk would end a chunked body early
            self._body_written = True
            if remaining is None:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                remaining -= len(chunk)
                if remaining < 0:
                    raise RequestBodyError(
                        f"request body is longer than its Content-Length ({content_length})"
                    )
                transport.write(chunk)
            if self._write_paused and not await self._drain(idle_timeout):
                return
        if self._closed:
            return
        if remaining is None:
            transport.write(b"0\r\n\r\n")
        elif remaining:
            raise RequestBodyError(
                f"request body ended {remaining} bytes short of its Content-Length "
                f"({content_length})"
            )

    async def _drain(self, stall_limit: float | None) -> bool:
        """Wait until the transport takes writes again; False if the connection ended instead."""
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        timer = None
        if stall_limit is not None:
            timer = self.loop.call_later(stall_limit, self._write_stalled, stall_limit)
        try:
            await waiter
        finally:
            self._drain_waiter = None
            if timer is not None:
                timer.cancel()
        return not self._closed

    def _write_stalled(self, timeout: float) -> None:
        self.fail_exchange(
            UpstreamTimeout(f"upstream took no request body bytes for {timeout} s", phase="body")
        )

    async def _wait_for_continue(self, patience: float) -> None:
        waiter = self.loop.create_future()
        self._continue_waiter = waiter
        timer = self.loop.call_later(patience, _wake, waiter)
        try:
            await waiter
        finally:
            self._continue_waiter = None
            timer.cancel()

    def _arm_headers_timer(self) -> None:
        if self._headers_timeout is None:
            return
        self._headers_deadline = deadline = self.loop.time() + self._headers_timeout
        timer = self._headers_timer
        if timer is None or timer.when() > deadline:  # a request may bring a shorter timeout
            if timer is not None:
                timer.cancel()
            self._headers_timer = self.loop.call_at(deadline, self._check_headers_deadline)

    def _check_headers_deadline(self) -> None:
        self._headers_timer = None
        deadline = self._headers_deadline
        if deadline is None:
            return  # the head arrived; the next request arms the timer again
        if self.loop.time() < deadline - _TIMER_SLACK:
            self._headers_timer = self.loop.call_at(deadline, self._check_headers_deadline)
            return
        timeout = self._headers_timeout
        self.fail_exchange(
            UpstreamTimeout(f"no response headers within {timeout} s", phase="headers")
        )

    def _detach(self) -> UpstreamResponse | None:
        """Unhook the exchange in progress (stop its timers and body pump) and return it."""
        response = self._response
        if response is None:
            return None
        self._response = None
        self._header_sink = None
        response._conn = None
        self._headers_deadline = None
        if self._continue_waiter is not None:
            _wake(self._continue_waiter)
        pump = self._pump
        if pump is not None:
            self._pump = None
            pump.cancel()
        return response

    def _finish_exchange(self) -> None:
        response = self._detach()
        if response is None:
            return
        response._finish()
        if self._keep_alive and self._request_sent and not self._closed:
            if self.reading_paused:
                self.resume_reading()  # an idle connection must see the upstream closing it
            self._owner.release(self)
        elif self._request_sent:
            self.close()
        else:
            self.abort()  # the rest of the request body must not go out

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._lost = True
        self._stop_headers_timer()
        _wake(self._drain_waiter)
        response = self._response
        if response is not None:
            if exc is None and response.status != 0 and _body_ends_at_close(response.headers):
                self._keep_alive = False
                self._finish_exchange()
            else:
                self.fail_exchange(self._lost_error(response, exc))
        self._owner.forget(self)
        _wake(self._lost_waiter)

    def _lost_error(self, response: UpstreamResponse, exc: Exception | None) -> UpstreamError:
        how = "closed" if exc is None else f"lost ({exc})"
        if response.status == 0:
            message = f"upstream connection {how} before the response"
            replay_safe = (
                not self._received_any
                and not self._body_pulled
                and (self._idempotent or (self._has_body and not self._body_written))
            )
        else:
            message = f"upstream connection {how} in the middle of the response body"
            replay_safe = False
        if isinstance(exc, ssl.SSLError):
            return _chained(UpstreamTLSError(message), exc)
        return _chained(UpstreamResetError(message, replay_safe=replay_safe), exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        # HttpParserUpgrade follows a 101, which on_headers_complete has already turned into an
        # error; it is caught only so that nothing escapes into the event loop.
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._protocol_error(f"invalid HTTP response from upstream: {exc}", exc)
        if self._parser_spent:
            self._parser_spent = False
            self._parser = httptools.HttpResponseParser(self)

    def _protocol_error(self, message: str, exc: BaseException) -> None:
        if self._response is not None:
            self.fail_exchange(_chained(UpstreamProtocolError(message), exc))
        else:
            self.abort()

    # httptools callbacks. Events for which no exchange is waiting (bytes arriving on an idle
    # connection, or after a response we ended ourselves) leave the connection in an unknown
    # state: it is aborted.

    def on_message_begin(self) -> None:
        response = self._response
        if response is None:
            self.abort()
            return
        self._received_any = True
        response.reason = ""
        self._header_sink = response.headers

    def on_status(self, status: bytes) -> None:
        # llhttp reports spans: a reason phrase split across two reads arrives in two calls.
        response = self._response
        if response is not None:
            response.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The sink is closed after the head, so trailers (reported here too) are dropped.
        sink = self._header_sink
        if sink is not None:
            sink.append((name, value))

    def on_headers_complete(self) -> None:
        self._header_sink = None
        response = self._response
        if response is None:
            return
        status = self._parser.get_status_code()
        if status < 200:
            if status == 101:
                self.fail_exchange(
                    UpstreamProtocolError("upstream switched protocols, but no upgrade was asked")
                )
                return
            # An interim response (100, 103, ...): dropped. Only 100 releases the body.
            response.headers = []
            response.reason = ""
            if status == 100:
                _wake(self._continue_waiter)
            return
        response.status = status
        self._headers_deadline = None
        if self._continue_waiter is not None:  # a final status before 100 Continue:
            _wake(self._continue_waiter)  # never send the body
        if self._is_head:
            # llhttp cannot be told a HEAD response has no body (httptools hides the hook), so we
            # end the message here and replace the parser after this read.
            self._keep_alive = self._head_keep_alive(response.headers)
            self._parser_spent = True
            self._finish_exchange()
            return
        self._keep_alive = self._parser.should_keep_alive()
        _wake(response._waiter)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None:
            self.abort()
            return
        response._feed(body)
        if response._buffered > READ_HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            if not self._parser_spent:  # else: the old parser ending the HEAD response we ended
                self.abort()
            return
        if response.status != 0:  # else an interim response ended; the final one follows
            self._finish_exchange()

    def _head_keep_alive(self, headers: RawHeaders) -> bool:
        # llhttp's should_keep_alive() would say "read until close" for a HEAD response without
        # Content-Length, so decide from the version and the Connection field ourselves.
        keep_alive = self._parser.get_http_version() == "1.1"
        for name, value in headers:
            if name.lower() == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                if b"close" in tokens:
                    return False
                if b"keep-alive" in tokens:
                    keep_alive = True
        return keep_alive


def _body_ends_at_close(headers: RawHeaders) -> bool:
    """True when the response body is delimited by the connection closing (RFC 9112 §6.3)."""
    transfer_encoding: bytes | None = None
    has_length = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            transfer_encoding = value
        elif lowered == b"content-length":
            has_length = True
    if transfer_encoding is not None:
        return not transfer_encoding.rstrip().lower().endswith(b"chunked")
    return not has_length

"""The server side of the hot path: one client connection, parsed by httptools, served in order.

A `FrontProtocol` accepts every connection of the gateway's listening socket. It parses requests
with llhttp through `httptools.HttpRequestParser` and asks the `router` about each one once its
head is complete:

- a request the router claims runs its fast handler as one task, with an `Exchange` that carries
  the request (head attributes and a streamed body) and the response (the protocol owns framing);
- any other request, and every upgrade request (including CONNECT), hands the connection over to
  the `fallback` protocol (aiohttp's `web.Server`) for good: `set_protocol`, `connection_made`,
  then `data_received` with the raw bytes of that request and everything received after it.

Requests are served strictly in order. Pipelined requests are parsed and queued (each with its own
body buffer); reading pauses while more than `ServerLimits.max_buffered_body` bytes of request
bodies are buffered, and the next handler starts once the previous one has returned.

A hand-off needs the exact raw bytes of the request, which are only known when the request began
at the start of a read (`data_received` chunk) in which no earlier request ended; requests that
queue behind others wait for the responses ahead of them, then hand off. A request that began in
the middle of a read after another request cannot be handed off exactly: the responses before it
are finished (the last with `Connection: close`) and the connection is closed without answering
it. The client may retry it on a new connection (RFC 9112 §9.3.2); only pipelining clients that
send a proxied request and a non-proxied one in the same packet ever see this.

Malformed requests get 400: whatever llhttp refuses (an unknown method among them), an HTTP/1.1
request without exactly one Host (RFC 9112 §3.2), and every body framing but one Content-Length
or a plain `Transfer-Encoding: chunked`. llhttp itself refuses Transfer-Encoding next to
Content-Length and a repeated chunked, but it reads a body for "gzip, chunked" and refuses a
bare "gzip" only after the head was reported complete, so the protocol checks these itself
before any routing (no smuggled second request can follow). An oversized head gets 431, an
overlong target 414, an HTTP version other than 1.0 and 1.1 505; the connection then closes. If a
response is already in progress, no error response is sent: the responses ahead are finished and
the connection closes. An upgrade request is what llhttp calls one (an Upgrade field named in
Connection, or CONNECT); a lone Upgrade field is ignored, as RFC 9110 §7.8 asks.

A request head must arrive within `head_timeout` (408, then close); an idle keep-alive connection
closes after `keepalive_timeout`. Whenever request bytes may still be on their way when the
connection closes, it closes lingeringly (write side first, then reading and dropping for up to
`_LINGER` seconds) so that the kernel does not reset the connection under a response the client
has not read yet.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, TypeAlias

import httptools

from gateway.bodies import BodyTooLarge, read_limited
from gateway.errors import http_refusal_parts

FastHandler: TypeAlias = Callable[["Exchange"], Awaitable[None]]
Router: TypeAlias = Callable[[str, str], FastHandler | None]
RawHeaders: TypeAlias = list[tuple[bytes, bytes]]

_logger = logging.getLogger(__name__)

# The rest of a request body is read and dropped after the response when at most this much of it
# is still to come; beyond, the connection closes instead (RFC 9112 §9.6 lets it do either).
_DISCARD_MAX: Final = 64 * 1024
# Pipelined requests queued behind the one being served; beyond, reading pauses (the requests of
# the read in hand are all parsed: httptools cannot stop mid-read). Together with not starting
# the next one while the client leaves our responses unread, this bounds what a client that
# pipelines without reading can make us hold.
_MAX_QUEUED: Final = 16
# How long a closing connection keeps reading (and dropping) what the client still sends.
_LINGER: Final = 2.0
# A timer may run this much before its deadline without being re-armed for the rest.
_TIMER_SLACK: Final = 0.001

_HTTP11: Final = (1, 1)
_VERSIONS: Final = {"1.1": _HTTP11, "1.0": (1, 0)}
# llhttp reports the method as bytes; the known ones are decoded once.
_METHODS: Final = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
# Response fields the protocol owns: it frames the body and manages the connection itself.
_HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection"}
)
# The lengths of every response field name start_response inspects: other names are not lowered.
_WATCHED_LENGTHS: Final = frozenset({4, 10, 14, 16, 17})
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# Response body framing (Exchange._mode).
_CHUNKED: Final = 1
_LENGTH: Final = 2
_NO_BODY: Final = 3
_UNTIL_CLOSE: Final = 4

# What the connection's single timer is counting down (FrontProtocol._deadline_kind).
_HEAD: Final = 0
_IDLE: Final = 1
_LINGERING: Final = 2


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-connection limits; sizes in bytes, timeouts in seconds."""

    keepalive_timeout: float = 75.0
    head_timeout: float = 60.0
    max_head_size: int = 64 * 1024
    max_target_length: int = 8190
    max_buffered_body: int = 256 * 1024


DEFAULT_LIMITS: Final = ServerLimits()


class _Interrupt(Exception):
    """Raised from a parser callback to stop llhttp; it comes back as the error's __context__."""


class _HandOff(_Interrupt):
    pass


class _Stop(_Interrupt):
    pass


class _Reject(_Interrupt):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _HttpDate:
    """`Date` field values, formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


_http_date: Final = _HttpDate()


class FrontConnections:
    """The live `FrontProtocol` connections of one listening socket."""

    __slots__ = ("_closing", "_live", "_tasks", "_waiter")

    def __init__(self) -> None:
        self._live: set[FrontProtocol] = set()
        # Handler tasks still running after their connection was lost (cleaning up, say).
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a cap
        """Close every connection: idle ones now, busy ones after their exchange in progress.

        After `timeout` seconds the rest are aborted and their handler tasks cancelled and awaited.
        Connections made from now on are closed at once.
        """
        self._closing = True
        for conn in list(self._live):
            conn._begin_shutdown()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while self._live or self._tasks:
                    self._waiter = loop.create_future()
                    await self._waiter
        except TimeoutError:
            pass
        finally:
            self._waiter = None
        for conn in list(self._live):
            conn._kill()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _add(self, conn: FrontProtocol) -> bool:
        if self._closing:
            return False
        self._live.add(conn)
        return True

    def _discard(self, conn: FrontProtocol, task: asyncio.Task[None] | None) -> None:
        self._live.discard(conn)
        if task is not None and not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        if not self._live and not self._tasks:
            _wake(self._waiter)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._live and not self._tasks:
            _wake(self._waiter)


class _Body:
    """The async iterator `Exchange.body()` returns."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        ex = self._exchange
        conn = ex._conn
        while not ex._chunks:
            if ex._body_done:
                raise StopAsyncIteration
            if ex._body_error is not None:
                raise ex._body_error
            if ex._expect and not ex.response_started:
                # RFC 9110 §10.1.1: the client waits for this before it sends the body.
                ex._expect = False
                if not conn._closed:
                    conn._transport.write(_CONTINUE)
            waiter = ex._waiter = conn._loop.create_future()
            try:
                await waiter
            finally:
                ex._waiter = None
        chunk = ex._chunks.popleft()
        conn._buffered -= len(chunk)
        conn._resume_if_drained()
        return chunk


class Exchange:
    """One request and its response on a `FrontProtocol` connection."""

    # fmt: off
    __slots__ = (
        "_body_done", "_body_error", "_chunks", "_close", "_conn", "_discard", "_done", "_expect",
        "_handler", "_head", "_iterated", "_mode", "_received", "_remaining", "_waiter",
        "content_length", "has_body", "headers", "method", "path", "query_string", "remote",
        "response_started", "target", "version",
    )
    # fmt: on

    def __init__(
        self,
        conn: FrontProtocol,
        handler: FastHandler,
        method: str,
        target: str,
        path: str,
        query_string: str,
        headers: RawHeaders,
        version: tuple[int, int],
        content_length: int | None,
        chunked: bool,
        keep_alive: bool,
        expect: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.remote = conn._remote
        self.version = version
        self.content_length = content_length
        self.has_body = chunked or bool(content_length)
        self.response_started = False
        self._conn = conn
        self._handler = handler
        self._close = not keep_alive  # the connection closes after this response
        self._expect = expect and version == _HTTP11  # 100 Continue not sent yet
        self._chunks: deque[bytes] = deque()
        self._received = 0
        self._body_done = False  # the whole body has arrived
        self._body_error: ConnectionResetError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._iterated = False
        self._discard = False  # the handler is gone: the rest of the body is dropped
        self._head: bytes | None = None  # the response head, until it goes out
        self._mode = 0
        self._remaining = 0  # Content-Length framing: body bytes still owed
        self._done = False  # finished or aborted

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
        return _Body(self)

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

    async def write(self, data: bytes) -> None:
        """Send body bytes; waits while the client does not read (ConnectionResetError if gone)."""
        mode = self._mode
        if mode == 0 or self._done:
            raise RuntimeError("write() outside of a started, unfinished response")
        conn = self._conn
        transport = conn._transport
        # A send that failed closes the transport at once but reports connection_lost only on a
        # later loop iteration; a handler whose writes never wait must still see it now.
        if conn._closed or transport.is_closing():
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
        if conn._write_paused:
            await conn._drain()

    def finish(self) -> None:
        """End the response; a Content-Length body that is short aborts the connection."""
        if self._mode == 0:
            raise RuntimeError("finish() before start_response()")
        if self._done:
            return
        if self._mode == _LENGTH and self._remaining:
            self.abort()  # never a short body that looks complete
            return
        self._done = True
        conn = self._conn
        if conn._closed:
            return
        data = self._take_head() if self._head is not None else b""
        if self._mode == _CHUNKED:
            data += b"0\r\n\r\n"
        if data:
            conn._transport.write(data)
        if self._close:
            conn._close()

    def close_after_response(self) -> None:
        """No keep-alive: the response says `Connection: close` and the connection then closes
        (for a request whose body will never be read to its end, e.g. one that stalled)."""
        if self._head is not None or not self.response_started:
            self._close = True

    def abort(self) -> None:
        """Drop the connection at once: the client sees the response cut off."""
        self._done = True
        self._conn._abort()

    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """A whole response with a Content-Length, sent in one write."""
        self._prepare(status, reason, headers, len(body))
        self._done = True
        conn = self._conn
        if conn._closed:
            return
        head = self._take_head()
        conn._transport.write(head if self._mode == _NO_BODY or not body else head + body)
        if self._close:
            conn._close()

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
            parts += (b"Date: ", self._conn._date(), b"\r\n")
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
        elif self.version == _HTTP11:
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

    def _take_head(self) -> bytes:
        """The head to send now, ended by the connection's fate (decided as late as possible)."""
        head = self._head
        assert head is not None
        self._head = None
        conn = self._conn
        close = (
            self._close
            or conn._closing
            or (conn._stopped and not conn._queue)
            or (not self._body_done and not self._can_discard())
        )
        if close:
            self._close = True
            return head + b"Connection: close\r\n\r\n"
        if self.version != _HTTP11:
            return head + b"Connection: keep-alive\r\n\r\n"
        return head + b"\r\n"

    def _can_discard(self) -> bool:
        # The unread rest of the body can be dropped when its size is known and small, and the
        # client is not holding it back for a 100 Continue that will not come.
        length = self.content_length
        return length is not None and not self._expect and length - self._received <= _DISCARD_MAX

    def _unfinished(self) -> None:
        """The handler returned without ending its response."""
        self._done = True
        conn = self._conn
        if conn._closed:
            return
        if self.response_started:
            conn._abort()
            return
        conn._transport.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n"
            b"Date: %s\r\n\r\n" % conn._date()
        )
        conn._close()


class FrontProtocol(asyncio.Protocol):
    """One client connection: fast handlers for the router's requests, aiohttp for the rest."""

    # fmt: off
    __slots__ = (
        "_buffered", "_closed", "_closing", "_connections", "_context", "_date", "_deadline",
        "_deadline_kind",
        "_drain_waiter", "_exchange", "_fallback", "_feed", "_feed_completed", "_handoff",
        "_handoff_size", "_head_fed", "_head_more", "_head_start", "_head_timeout", "_headers",
        "_in_head", "_incoming", "_keepalive_timeout", "_loop", "_lost", "_max_buffered",
        "_max_head", "_max_target", "_parser", "_pinned", "_queue", "_reading_paused", "_remote",
        "_resume_at", "_router", "_stopped", "_task", "_timer", "_timer_period", "_transport",
        "_url", "_waiting_to_write", "_write_paused",
    )
    # fmt: on

    _transport: asyncio.Transport  # set by connection_made, before any other callback

    def __init__(
        self,
        router: Router,
        fallback: Callable[[], asyncio.Protocol],
        connections: FrontConnections,
        limits: ServerLimits = DEFAULT_LIMITS,
        *,
        date_header: Callable[[], bytes] | None = None,
    ) -> None:
        self._router = router
        self._fallback = fallback
        self._connections = connections
        self._date = date_header or _http_date
        self._max_head = limits.max_head_size
        self._max_target = limits.max_target_length
        self._max_buffered = limits.max_buffered_body
        self._resume_at = limits.max_buffered_body // 4
        self._head_timeout = limits.head_timeout
        self._keepalive_timeout = limits.keepalive_timeout
        self._loop = asyncio.get_running_loop()
        self._remote: str | None = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        # The read being parsed, and whether a request ended in it: a request that begins after
        # that does not begin at the start of the read, so its raw bytes are not known.
        self._feed = b""
        self._feed_completed = False
        # The request head being received.
        self._in_head = False
        self._pinned = False  # began in the middle of a read: cannot be handed off
        self._head_start: bytes | None = None  # the read it began at the start of, and the
        self._head_more: list[bytes] = []  # reads after that one, while the head is incomplete
        self._head_fed = 0
        self._url = b""
        self._headers: RawHeaders = []
        # Requests: the one whose body is being parsed, the one being served, the ones queued.
        self._incoming: Exchange | None = None
        self._exchange: Exchange | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[Exchange] = deque()
        self._buffered = 0  # request body bytes held for all of them
        self._reading_paused = False
        self._write_paused = False
        self._waiting_to_write = False  # the next queued exchange waits for resume_writing
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closing = False  # shutting down: close after the exchange in progress
        self._stopped = False  # parsing stopped: close once the queued exchanges are done
        self._closed = False  # close or abort requested, or the transport is gone
        self._lost = False
        self._handoff: list[bytes] | None = None  # raw bytes to hand off after the queue
        self._handoff_size = 0
        # One timer per connection, for whichever deadline applies; it is re-armed only when it
        # fires early, so a request costs a clock read rather than a TimerHandle. It never waits
        # longer than the shorter timeout, so it always fires before a new deadline is due.
        self._deadline: float | None = None
        self._deadline_kind = _IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._timer_period = min(limits.head_timeout, limits.keepalive_timeout)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # The server's context (a worker's log fields, say), for the protocol a hand-off
        # starts: the hand-off itself may run inside a fast request's task and its context.
        self._context = contextvars.copy_context()
        if not self._connections._add(self):
            self._closed = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._remote = str(peer[0])
        self._arm(self._keepalive_timeout, _IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._lost = True
        self._parser = None
        self._handoff = None
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ex in (self._exchange, self._incoming):
            if ex is not None and not ex._body_done and ex._body_error is None:
                ex._body_error = ConnectionResetError("the client closed the connection")
                _wake(ex._waiter)
        self._queue.clear()
        _wake(self._drain_waiter)
        task = self._task
        current = self._exchange
        if task is not None and current is not None and not current._done:
            task.cancel()  # how the handler learns that the client went away
        self._connections._discard(self, task)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)
        if self._waiting_to_write:
            self._waiting_to_write = False
            if self._exchange is None and self._queue and not self._closed:
                self._start(self._queue.popleft())
                self._resume_if_drained()

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # parsing stopped: closing, or waiting to hand off
            handoff = self._handoff
            if handoff is not None:
                handoff.append(data)
                self._handoff_size += len(data)
                if self._handoff_size > self._max_buffered:
                    self._pause()
            return
        if self._in_head and self._head_start is not None:
            self._head_more.append(data)
        self._feed = data
        self._feed_completed = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._interrupted(exc.__context__)
        except httptools.HttpParserError:
            self._interrupted(_Reject(400))
        else:
            if self._in_head:
                self._head_fed += len(data)
                if self._head_fed > self._max_head:
                    self._interrupted(_Reject(431))
        self._feed = b""

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._closing:
            raise _Stop
        self._in_head = True
        self._headers = []
        self._url = b""
        if self._feed_completed:
            self._pinned = True
            self._head_start = None
            self._head_fed = -len(self._feed)  # the read is counted from the next one on
        else:
            self._pinned = False
            self._head_start = self._feed
            self._head_fed = 0
        self._arm(self._head_timeout, _HEAD)

    def on_url(self, url: bytes) -> None:
        # llhttp reports spans: a target split across two reads arrives in two calls.
        self._url += url
        if len(self._url) > self._max_target:
            raise _Reject(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._deadline = None
        parser = self._parser
        assert parser is not None
        url = self._url
        headers = self._headers
        # Cheap bound first: the head is no larger than everything read since it began.
        if max(self._head_fed, 0) + len(self._feed) > self._max_head:
            size = len(url) + 16 + sum(len(name) + len(value) + 4 for name, value in headers)
            if size > self._max_head:
                raise _Reject(431)
        version = _VERSIONS.get(parser.get_http_version())
        if version is None:
            raise _Reject(505)
        content_length: int | None = None
        chunked = expect = False
        hosts = 0
        for name, value in headers:
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
                    # after this callback: anything but plain chunked is refused here.
                    if value.strip().lower() != b"chunked" or chunked:
                        raise _Reject(400)
                    chunked = True
            elif size == 6 and name.lower() == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if chunked and content_length is not None:
            raise _Reject(400)  # llhttp refuses it before this point; kept explicit
        if hosts > 1 or (hosts == 0 and version == _HTTP11):
            raise _Reject(400)  # RFC 9112 §3.2 (and aiohttp would refuse it too)
        if parser.should_upgrade():
            raise _HandOff
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        # A fragment is not part of the request (RFC 9110 §4.2.4): aiohttp drops it, and so
        # must we, or `…/flags#x` would pass a route check that `…/flags` fails.
        target = url.partition(b"#")[0].decode("latin-1")
        path, _, query_string = target.partition("?")
        handler = self._router(method, path)
        if handler is None:
            raise _HandOff
        self._head_start = None
        if self._head_more:
            self._head_more = []
        ex = Exchange(
            self,
            handler,
            method,
            target,
            path,
            query_string,
            headers,
            version,
            content_length,
            chunked,
            parser.should_keep_alive(),
            expect,
        )
        self._incoming = ex
        if self._exchange is None and not self._queue:
            self._start(ex)
        else:
            self._queue.append(ex)
            if len(self._queue) >= _MAX_QUEUED:
                self._pause()

    def on_body(self, body: bytes) -> None:
        ex = self._incoming
        assert ex is not None
        ex._received += len(body)
        if ex._discard:
            return
        ex._chunks.append(body)
        _wake(ex._waiter)
        self._buffered += len(body)
        if self._buffered > self._max_buffered:
            self._pause()

    def on_message_complete(self) -> None:
        self._feed_completed = True
        ex = self._incoming
        if ex is None:
            return
        self._incoming = None
        ex._body_done = True
        _wake(ex._waiter)
        if ex._discard:
            self._advance()

    # Exchanges

    def _start(self, ex: Exchange) -> None:
        self._exchange = ex
        self._task = self._loop.create_task(self._serve(ex))

    async def _serve(self, ex: Exchange) -> None:
        try:
            await ex._handler(ex)
        except (asyncio.CancelledError, ConnectionError):
            pass  # the client went away, or the connection was shut down
        except Exception:
            _logger.exception("front handler failed for %s %s", ex.method, ex.path)
        if not ex._done:
            ex._unfinished()
        self._task = None
        if self._closed:
            return
        if ex._chunks:  # nobody will read them now
            self._buffered -= sum(map(len, ex._chunks))
            ex._chunks.clear()
        if not ex._body_done:
            # The response went out keep-alive (the rest is known to be small): drop the rest as
            # it arrives, then go on. A client that stops sending meanwhile is idle.
            ex._discard = True
            self._resume()
            self._arm(self._keepalive_timeout, _IDLE)
            return
        self._advance()

    def _advance(self) -> None:
        """The exchange in progress is over: serve the next, hand off, close, or wait idle."""
        self._exchange = None
        if self._closing or (self._stopped and not self._queue):
            self._close()
            return
        if self._queue:
            if self._write_paused:  # the client is not reading its responses: wait for it
                self._waiting_to_write = True
                return
            self._start(self._queue.popleft())
        elif self._handoff is not None:
            self._hand_off(self._handoff)
        elif not self._in_head:
            self._arm(self._keepalive_timeout, _IDLE)
        self._resume_if_drained()

    def _resume_if_drained(self) -> None:
        if (
            self._reading_paused
            and self._buffered <= self._resume_at
            and len(self._queue) < _MAX_QUEUED
        ):
            self._resume()

    # Interruptions: hand-off, rejection, stop

    def _interrupted(self, cause: BaseException | None) -> None:
        self._parser = None  # llhttp is in an error state now; it is never fed again
        self._in_head = False
        self._deadline = None
        if isinstance(cause, _HandOff):
            if self._pinned:
                self._stop()
                return
            assert self._head_start is not None
            raw = [self._head_start, *self._head_more]
            if self._exchange is None:
                self._hand_off(raw)
            else:  # after the responses ahead of it
                self._handoff = raw
                self._handoff_size = sum(map(len, raw))
        elif isinstance(cause, _Reject):
            self._reject(cause.status)
        elif isinstance(cause, _Stop):
            self._stop()
        elif isinstance(cause, httptools.HttpParserError):  # raised by httptools itself
            self._reject(400)
        else:  # the router raised
            _logger.error("front request routing failed", exc_info=cause)
            self._reject(500)

    def _stop(self) -> None:
        if self._task is None:
            self._close()
        else:
            self._stopped = True

    def _reject(self, status: int) -> None:
        incoming = self._incoming
        if incoming is not None:  # the error is in a request body
            self._incoming = None
            if incoming is not self._exchange:
                self._queue.pop()  # queued last: never served
            elif self._task is not None:
                self._abort()  # its handler is reading the body that went wrong
                return
        if self._exchange is not None:
            self._stop()
            return
        headers, body = http_refusal_parts(status)
        fields = b"".join(b"%s: %s\r\n" % field for field in headers)
        self._transport.write(
            b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nConnection: close\r\nDate: %s\r\n\r\n%s"
            % (
                status,
                HTTPStatus(status).phrase.encode("ascii"),
                fields,
                len(body),
                self._date(),
                body,
            )
        )
        self._close()

    def _hand_off(self, raw: list[bytes]) -> None:
        self._handoff = None
        self._parser = None
        self._closed = True  # for us: the transport is no longer ours to use
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connections._discard(self, None)
        transport = self._transport
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        protocol = self._fallback()
        transport.set_protocol(protocol)
        # The connection's own context, not the current one: this may run inside the previous
        # fast request's task, whose request_id the tasks aiohttp starts would inherit.
        context = self._context
        context.run(protocol.connection_made, transport)
        if self._write_paused:
            context.run(protocol.pause_writing)
        context.run(protocol.data_received, b"".join(raw))

    # Connection state

    def _begin_shutdown(self) -> None:
        self._closing = True
        if self._task is None:
            self._close()

    def _kill(self) -> None:
        task = self._task
        self._abort()
        if task is not None:
            task.cancel()
            self._connections._discard(self, task)

    def _close(self) -> None:
        """Close after what is written; lingering when request bytes may still be coming."""
        if self._closed:
            return
        self._closed = True
        self._handoff = None  # never handed off now: what lingers is dropped, not buffered
        self._deadline = None
        transport = self._transport
        if (
            self._parser is None or self._in_head or self._incoming is not None
        ) and transport.can_write_eof():
            self._parser = None  # from now on reads are dropped
            self._resume()
            transport.write_eof()
            self._arm(_LINGER, _LINGERING)
        else:
            transport.close()

    def _abort(self) -> None:
        self._handoff = None
        if not self._lost:
            self._closed = True
            self._transport.abort()

    def _pause(self) -> None:
        if not self._reading_paused and not self._closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self._lost:
                self._transport.resume_reading()

    async def _drain(self) -> None:
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self._closed:
            raise ConnectionResetError("the client connection is closed")

    # Timers

    def _arm(self, delay: float, kind: int) -> None:
        now = self._loop.time()
        self._deadline = deadline = now + delay
        self._deadline_kind = kind
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(
                min(deadline, now + self._timer_period), self._on_timer
            )

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:
            return  # the deadline passed out of use; the next one arms a new timer
        now = self._loop.time()
        if now < deadline - _TIMER_SLACK:
            self._timer = self._loop.call_at(
                min(deadline, now + self._timer_period), self._on_timer
            )
            return
        self._deadline = None
        kind = self._deadline_kind
        if kind == _HEAD:
            if self._reading_paused:  # we stopped reading the head, not the client sending it
                self._arm(self._head_timeout, _HEAD)
            else:  # 408, or a plain close after the exchange in progress if there is one
                self._interrupted(_Reject(408))
        elif kind == _IDLE:
            self._close()
        else:
            self._transport.close()

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
overlong target 414, an HTTP version other than 1.0 and 1.1 505; the connection then closes. Each
refusal is gateway/errors.py's JSON error in the dialect of the request's path when its request
line was read (Grafana's otherwise), with the request id its fields ask for (or a new one), and
writes the request's log line (`record_refusal`). If a response is already in progress, no error
response is sent: the responses ahead are finished and the connection closes. A malformed body
of the request being served is its handler's to answer: reading the body raises the refusal (a
GatewayError) unless the response has started, when the connection is cut instead.

An upgrade request is what llhttp calls one (an Upgrade field named in Connection, or CONNECT);
a lone Upgrade field is ignored, as RFC 9110 §7.8 asks.

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
from collections import deque
from collections.abc import Callable
from typing import Final

import httptools

from gateway.errors import HttpRefusal, RawHeaders, http_refusal_parts
from gateway.front.body import RequestBody
from gateway.front.clock import HEAD, IDLE, LINGERING, ConnectionTimer, http_date
from gateway.front.connections import FrontConnections
from gateway.front.exchange import Exchange, FastHandler, Router
from gateway.front.limits import (
    DEFAULT_LIMITS,
    HTTP11,
    VERSIONS,
    Interrupt,
    Refused,
    ServerLimits,
    check_framing,
    closing_error,
    head_size,
)
from gateway.front.waiting import wake
from gateway.requests import choose_request_id, record_refusal

# Re-exported: the names a handler module or a test imports along with the protocol.
__all__ = ["Exchange", "FastHandler", "FrontConnections", "FrontProtocol", "Router", "ServerLimits"]

_logger = logging.getLogger(__name__)

# Pipelined requests queued behind the one being served; beyond, reading pauses (the requests of
# the read in hand are all parsed: httptools cannot stop mid-read). Together with not starting
# the next one while the client leaves our responses unread, this bounds what a client that
# pipelines without reading can make us hold.
_MAX_QUEUED: Final = 16
# How long a closing connection keeps reading (and dropping) what the client still sends.
_LINGER: Final = 2.0
# llhttp reports the method as bytes; the known ones are decoded once.
_METHODS: Final = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class _HandOff(Interrupt):
    """The request is aiohttp's: hand the connection over."""


class _Stop(Interrupt):
    """Parse no more: close once the exchanges queued are done."""


class FrontProtocol(asyncio.Protocol):
    """One client connection: fast handlers for the router's requests, aiohttp for the rest.

    Its public attributes are read by its exchanges; only the protocol changes them.
    """

    __slots__ = (
        "_buffered", "_closing", "_connections", "_context", "_drain_waiter", "_exchange",
        "_fallback", "_feed", "_feed_completed", "_handoff", "_handoff_size", "_head_fed",
        "_head_more", "_head_start", "_head_timeout", "_headers", "_in_head", "_incoming",
        "_keepalive_timeout", "_loop", "_lost", "_max_buffered", "_max_head", "_max_target",
        "_no_body", "_parser", "_pinned", "_queue", "_reading_paused", "_resume_at", "_router",
        "_stopped", "_task", "_timer", "_url", "_waiting_to_write",
        "closed", "date_header", "remote", "transport", "write_paused", "written",
    )  # fmt: skip

    transport: asyncio.Transport  # set by connection_made, before any other callback

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
        self.date_header = date_header or http_date
        self._max_head = limits.max_head_size
        self._max_target = limits.max_target_length
        self._max_buffered = limits.max_buffered_body
        self._resume_at = limits.max_buffered_body // 4
        self._head_timeout = limits.head_timeout
        self._keepalive_timeout = limits.keepalive_timeout
        self._loop = loop = asyncio.get_running_loop()
        self.remote: str | None = None
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
        # Every request without a body shares this one, complete from the start: it is never
        # fed, and no one ever waits on it, so a bodiless request costs no body of its own.
        self._no_body = RequestBody(self, loop, None, False, complete=True)
        self._buffered = 0  # request body bytes held for all of them
        self._reading_paused = False
        self.write_paused = False
        self._waiting_to_write = False  # the next queued exchange waits for resume_writing
        self._drain_waiter: asyncio.Future[None] | None = None
        # What a write that need not wait returns: awaiting a done future is a C call, where a
        # coroutine per write would be created, entered and torn down.
        self.written: asyncio.Future[None] = loop.create_future()
        self.written.set_result(None)
        self._closing = False  # shutting down: close after the exchange in progress
        self._stopped = False  # parsing stopped: close once the queued exchanges are done
        self.closed = False  # close or abort requested, or the transport is gone
        self._lost = False
        self._handoff: list[bytes] | None = None  # raw bytes to hand off after the queue
        self._handoff_size = 0
        self._timer = ConnectionTimer(
            loop, min(limits.head_timeout, limits.keepalive_timeout), self._deadline_passed
        )

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The server's context (a worker's log fields, say), for the protocol a hand-off
        # starts: the hand-off itself may run inside a fast request's task and its context.
        self._context = contextvars.copy_context()
        if not self._connections.add(self):
            self.closed = True
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.remote = str(peer[0])
        self._timer.arm(self._keepalive_timeout, IDLE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._lost = True
        self._parser = None
        self._handoff = None
        self._timer.stop()
        for ex in (self._exchange, self._incoming):
            if ex is not None:
                ex.request_body.fail(ConnectionResetError("the client closed the connection"))
        self._queue.clear()
        wake(self._drain_waiter)
        task = self._task
        current = self._exchange
        if task is not None and current is not None and not current.finished:
            task.cancel()  # how the handler learns that the client went away
        self._connections.discard(self, task)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        wake(self._drain_waiter)
        if self._waiting_to_write:
            self._waiting_to_write = False
            if self._exchange is None and self._queue and not self.closed:
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
        except httptools.HttpParserError as exc:
            self._interrupted(Refused(400, str(exc)))
        else:
            if self._in_head:
                self._head_fed += len(data)
                if self._head_fed > self._max_head:
                    self._interrupted(Refused(431))
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
        self._timer.arm(self._head_timeout, HEAD)

    def on_url(self, url: bytes) -> None:
        # llhttp reports spans: a target split across two reads arrives in two calls.
        self._url += url
        if len(self._url) > self._max_target:
            raise Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        url = self._url
        headers = self._headers
        max_head = self._max_head
        # Cheap bound first: the head is no larger than everything read since it began.
        if (
            max(self._head_fed, 0) + len(self._feed) > max_head
            and head_size(url, headers) > max_head
        ):
            raise Refused(431)
        version = VERSIONS.get(parser.get_http_version())
        if version is None:
            raise Refused(505)
        content_length, chunked, expect = check_framing(headers, version)
        # Only now: a refusal above is one of a request whose head was read, answered in its
        # route's dialect, and timed from the head's deadline (see `_refuse`).
        self._in_head = False
        self._timer.deadline = None
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
        has_body = chunked or bool(content_length)
        body = (
            RequestBody(self, self._loop, content_length, expect and version == HTTP11)
            if has_body
            else self._no_body
        )
        ex = Exchange(
            self,
            handler,
            body,
            method,
            target,
            path,
            query_string,
            headers,
            version,
            content_length,
            has_body,
            parser.should_keep_alive(),
        )
        self._incoming = ex
        self._serve_or_queue(ex)

    def on_body(self, body: bytes) -> None:
        ex = self._incoming
        assert ex is not None
        if ex.request_body.receive(body):
            self._buffered += len(body)
            if self._buffered > self._max_buffered:
                self._pause()

    def on_message_complete(self) -> None:
        self._feed_completed = True
        ex = self._incoming
        if ex is None:
            return
        self._incoming = None
        body = ex.request_body
        body.end()
        if body.discarding:
            self._advance()

    # Exchanges

    def _serve_or_queue(self, ex: Exchange) -> None:
        if self._exchange is None and not self._queue:
            self._start(ex)
        else:
            self._queue.append(ex)
            if len(self._queue) >= _MAX_QUEUED:
                self._pause()

    def _start(self, ex: Exchange) -> None:
        self._exchange = ex
        self._task = self._loop.create_task(self._serve(ex))

    async def _serve(self, ex: Exchange) -> None:
        try:
            await ex.handler(ex)
        except (asyncio.CancelledError, ConnectionError):
            pass  # the client went away, or the connection was shut down
        except Exception as exc:
            if exc is not ex.request_body.error:  # a refused body is answered just below
                _logger.exception("front handler failed for %s %s", ex.method, ex.path)
        ex.end_unanswered()
        self._task = None
        if self.closed:
            return
        body = ex.request_body
        self._buffered -= body.discard_rest()  # nobody will read what is buffered now
        if not body.complete:
            # The response went out keep-alive (the rest is known to be small): drop the rest as
            # it arrives, then go on. A client that stops sending meanwhile is idle.
            self._resume()
            self._timer.arm(self._keepalive_timeout, IDLE)
            return
        self._advance()

    def _advance(self) -> None:
        """The exchange in progress is over: serve the next, hand off, close, or wait idle."""
        self._exchange = None
        if self._closing or (self._stopped and not self._queue):
            self.close()
            return
        if self._queue:
            if self.write_paused:  # the client is not reading its responses: wait for it
                self._waiting_to_write = True
                return
            self._start(self._queue.popleft())
        elif self._handoff is not None:
            self._hand_off(self._handoff)
        elif not self._in_head:
            self._timer.arm(self._keepalive_timeout, IDLE)
        self._resume_if_drained()

    # What the exchange and its body ask of the connection

    def body_consumed(self, size: int) -> None:
        self._buffered -= size
        self._resume_if_drained()

    def send_continue(self) -> None:
        if not self.closed:
            self.transport.write(_CONTINUE)

    def will_close(self) -> bool:
        return self._closing or (self._stopped and not self._queue)

    async def drain(self) -> None:
        waiter = self._drain_waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self.closed:
            raise ConnectionResetError("the client connection is closed")

    def close(self) -> None:
        """Close after what is written; lingering when request bytes may still be coming."""
        if self.closed:
            return
        self.closed = True
        self._handoff = None  # never handed off now: what lingers is dropped, not buffered
        self._timer.deadline = None
        transport = self.transport
        if (
            self._parser is None or self._in_head or self._incoming is not None
        ) and transport.can_write_eof():
            self._parser = None  # from now on reads are dropped
            self._resume()
            transport.write_eof()
            self._timer.arm(_LINGER, LINGERING)
        else:
            transport.close()

    def abort(self) -> None:
        self._handoff = None
        if not self._lost:
            self.closed = True
            self.transport.abort()

    # What a shutdown asks of the connection

    def begin_shutdown(self) -> None:
        self._closing = True
        if self._task is None:
            self.close()

    def kill(self) -> None:
        task = self._task
        self.abort()
        if task is not None:
            task.cancel()
            self._connections.discard(self, task)

    # Interruptions: hand-off, rejection, stop

    def _interrupted(self, cause: BaseException | None) -> None:
        parser = self._parser
        in_head = self._in_head
        deadline = self._timer.deadline
        self._parser = None  # llhttp is in an error state now; it is never fed again
        self._in_head = False
        self._timer.deadline = None
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
            return
        if isinstance(cause, _Stop):
            self._stop()
            return
        if isinstance(cause, Refused):
            status, detail = cause.status, cause.detail
        elif isinstance(cause, httptools.HttpParserError):  # raised by httptools itself
            status, detail = 400, str(cause)
        else:  # the router raised
            _logger.error("front request routing failed", exc_info=cause)
            status, detail = 500, None
        if status == 408:
            elapsed = self._head_timeout
        elif deadline is not None and in_head:
            elapsed = max(0.0, self._head_timeout - (deadline - self._loop.time()))
        else:
            elapsed = 0.0
        self._refuse(status, detail, parser if in_head else None, elapsed)

    def _stop(self) -> None:
        if self._task is None:
            self.close()
        else:
            self._stopped = True

    def _refuse(
        self,
        status: int,
        detail: str | None,
        head_parser: httptools.HttpRequestParser | None,
        elapsed: float,
    ) -> None:
        """Answer a request the connection cannot serve, then close. `head_parser` is given
        while the refused request's head is being (or was just) read: its method, target and
        fields so far are then this request's, so the answer takes the dialect of its path
        and the request id its fields ask for, and its log line names them."""
        incoming = self._incoming
        if incoming is not None:  # the error is in a request body
            self._incoming = None
            if incoming is not self._exchange:
                self._queue.pop()  # queued last: never served
            elif self._task is not None:
                if incoming.response_started:
                    self.abort()  # too late to answer: the client must see it cut off
                else:
                    # Its handler answers, as for any other error of the request it reads.
                    incoming.close_after_response()
                    incoming.request_body.fail(HttpRefusal(status, detail))
                return
        if self._exchange is not None:
            self._stop()
            return
        method = path = None
        headers: RawHeaders = []
        if head_parser is not None:
            headers = self._headers
            if self._url:
                path = self._url.partition(b"#")[0].partition(b"?")[0].decode("latin-1")
                raw_method = head_parser.get_method()
                method = _METHODS.get(raw_method) or raw_method.decode("ascii", "replace")
        request_id = choose_request_id(
            _field(headers, b"x-request-id"),
            _field(headers, b"traceparent"),
            _field(headers, b"zap-trace-span"),
        )
        parts = http_refusal_parts(status, path, request_id, detail)
        self.transport.write(closing_error(status, parts, self.date_header()))
        self.close()
        record_refusal(method, path, status, elapsed, request_id)

    def _hand_off(self, raw: list[bytes]) -> None:
        self._handoff = None
        self._parser = None
        self.closed = True  # for us: the transport is no longer ours to use
        self._timer.stop()
        self._connections.discard(self, None)
        transport = self.transport
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        protocol = self._fallback()
        transport.set_protocol(protocol)
        # The connection's own context, not the current one: this may run inside the previous
        # fast request's task, whose request_id the tasks aiohttp starts would inherit.
        context = self._context
        context.run(protocol.connection_made, transport)
        if self.write_paused:
            context.run(protocol.pause_writing)
        context.run(protocol.data_received, b"".join(raw))

    # Reading

    def _pause(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if not self._lost:
                self.transport.resume_reading()

    def _resume_if_drained(self) -> None:
        if (
            self._reading_paused
            and self._buffered <= self._resume_at
            and len(self._queue) < _MAX_QUEUED
        ):
            self._resume()

    # Deadlines

    def _deadline_passed(self, kind: int) -> None:
        if kind == HEAD:
            if self._reading_paused:  # we stopped reading the head, not the client sending it
                self._timer.arm(self._head_timeout, HEAD)
            else:  # 408, or a plain close after the exchange in progress if there is one
                self._interrupted(Refused(408))
        elif kind == IDLE:
            self.close()
        else:
            self.transport.close()


def _field(headers: RawHeaders, lower_name: bytes) -> str | None:
    """The first value of a request field of a refused request, or None."""
    for name, value in headers:
        if name.lower() == lower_name:
            return value.decode("latin-1")
    return None

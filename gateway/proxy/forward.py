"""Forwarder: one proxied request, streamed both ways through the upstream pool.

The hot path. Everything about a source that does not change per request — its origin, base
path, credential headers, timeouts, metric labels — is prepared once per source version and
cached, so a request costs header filtering, one pool exchange and the copy loop. No SQL: the
caller resolves the source from the in-memory SourceCache.

`Forwarder.forward` runs one request as a sequence of small steps; each is a method below, in
the order they run, and a new capability plugs in as a step rather than inside another one:

1. `_outgoing_body` — the request body to send: the client's (read whole when small, streamed
   otherwise), or one the gateway built (a translated query);
2. `_choose_target` — the upstream origin to try (a source has one today; replica failover
   chooses here);
3. `_try` — one exchange with the pool, its failures translated into the gateway's errors and
   fed to passive health. Retries: the pool retries once on a stale keep-alive connection (its
   retry rule); a retry across targets is decided between `_try` and the next `_choose_target`;
4. `_relay` — the answer back to the client: the upstream's status and headers, then `_stream`
   copies the body with back-pressure;
5. `_Outcome.record` — the request's metrics, recorded once, in `forward`'s `finally`, whatever
   happened. Every failure is an exception carrying its status (a `GatewayError`, or `_ClientGone`
   for 499), so no step tracks the status by hand.

Outcomes:
- upstream refused/reset/unreachable → 502, timeouts → 504, both `{"message", "traceID"}` in
  Grafana's dialect; connect failures and timeouts also count as passive health failures;
- a connect-time SSRF refusal → 403; an upstream 401 → 400 "Authentication to data source
  failed" (the client's own session must not look invalid);
- once the response has started, an upstream failure aborts the client connection, so a
  truncated body can never look complete; a client that goes away is logged as 499 and its
  upstream connection is dropped, not returned to the pool.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.config import Settings
from gateway.errors import (
    BadGateway,
    BadRequest,
    Dialect,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    RequestTimeout,
    upstream_auth_failed_parts,
)
from gateway.metrics import GatewayMetrics, SourceMeters
from gateway.proxy.headers import (
    SourceHeaders,
    keep_cookie_names,
    request_headers,
    response_headers,
)
from gateway.proxy.http1 import (
    RequestBody,
    RequestBodyError,
    Timeouts,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from gateway.proxy.ssrf import TargetRefused
from gateway.proxy.upstream import Origin, UpstreamPool
from gateway.registry.models import DataSource
from gateway.upstream.credentials import source_credentials, tls_skip_verify

log = structlog.get_logger(__name__)

# Bodies up to this size with a known length are read whole: one write upstream, and the
# request can be retried on a stale keep-alive connection. Larger ones stream.
SMALL_BODY = 64 * 1024
CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away", as Grafana logs it
_BODY_HEADERS = frozenset({b"content-type", b"content-encoding", b"content-length"})

PassiveFailure = Callable[[int], None]
RawHeaders = list[tuple[bytes, bytes]]


class ClientExchange(Protocol):
    """The client's side of one proxied request, whichever server carries it: the front
    server's `Exchange` (gateway/front/exchange.py), or `AiohttpExchange` on a connection that
    aiohttp serves. Response headers are raw; the server owns framing (Content-Length or
    chunked) and hop-by-hop headers."""

    @property
    def method(self) -> str: ...
    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def has_body(self) -> bool: ...
    @property
    def content_length(self) -> int | None: ...
    def body(self) -> AsyncIterator[bytes]: ...
    async def read_body(self, limit: int) -> bytes: ...
    def start_response(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> None: ...
    async def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class PreparedSource:
    source: DataSource
    origin: Origin
    headers: SourceHeaders
    timeouts: Timeouts
    meters: SourceMeters


class Forwarder:
    def __init__(
        self,
        pool: UpstreamPool,
        settings: Settings,
        metrics: GatewayMetrics,
        on_passive_failure: PassiveFailure | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._on_passive_failure = on_passive_failure
        self._prepared: dict[int, PreparedSource] = {}

    def prepare(self, source: DataSource) -> PreparedSource:
        """What a request to `source` needs, computed once per version of the source."""
        cached = self._prepared.get(source.id)
        if cached is not None and cached.source.version == source.version:
            return cached
        try:
            origin = Origin.from_url(source.url, tls_skip_verify=tls_skip_verify(source))
        except ValueError as exc:
            raise BadRequest(
                "Invalid data source URL", influx_message="invalid source URL"
            ) from exc
        credentials = tuple(
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in source_credentials(source).headers.items()
        )
        custom_names = frozenset(
            name.strip().lower().encode("latin-1")
            for key, name in source.json_data.items()
            if key.startswith("httpHeaderName") and isinstance(name, str)
        )
        settings = self._settings
        prepared = PreparedSource(
            source=source,
            origin=origin,
            headers=SourceHeaders.of(
                credentials, custom_names, keep_cookie_names(source.json_data)
            ),
            timeouts=Timeouts(
                connect=settings.proxy_connect_timeout,
                headers=_seconds(source.json_data.get("timeout"), settings.proxy_response_timeout),
                body=settings.proxy_idle_timeout,
            ),
            meters=self._metrics.source_meters(
                self._metrics.source_labels(source.org_id, source.uid, source.type)
            ),
        )
        self._prepared[source.id] = prepared
        return prepared

    async def forward(
        self,
        client: ClientExchange,
        source: DataSource,
        target: str,
        *,
        request_id: str,
        dialect: Dialect = Dialect.GRAFANA,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        body_override: bytes | None = None,
        method: str | None = None,
    ) -> int:
        """Send the client's request to `source` at `target` (encoded path + query) and stream
        the answer back; return the status to log (499 when the client went away).

        `body_override` and `method` let a caller send a body of its own (a translated query)
        instead of the client's. Errors before the response started are raised as
        GatewayErrors for the caller to render.
        """
        prepared = self.prepare(source)
        outcome = _Outcome(prepared.meters, method or client.method)
        request_id_bytes = request_id.encode()
        try:
            headers = request_headers(
                client.headers,
                client_address=client.remote,
                request_id=request_id_bytes,
                source=prepared.headers,
            )
            if body_override is not None:
                # The gateway sends a body of its own: the client's description of its body
                # would contradict it (a JSON Content-Type in front of a form, say).
                headers = [(n, v) for n, v in headers if n.lower() not in _BODY_HEADERS]
                headers.extend(extra_headers)
            body, content_length = await self._outgoing_body(
                client, prepared, body_override, outcome
            )
            origin = self._choose_target(prepared)
            upstream = await self._try(
                prepared, origin, outcome, target, headers, body, content_length, request_id
            )
            outcome.status = await self._relay(
                client, prepared, upstream, outcome, dialect, request_id_bytes
            )
        except _ClientGone:
            outcome.status = CLIENT_CLOSED_REQUEST
            client.abort()
        except GatewayError as exc:
            outcome.status = exc.status
            raise
        except asyncio.CancelledError:
            # The server cancels the handler when the client disconnects; the upstream response
            # was closed on the way out (not pooled), so only the outcome is left to record.
            outcome.status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            outcome.record()
        return outcome.status

    # --- the steps, in the order they run -----------------------------------------------------

    async def _outgoing_body(
        self,
        client: ClientExchange,
        prepared: PreparedSource,
        body_override: bytes | None,
        outcome: _Outcome,
    ) -> tuple[RequestBody, int | None]:
        """The body to send upstream and its length (None: stream it chunked)."""
        if body_override is not None:
            outcome.sent = len(body_override)
            return body_override, len(body_override)
        if not client.has_body:
            return None, None
        length = client.content_length
        if length is not None and length <= SMALL_BODY:
            try:
                async with asyncio.timeout(prepared.timeouts.body):
                    body = await client.read_body(SMALL_BODY)
            except ConnectionError as exc:
                raise _ClientGone() from exc
            except TimeoutError as exc:
                raise RequestTimeout() from exc
            outcome.sent = len(body)
            return body, len(body)
        counted = _Counted(client.body(), prepared.timeouts.body)
        outcome.streamed = counted
        return counted, length

    def _choose_target(self, prepared: PreparedSource) -> Origin:
        """Where to send the request: the source's one URL."""
        return prepared.origin

    async def _try(
        self,
        prepared: PreparedSource,
        origin: Origin,
        outcome: _Outcome,
        target: str,
        headers: RawHeaders,
        body: RequestBody,
        content_length: int | None,
        request_id: str,
    ) -> UpstreamResponse:
        """One exchange with `origin` up to the response head; failures as gateway errors."""
        try:
            upstream = await self._pool.request(
                origin,
                outcome.method,
                target,
                headers,
                body,
                content_length=content_length,
                timeouts=prepared.timeouts,
            )
        except TargetRefused as exc:
            raise Forbidden(f"Data source target is not allowed: {exc}") from exc
        except UpstreamError as exc:
            self._upstream_failed(prepared, exc)
            raise _gateway_error(exc, request_id) from exc
        except ConnectionError as exc:  # the client's body broke off: it went away
            raise _ClientGone() from exc
        except _BodyStalled as exc:  # the client stopped sending mid-body
            raise RequestTimeout() from exc
        except RequestBodyError as exc:
            raise BadRequest(
                "request body does not match its Content-Length",
                influx_message="request body does not match its Content-Length",
            ) from exc
        outcome.upstream_answered()
        return upstream

    async def _relay(
        self,
        client: ClientExchange,
        prepared: PreparedSource,
        upstream: UpstreamResponse,
        outcome: _Outcome,
        dialect: Dialect,
        request_id: bytes,
    ) -> int:
        """The upstream's answer to the client; the status to log."""
        async with upstream:
            status = outcome.status = upstream.status
            if status == 401:
                # An upstream 401 must not look like the client's own session failed
                # (Grafana's rule).
                headers, body = upstream_auth_failed_parts(dialect)
                headers.append((b"X-Request-Id", request_id))
                client.respond(400, "Bad Request", headers, body)
                return 400
            response = response_headers(upstream.headers)
            response.append((b"X-Request-Id", request_id))
            client.start_response(status, upstream.reason, response)
            return await self._stream(client, prepared, upstream, outcome)

    async def _stream(
        self,
        client: ClientExchange,
        prepared: PreparedSource,
        upstream: UpstreamResponse,
        outcome: _Outcome,
    ) -> int:
        """Copy the response body; the status to log once it is over."""
        try:
            async for chunk in upstream:
                outcome.received += len(chunk)
                await client.write(chunk)
        except UpstreamError as exc:
            # Headers are out: the status cannot change. Cut the connection so the client sees
            # an incomplete response, never a complete-looking short one, and count and log it
            # as the failure it was, not as the status it began with.
            status = self._upstream_failed(prepared, exc, passive=False)
            log.warning(
                "proxy_aborted",
                source_uid=prepared.source.uid,
                reason=f"upstream {exc.kind} after {outcome.received} bytes",
            )
            client.abort()
            return status
        except ConnectionError as exc:
            raise _ClientGone() from exc
        client.finish()
        return upstream.status

    def _upstream_failed(
        self, prepared: PreparedSource, exc: UpstreamError, *, passive: bool = True
    ) -> int:
        prepared.meters.upstream_errors(exc.kind).inc()
        log.warning(
            "proxy_upstream_error",
            source_uid=prepared.source.uid,
            kind=exc.kind,
            error=str(exc),
        )
        if passive and exc.kind in ("connect", "timeout") and self._on_passive_failure:
            self._on_passive_failure(prepared.source.id)
        return 504 if isinstance(exc, UpstreamTimeout) else 502


class _Outcome:
    """What one proxied request did, for its metrics: recorded once, when it is over."""

    __slots__ = ("meters", "method", "received", "sent", "started", "status", "streamed")

    def __init__(self, meters: SourceMeters, method: str) -> None:
        self.meters = meters
        self.method = method
        self.status = 500  # until a step knows better
        self.sent = 0
        self.received = 0
        self.streamed: _Counted | None = None  # a streamed request body counts its own bytes
        self.started = time.perf_counter()
        meters.in_flight.inc()

    def upstream_answered(self) -> None:
        self.meters.upstream_latency.observe(time.perf_counter() - self.started)

    def record(self) -> None:
        meters = self.meters
        meters.in_flight.dec()
        meters.requests(self.method, str(self.status)).inc()
        meters.duration.observe(time.perf_counter() - self.started)
        sent = self.streamed.total if self.streamed is not None else self.sent
        if sent:
            meters.request_bytes.inc(sent)
        if self.received:
            meters.response_bytes.inc(self.received)


class _ClientGone(Exception):
    """The client went away: its connection broke while we read from or wrote to it."""


class _BodyStalled(Exception):
    """No byte of the client's streamed body arrived within the idle timeout."""


class _Counted:
    """The client's streamed body, counting the bytes that went upstream, with the proxy's
    idle timeout between chunks: a client that stops mid-upload must not hold an upstream
    connection (and a handler) for ever."""

    __slots__ = ("_chunks", "_idle_timeout", "total")

    def __init__(self, chunks: AsyncIterator[bytes], idle_timeout: float | None) -> None:
        self._chunks = chunks
        self._idle_timeout = idle_timeout
        self.total = 0

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle_timeout):
                chunk = await self._chunks.__anext__()
        except TimeoutError as exc:
            raise _BodyStalled(f"no request body byte for {self._idle_timeout} s") from exc
        self.total += len(chunk)
        return chunk


def _gateway_error(exc: UpstreamError, request_id: str) -> GatewayError:
    error: GatewayError
    if isinstance(exc, UpstreamTimeout):
        error = GatewayTimeout(f"upstream {exc.phase} timeout", influx_message=str(exc))
    else:
        error = BadGateway(
            f"upstream {exc.kind} error", influx_message=f"upstream {exc.kind} error"
        )
    error.trace_id = request_id
    return error


def _seconds(value: object, default: float) -> float:
    """Grafana's jsonData.timeout: seconds as a number or a numeric string."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float | str):
        try:
            number = float(value)
        except ValueError:
            return default
        if math.isfinite(number) and number > 0:
            return number
    return default

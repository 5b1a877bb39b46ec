"""Forwarder: one proxied request, streamed both ways through the upstream pool.

The hot path. Everything about a source that does not change per request — its targets (origin
and base path of its `url` and of each `jsonData.replicaUrls` entry), credential headers,
timeouts, retry policy, metric labels — is prepared once per source version and cached, so a
request costs header filtering, one pool exchange and the copy loop. No SQL: the caller resolves
the source from the in-memory SourceCache. The outlier state of a source's targets lives in its
prepared entry: `forget` drops the entries of deleted and changed sources.

`Forwarder.forward` runs one request as a sequence of small steps; each is a method below, in
the order they run, and a new capability plugs in as a step rather than inside another one:

1. `_outgoing_body` — the request body to send: the client's (read whole when small, streamed
   otherwise), or one the gateway built (a translated query);
2. `_choose_target` — the target to try: the first healthy one (failover) or the next healthy
   one in turn (round robin), one not tried yet by this request (gateway/proxy/targets.py);
3. a try — one exchange with the pool up to the response head, its result counted per target
   (`_count_try`) and fed to outlier detection, its failures to passive health (`_try_error`).
   Retries: the pool retries once on a stale keep-alive connection (its retry rule); `_retry`,
   between a try and the next `_choose_target`, decides whether a failed or 5xx try goes on to
   another target (gateway/proxy/retry.py says when that is safe); `_answer` runs this loop,
   with the try inlined (`_try` is the same try with a deadline, for the write spool);
4. `_relay` — the answer back to the client: the upstream's status and headers, then the body
   with back-pressure (what is buffered already taken without a coroutine);
5. `_Outcome.record` — the request's metrics, recorded once, in `forward`'s `finally`, whatever
   happened. Every failure is an exception carrying its status (a `GatewayError`, or `_ClientGone`
   for 499), so no step tracks the status by hand.

InfluxDB writes of a source with a write buffer (gateway/spool/) take their own steps instead
of 1 to 4: `_whole_body` (read whole, up to `spool.max_body_bytes`), `_write` (sent to its
target when that is healthy and has nothing queued, relayed as above; else, or when the try
fails, answers 5xx or has no answer within the source's `forwardTimeout`, queued by `_queue`
and answered 204 once durable), with `_write_targets`
saying which target takes it directly and which queue the others (`jsonData.writeMirror`:
every target gets every write). `deliver` sends what the shippers replay.

Outcomes:
- upstream refused/reset/unreachable → 502, timeouts → 504, both `{"message", "traceID"}` in
  Grafana's dialect; connect failures and timeouts also count as passive health failures of
  the target; with replicas the message says how many targets were tried, and a request that
  tried more than one answers 502 when all failed;
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
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import structlog

from gateway.bodies import BodyTooLarge
from gateway.config import Settings
from gateway.errors import (
    BadGateway,
    BadRequest,
    Dialect,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    RequestTimeout,
    WriteSpoolFull,
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
from gateway.proxy.policy import ProxyPath, UpstreamPath
from gateway.proxy.retry import REPLAY_BODY_LIMIT, RetryPolicy, replayable
from gateway.proxy.ssrf import TargetRefused
from gateway.proxy.targets import Outliers, Target, TargetHealth, TargetSet, TryResult
from gateway.proxy.upstream import Origin, UpstreamPool
from gateway.registry.models import DataSource, target_label
from gateway.spool import SpooledWrite, SpoolFull, TargetKey
from gateway.spool.policy import WriteBuffer, write_params, write_path
from gateway.spool.service import WriteSpool
from gateway.spool.shipper import Delivery, DeliveryFailed
from gateway.upstream.credentials import source_credentials, tls_skip_verify

log = structlog.get_logger(__name__)

# Bodies up to this size with a known length are read whole: one write upstream, and the
# request can be retried on a stale keep-alive connection, or on another target when it is
# retry-eligible. Larger ones stream.
SMALL_BODY = REPLAY_BODY_LIMIT
CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away", as Grafana logs it
_BODY_HEADERS = frozenset({b"content-type", b"content-encoding", b"content-length"})
_CONTENT_TYPE = b"content-type"
_CONTENT_ENCODING = b"content-encoding"
NO_CONTENT = 204  # a write queued in the spool, durably
SPOOL_FULL_RETRY_AFTER = 30  # seconds: Retry-After of a write the spool cannot take
REPLAY_MESSAGE_LIMIT = 64 * 1024  # of an upstream's answer to a replayed write
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

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
    def write(self, data: bytes) -> Awaitable[None]: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class PreparedSource:
    source: DataSource
    targets: TargetSet
    headers: SourceHeaders
    timeouts: Timeouts  # per try: the response head wait is bounded by retry.perTryTimeout
    retry: RetryPolicy
    meters: SourceMeters


class _Upstreaming:
    """The request as it goes upstream, the same for every try, and the targets it tried."""

    __slots__ = ("body", "content_length", "headers", "path", "replayable", "request_id", "tried")

    def __init__(
        self,
        path: UpstreamPath,
        headers: RawHeaders,
        body: RequestBody,
        content_length: int | None,
        request_id: str,
    ) -> None:
        self.path = path
        self.headers = headers
        self.body = body
        self.content_length = content_length
        self.request_id = request_id
        self.replayable = False
        self.tried: list[Target] = []


class Forwarder:
    """Proxied requests to the sources' targets. `health` (the HealthMonitor) says which
    targets pass their probes and hears of failed tries (passive health); `outliers` holds
    outlier detection's policy and clock, shared by every source (tests move its clock)."""

    def __init__(
        self,
        pool: UpstreamPool,
        settings: Settings,
        metrics: GatewayMetrics,
        health: TargetHealth | None = None,
        outliers: Outliers | None = None,
        spool: WriteSpool | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._spool = spool
        self.outliers = outliers or Outliers()
        self._prepared: dict[int, PreparedSource] = {}
        if health is not None:
            health.add_target_listener(self._target_health_changed)

    def prepare(self, source: DataSource) -> PreparedSource:
        """What a request to `source` needs, computed once per version of the source."""
        cached = self._prepared.get(source.id)
        if cached is not None and cached.source.version == source.version:
            return cached
        retry = RetryPolicy.of(source.json_data)
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
        response_timeout = _seconds(
            source.json_data.get("timeout"), settings.proxy_response_timeout
        )
        if retry.per_try_timeout is not None:
            response_timeout = min(response_timeout, retry.per_try_timeout)
        prepared = PreparedSource(
            source=source,
            targets=TargetSet(source, self._targets(source), self.outliers, self._health),
            headers=SourceHeaders.of(
                credentials, custom_names, keep_cookie_names(source.json_data)
            ),
            timeouts=Timeouts(
                connect=settings.proxy_connect_timeout,
                headers=response_timeout,
                body=settings.proxy_idle_timeout,
            ),
            retry=retry,
            meters=self._metrics.source_meters(
                self._metrics.source_labels(source.org_id, source.uid, source.type)
            ),
        )
        self._prepared[source.id] = prepared
        return prepared

    def _targets(self, source: DataSource) -> list[Target]:
        """The source's URLs as targets, the primary first. An invalid primary is a 400; an
        invalid replica (one no writer's check saw) is left out."""
        skip_verify = tls_skip_verify(source)
        targets: list[Target] = []
        for index, url in enumerate(source.target_urls):
            try:
                origin = Origin.from_url(url, tls_skip_verify=skip_verify)
            except ValueError:
                if index == 0:
                    break
                continue
            meters = self._metrics.target_meters(source.org_id, source.uid, target_label(url))
            targets.append(Target(len(targets), url, origin, meters))
        if not targets or targets[0].url != source.target_urls[0]:
            raise BadRequest("Invalid data source URL", influx_message="invalid source URL")
        return targets

    def prepared(self, source_id: int) -> PreparedSource | None:
        """What is prepared for the source now, if anything (its targets' state included)."""
        return self._prepared.get(source_id)

    def forget(self, sources: Mapping[int, DataSource]) -> None:
        """Drop what was prepared for sources that are gone from `sources` (by id) or changed,
        their targets' outlier state with it."""
        for source_id, prepared in list(self._prepared.items()):
            current = sources.get(source_id)
            if current is None or current.version != prepared.source.version:
                del self._prepared[source_id]

    def _target_health_changed(self, source: DataSource, url: str, healthy: bool) -> None:
        """A probe result changed a target's state: a passing probe ends its ejection."""
        prepared = self._prepared.get(source.id)
        if healthy and prepared is not None:
            prepared.targets.probe_passed(url)

    async def forward(
        self,
        client: ClientExchange,
        source: DataSource,
        target: UpstreamPath,
        *,
        request_id: str,
        dialect: Dialect = Dialect.GRAFANA,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        body_override: bytes | None = None,
        method: str | None = None,
    ) -> int:
        """Send the client's request to `source` at `target` (under each target's base path)
        and stream the answer back; return the status to log (499 when the client went away).

        `body_override` and `method` let a caller send a body of its own (a translated query)
        instead of the client's. Errors before the response started are raised as
        GatewayErrors for the caller to render.
        """
        prepared = self.prepare(source)
        outcome = _Outcome(prepared.meters, method or client.method)
        request_id_bytes = request_id.encode()
        try:
            headers = _outgoing_headers(
                client, prepared, request_id_bytes, body_override, extra_headers
            )
            buffer = self._write_buffer(prepared, outcome.method, target, body_override)
            if buffer is not None and self._spoolable(client, prepared):
                whole = await self._whole_body(client, prepared, outcome)
                request = _Upstreaming(target, headers, whole, len(whole), request_id)
                outcome.status = await self._write(
                    client, prepared, request, buffer, outcome, dialect
                )
                return outcome.status
            if body_override is None and not client.has_body:  # most requests: no coroutine
                body, content_length = None, None
            else:
                body, content_length = await self._outgoing_body(
                    client, prepared, body_override, outcome
                )
            request = _Upstreaming(target, headers, body, content_length, request_id)
            request.replayable = self._replayable(prepared, outcome.method, request)
            upstream = await self._answer(prepared, outcome, request)
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

    # --- writes the spool covers (gateway/spool/) -----------------------------------------------

    def _write_buffer(
        self,
        prepared: PreparedSource,
        method: str,
        target: UpstreamPath,
        body_override: bytes | None,
    ) -> WriteBuffer | None:
        """The source's write buffer when this request is an InfluxDB write it covers."""
        spool = self._spool
        if spool is None or body_override is not None:
            return None
        if write_path(prepared.source, method, target.path.clean) is None:
            return None
        return spool.buffer(prepared.source)

    def _spoolable(self, client: ClientExchange, prepared: PreparedSource) -> bool:
        """Whether a write goes the spool's way (read whole, queued if need be). One declared
        larger than the spool takes streams through as any request does while no target of the
        source has a queue (its order is not at stake), so the writer gets the upstream's own
        answer; behind a queue it is refused (413) by `_whole_body`, to keep the order."""
        spool = self._spool
        assert spool is not None
        length = client.content_length
        if length is None or length <= spool.max_body_bytes:
            return True
        source_id = prepared.source.id
        return any(spool.queued(TargetKey(source_id, t.url)) for t in prepared.targets.targets)

    async def _whole_body(
        self, client: ClientExchange, prepared: PreparedSource, outcome: _Outcome
    ) -> bytes:
        """A write's body, read whole (a queued write is kept whole): 413 past the limit."""
        assert self._spool is not None
        limit = self._spool.max_body_bytes
        if not client.has_body:
            return b""
        try:
            async with asyncio.timeout(prepared.timeouts.body):
                body = await client.read_body(limit)
        except BodyTooLarge as exc:
            raise PayloadTooLarge(
                f"write body exceeds {limit} bytes (spool.max_body_bytes)"
            ) from exc
        except ConnectionError as exc:
            raise _ClientGone() from exc
        except TimeoutError as exc:
            raise RequestTimeout() from exc
        outcome.sent = len(body)
        return body

    async def _write(
        self,
        client: ClientExchange,
        prepared: PreparedSource,
        request: _Upstreaming,
        buffer: WriteBuffer,
        outcome: _Outcome,
        dialect: Dialect,
    ) -> int:
        """Send the write to its target when that is healthy with nothing queued, and relay
        the answer; else, or when the try gets no answer or a 5xx, queue it and answer 204.
        Mirrored writes are queued for every other target first."""
        direct, queued = self._write_targets(prepared, buffer)
        for target in queued:
            await self._queue(client, prepared, request, buffer, target)
        if direct is None:
            return self._accepted(client, request)
        request.tried.append(direct)
        try:
            upstream: UpstreamResponse | None = await self._try(
                prepared, direct, outcome, request, deadline=buffer.forward_timeout
            )
        except _TryFailed:
            upstream = None
        if upstream is None or upstream.status >= 500:
            if upstream is not None:
                upstream.close()  # discarded: the write is queued instead
            await self._queue(client, prepared, request, buffer, direct)
            return self._accepted(client, request)
        outcome.upstream_answered()
        return await self._relay(
            client, prepared, upstream, outcome, dialect, request.request_id.encode()
        )

    def _write_targets(
        self, prepared: PreparedSource, buffer: WriteBuffer
    ) -> tuple[Target | None, list[Target]]:
        """The target a write is sent to now (None: none) and the targets it is queued for.
        A target with something queued takes writes only through its queue (order); a
        mirrored write goes to every target, else to the one with a queue or the chosen one."""
        spool = self._spool
        assert spool is not None
        targets = prepared.targets
        source_id = targets.source.id
        if buffer.mirror:
            candidates = list(targets.targets)
        else:
            queued = [t for t in targets.targets if spool.queued(TargetKey(source_id, t.url))]
            chosen = queued[0] if queued else targets.choose(())
            assert chosen is not None
            candidates = [chosen]
        now = self.outliers.clock()
        direct = next(
            (
                target
                for target in candidates
                if not spool.queued(TargetKey(source_id, target.url))
                and targets.healthy(target, now)
            ),
            None,
        )
        return direct, [target for target in candidates if target is not direct]

    async def _queue(
        self,
        client: ClientExchange,
        prepared: PreparedSource,
        request: _Upstreaming,
        buffer: WriteBuffer,
        target: Target,
    ) -> None:
        """Append the write to `target`'s queue, durably: the body as received, its content
        headers and write parameters, never credentials. 503 when the spool cannot take it."""
        assert self._spool is not None
        assert isinstance(request.body, bytes)
        source = prepared.source
        path = write_path(source, "POST", request.path.path.clean)
        assert path is not None
        write = SpooledWrite(
            TargetKey(source.id, target.url),
            path,
            write_params(request.path.query),
            request.body,
            content_type=_header(request.headers, _CONTENT_TYPE),
            content_encoding=_header(request.headers, _CONTENT_ENCODING),
        )
        try:
            await self._spool.append(write, buffer, source)
        except SpoolFull as exc:
            log.warning("spool_full", source_uid=source.uid, target=target.label, reason=exc.reason)
            raise WriteSpoolFull(
                source.name, source.uid, exc.reason, SPOOL_FULL_RETRY_AFTER
            ) from exc

    def _accepted(self, client: ClientExchange, request: _Upstreaming) -> int:
        request_id = (b"X-Request-Id", request.request_id.encode())
        client.respond(NO_CONTENT, "No Content", [request_id], b"")
        return NO_CONTENT

    async def deliver(self, source: DataSource, url: str, delivery: Delivery) -> tuple[int, str]:
        """Send a shipper's delivery to the target `url` of `source`, with the source's
        credentials, through the pool: the status and the start of the answer's body.
        DeliveryFailed when no answer came (or the target is not the source's any more)."""
        prepared = self.prepare(source)
        target = next((t for t in prepared.targets.targets if t.url == url), None)
        if target is None:
            raise DeliveryFailed("no longer a target of the source")
        incoming = [
            (name, value.encode("latin-1"))
            for name, value in (
                (b"Content-Type", delivery.content_type),
                (b"Content-Encoding", delivery.content_encoding),
            )
            if value
        ]
        headers = request_headers(
            incoming, client_address=None, request_id=b"spool", source=prepared.headers
        )
        path = UpstreamPath(ProxyPath.parse(delivery.path.value), urlencode(delivery.params))
        try:
            upstream = await self._pool.request(
                target.origin,
                "POST",
                target.target(path),
                headers,
                delivery.body,
                content_length=len(delivery.body),
                timeouts=prepared.timeouts,
            )
            async with upstream:
                message = b""
                async for chunk in upstream:
                    message += chunk[: REPLAY_MESSAGE_LIMIT - len(message)]
        except (UpstreamError, TargetRefused) as exc:
            raise DeliveryFailed(str(exc)) from exc
        return upstream.status, message.decode("utf-8", "replace")

    # --- the other requests -------------------------------------------------------------------

    def _replayable(self, prepared: PreparedSource, method: str, request: _Upstreaming) -> bool:
        """Whether a failed try may go on to another target (gateway/proxy/retry.py)."""
        if len(prepared.targets.targets) == 1 or prepared.retry.attempts == 0:
            return False
        content_type = next(
            (value for name, value in request.headers if name.lower() == _CONTENT_TYPE), None
        )
        source_type = prepared.source.type
        return replayable(source_type, method, request.path, request.body, content_type)

    async def _answer(
        self, prepared: PreparedSource, outcome: _Outcome, request: _Upstreaming
    ) -> UpstreamResponse:
        """Try targets until one answers: the first answer below 500, or the last try's."""
        while True:
            target = self._choose_target(prepared, request)
            # `_try`, inlined (its deadline aside): one coroutine frame less on the hot path.
            try:
                upstream = await self._exchange(prepared, target, outcome, request)
            except _TRY_ERRORS as exc:
                failed = self._try_error(prepared, target, exc)
                if not isinstance(failed, _TryFailed):
                    raise failed from exc
                if self._retry(prepared, request):
                    continue
                raise self._failure(prepared, request, failed.error) from exc
            self._count_try(prepared, target, upstream)
            if upstream.status >= 500 and self._retry(prepared, request):
                upstream.close()  # discarded: nothing of it reached the client
                continue
            outcome.upstream_answered()
            return upstream

    def _choose_target(self, prepared: PreparedSource, request: _Upstreaming) -> Target:
        """Where the next try goes: a target the request has not tried yet."""
        target = prepared.targets.choose(request.tried)
        if target is None:  # `_retry` lets a request go on only while one is left
            raise AssertionError("every target was tried")
        request.tried.append(target)
        return target

    async def _try(
        self,
        prepared: PreparedSource,
        target: Target,
        outcome: _Outcome,
        request: _Upstreaming,
        *,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """One exchange with `target` up to the response head, counted for the target;
        an upstream failure raises `_TryFailed`, the others gateway errors. `deadline`: seconds
        the whole exchange may take (a write the spool can take instead), a timeout past it."""
        exchange = self._exchange(prepared, target, outcome, request)
        try:
            if deadline is None:
                upstream = await exchange
            else:
                upstream = await _within(exchange, deadline)
        except _TRY_ERRORS as exc:
            raise self._try_error(prepared, target, exc) from exc
        self._count_try(prepared, target, upstream)
        return upstream

    def _exchange(
        self, prepared: PreparedSource, target: Target, outcome: _Outcome, request: _Upstreaming
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        """The pool's exchange with `target` for this try (a plain function: no frame of its
        own to enter and resume)."""
        return self._pool.request(
            target.origin,
            outcome.method,
            target.target(request.path),
            request.headers,
            request.body,
            content_length=request.content_length,
            timeouts=prepared.timeouts,
        )

    def _try_error(self, prepared: PreparedSource, target: Target, exc: Exception) -> Exception:
        """What a try's failure means: `_TryFailed` (an upstream failure, counted: `_retry`
        decides what happens next), or the error to answer the client with."""
        if isinstance(exc, TargetRefused):
            target.meters.requests("refused").inc()
            return Forbidden(f"Data source target is not allowed: {exc}")
        if isinstance(exc, UpstreamError):
            self._upstream_failed(prepared, exc, target)
            return _TryFailed(exc)
        if isinstance(exc, ConnectionError):  # the client's body broke off: it went away
            return _ClientGone()
        if isinstance(exc, _BodyStalled):  # the client stopped sending mid-body
            return RequestTimeout()
        return BadRequest(
            "request body does not match its Content-Length",
            influx_message="request body does not match its Content-Length",
        )

    @staticmethod
    def _count_try(prepared: PreparedSource, target: Target, upstream: UpstreamResponse) -> None:
        status = upstream.status
        target.meters.requests(_STATUS_CLASSES[min(status // 100, 5) - 1]).inc()
        prepared.targets.record(target, "5xx" if status >= 500 else "ok")

    def _retry(self, prepared: PreparedSource, request: _Upstreaming) -> bool:
        """Whether the failed (or 5xx) try goes on to another target: the request is safe to
        send again, it has attempts left, and a target it has not tried."""
        tried = len(request.tried)
        if (
            not request.replayable
            or tried > prepared.retry.attempts
            or tried >= len(prepared.targets.targets)
        ):
            return False
        prepared.meters.failovers.inc()
        return True

    def _failure(
        self, prepared: PreparedSource, request: _Upstreaming, exc: UpstreamError
    ) -> GatewayError:
        """The error for a request whose last try failed; with replicas it says how many of
        them were tried, and is a 502 when several were and all failed."""
        total = len(prepared.targets.targets)
        if total == 1:
            return _gateway_error(exc, request.request_id)
        tried = len(request.tried)
        error = _gateway_error(exc, request.request_id, all_failed=tried > 1)
        suffix = f" ({tried} of {total} targets tried)"
        error.message += suffix
        error.influx_message += suffix
        return error

    async def _relay(
        self,
        client: ClientExchange,
        prepared: PreparedSource,
        upstream: UpstreamResponse,
        outcome: _Outcome,
        dialect: Dialect,
        request_id: bytes,
    ) -> int:
        """The upstream's answer to the client, its head and its body; the status to log."""
        # try/finally rather than `async with` and `async for`: two coroutines less per
        # request, and none per chunk already buffered (a small answer's only one).
        try:
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
            # The body, copied here rather than in a coroutine of its own (one frame less).
            try:
                if upstream.complete:
                    # The whole body came with the head (a small answer's usual way): copied
                    # without a coroutine per chunk, nor a StopAsyncIteration at its end.
                    while (chunk := upstream.take_buffered()) is not None:
                        outcome.received += len(chunk)
                        await client.write(chunk)
                else:
                    async for chunk in upstream:
                        outcome.received += len(chunk)
                        await client.write(chunk)
            except UpstreamError as exc:
                # Headers are out: the status cannot change. Cut the connection so the client
                # sees an incomplete response, never a complete-looking short one, and count and
                # log it as the failure it was, not as the status it began with.
                failed = self._upstream_failed(prepared, exc)
                log.warning(
                    "proxy_aborted",
                    source_uid=prepared.source.uid,
                    reason=f"upstream {exc.kind} after {outcome.received} bytes",
                )
                client.abort()
                return failed
            except ConnectionError as exc:
                raise _ClientGone() from exc
            client.finish()
            return status
        finally:
            upstream.close()

    def _upstream_failed(
        self, prepared: PreparedSource, exc: UpstreamError, target: Target | None = None
    ) -> int:
        """Count and log an upstream failure; a failed try (`target`) also counts for the
        target's outlier state and passive health."""
        prepared.meters.upstream_errors(exc.kind).inc()
        log.warning(
            "proxy_upstream_error",
            source_uid=prepared.source.uid,
            target=target.label if target is not None else None,
            kind=exc.kind,
            error=str(exc),
        )
        if target is not None:
            target.meters.requests(exc.kind).inc()
            prepared.targets.record(target, _try_result(exc))
            if exc.kind in ("connect", "timeout") and self._health is not None:
                self._health.report_failure(prepared.source.id, target.url)
        return 504 if isinstance(exc, UpstreamTimeout) else 502


async def _within(
    exchange: Coroutine[Any, Any, UpstreamResponse], seconds: float
) -> UpstreamResponse:
    """The exchange's response head within `seconds`, else an `UpstreamTimeout` (a failed try,
    counted and fed to passive health as any timeout); cancelling it closes its connection."""
    try:
        async with asyncio.timeout(seconds):
            return await exchange
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"no answer within {seconds:g} s (forwardTimeout)", phase="headers"
        ) from exc


def _outgoing_headers(
    client: ClientExchange,
    prepared: PreparedSource,
    request_id: bytes,
    body_override: bytes | None,
    extra_headers: tuple[tuple[bytes, bytes], ...],
) -> RawHeaders:
    """The request headers to send upstream: the client's, filtered, with the source's."""
    headers = request_headers(
        client.headers,
        client_address=client.remote,
        request_id=request_id,
        source=prepared.headers,
    )
    if body_override is not None:
        # The gateway sends a body of its own: the client's description of its body would
        # contradict it (a JSON Content-Type in front of a form, say).
        headers = [(n, v) for n, v in headers if n.lower() not in _BODY_HEADERS]
        headers.extend(extra_headers)
    return headers


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


class _TryFailed(Exception):
    """One try got no response from its target; `_retry` decides what happens next."""

    def __init__(self, error: UpstreamError) -> None:
        super().__init__(str(error))
        self.error = error


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


def _try_result(exc: UpstreamError) -> TryResult:
    """How outlier detection counts a failed try: a connect-phase failure (TLS, or a connect
    timeout, included), a timeout waiting for the upstream, or a reset/protocol failure."""
    if isinstance(exc, UpstreamTimeout):
        return "connect" if exc.phase == "connect" else "timeout"
    if exc.kind in ("connect", "tls"):
        return "connect"
    return "reset"


def _gateway_error(
    exc: UpstreamError, request_id: str, *, all_failed: bool = False
) -> GatewayError:
    error: GatewayError
    if isinstance(exc, UpstreamTimeout) and not all_failed:
        error = GatewayTimeout(f"upstream {exc.phase} timeout", influx_message=str(exc))
    else:
        error = BadGateway(
            f"upstream {exc.kind} error", influx_message=f"upstream {exc.kind} error"
        )
    error.trace_id = request_id
    return error


def _header(headers: RawHeaders, name: bytes) -> str | None:
    value = next((v for n, v in headers if n.lower() == name), None)
    return value.decode("latin-1") if value is not None else None


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


# What a try can fail with (`Forwarder._try_error` says what each means).
_TRY_ERRORS = (TargetRefused, UpstreamError, ConnectionError, _BodyStalled, RequestBodyError)

"""The one pipeline of a proxied request, whichever server carries it:

    request id → authentication → source resolution (and policy) → forward → outcome

The outcome is the `request` log line and the API metrics (`record_request`), an error body in
the route's dialect with `X-Request-Id` (or, once the response has started, an aborted
connection), and 499 for a client that went away. Passive health and the per-source metrics are
the Forwarder's (gateway/proxy/forward.py), the resolution rules the route's
(gateway/proxy/routes.py, gateway/proxy/resolve.py).

The carriers are thin adapters that call `ProxyPipeline.serve`: the front server's router
(gateway/proxy/front_carrier.py) and aiohttp's handlers (gateway/proxy/aiohttp_carrier.py).
"""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus
from typing import Protocol

from gateway.errors import GatewayError, RequestTimeout, error_parts
from gateway.metrics import GatewayMetrics
from gateway.proxy.forward import CLIENT_CLOSED_REQUEST, ClientExchange, Forwarder
from gateway.proxy.resolve import RESOLVER_HEADERS
from gateway.proxy.routes import ProxyRoute
from gateway.registry.cache import SourceCache
from gateway.registry.models import Principal
from gateway.requests import (
    bind_request_id,
    choose_request_id,
    log,
    principal_for,
    query_param,
    record_request,
)
from gateway.security.auth import PrincipalCache

_AUTHORIZATION = b"authorization"
_X_REQUEST_ID = b"x-request-id"
_TRACEPARENT = b"traceparent"
_ZAP_TRACE_SPAN = b"zap-trace-span"
# The request headers the pipeline reads, found in one pass over the headers.
_READ_HEADERS = (
    frozenset({_AUTHORIZATION, _X_REQUEST_ID, _TRACEPARENT, _ZAP_TRACE_SPAN}) | RESOLVER_HEADERS
)


class ProxyExchange(ClientExchange, Protocol):
    """The client's side of a proxied request as the pipeline sees it: what the Forwarder
    needs, plus the request target as the client encoded it, whether the response has begun,
    and a way to refuse keep-alive. The front server's `Exchange` is one; so is
    `AiohttpExchange` (gateway/proxy/aiohttp_carrier.py)."""

    @property
    def path(self) -> str: ...
    @property
    def query_string(self) -> str: ...
    @property
    def response_started(self) -> bool: ...
    def close_after_response(self) -> None: ...


class ProxyRequest:
    """One proxied request on its way through the pipeline: its exchange and route, the source
    key from its path, its request id, and the request headers the pipeline and the resolvers
    read (lower-case names, the first value of each, found in one pass)."""

    __slots__ = ("exchange", "headers", "key", "request_id", "route")

    def __init__(self, exchange: ProxyExchange, route: ProxyRoute, key: str) -> None:
        self.exchange = exchange
        self.route = route
        self.key = key  # the `{key}` segment: the source's id or uid ("" when none)
        headers: dict[bytes, str] = {}
        for name, value in exchange.headers:
            lower = name.lower()
            if lower in _READ_HEADERS and lower not in headers:  # the first, as header() does
                headers[lower] = value.decode("latin-1")
        self.headers = headers
        self.request_id = choose_request_id(
            headers.get(_X_REQUEST_ID), headers.get(_TRACEPARENT), headers.get(_ZAP_TRACE_SPAN)
        )


class ProxyPipeline:
    """Serves one proxied request from its first byte to its log line."""

    def __init__(
        self,
        principals: PrincipalCache,
        sources: SourceCache,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
    ) -> None:
        self._principals = principals
        self._sources = sources
        self._forwarder = forwarder
        self._metrics = metrics
        # Bound once, after logging is configured: a lazy module-level proxy re-resolves the
        # logger on every call, and the request line is written on every request.
        self._log = log.bind()

    async def serve(self, exchange: ProxyExchange, route: ProxyRoute, key: str) -> int:
        """Serve `exchange` as `route` (`key`: its source id or uid segment); the status
        logged, which is also the status to report for it."""
        started = time.perf_counter()
        request = ProxyRequest(exchange, route, key)
        # Each request runs in a task of its own: binding here reaches only its log lines.
        bind_request_id(request.request_id)
        principal: Principal | None = None
        status = 500
        try:
            authorization = request.headers.get(_AUTHORIZATION)
            principal = self._principals.cached(authorization)
            if principal is None:
                principal = await principal_for(
                    self._principals,
                    route.name,  # a route's name is its path where InfluxDB 1.x credentials apply
                    authorization,
                    lambda: query_param(exchange.query_string, "p"),
                )
            resolve_now = route.resolve_now
            snapshot = self._sources.fresh() if resolve_now is not None else None
            if snapshot is not None and resolve_now is not None:  # no coroutine
                source, target, rewrite = resolve_now(request, principal, snapshot)
            else:
                source, target, rewrite = await route.resolve(request, principal, self._sources)
            status = await self._forwarder.forward(
                exchange,
                source,
                target,
                request_id=request.request_id,
                dialect=route.dialect,
                method=rewrite.method if rewrite is not None else None,
                body_override=rewrite.body if rewrite is not None else None,
                extra_headers=rewrite.headers if rewrite is not None else (),
            )
        except GatewayError as exc:
            status = _render(request, exc)
        except asyncio.CancelledError:  # the server cancels the request when the client leaves
            status = CLIENT_CLOSED_REQUEST
            raise
        except Exception:
            log.exception("unhandled_error", method=exchange.method, path=exchange.path)
            status = _render(request, GatewayError())
        finally:
            record_request(
                self._metrics,
                self._log,
                exchange.method,
                route.name,
                status,
                time.perf_counter() - started,
                principal,
            )
        return status


def _render(request: ProxyRequest, error: GatewayError) -> int:
    """The error as the response, in the route's dialect; too late for one once the response
    has started: the connection is cut so the client sees it incomplete."""
    exchange = request.exchange
    status, headers, body = error_parts(error, request.route.dialect)
    if exchange.response_started:
        exchange.abort()
        return status
    if isinstance(error, RequestTimeout):  # the rest of its body may never come
        exchange.close_after_response()
    headers.append((b"X-Request-Id", request.request_id.encode()))
    exchange.respond(status, HTTPStatus(status).phrase, headers, body)
    return status

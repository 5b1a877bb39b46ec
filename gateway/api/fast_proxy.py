"""The proxied routes served by the front server, without aiohttp: the hot path.

The same routes, rules and answers as aiohttp's handlers in `gateway/api/proxy.py`, whose
resolution functions this module shares; the front server (`gateway/front/protocol.py`) hands a
connection to aiohttp when a request is not one of these. What aiohttp's middlewares do for a
request (`gateway/middlewares.py`) is done here for these routes, with the same shared pieces:
the request id, authentication, errors in the path's dialect, the `request` log line and the
API metrics.

Only unambiguous forms are claimed: a proxy path whose id or uid segment holds a `%` (aiohttp
would match on its decoded form), `/api/datasources/proxy/uid` without a uid, and methods a
route does not take all go to aiohttp, which answers them exactly as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from gateway.api.grafana import ORG_HEADER, acting_org_id
from gateway.api.proxy import (
    PROXY_PREFIX,
    SOURCE_HEADER,
    check_uid,
    grafana_target,
    influx_source,
    parse_source_id,
    passthrough_target,
    query_source,
    source_by_influx_id,
)
from gateway.errors import (
    Dialect,
    GatewayError,
    RequestTimeout,
    dialect_for,
    error_parts,
)
from gateway.front.protocol import Exchange, FastHandler
from gateway.keys import FORWARDER, METRICS, PRINCIPALS, SOURCES
from gateway.middlewares import choose_request_id, principal_for, record_request
from gateway.proxy.forward import CLIENT_CLOSED_REQUEST
from gateway.registry.models import DataSource, Principal

log = structlog.get_logger("gateway.request")

_PREFIX = PROXY_PREFIX + "/"
_UID_PREFIX = PROXY_PREFIX + "/uid/"
_PASSTHROUGH_POST = frozenset({"/api/v2/write", "/api/v2/query", "/write", "/query"})
_SOURCES_PREFIX = "/api/v2/sources/"
# Route names as aiohttp's `resource.canonical` spells them: the log line and the metrics
# label must not depend on which server carried the request.
_BY_UID = PROXY_PREFIX + "/uid/{uid}"
_BY_UID_PATH = PROXY_PREFIX + "/uid/{uid}/{path}"
_BY_ID = PROXY_PREFIX + "/{id}"
_BY_ID_PATH = PROXY_PREFIX + "/{id}/{path}"
_SOURCE_QUERY = "/api/v2/sources/{source_id}/query"
_ORG_HEADER = ORG_HEADER.lower().encode()
_SOURCE_HEADER = SOURCE_HEADER.lower().encode()


# The request headers the fast path reads, found in one pass over the headers.
_READ_HEADERS = frozenset(
    {
        b"authorization",
        b"traceparent",
        b"x-request-id",
        b"zap-trace-span",
        _ORG_HEADER,
        _SOURCE_HEADER,
    }
)


class _Call:
    """What one request carries through the fast path's layers."""

    __slots__ = ("exchange", "headers", "principal", "request_id", "route")

    def __init__(self, exchange: Exchange, route: str) -> None:
        self.exchange = exchange
        self.route = route
        self.principal: Principal | None = None
        headers: dict[bytes, str] = {}
        for name, value in exchange.headers:
            lower = name.lower()
            if lower in _READ_HEADERS and lower not in headers:  # the first, as header() does
                headers[lower] = value.decode("latin-1")
        self.headers = headers
        self.request_id = choose_request_id(
            headers.get(b"x-request-id"),
            headers.get(b"traceparent"),
            headers.get(b"zap-trace-span"),
        )


class FastProxy:
    """The front server's router for the proxied routes, and their handlers."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        # Bound once, after logging is configured: a lazy module-level proxy re-resolves the
        # logger on every call, and the request line is written on every request.
        self._log = log.bind()

    def route(self, method: str, path: str) -> FastHandler | None:
        """The handler for `method path`, or None to leave the request to aiohttp."""
        if path.startswith(_PREFIX):
            if path.startswith(_UID_PREFIX):
                uid, slash, _ = path[len(_UID_PREFIX) :].partition("/")
                if not uid or "%" in uid:
                    return None
                return self._by_uid_path if slash else self._by_uid
            source_id, slash, _ = path[len(_PREFIX) :].partition("/")
            if not source_id or "%" in source_id or source_id == "uid":
                return None
            return self._by_id_path if slash else self._by_id
        if method == "POST":
            if path in _PASSTHROUGH_POST:
                return self._passthrough
            if path.startswith(_SOURCES_PREFIX) and path.endswith("/query"):
                source_id = path[len(_SOURCES_PREFIX) : -len("/query")]
                if source_id and "/" not in source_id and "%" not in source_id:
                    return self._source_query
            return None
        if method == "GET" and path == "/query":
            return self._passthrough
        return None

    # --- routes ------------------------------------------------------------------------------

    async def _by_uid(self, exchange: Exchange) -> None:
        await self._serve(exchange, _BY_UID, self._grafana_by_uid)

    async def _by_uid_path(self, exchange: Exchange) -> None:
        await self._serve(exchange, _BY_UID_PATH, self._grafana_by_uid)

    async def _by_id(self, exchange: Exchange) -> None:
        await self._serve(exchange, _BY_ID, self._grafana_by_id)

    async def _by_id_path(self, exchange: Exchange) -> None:
        await self._serve(exchange, _BY_ID_PATH, self._grafana_by_id)

    async def _passthrough(self, exchange: Exchange) -> None:
        await self._serve(exchange, exchange.path, self._influx_passthrough)

    async def _source_query(self, exchange: Exchange) -> None:
        await self._serve(exchange, _SOURCE_QUERY, self._influx_source_query)

    async def _grafana_by_uid(self, call: _Call, principal: Principal) -> int:
        exchange = call.exchange
        org_id = acting_org_id(principal, call.headers.get(_ORG_HEADER))
        uid = exchange.path[len(_UID_PREFIX) :].partition("/")[0]
        check_uid(uid)
        source = (await self._app[SOURCES].snapshot()).get(org_id, uid=uid)
        return await self._forward_grafana(call, principal, source, raw_segments_after=6)

    async def _grafana_by_id(self, call: _Call, principal: Principal) -> int:
        exchange = call.exchange
        org_id = acting_org_id(principal, call.headers.get(_ORG_HEADER))
        source_id = parse_source_id(exchange.path[len(_PREFIX) :].partition("/")[0])
        source = (await self._app[SOURCES].snapshot()).get(org_id, id=source_id)
        return await self._forward_grafana(call, principal, source, raw_segments_after=5)

    async def _forward_grafana(
        self,
        call: _Call,
        principal: Principal,
        source: DataSource | None,
        *,
        raw_segments_after: int,
    ) -> int:
        exchange = call.exchange
        resolved, target = grafana_target(
            source,
            exchange.method,
            exchange.path,
            exchange.query_string,
            principal.role,
            raw_segments_after=raw_segments_after,
        )
        return await self._app[FORWARDER].forward(
            exchange, resolved, target, request_id=call.request_id
        )

    async def _influx_passthrough(self, call: _Call, principal: Principal) -> int:
        exchange = call.exchange
        wanted = _query_param(exchange.query_string, "source") or call.headers.get(_SOURCE_HEADER)
        snapshot = await self._app[SOURCES].snapshot()
        source = influx_source(snapshot, principal.org.id, wanted or "")
        target = passthrough_target(source, exchange.path, exchange.query_string)
        return await self._app[FORWARDER].forward(
            exchange, source, target, request_id=call.request_id, dialect=Dialect.INFLUX
        )

    async def _influx_source_query(self, call: _Call, principal: Principal) -> int:
        exchange = call.exchange
        text = exchange.path[len(_SOURCES_PREFIX) : -len("/query")]
        snapshot = await self._app[SOURCES].snapshot()
        source = source_by_influx_id(snapshot, principal.org.id, text)
        return await query_source(self._app[FORWARDER], exchange, source, call.request_id)

    # --- what aiohttp's middlewares do for every other route ----------------------------------

    async def _serve(
        self,
        exchange: Exchange,
        route: str,
        handler: Callable[[_Call, Principal], Awaitable[int]],
    ) -> None:
        started = time.perf_counter()
        call = _Call(exchange, route)
        # The front server runs each request in a task of its own: binding here reaches only
        # this request's log lines.
        structlog.contextvars.bind_contextvars(request_id=call.request_id)
        status = 500
        try:
            principal = await principal_for(
                self._app[PRINCIPALS],
                exchange.path,
                call.headers.get(b"authorization"),
                lambda: _query_param(exchange.query_string, "p"),
            )
            call.principal = principal
            status = await handler(call, principal)
        except GatewayError as exc:
            status = self._render(call, exc)
        except asyncio.CancelledError:  # the front server cancels it when the client leaves
            status = CLIENT_CLOSED_REQUEST
            raise
        except Exception:
            log.exception("unhandled_error", method=exchange.method, path=exchange.path)
            status = self._render(call, GatewayError())
        finally:
            record_request(
                self._app[METRICS],
                self._log,
                exchange.method,
                route,
                status,
                time.perf_counter() - started,
                call.principal,
            )

    def _render(self, call: _Call, error: GatewayError) -> int:
        exchange = call.exchange
        status, headers, body = error_parts(error, dialect_for(exchange.path))
        if exchange.response_started:  # too late for an error page: cut the response short
            exchange.abort()
            return status
        if isinstance(error, RequestTimeout):  # the rest of its body may never come
            exchange.close_after_response()
        headers.append((b"X-Request-Id", call.request_id.encode()))
        exchange.respond(status, HTTPStatus(status).phrase, headers, body)
        return status


def _query_param(query_string: str, name: str) -> str | None:
    """The first value of a query parameter, decoded as aiohttp's `request.query` does."""
    if not query_string:
        return None
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        if key == name:
            return value
    return None

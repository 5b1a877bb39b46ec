"""The three middlewares every request but a proxied one passes, outermost first.

A proxied route's handler runs the proxy pipeline (gateway/proxy/pipeline.py), which does all
of this itself: `request_context` hands such a request straight to it.

- `request_context`: takes or makes the request id, binds it to the log context, echoes it as
  `X-Request-Id`, and writes the one canonical log line for the request.
- `errors`: the only place a GatewayError (or aiohttp's own 404/405) becomes a response, in the
  dialect of the path: Grafana `{"message"}` or InfluxDB `{"code", "message"}`.
- `authenticate`: resolves `Authorization: Bearer|Token <t>` to a Principal (org + role) from
  the in-memory cache; public paths pass without one.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import (
    GatewayError,
    RequestTimeout,
    dialect_for,
    render_error,
    render_http_exception,
)
from gateway.keys import METRICS, PRINCIPAL, PRINCIPALS, REQUEST_ID
from gateway.proxy.aiohttp_carrier import proxy_handler
from gateway.requests import choose_request_id, log, principal_for, record_request


def request_id_from(request: web.Request) -> str:
    """X-Request-Id, else traceparent's trace id, else Zap-Trace-Span, else a new one."""
    headers = request.headers
    return choose_request_id(
        headers.get("X-Request-Id"), headers.get("traceparent"), headers.get("Zap-Trace-Span")
    )


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    proxied = proxy_handler(request)
    if proxied is not None:  # its pipeline does what these middlewares do (gateway/proxy/)
        return await proxied(request)
    request_id = request_id_from(request)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    status = 500
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as exc:  # redirects and the like, raised rather than returned
        status = exc.status
        exc.headers["X-Request-Id"] = request_id
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "<unmatched>"
        elapsed = time.perf_counter() - started
        record_request(
            request.app[METRICS],
            log,
            request.method,
            route,
            status,
            elapsed,
            request.get(PRINCIPAL),
        )
        structlog.contextvars.unbind_contextvars("request_id")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        response = render_error(exc, dialect_for(request.path))
        if isinstance(exc, RequestTimeout):  # the rest of its body may never come
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return render_http_exception(exc, dialect_for(request.path))
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return render_error(GatewayError(), dialect_for(request.path))


def authenticate(public_paths: Collection[str]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public_paths:
            return await handler(request)
        request[PRINCIPAL] = await principal_for(
            request.app[PRINCIPALS],
            request.path,
            request.headers.get("Authorization"),
            lambda: request.query.get("p"),
        )
        return await handler(request)

    return middleware

"""The three middlewares every request passes, outermost first.

- `request_context`: takes or makes the request id, binds it to the log context, echoes it as
  `X-Request-Id`, and writes the one canonical log line for the request.
- `errors`: the only place a GatewayError (or aiohttp's own 404/405) becomes a response, in the
  dialect of the path: Grafana `{"message"}` or InfluxDB `{"code", "message"}`.
- `authenticate`: resolves `Authorization: Bearer|Token <t>` to a Principal (org + role) from
  the in-memory cache; public paths pass without one.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import time
from collections.abc import Callable, Collection

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from structlog.typing import FilteringBoundLogger

from gateway.errors import (
    GatewayError,
    RequestTimeout,
    Unauthorized,
    dialect_for,
    render_error,
    render_http_exception,
)
from gateway.keys import METRICS, PRINCIPAL, PRINCIPALS, REQUEST_ID, RESPONSE_STATUS
from gateway.metrics import GatewayMetrics
from gateway.registry.models import Principal
from gateway.security.auth import PrincipalCache, token_from_header

log = structlog.get_logger("gateway.request")

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def request_id_from(request: web.Request) -> str:
    """X-Request-Id, else traceparent's trace id, else Zap-Trace-Span, else a new one."""
    headers = request.headers
    return choose_request_id(
        headers.get("X-Request-Id"), headers.get("traceparent"), headers.get("Zap-Trace-Span")
    )


def choose_request_id(
    x_request_id: str | None, traceparent: str | None, zap_trace_span: str | None
) -> str:
    """The client's request id when it is short and plain (it ends up in logs and headers),
    else a new one."""
    if x_request_id:
        candidate = x_request_id.strip()
        if _SAFE_ID.fullmatch(candidate):
            return candidate
    if traceparent:
        match = _TRACEPARENT.fullmatch(traceparent.strip().lower())
        if match:
            return match.group(1)
    if zap_trace_span:
        candidate = zap_trace_span.strip()
        if _SAFE_ID.fullmatch(candidate):
            return candidate
    return new_request_id()


def new_request_id() -> str:
    # A random prefix per process and a counter: unique, and far cheaper than uuid4() per
    # request on the proxied path. 32 hex digits, like the trace ids it stands beside.
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
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
        status = request.get(RESPONSE_STATUS, status)
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


def record_request(
    metrics: GatewayMetrics,
    logger: FilteringBoundLogger,
    method: str,
    route: str,
    status: int,
    elapsed: float,
    principal: Principal | None,
) -> None:
    """The API metrics and the one canonical log line of a request, whichever server took it."""
    metrics.record_api_request(route, method, status, elapsed)
    logger.info(
        "request",
        method=method,
        path=route,
        status=status,
        duration_ms=round(elapsed * 1000, 2),
        org=principal.org.id if principal else None,
    )


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


# InfluxDB 1.x clients authenticate with `u`/`p` or Basic auth; on these paths the password is
# taken as the gateway token, as InfluxDB 2's v1-compatibility API does with its own tokens.
V1_COMPAT_PATHS = frozenset({"/query", "/write"})


def v1_password(authorization: str | None, p_param: str | None) -> str | None:
    """The password of Basic auth, else the `p` query parameter."""
    scheme, _, encoded = (authorization or "").strip().partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return p_param or None


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


async def principal_for(
    principals: PrincipalCache,
    path: str,
    authorization: str | None,
    p_param: Callable[[], str | None],
) -> Principal:
    """Who sends `Authorization` (Bearer/Token; on InfluxDB 1.x paths also the password of
    Basic auth or of `p=`, read only then); Unauthorized if nobody."""
    token = token_from_header(authorization)
    if token is None and path in V1_COMPAT_PATHS:
        token = v1_password(authorization, p_param())
    principal = await principals.resolve(token) if token else None
    if principal is None:
        raise Unauthorized()
    return principal

"""What every request of the gateway gets, whichever server and handler take it: a request id,
an authenticated principal, and one log line plus the API metrics when it is over.

Used by aiohttp's middlewares (gateway/middlewares.py) for the APIs and by the proxy pipeline
(gateway/proxy/pipeline.py) for the proxied routes.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

import structlog
from structlog.typing import FilteringBoundLogger

from gateway.errors import Unauthorized
from gateway.logging import REQUEST_EVENT, REQUEST_LOGGER, request_log
from gateway.metrics import GatewayMetrics
from gateway.registry.models import Principal
from gateway.security.auth import PrincipalCache, token_from_header

log = structlog.get_logger(REQUEST_LOGGER)

_SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)

# InfluxDB 1.x clients authenticate with `u`/`p` or Basic auth; on these paths the password is
# taken as the gateway token, as InfluxDB 2's v1-compatibility API does with its own tokens.
V1_COMPAT_PATHS = frozenset({"/query", "/write"})


def choose_request_id(
    x_request_id: str | None, traceparent: str | None, zap_trace_span: str | None
) -> str:
    """X-Request-Id, else traceparent's trace id, else Zap-Trace-Span, when short and plain
    (it ends up in logs and headers); else a new one."""
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


def _request_id_var() -> ContextVar[Any]:
    """The ContextVar structlog keeps for the `request_id` field, found through its public API
    (bound, then reset at once: nothing stays bound)."""
    token = structlog.contextvars.bind_contextvars(request_id=...)["request_id"]
    token.var.reset(token)
    return token.var


_REQUEST_ID = _request_id_var()


def bind_request_id(request_id: str) -> None:
    """`structlog.contextvars.bind_contextvars(request_id=request_id)`, without its per-call
    work (a keyword dict, a name to build and look up, a dict of tokens): once per request."""
    _REQUEST_ID.set(request_id)


def new_request_id() -> str:
    # A random prefix per process and a counter: unique, and far cheaper than uuid4() per
    # request on the proxied path. 32 hex digits, like the trace ids it stands beside.
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def record_request(
    metrics: GatewayMetrics,
    logger: FilteringBoundLogger,
    method: str,
    route: str,
    status: int,
    elapsed: float,
    principal: Principal | None,
) -> None:
    """The API metrics and the one canonical log line of a request, whichever server took it:
    rendered straight to bytes when logging is JSON at info (gateway/logging.py), else through
    `logger`."""
    metrics.record_api_request(route, method, status, elapsed)
    org = principal.org.id if principal else None
    if request_log.write(method, route, status, elapsed, org):
        return
    logger.info(
        REQUEST_EVENT,
        method=method,
        path=route,
        status=status,
        duration_ms=round(elapsed * 1000, 2),
        org=org,
    )


# The longest path a refusal's log line quotes: the path of a refused request is the client's,
# not a route template, and may be as long as the limit that refused it.
_LOGGED_PATH_MAX = 200


def record_refusal(
    method: str | None, path: str | None, status: int, elapsed: float, request_id: str
) -> None:
    """The request line of a request refused before any handler ran (by the front server or by
    aiohttp's parser): the method and path as far as they were read ("-" where not), never the
    query string (InfluxDB 1.x clients send the password in it). Not in the API metrics: their
    route label is a route template, and a refused request has none."""
    if path is None:
        logged_path = "-"
    elif len(path) > _LOGGED_PATH_MAX:
        logged_path = path[:_LOGGED_PATH_MAX] + "..."
    else:
        logged_path = path
    logged_method = method or "-"
    duration_ms = round(elapsed * 1000, 2)
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        if request_log.write(logged_method, logged_path, status, elapsed, None):
            return
        log.info(
            REQUEST_EVENT,
            method=logged_method,
            path=logged_path,
            status=status,
            duration_ms=duration_ms,
            org=None,
        )


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


async def principal_for(
    principals: PrincipalCache,
    path: str,
    authorization: str | None,
    p_param: Callable[[], str | None],
) -> Principal:
    """Who sends `Authorization` (Bearer/Token; on InfluxDB 1.x paths also the password of
    Basic auth or of `p=`, read only then); Unauthorized if nobody."""
    token = token_from_header(authorization)
    # A Bearer/Token header names its principal on every route: `cached` may answer it next
    # time. An InfluxDB 1.x password counts on some routes only, so it is never remembered.
    remembered = authorization if token is not None else None
    if token is None and path in V1_COMPAT_PATHS:
        token = v1_password(authorization, p_param())
    principal = await principals.resolve(token) if token else None
    if principal is None:
        raise Unauthorized()
    if remembered is not None and token is not None:
        principals.remember(remembered, token)
    return principal


def query_param(query_string: str, name: str) -> str | None:
    """The first value of a query parameter, decoded as aiohttp's `request.query` does."""
    if not query_string:
        return None
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        if key == name:
            return value
    return None

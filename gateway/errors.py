"""Domain errors and the one place that turns them into HTTP responses.

    GatewayError                    500  internal error
    ├── BadRequest                  400  invalid
    │   └── InvalidId               400  invalid        ("id is invalid" / "invalid ID")
    ├── Unauthorized                401  unauthorized
    ├── Forbidden                   403  forbidden
    │   ├── PermissionDenied        403  forbidden      (role too low for the action)
    │   └── ReadOnlySource          403  forbidden      (provisioned source; …Delete)
    ├── NotFound                    404  not found
    │   ├── DataSourceNotFound      404  not found
    │   └── OrgNotFound             404  not found
    ├── Conflict                    409  conflict       (Influx renders conflict as 422)
    │   ├── NameConflict, UidConflict
    │   └── VersionConflict
    ├── PayloadTooLarge             413  request too large
    ├── HttpRefusal                 4xx/5xx              (refused by the HTTP layer itself)
    ├── Unavailable                 503  unavailable
    │   ├── WriteSpoolFull          503  unavailable    (with Retry-After; names the source)
    │   └── RegistryUnavailable     503  unavailable    (with Retry-After; database unreachable)
    ├── BadGateway                  502  unavailable
    └── GatewayTimeout              504  unavailable

Each error carries a status and a message for each dialect. Grafana's API answers
`{"message": ...}`; InfluxDB's answers `{"code", "message"}` with `X-Platform-Error-Code` and a
status taken from the code (InfluxDB maps `conflict` to 422). The functions here are the only
ones that build an error body: `render_error` for aiohttp, the `*_parts` ones for the front
server, which writes raw bytes (including its own refusals of requests it cannot parse or accept,
`http_refusal_parts`, and the 500 of a handler that never answered, `unanswered_parts`). A
refusal is answered in the dialect of its path when that much of the request was read, else in
Grafana's, like every other error.
"""

from __future__ import annotations

import json
from enum import Enum
from http import HTTPStatus

from aiohttp import web

INFLUX_CODE_STATUS: dict[str, int] = {
    "internal error": 500,
    "not implemented": 501,
    "not found": 404,
    "conflict": 422,
    "invalid": 400,
    "unprocessable entity": 422,
    "empty value": 400,
    "unavailable": 503,
    "forbidden": 403,
    "too many requests": 429,
    "unauthorized": 401,
    "method not allowed": 405,
    "request too large": 413,
}
_STATUS_INFLUX_CODE = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request too large",
    422: "unprocessable entity",
    429: "too many requests",
    501: "not implemented",
    502: "unavailable",
    503: "unavailable",
    504: "unavailable",
}
INFLUX_CONTENT_TYPE = "application/json; charset=utf-8"


class Dialect(Enum):
    GRAFANA = "grafana"
    INFLUX = "influx"


class GatewayError(Exception):
    status: int = 500
    influx_code: str = "internal error"
    message: str = "Internal Server Error"
    influx_message: str = "An internal error has occurred - check server logs"
    # Set on proxy failures: Grafana's data proxy adds the request's trace id to such bodies.
    trace_id: str | None = None
    # Extra response headers, in either dialect (Retry-After on a 503).
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def __init__(self, message: str | None = None, *, influx_message: str | None = None) -> None:
        if message is not None:
            self.message = message
            # One message serves both dialects unless the caller gives the Influx one too.
            self.influx_message = influx_message or message
        if influx_message is not None:
            self.influx_message = influx_message
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r})"


class BadRequest(GatewayError):
    status = 400
    influx_code = "invalid"
    message = "bad request data"
    influx_message = "invalid request"


class TargetNotAllowed(BadRequest):
    """A source URL the SSRF policy refuses, refused when the source is saved."""

    def __init__(self, reason: str, field: str = "url") -> None:
        if field == "url":
            message = f"Data source URL is not allowed: {reason}"
        else:  # a replica: `jsonData.replicaUrls[1]`
            message = f"Data source URL {field} is not allowed: {reason}"
        super().__init__(message, influx_message=f'"{field}" is not allowed: {reason}')


class InvalidId(BadRequest):
    message = "id is invalid"
    influx_message = "invalid ID"


class Unauthorized(GatewayError):
    status = 401
    influx_code = "unauthorized"
    message = "Unauthorized"
    influx_message = "unauthorized access"


class Forbidden(GatewayError):
    status = 403
    influx_code = "forbidden"
    message = "Forbidden"
    influx_message = "forbidden"


class PermissionDenied(Forbidden):
    def __init__(self, action: str) -> None:
        super().__init__(
            "You'll need additional permissions to perform this action. "
            f"Permissions needed: {action}",
            influx_message=f"{action} is forbidden for this token's role",
        )


class ReadOnlySource(Forbidden):
    message = "Cannot update read-only data source"
    influx_message = "source is read-only (provisioned)"


class ReadOnlySourceDelete(ReadOnlySource):
    message = "Cannot delete read-only data source"


class NotFound(GatewayError):
    status = 404
    influx_code = "not found"
    message = "Not found"
    influx_message = "path not found"


class DataSourceNotFound(NotFound):
    message = "Data source not found"
    influx_message = "source not found"


class OrgNotFound(NotFound):
    message = "Organization not found"
    influx_message = "organization not found"


class Conflict(GatewayError):
    status = 409
    influx_code = "conflict"
    message = "Conflict"
    influx_message = "conflict"


class NameConflict(Conflict):
    message = "data source with the same name already exists"
    influx_message = "a source with the same name already exists in this organization"


class UidConflict(Conflict):
    message = "data source with the same uid already exists"


class VersionConflict(Conflict):
    message = "Datasource has already been updated by someone else. Please reload and try again"
    influx_message = "the source was updated concurrently; retry"


class RequestTimeout(GatewayError):
    """The client stopped sending its request body for longer than the idle timeout."""

    status = 408
    influx_code = "invalid"
    message = "Request Timeout: the request body stalled"
    influx_message = "timed out waiting for the request body"


class PayloadTooLarge(GatewayError):
    status = 413
    influx_code = "request too large"
    message = "request body too large"
    influx_message = "request body too large"


class Unavailable(GatewayError):
    status = 503
    influx_code = "unavailable"
    message = "Service unavailable"
    influx_message = "service unavailable"


class WriteSpoolFull(Unavailable):
    """A write the spool cannot take: its target's queue is at its bound, or the disk is full.
    Nothing queued is dropped to make room; the writer is told to come back later."""

    def __init__(self, source_name: str, source_uid: str, reason: str, retry_after: int) -> None:
        message = (
            f'write buffer of source "{source_name}" ({source_uid}) is full: {reason}; '
            f"retry in {retry_after} s"
        )
        super().__init__(message, influx_message=message)
        self.headers = ((b"Retry-After", str(retry_after).encode()),)


class RegistryUnavailable(Unavailable):
    """The registry's database (PostgreSQL) cannot be reached: API writes, and reads that need
    it, are refused until it is back; proxied requests go on from the in-memory caches."""

    RETRY_AFTER_SECONDS = 5

    def __init__(self, reason: str) -> None:
        message = f"registry database unavailable: {reason}"
        super().__init__(message, influx_message=message)
        self.headers = ((b"Retry-After", str(self.RETRY_AFTER_SECONDS).encode()),)


class BadGateway(GatewayError):
    status = 502
    influx_code = "unavailable"
    message = "Bad Gateway"
    influx_message = "bad gateway"


class GatewayTimeout(GatewayError):
    status = 504
    influx_code = "unavailable"
    message = "Gateway Timeout"
    influx_message = "gateway timeout"


class StartupError(Exception):
    """Start-up cannot go on; `str()` is the one line printed before exiting with code 2."""


def dialect_for(path: str) -> Dialect:
    """InfluxDB's routes answer errors in InfluxDB's shape; everything else in Grafana's."""
    if path.startswith("/api/v2/") or path == "/api/v2" or path in ("/query", "/write"):
        return Dialect.INFLUX
    return Dialect.GRAFANA


RawHeaders = list[tuple[bytes, bytes]]
_GRAFANA_ERROR_HEADERS = ((b"Content-Type", b"application/json; charset=utf-8"),)


def error_parts(error: GatewayError, dialect: Dialect) -> tuple[int, RawHeaders, bytes]:
    """Status, headers and body of an error in `dialect`: for a server that writes raw bytes
    (the front server), and, through `render_error`, for aiohttp."""
    if dialect is Dialect.INFLUX:
        # InfluxDB answers a conflict with 422; every other status stays as the error says
        # (502 and 504 stay distinct from 503: they tell who failed).
        status = INFLUX_CODE_STATUS["conflict"] if error.influx_code == "conflict" else error.status
        headers, influx_body = influx_error_parts(error.influx_code, error.influx_message)
        return status, [*headers, *error.headers], influx_body
    body = {"message": error.message}
    if error.trace_id is not None:
        body["traceID"] = error.trace_id
    return error.status, [*_GRAFANA_ERROR_HEADERS, *error.headers], json.dumps(body).encode()


# An upstream's 401 becomes a 400 with this text: the client's own session must not look
# invalid (Grafana's data proxy rule).
UPSTREAM_AUTH_FAILED = "Authentication to data source failed"


def upstream_auth_failed_parts(dialect: Dialect) -> tuple[RawHeaders, bytes]:
    """Headers and body of the 400 that stands for an upstream's 401, as Grafana answers it
    (plain text), or in InfluxDB's error shape on InfluxDB's routes."""
    if dialect is Dialect.INFLUX:
        return influx_error_parts("invalid", UPSTREAM_AUTH_FAILED)
    return [(b"Content-Type", b"text/plain; charset=utf-8")], UPSTREAM_AUTH_FAILED.encode()


def influx_error_parts(code: str, message: str) -> tuple[RawHeaders, bytes]:
    headers = [
        (b"X-Platform-Error-Code", code.encode()),
        (b"Content-Type", INFLUX_CONTENT_TYPE.encode()),
    ]
    return headers, json.dumps({"code": code, "message": message}).encode()


class HttpRefusal(GatewayError):
    """A request the HTTP layer refuses before any handler runs: malformed (400), a head that
    did not arrive in time (408), too large (413), an overlong target (414), an oversized head
    (431), an unsupported version (505), or a routing failure (500). `detail` is a fixed reason
    from the parser (llhttp's or aiohttp's), never bytes of the request."""

    def __init__(self, status: int, detail: str | None = None) -> None:
        self.status = status
        self.influx_code = _REFUSAL_INFLUX_CODE.get(
            status, "invalid" if status < 500 else "internal error"
        )
        self.detail = detail
        message = _REFUSAL_MESSAGES.get(status) or HTTPStatus(status).phrase
        super().__init__(f"{message}: {detail}" if detail else message)


_REFUSAL_MESSAGES = {
    400: "malformed request",
    408: "request timeout: the request head did not arrive in time",
    413: "request too large",
    414: "request target (URI) too long",
    431: "request header fields too large",
    500: "Internal Server Error",
    505: "HTTP version not supported: only HTTP/1.0 and HTTP/1.1",
}
_REFUSAL_INFLUX_CODE = {413: "request too large", 431: "request too large"}


def http_refusal_parts(
    status: int, path: str | None, request_id: str, detail: str | None = None
) -> tuple[RawHeaders, bytes]:
    """Headers and body of a request the HTTP layer itself refuses (see `HttpRefusal`), in the
    dialect of `path` when the request line was read far enough to know it, else Grafana's;
    with `X-Request-Id`. The status is the caller's: the refusal's own in either dialect."""
    dialect = Dialect.GRAFANA if path is None else dialect_for(path)
    _, headers, body = error_parts(HttpRefusal(status, detail), dialect)
    headers.append((b"X-Request-Id", request_id.encode()))
    return headers, body


def unanswered_parts(path: str, request_id: str) -> tuple[RawHeaders, bytes]:
    """Headers and body of the 500 sent for a handler that returned (or failed) without
    starting its response, in the dialect of its path; what went wrong is for the log."""
    return http_refusal_parts(500, path, request_id)


def render_error(error: GatewayError, dialect: Dialect) -> web.Response:
    status, headers, body = error_parts(error, dialect)
    return _response(status, headers, body)


def influx_error_response(status: int, code: str, message: str) -> web.Response:
    return _response(status, *influx_error_parts(code, message))


def _response(status: int, headers: RawHeaders, body: bytes) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        headers={name.decode(): value.decode() for name, value in headers},
    )


def render_http_exception(exc: web.HTTPException, dialect: Dialect) -> web.Response:
    """aiohttp's own 404/405/413 in the dialect of the path that was asked for."""
    if dialect is Dialect.INFLUX:
        code = _STATUS_INFLUX_CODE.get(exc.status, "internal error")
        if exc.status == 404:
            message = "path not found"
        elif exc.status == 405:
            message = f"allow: {exc.headers.get('Allow', '')}"
        else:
            message = exc.reason
        response = influx_error_response(exc.status, code, message)
    else:
        message = "Not found" if exc.status == 404 else exc.reason
        response = web.json_response({"message": message}, status=exc.status)
    # A 405 names the methods the resource takes, in either dialect (RFC 9110 section 15.5.6).
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response

"""aiohttp's connection handler, for the connections the front server hands over, answering the
requests aiohttp's own parser refuses as every other error is answered.

Such a request never reaches the application: no middleware sees it, and aiohttp answers it
in `RequestHandler.handle_error` with a plain-text body, no request id and no request log line.
What reaches aiohttp's parser passed the front server's first (see protocol.py), but not what
follows on a handed-over keep-alive connection, a header field longer than aiohttp's limit, or a
body whose framing breaks off. Here such a request gets the JSON error of gateway/errors.py
(Grafana's shape: aiohttp no longer knows its path), `X-Request-Id`, `Connection: close`, and
its `request` log line.

Errors of a request the application did see (a handler failing past every middleware, which
the `errors` middleware makes all but impossible) keep their line from `request_context`; they
get the same JSON answer without a second line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from gateway.errors import http_refusal_parts
from gateway.requests import choose_request_id, record_refusal

# What a refusal says of the parser's complaint: aiohttp's own messages quote request bytes.
_DETAILS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (http_exceptions.BadHttpMethod, "invalid method"),
    (http_exceptions.BadStatusLine, "invalid request line"),
    (http_exceptions.LineTooLong, "a request line or header field is too long"),
    (http_exceptions.InvalidHeader, "invalid header field"),
    (http_exceptions.InvalidURLError, "invalid request target"),
    (http_exceptions.PayloadEncodingError, "invalid body framing"),
)


class JsonErrorsRequestHandler(RequestHandler):
    """aiohttp's `RequestHandler`, with `handle_error` answering in the gateway's JSON."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own: it logs the error, and raises ConnectionError once a response has begun.
        super().handle_error(request, status, exc, message)
        parse_error = isinstance(exc, http_exceptions.HttpProcessingError)
        headers = request.headers
        request_id = choose_request_id(
            headers.get("X-Request-Id"), headers.get("traceparent"), headers.get("Zap-Trace-Span")
        )
        path = None if parse_error else request.path
        detail = next((text for kind, text in _DETAILS if isinstance(exc, kind)), None)
        fields, body = http_refusal_parts(status, path, request_id, detail)
        response = web.Response(
            status=status,
            body=body,
            headers={name.decode(): value.decode() for name, value in fields},
        )
        # Said even to the HTTP/1.0 aiohttp takes an unparsable request for, where closing is
        # the default and aiohttp would not say it.
        response.headers["Connection"] = "close"
        response.force_close()
        if parse_error:  # no middleware saw it: this is its only line
            record_refusal(None, None, status, 0.0, request_id)
        return response


def json_errors_handlers(server: web.Server) -> Callable[[], RequestHandler]:
    """A protocol factory like `server` itself (`web.Server.__call__`), whose handlers are
    `JsonErrorsRequestHandler`s. aiohttp offers no public way to choose the handler class: the
    server's loop and handler options are read from its private attributes, as its own
    `__call__` does."""

    def handler() -> RequestHandler:
        return JsonErrorsRequestHandler(server, loop=server._loop, **server._kwargs)

    return handler

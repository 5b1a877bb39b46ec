"""The proxied routes on a connection aiohttp serves: aiohttp's routes, registered from the
route table, each running the proxy pipeline over an `AiohttpExchange`.

The front server hands a connection to aiohttp for good once it carried a request that is not
a proxied one (an API call, say), and leaves to aiohttp the forms of the proxied routes it does
not claim (see gateway/proxy/front_carrier.py); proxied requests on such a connection land here.
The pipeline does what the middlewares do for other routes, so `request_context`
(gateway/middlewares.py) hands these requests straight to their handler (`proxy_handler`).

The client gets the upstream's headers as the front server passes them: aiohttp's defaults
(`Content-Type: application/octet-stream`, `Server`) are taken out again, and a `Content-Length`
aiohttp drops from a 204 or 304 is put back (`_pass_headers`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import MethodType

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.bodies import read_limited
from gateway.keys import PIPELINE
from gateway.proxy.forward import CLIENT_CLOSED_REQUEST
from gateway.proxy.routes import ROUTES, ProxyRoute


def add_proxy_routes(app: web.Application, routes: Sequence[ProxyRoute] = ROUTES) -> None:
    """Register the proxied routes, in the table's order, and the hook that keeps their
    responses' headers the upstream's."""
    for route in routes:
        handle = _ProxyHandler(route).handle
        for method in sorted(route.methods) if route.methods is not None else (hdrs.METH_ANY,):
            app.router.add_route(method, route.aiohttp_path, handle)
    app.on_response_prepare.append(_pass_headers)


def proxy_handler(request: web.Request) -> Handler | None:
    """The handler of the request's route if the proxy pipeline serves it, else None."""
    handler = request.match_info.handler
    # Every other route's handler is a plain function: one type check, no attribute lookup.
    if type(handler) is MethodType and handler.__func__ is _ProxyHandler.handle:
        return handler
    return None


class _ProxyHandler:
    __slots__ = ("_route",)

    def __init__(self, route: ProxyRoute) -> None:
        self._route = route

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self._route
        exchange = AiohttpExchange(request)
        # The key as aiohttp matched it: on the decoded path.
        key = request.match_info[route.key] if route.key is not None else ""
        try:
            status = await request.app[PIPELINE].serve(exchange, route, key)
        finally:
            # aiohttp may run the next request of the connection in this context.
            structlog.contextvars.unbind_contextvars("request_id")
        return await exchange.complete(status)


class _Passed:
    """A response whose headers the proxy set: which of aiohttp's defaults to undo."""

    passed_type = False  # the proxy set a Content-Type
    passed_server = False  # the proxy set a Server
    passed_length: str | None = None  # the Content-Length the proxy set

    def note(self, name: str, value: str) -> None:
        lowered = name.lower()
        if lowered == "content-type":
            self.passed_type = True
        elif lowered == "server":
            self.passed_server = True
        elif lowered == "content-length":
            self.passed_length = value


class _PassedStream(_Passed, web.StreamResponse):
    pass


class _PassedWhole(_Passed, web.Response):
    pass


async def _pass_headers(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's `on_response_prepare`: runs after aiohttp set its defaults, before the head is
    written."""
    if not isinstance(response, _Passed):
        return
    headers = response.headers
    if not response.passed_type and hdrs.CONTENT_TYPE in headers:
        del headers[hdrs.CONTENT_TYPE]
    if not response.passed_server and hdrs.SERVER in headers:
        del headers[hdrs.SERVER]
    if response.passed_length is not None and hdrs.CONTENT_LENGTH not in headers:
        headers[hdrs.CONTENT_LENGTH] = response.passed_length


class AiohttpExchange:
    """The proxy's exchange (`pipeline.ProxyExchange`) over an aiohttp request."""

    __slots__ = ("_close", "_finished", "_request", "_response", "response_started")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response: web.StreamResponse | None = None
        self._finished = False
        self._close = False
        self.response_started = False

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def path(self) -> str:
        return self._request.rel_url.raw_path

    @property
    def query_string(self) -> str:
        return self._request.rel_url.raw_query_string

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._request.raw_headers

    @property
    def remote(self) -> str | None:
        return self._request.remote

    @property
    def has_body(self) -> bool:
        return self._request.body_exists

    @property
    def content_length(self) -> int | None:
        return self._request.content_length

    async def body(self) -> AsyncIterator[bytes]:
        async for chunk in self._request.content.iter_any():
            yield chunk

    async def read_body(self, limit: int) -> bytes:
        return await read_limited(self.body(), limit)  # to the end: content.read(n) stops early

    def start_response(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        response = _PassedStream(status=status, reason=reason)
        _add(response, response.headers.add, headers)
        self._response = response
        self.response_started = True

    async def write(self, data: bytes) -> None:
        response = self._response
        assert response is not None, "start_response first"
        if not response.prepared:
            await response.prepare(self._request)
        await response.write(data)

    def finish(self) -> None:
        self._finished = True

    def abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None:
        response = _PassedWhole(status=status, reason=reason, body=body)
        _add(response, response.headers.__setitem__, headers)
        self._response = response
        self.response_started = self._finished = True

    def close_after_response(self) -> None:
        self._close = True

    async def complete(self, status: int) -> web.StreamResponse:
        """The response for aiohttp to finish."""
        response = self._response
        if response is None:  # the client went away before anything was answered
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        if self._close:
            await self._close_after(response)
        elif type(response) is _PassedStream and self._finished:
            if not response.prepared:
                await response.prepare(self._request)
            await response.write_eof()
        return response

    async def _close_after(self, response: web.StreamResponse) -> None:
        """Send the response, then end the connection's write side, as the front server does:
        the client sees the end at once, while aiohttp still reads and drops the rest of the
        request body for a while, so that the kernel does not reset the connection under a
        response the client has not read yet."""
        response.force_close()
        if not response.prepared:
            await response.prepare(self._request)
        await response.write_eof()
        transport = self._request.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()


def _add(
    response: _Passed, add: Callable[[str, str], None], headers: Iterable[tuple[bytes, bytes]]
) -> None:
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        response.note(name, value)
        add(name, value)

"""The front server's module seams over real loopback sockets: refusals built by
gateway/errors.py, the request body's flow control and 100 Continue, connection drain, and
FrontSite's listener. The fallback is a real aiohttp server, as in production."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.bodies import BodyTooLarge, read_limited
from gateway.errors import http_refusal_parts, unanswered_parts
from gateway.front.connections import FrontConnections
from gateway.front.exchange import Exchange, FastHandler
from gateway.front.limits import ServerLimits, closing_error
from gateway.front.protocol import FrontProtocol
from gateway.front.site import FrontSite

T = 5.0
DATE = b"Thu, 01 Jan 2026 00:00:00 GMT"
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Server:
    """FrontProtocol on a free loopback port, with a fixed Date so responses compare as bytes."""

    def __init__(self, connections: FrontConnections, port: int) -> None:
        self.connections = connections
        self.port = port
        self.protocols: list[FrontProtocol] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self) -> Streams:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        return reader, writer


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(routes: dict[str, FastHandler], limits: ServerLimits | None = None) -> Server:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        fallback = runner.server
        assert fallback is not None
        connections = FrontConnections()
        loop = asyncio.get_running_loop()

        def factory() -> FrontProtocol:
            protocol = FrontProtocol(
                lambda method, path: routes.get(path),
                fallback,
                connections,
                limits or ServerLimits(),
                date_header=lambda: DATE,
            )
            server.protocols.append(protocol)
            return protocol

        listener = await loop.create_server(factory, "127.0.0.1", 0)
        server = Server(connections, listener.sockets[0].getsockname()[1])

        async def cleanup() -> None:
            for writer in server.writers:
                writer.close()
            await connections.shutdown(1.0)
            listener.close()
            await listener.wait_closed()
            await runner.cleanup()

        cleanups.append(cleanup)
        return server

    yield start
    for cleanup in cleanups:
        await cleanup()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    with contextlib.suppress(ConnectionResetError):
        return await asyncio.wait_for(reader.read(), T)
    return b""


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(T):
        while not predicate():
            await asyncio.sleep(0.005)


async def hello(ex: Exchange) -> None:
    ex.respond(200, "OK", [], b"hello")


# Refusals: the exact bytes come from errors.py's parts, in the dialect of the path when the
# head was read that far, with the request id the request asked for (else a new one).


@pytest.mark.parametrize(
    ("status", "request_bytes", "limits", "path", "detail"),
    [
        (
            400,
            b"GET /hello HTTP/1.1\r\nbad header\r\n\r\n",
            ServerLimits(),
            "/hello",
            "Invalid header token",
        ),
        (
            400,
            b"GET /write?p=x HTTP/1.1\r\nX-Request-Id: seam-1\r\n\r\n",  # no Host
            ServerLimits(),
            "/write",
            "an HTTP/1.1 request needs exactly one Host field",
        ),
        (
            400,
            b"POST /hello HTTP/1.1\r\nHost: t\r\nX-Request-Id: seam-1\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n",
            ServerLimits(),
            "/hello",
            "only a plain Transfer-Encoding: chunked is accepted",
        ),
        (
            414,
            b"GET /api/v2/" + b"a" * 200 + b" HTTP/1.1\r\nHost: t\r\n\r\n",
            ServerLimits(max_target_length=100),
            "/api/v2/" + "a" * 93,
            None,
        ),
        (
            431,
            b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Request-Id: seam-1\r\nX: "
            + b"v" * 9000
            + b"\r\n\r\n",
            ServerLimits(max_head_size=8192),
            "/hello",
            None,
        ),
        (
            505,
            b"GET /query HTTP/2.0\r\nX-Request-Id: seam-1\r\n\r\n",
            ServerLimits(),
            "/query",
            None,
        ),
        (
            408,
            b"GET /hello HTTP/1.1\r\nHost: t\r\nX-Request-Id: seam-1\r\nHo",
            ServerLimits(head_timeout=0.1),
            "/hello",
            None,
        ),
        (400, b"G@T /hello HTTP/1.1\r\n\r\n", ServerLimits(), None, "Invalid method encountered"),
    ],
)
async def test_a_refusal_is_the_errors_module_response_then_close(
    serve: StartServer,
    status: int,
    request_bytes: bytes,
    limits: ServerLimits,
    path: str | None,
    detail: str | None,
) -> None:
    server = await serve({"/hello": hello}, limits)
    reader, writer = await server.connect()
    writer.write(request_bytes)
    received = await read_all(reader)
    request_id = "seam-1" if b"seam-1" in request_bytes else _request_id(received)
    parts = http_refusal_parts(status, path, request_id, detail)
    expected = closing_error(status, parts, DATE)
    assert received == expected
    headers, body = parts
    assert expected.endswith(b"\r\n\r\n" + body)
    assert b"Connection: close\r\n" in expected
    assert all(b"%s: %s\r\n" % field in expected for field in headers)


def _request_id(response: bytes) -> str:
    for line in response.split(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b": ")
        if name.lower() == b"x-request-id":
            return value.decode()
    raise AssertionError(f"no X-Request-Id in {response!r}")


async def test_a_handler_that_never_answers_gets_the_errors_module_500(
    serve: StartServer,
) -> None:
    async def silent(ex: Exchange) -> None:
        pass

    server = await serve({"/silent": silent})
    reader, writer = await server.connect()
    writer.write(b"GET /silent HTTP/1.1\r\nHost: t\r\nX-Request-Id: seam-2\r\n\r\n")
    assert await read_all(reader) == closing_error(500, unanswered_parts("/silent", "seam-2"), DATE)


# The request body: flow control and 100 Continue.


async def test_reading_pauses_at_the_body_limit_and_resumes_once_the_handler_reads(
    serve: StartServer,
) -> None:
    limit = 64 * 1024
    go = asyncio.Event()
    reading_while_consuming: list[bool] = []

    async def upload(ex: Exchange) -> None:
        await go.wait()
        total = 0
        async for chunk in ex.body():
            total += len(chunk)
            reading_while_consuming.append(protocol.transport.is_reading())
        ex.respond(200, "OK", [], b"%d" % total)

    server = await serve({"/upload": upload}, ServerLimits(max_buffered_body=limit))
    reader, writer = await server.connect()
    size = 8 * 1024 * 1024
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
    writer.write(b"\0" * size)
    await eventually(lambda: bool(server.protocols))
    protocol = server.protocols[0]
    await eventually(lambda: not protocol.transport.is_reading())
    go.set()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await asyncio.wait_for(reader.readexactly(len(b"%d" % size)), T) == b"%d" % size
    assert any(reading_while_consuming)  # reading resumed as the buffers drained
    assert protocol.transport.is_reading()  # and stays on for the next request


async def test_100_continue_is_sent_when_the_handler_first_waits_for_the_body(
    serve: StartServer,
) -> None:
    server = await serve({"/echo": echo})
    reader, writer = await server.connect()
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"ping")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert b"Connection" not in head  # the whole body was read: keep-alive
    assert await asyncio.wait_for(reader.readexactly(4), T) == b"ping"


async def test_no_100_continue_once_the_response_started_and_the_connection_closes(
    serve: StartServer,
) -> None:
    async def refuse_early(ex: Exchange) -> None:
        ex.respond(413, "Payload Too Large", [], b"")  # without reading the body

    server = await serve({"/upload": refuse_early})
    reader, writer = await server.connect()
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    response = await read_all(reader)
    assert response.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert b"100 Continue" not in response
    assert b"Connection: close\r\n" in response


async def echo(ex: Exchange) -> None:
    ex.respond(200, "OK", [], await ex.read_body(1024))


# Connection drain.


async def test_shutdown_closes_idle_connections_and_lets_busy_ones_finish(
    serve: StartServer,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        started.set()
        await release.wait()
        ex.respond(200, "OK", [], b"done")

    server = await serve({"/slow": slow})
    idle_reader, _ = await server.connect()
    busy_reader, busy_writer = await server.connect()
    await eventually(lambda: len(server.connections) == 2)
    busy_writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(started.wait(), T)
    shutdown = asyncio.create_task(server.connections.shutdown(T))
    assert await read_all(idle_reader) == b""  # closed at once
    await eventually(lambda: len(server.connections) == 1)
    assert not shutdown.done()
    release.set()
    response = await read_all(busy_reader)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in response
    assert response.endswith(b"done")
    await asyncio.wait_for(shutdown, T)
    assert len(server.connections) == 0
    late_reader, _ = await server.connect()  # made after shutdown: closed at once
    assert await read_all(late_reader) == b""


async def test_shutdown_aborts_and_cancels_what_outlives_the_grace_period(
    serve: StartServer,
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(ex: Exchange) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    server = await serve({"/stuck": stuck})
    reader, writer = await server.connect()
    writer.write(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(started.wait(), T)
    await asyncio.wait_for(server.connections.shutdown(0.1), T)
    assert cancelled.is_set()
    assert len(server.connections) == 0
    assert await read_all(reader) == b""  # aborted without a response


# FrontSite and read_limited.


async def test_front_site_listens_reports_its_address_and_stops_listening() -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = FrontSite(runner, lambda method, path: hello, host="127.0.0.1", port=0)
    try:
        await site.start()
        port = site.port
        assert port != 0
        assert site.name == f"http://127.0.0.1:{port}"
        assert any(address[1] == port for address in runner.addresses)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /any HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"hello"), T)).endswith(b"hello")
        writer.close()
        await site.stop()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        await runner.cleanup()


async def test_read_limited_joins_chunks_and_refuses_past_the_limit() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"ab", b"cd", b"ef"):
            yield chunk

    assert await read_limited(chunks(), 6) == b"abcdef"
    with pytest.raises(BodyTooLarge):
        await read_limited(chunks(), 5)

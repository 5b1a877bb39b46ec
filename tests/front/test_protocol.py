"""FrontProtocol over real loopback sockets, on asyncio's own loop and on uvloop.

Clients are raw `asyncio.open_connection` streams, so every byte is the test's choice (and
aiohttp's client where a real client matters). The fallback is a real aiohttp application served
through `web.AppRunner(app).server`, exactly as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import uvloop
from aiohttp import web

from gateway.bodies import BodyTooLarge
from gateway.front.connections import FrontConnections
from gateway.front.exchange import Exchange, FastHandler
from gateway.front.limits import ServerLimits
from gateway.front.protocol import FrontProtocol
from tests.streams import cut, field_value, framed_body, mixed_case

T = 5.0  # patience for anything that should happen at once
MiB = 1024 * 1024


# A client's view of responses.


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name]


async def read_head(reader: asyncio.StreamReader) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    lines = head.decode("latin-1").split("\r\n")
    version, status, reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = [(k, v) for k, v in (line.split(": ", 1) for line in lines[1:] if line)]
    return Response(int(status), reason, headers, b"", head)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), T), 16)
        if size == 0:
            assert await asyncio.wait_for(reader.readexactly(2), T) == b"\r\n"
            return body
        body += await asyncio.wait_for(reader.readexactly(size + 2), T)
        assert body.endswith(b"\r\n")
        body = body[:-2]


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> Response:
    response = await read_head(reader)
    length = response.header("content-length")
    if head or response.status in (204, 304):
        pass
    elif response.header("transfer-encoding") == "chunked":
        response.body = await read_chunked(reader)
    elif length is not None:
        response.body = await asyncio.wait_for(reader.readexactly(int(length)), T)
    else:
        response.body = await asyncio.wait_for(reader.read(), T)
    return response


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The server closed the connection: EOF (or a reset) and nothing more."""
    try:
        rest = await asyncio.wait_for(reader.read(), T)
    except ConnectionResetError:
        return
    assert rest == b""


async def eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(T):
        while not predicate():
            await asyncio.sleep(0.005)


# The server under test.


@dataclass
class Front:
    port: int
    connections: FrontConnections
    protocols: list[FrontProtocol]
    routed: list[tuple[str, str]] = field(default_factory=list)
    fallback_hits: list[str] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        return reader, writer

    async def exchange(self, raw: bytes, *, head: bool = False) -> Response:
        """One request on a connection of its own."""
        reader, writer = await self.connect()
        writer.write(raw)
        return await read_response(reader, head=head)


StartFront = Callable[..., Awaitable[Front]]


def fallback_app(hits: list[str]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        hits.append(f"{request.method} {request.path_qs}")
        first = f"aiohttp {request.method} {request.path_qs}\n".encode()
        return web.Response(body=first + body)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        hits.append("websocket")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(f"echo {message.data}")
        return ws

    app = web.Application()
    app.router.add_get("/ws", websocket)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def front() -> AsyncIterator[StartFront]:
    """`await front(routes, limits)` serves `routes` (path → handler) on a free loopback port."""
    started: list[tuple[Front, asyncio.Server, web.AppRunner]] = []

    async def start(
        routes: dict[str, FastHandler],
        limits: ServerLimits = ServerLimits(),  # noqa: B008 - frozen
        date_header: Callable[[], bytes] | None = None,
    ) -> Front:
        hits: list[str] = []
        runner = web.AppRunner(fallback_app(hits))
        await runner.setup()
        aiohttp_server = runner.server
        assert aiohttp_server is not None
        connections = FrontConnections()
        protocols: list[FrontProtocol] = []
        routed: list[tuple[str, str]] = []

        def router(method: str, path: str) -> FastHandler | None:
            routed.append((method, path))
            return routes.get(path)

        def factory() -> FrontProtocol:
            protocol = FrontProtocol(
                router, aiohttp_server, connections, limits, date_header=date_header
            )
            protocols.append(protocol)
            return protocol

        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        result = Front(port, connections, protocols, routed, hits)
        started.append((result, server, runner))
        return result

    yield start
    for result, server, runner in started:
        for writer in result.writers:
            writer.close()
        await result.connections.shutdown(1.0)
        server.close()
        await server.wait_closed()
        await runner.cleanup()
        for writer in result.writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# Handlers.


async def hello(ex: Exchange) -> None:
    ex.respond(200, "OK", [(b"Content-Type", b"text/plain")], b"hello")


async def echo(ex: Exchange) -> None:
    body = await ex.read_body(64 * MiB)
    ex.respond(200, "OK", [], body)


def get(path: str = "/hello", extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: test\r\n%s\r\n" % (path.encode(), extra)


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(),
        len(body),
        extra,
        body,
    )


# The loop


async def test_runs_on_the_loop_it_names(request: pytest.FixtureRequest) -> None:
    # tests/conftest.py runs this module on asyncio's loop and on uvloop (its
    # pytest_asyncio_loop_factories hook): each variant must really run on the loop it names.
    loop_type = type(asyncio.get_running_loop())
    variant = request.node.callspec.id
    assert variant in ("asyncio", "uvloop")
    assert loop_type is (uvloop.Loop if variant == "uvloop" else asyncio.SelectorEventLoop)


# Requests and keep-alive


async def test_keep_alive_serves_many_requests_on_one_connection(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    for i in range(200):
        writer.write(get(f"/hello?i={i}"))
        response = await read_response(reader)
        assert (response.status, response.body) == (200, b"hello")
        assert response.header("connection") is None
        assert response.header("content-length") == "5"
        assert response.header("date") is not None
    assert len(srv.protocols) == 1
    assert len(srv.connections) == 1
    assert srv.routed[-1] == ("GET", "/hello")


async def test_aiohttp_client_reuses_one_connection(front: StartFront) -> None:
    srv = await front({"/hello": hello, "/echo": echo})
    async with aiohttp.ClientSession() as session:
        for i in range(30):
            async with session.post(f"{srv.url}/echo", data=b"x" * i) as response:
                assert response.status == 200
                assert await response.read() == b"x" * i
            async with session.get(f"{srv.url}/hello") as response:
                assert await response.text() == "hello"
    assert len(srv.protocols) == 1


async def test_request_attributes(front: StartFront) -> None:
    seen: list[Exchange] = []

    async def record(ex: Exchange) -> None:
        seen.append(ex)
        await echo(ex)

    srv = await front({"/a%20b/c": record, "/": record})
    reader, writer = await srv.connect()
    writer.write(
        b"POST /a%20b/c?x=1&y=%2F?z HTTP/1.1\r\nHost: h\r\nX-Dup: 1\r\nx-dup: 2\r\n"
        b"Content-Length: 3\r\n\r\nabc"
    )
    assert (await read_response(reader)).body == b"abc"
    writer.write(
        b"PUT / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n"
    )
    assert (await read_response(reader)).body == b"xyz"
    writer.write(b"DELETE / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await read_response(reader)
    writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await read_response(reader)

    first, chunked, empty, old = seen
    assert first.method == "POST"
    assert first.target == "/a%20b/c?x=1&y=%2F?z"
    assert (first.path, first.query_string) == ("/a%20b/c", "x=1&y=%2F?z")
    assert first.headers == [
        (b"Host", b"h"),
        (b"X-Dup", b"1"),
        (b"x-dup", b"2"),
        (b"Content-Length", b"3"),
    ]
    assert first.header(b"x-dup") == b"1"
    assert first.header(b"missing") is None
    assert first.remote == "127.0.0.1"
    assert first.version == (1, 1)
    assert (first.content_length, first.has_body) == (3, True)
    assert (chunked.method, chunked.query_string) == ("PUT", "")
    assert (chunked.content_length, chunked.has_body) == (None, True)
    assert (empty.content_length, empty.has_body) == (0, False)
    assert (old.version, old.content_length, old.has_body) == ((1, 0), None, False)
    assert srv.routed[0] == ("POST", "/a%20b/c")


async def test_http10_without_keep_alive_gets_one_response_then_close(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(b"GET /hello HTTP/1.0\r\n\r\n")
    response = await read_response(reader)
    assert (response.status, response.body) == (200, b"hello")
    assert response.header("connection") == "close"
    await assert_closed(reader)


async def test_http10_keep_alive(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    for _ in range(3):
        writer.write(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = await read_response(reader)
        assert response.body == b"hello"
        assert response.header("connection") == "keep-alive"
    assert len(srv.protocols) == 1


async def test_http10_streamed_response_is_delimited_by_close(front: StartFront) -> None:
    async def stream(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        await ex.write(b"one ")
        await ex.write(b"two")
        ex.finish()

    srv = await front({"/stream": stream})
    reader, writer = await srv.connect()
    writer.write(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    response = await read_response(reader)  # no length, no chunks: read to the end
    assert response.body == b"one two"
    assert response.header("transfer-encoding") is None
    assert response.header("connection") == "close"


async def test_connection_close_from_the_client(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(get(extra=b"Connection: close\r\n"))
    response = await read_response(reader)
    assert response.body == b"hello"
    assert response.header("connection") == "close"
    await assert_closed(reader)
    await eventually(lambda: len(srv.connections) == 0)


# Pipelining


async def test_pipelined_requests_are_served_in_order_one_at_a_time(front: StartFront) -> None:
    active: list[str] = []
    overlap: list[int] = []

    async def slow(ex: Exchange) -> None:
        active.append(ex.target)
        overlap.append(len(active))
        await asyncio.sleep(0.02)
        body = await ex.read_body(MiB)
        active.remove(ex.target)
        ex.respond(200, "OK", [], ex.target.encode() + b":" + body)

    srv = await front({"/a": slow, "/b": slow, "/c": slow})
    reader, writer = await srv.connect()
    writer.write(
        get("/a")
        + post("/b", b"body of b")
        + b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"4\r\nbody\r\n2\r\n c\r\n0\r\n\r\n"
    )
    bodies = [(await read_response(reader)).body for _ in range(3)]
    assert bodies == [b"/a:", b"/b:body of b", b"/c:body c"]
    assert overlap == [1, 1, 1]


async def test_queued_request_bodies_are_bounded(front: StartFront) -> None:
    limit = 64 * 1024
    release = asyncio.Event()

    async def blocked(ex: Exchange) -> None:
        await release.wait()
        ex.respond(200, "OK", [], b"first")

    srv = await front({"/first": blocked, "/echo": echo}, ServerLimits(max_buffered_body=limit))
    reader, writer = await srv.connect()
    body = bytes(range(256)) * (8 * MiB // 256)
    writer.write(get("/first") + post("/echo", body))
    protocol = srv.protocols[0]
    transport = protocol.transport
    await eventually(lambda: not transport.is_reading())
    await asyncio.sleep(0.05)
    assert protocol._buffered <= limit + 256 * 1024  # the bound plus one socket read
    release.set()
    assert (await read_response(reader)).body == b"first"
    assert (await read_response(reader)).body == body


# Request bodies


async def test_content_length_body_is_streamed_with_back_pressure(front: StartFront) -> None:
    limit = 64 * 1024
    go = asyncio.Event()
    most = 0

    async def count(ex: Exchange) -> None:
        nonlocal most
        await go.wait()
        total = 0
        async for chunk in ex.body():
            total += len(chunk)
            most = max(most, protocol._buffered)
        ex.respond(200, "OK", [], b"%d" % total)

    srv = await front({"/upload": count}, ServerLimits(max_buffered_body=limit))
    reader, writer = await srv.connect()
    size = 32 * MiB
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
    writer.write(b"\0" * size)
    await eventually(lambda: bool(srv.protocols))
    protocol = srv.protocols[0]
    await eventually(lambda: not protocol.transport.is_reading())
    with pytest.raises(TimeoutError):  # the client cannot get rid of its body
        await asyncio.wait_for(writer.drain(), 0.2)
    assert protocol._buffered <= limit + 256 * 1024
    go.set()
    response = await read_response(reader)
    assert response.body == b"%d" % size
    assert most <= limit + 256 * 1024


async def test_chunked_body_is_streamed_as_it_arrives(front: StartFront) -> None:
    received: list[bytes] = []
    got = asyncio.Event()

    async def stream(ex: Exchange) -> None:
        async for chunk in ex.body():
            received.append(chunk)
            got.set()
        ex.respond(200, "OK", [], b"|".join(received))

    srv = await front({"/upload": stream})
    reader, writer = await srv.connect()
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"one", b"two", b"three"):
        got.clear()
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await asyncio.wait_for(got.wait(), T)  # the handler has it before the next is sent
    writer.write(b"0\r\n\r\n")
    assert (await read_response(reader)).body == b"one|two|three"


async def test_expect_100_continue_is_sent_on_the_first_pull(front: StartFront) -> None:
    srv = await front({"/echo": echo})
    reader, writer = await srv.connect()
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    continue_line = await asyncio.wait_for(reader.readexactly(25), T)
    assert continue_line == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    response = await read_response(reader)
    assert (response.status, response.body) == (200, b"hello")
    assert response.header("connection") is None
    writer.write(get("/echo"))  # and no 100 without the expectation
    assert (await read_response(reader)).status == 200


async def test_expect_100_continue_is_not_sent_when_the_body_is_not_read(
    front: StartFront,
) -> None:
    async def refuse(ex: Exchange) -> None:
        ex.respond(413, "Content Too Large", [], b"no")

    srv = await front({"/upload": refuse})
    reader, writer = await srv.connect()
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    response = await read_response(reader)
    assert (response.status, response.body) == (413, b"no")
    # The client still holds the body back: the connection cannot be reused.
    assert response.header("connection") == "close"
    await assert_closed(reader)


async def test_expect_100_continue_is_not_sent_once_the_response_started(
    front: StartFront,
) -> None:
    async def late(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        await ex.write(b"started;")
        await ex.write(await ex.read_body(100))
        ex.finish()

    srv = await front({"/upload": late})
    reader, writer = await srv.connect()
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    response = await read_head(reader)
    assert response.status == 200
    writer.write(b"later")
    assert await read_chunked(reader) == b"started;later"


async def test_read_body_limit(front: StartFront) -> None:
    outcomes: list[str] = []

    async def limited(ex: Exchange) -> None:
        try:
            await ex.read_body(10)
        except BodyTooLarge:
            outcomes.append("too large")
            ex.respond(413, "Content Too Large", [], b"")
            return
        ex.respond(200, "OK", [], b"")

    srv = await front({"/upload": limited})
    reader, writer = await srv.connect()
    # Known length: refused before anything is read, so no 100 Continue either.
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
    )
    assert (await read_response(reader)).status == 413
    reader, writer = await srv.connect()
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"6\r\nsix...\r\n6\r\nsix...\r\n0\r\n\r\n")
    assert (await read_response(reader)).status == 413
    assert outcomes == ["too large", "too large"]


async def test_body_is_iterated_once(front: StartFront) -> None:
    errors: list[BaseException] = []

    async def twice(ex: Exchange) -> None:
        ex.body()
        try:
            ex.body()
        except RuntimeError as exc:
            errors.append(exc)
        ex.respond(200, "OK", [], b"")

    srv = await front({"/x": twice})
    assert (await srv.exchange(post("/x", b"abc"))).status == 200
    assert len(errors) == 1


async def test_small_unread_body_is_discarded_and_the_connection_kept(
    front: StartFront,
) -> None:
    async def ignore(ex: Exchange) -> None:
        ex.respond(200, "OK", [], b"ignored")

    srv = await front({"/ignore": ignore, "/hello": hello})
    reader, writer = await srv.connect()
    writer.write(b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 20000\r\n\r\n" + b"x" * 100)
    response = await read_response(reader)
    assert response.body == b"ignored"
    assert response.header("connection") is None
    writer.write(b"x" * 19900 + get())
    assert (await read_response(reader)).body == b"hello"
    assert len(srv.protocols) == 1


async def test_large_unread_body_closes_the_connection(front: StartFront) -> None:
    async def ignore(ex: Exchange) -> None:
        ex.respond(200, "OK", [], b"ignored")

    srv = await front({"/ignore": ignore})
    reader, writer = await srv.connect()
    writer.write(
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000
    )
    response = await read_response(reader)
    assert response.body == b"ignored"
    assert response.header("connection") == "close"
    await assert_closed(reader)


# Responses


async def test_chunked_response_framing_and_owned_headers(front: StartFront) -> None:
    async def stream(ex: Exchange) -> None:
        ex.start_response(
            200,
            "OK",
            [
                (b"transfer-encoding", b"gzip"),
                (b"Connection", b"keep-alive"),
                (b"Keep-Alive", b"timeout=5"),
                (b"Proxy-Connection", b"keep-alive"),
                (b"X-Kept", b"1"),
            ],
        )
        await ex.write(b"hello")
        await ex.write(b"")
        await ex.write(b"world!")
        ex.finish()

    srv = await front({"/stream": stream})
    reader, writer = await srv.connect()
    writer.write(get("/stream"))
    response = await read_head(reader)
    names = [name.lower() for name, _ in response.headers]
    assert names.count("transfer-encoding") == 1
    assert response.header("transfer-encoding") == "chunked"
    assert not {"connection", "keep-alive", "proxy-connection"} & set(names)
    assert response.header("x-kept") == "1"
    framed = b"5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n"
    assert await asyncio.wait_for(reader.readexactly(len(framed)), T) == framed


async def test_response_head_goes_out_with_the_first_write(front: StartFront) -> None:
    release = asyncio.Event()

    async def stream(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        await release.wait()
        await ex.write(b"first")
        ex.finish()

    srv = await front({"/stream": stream})
    reader, writer = await srv.connect()
    writer.write(get("/stream"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.1)
    release.set()
    together = await asyncio.wait_for(reader.readuntil(b"first"), T)
    assert together.startswith(b"HTTP/1.1 200 OK\r\n")
    assert together.endswith(b"\r\n\r\n5\r\nfirst")
    assert await asyncio.wait_for(reader.readexactly(7), T) == b"\r\n0\r\n\r\n"


async def test_content_length_response(front: StartFront) -> None:
    errors: list[BaseException] = []

    async def sized(ex: Exchange) -> None:
        ex.start_response(200, "OK", [(b"content-length", b"10")])
        await ex.write(b"0123")
        try:
            await ex.write(b"456789!")
        except RuntimeError as exc:
            errors.append(exc)
        await ex.write(b"456789")
        ex.finish()

    srv = await front({"/sized": sized})
    reader, writer = await srv.connect()
    for _ in range(2):
        writer.write(get("/sized"))
        response = await read_response(reader)
        assert response.body == b"0123456789"
        assert response.header("transfer-encoding") is None
    assert len(errors) == 2


async def test_short_content_length_body_aborts(front: StartFront) -> None:
    async def short(ex: Exchange) -> None:
        ex.start_response(200, "OK", [(b"Content-Length", b"10")])
        await ex.write(b"12345")
        ex.finish()

    srv = await front({"/short": short})
    reader, writer = await srv.connect()
    writer.write(get("/short"))
    response = await read_head(reader)
    assert response.header("content-length") == "10"
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        await asyncio.wait_for(reader.readexactly(10), T)


async def test_head_request(front: StartFront) -> None:
    async def declared(ex: Exchange) -> None:
        ex.start_response(200, "OK", [(b"Content-Length", b"1234")])
        await ex.write(b"ignored")
        ex.finish()

    srv = await front({"/hello": hello, "/declared": declared})
    reader, writer = await srv.connect()
    writer.write(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    response = await read_response(reader, head=True)
    assert response.header("content-length") == "5"
    writer.write(b"HEAD /declared HTTP/1.1\r\nHost: t\r\n\r\n")
    response = await read_response(reader, head=True)
    assert response.header("content-length") == "1234"
    assert response.header("transfer-encoding") is None
    # No stray body bytes before the next response.
    writer.write(get())
    assert (await read_response(reader)).body == b"hello"


@pytest.mark.parametrize("status", [204, 304])
async def test_responses_without_a_body(front: StartFront, status: int) -> None:
    async def streamed(ex: Exchange) -> None:
        ex.start_response(status, "No Body", [])
        await ex.write(b"ignored")
        ex.finish()

    async def whole(ex: Exchange) -> None:
        ex.respond(status, "No Body", [], b"ignored")

    srv = await front({"/streamed": streamed, "/whole": whole, "/hello": hello})
    reader, writer = await srv.connect()
    for path in ("/streamed", "/whole"):
        writer.write(get(path))
        response = await read_response(reader)
        assert response.status == status
        assert response.header("transfer-encoding") is None
        assert response.header("content-length") is None
    writer.write(get())
    assert (await read_response(reader)).body == b"hello"


async def test_date_header(front: StartFront) -> None:
    async def dated(ex: Exchange) -> None:
        ex.respond(200, "OK", [(b"date", b"Mon, 02 Jan 2006 15:04:05 GMT")], b"")

    srv = await front(
        {"/hello": hello, "/dated": dated}, date_header=lambda: b"Thu, 01 Jan 1970 00:00:00 GMT"
    )
    response = await srv.exchange(get())
    assert response.all("date") == ["Thu, 01 Jan 1970 00:00:00 GMT"]
    response = await srv.exchange(get("/dated"))
    assert response.all("date") == ["Mon, 02 Jan 2006 15:04:05 GMT"]


async def test_default_date_header_is_an_imf_fixdate(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    date = (await srv.exchange(get())).header("date")
    assert date is not None
    assert date.endswith(" GMT")
    assert len(date) == len("Thu, 01 Jan 1970 00:00:00 GMT")


async def test_header_injection_is_refused(front: StartFront) -> None:
    async def inject(ex: Exchange) -> None:
        ex.respond(200, "OK", [(b"X-A", b"1\r\nSet-Cookie: evil=1")], b"")

    srv = await front({"/inject": inject})
    response = await srv.exchange(get("/inject"))
    assert response.status == 500
    assert response.header("set-cookie") is None


async def test_empty_write_sends_the_head_alone(front: StartFront) -> None:
    release = asyncio.Event()

    async def events(ex: Exchange) -> None:
        ex.start_response(200, "OK", [(b"Content-Type", b"text/event-stream")])
        await ex.write(b"")  # the head now, events later
        await release.wait()
        await ex.write(b"data: 1\n\n")
        ex.finish()

    srv = await front({"/events": events})
    reader, writer = await srv.connect()
    writer.write(get("/events"))
    response = await read_head(reader)
    assert response.header("content-type") == "text/event-stream"
    release.set()
    assert await read_chunked(reader) == b"data: 1\n\n"


async def test_response_api_misuse(front: StartFront) -> None:
    errors: list[str] = []

    async def misuse(ex: Exchange) -> None:
        try:
            await ex.write(b"x")
        except RuntimeError:
            errors.append("write before start")
        try:
            ex.finish()
        except RuntimeError:
            errors.append("finish before start")
        try:
            ex.start_response(200, "OK", [(b"Content-Length", b"-1")])
        except ValueError:
            errors.append("negative length")
        ex.respond(200, "OK", [(b"Content-Length", b"999")], b"right")
        try:
            ex.start_response(200, "OK", [])
        except RuntimeError:
            errors.append("second response")
        ex.finish()  # after respond(): nothing more to do
        try:
            await ex.write(b"late")
        except RuntimeError:
            errors.append("write after the end")

    srv = await front({"/misuse": misuse, "/hello": hello})
    reader, writer = await srv.connect()
    writer.write(get("/misuse"))
    response = await read_response(reader)
    assert (response.body, response.all("content-length")) == (b"right", ["5"])
    writer.write(get())
    assert (await read_response(reader)).body == b"hello"
    assert errors == [
        "write before start",
        "finish before start",
        "negative length",
        "second response",
        "write after the end",
    ]


# Handlers that fail


async def test_handler_raising_before_the_response_gets_500(
    front: StartFront, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(ex: Exchange) -> None:
        raise KeyError("bug")

    srv = await front({"/broken": broken})
    reader, writer = await srv.connect()
    writer.write(get("/broken"))
    response = await read_response(reader)
    # What went wrong is for the log: the client gets the bare 500 in its path's dialect.
    assert (response.status, response.body) == (500, b'{"message": "Internal Server Error"}')
    assert response.header("x-request-id")
    assert response.header("connection") == "close"
    await assert_closed(reader)
    assert "front handler failed for GET /broken" in caplog.text


async def test_connection_errors_from_handlers_are_not_logged(
    front: StartFront, caplog: pytest.LogCaptureFixture
) -> None:
    async def gone(ex: Exchange) -> None:
        raise ConnectionResetError("upstream")

    srv = await front({"/gone": gone})
    assert (await srv.exchange(get("/gone"))).status == 500
    assert caplog.records == []


async def test_handler_raising_after_starting_aborts(front: StartFront) -> None:
    async def broken(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        await ex.write(b"partial")
        raise ValueError("bug")

    srv = await front({"/broken": broken})
    reader, writer = await srv.connect()
    writer.write(get("/broken"))
    await read_head(reader)
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        await read_chunked(reader)


async def test_handler_returning_without_a_response_gets_500(front: StartFront) -> None:
    async def nothing(ex: Exchange) -> None:
        pass

    srv = await front({"/nothing": nothing})
    response = await srv.exchange(get("/nothing"))
    assert (response.status, response.header("connection")) == (500, "close")


async def test_handler_returning_without_finishing_aborts(front: StartFront) -> None:
    async def unfinished(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        await ex.write(b"partial")

    srv = await front({"/unfinished": unfinished})
    reader, writer = await srv.connect()
    writer.write(get("/unfinished"))
    await read_head(reader)
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        await read_chunked(reader)


async def test_router_raising_gets_500(front: StartFront, caplog: pytest.LogCaptureFixture) -> None:
    srv = await front({})
    srv_router_error = RuntimeError("router bug")

    def router(method: str, path: str) -> FastHandler | None:
        raise srv_router_error

    srv.protocols.clear()
    reader, writer = await srv.connect()
    await eventually(lambda: bool(srv.protocols))
    srv.protocols[0]._router = router
    writer.write(get())
    response = await read_response(reader)
    assert (response.status, response.header("connection")) == (500, "close")
    await assert_closed(reader)
    assert "front request routing failed" in caplog.text


# Clients that go away


async def test_client_disconnect_cancels_the_handler(front: StartFront) -> None:
    started = asyncio.Event()
    events: list[str] = []

    async def waits(ex: Exchange) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            await asyncio.sleep(0.01)  # cleanup may await
            events.append("cleaned up")
            raise

    srv = await front({"/wait": waits})
    _, writer = await srv.connect()
    writer.write(get("/wait"))
    await asyncio.wait_for(started.wait(), T)
    writer.close()
    await eventually(lambda: events == ["cancelled", "cleaned up"])
    await eventually(lambda: len(srv.connections) == 0)


async def test_client_disconnect_fails_the_body(front: StartFront) -> None:
    got = asyncio.Event()
    events: list[str] = []

    async def reads(ex: Exchange) -> None:
        body = ex.body()
        await anext(body)
        got.set()
        try:
            await anext(body)
        except asyncio.CancelledError:
            events.append("cancelled")
        try:
            await anext(body)
        except ConnectionResetError:
            events.append("reset")

    srv = await front({"/upload": reads})
    _, writer = await srv.connect()
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
    await asyncio.wait_for(got.wait(), T)
    writer.close()
    await eventually(lambda: events == ["cancelled", "reset"])


async def test_client_disconnect_during_a_large_response(front: StartFront) -> None:
    ended: list[BaseException] = []

    async def flood(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        try:
            while True:
                await ex.write(b"x" * 256 * 1024)
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            ended.append(exc)
            raise

    srv = await front({"/flood": flood})
    reader, writer = await srv.connect()
    writer.write(get("/flood"))
    await asyncio.wait_for(reader.readexactly(100_000), T)
    writer.transport.abort()
    await eventually(lambda: len(ended) == 1)
    await eventually(lambda: len(srv.connections) == 0)


async def test_write_waits_for_a_slow_reader(front: StartFront) -> None:
    chunk = b"y" * 64 * 1024
    total = 1024  # 64 MiB: far beyond what the socket buffers hold
    written = 0

    async def flood(ex: Exchange) -> None:
        nonlocal written
        ex.start_response(200, "OK", [(b"Content-Length", b"%d" % (len(chunk) * total))])
        for _ in range(total):
            await ex.write(chunk)
            written += 1
        ex.finish()

    srv = await front({"/flood": flood})
    reader, writer = await srv.connect()
    writer.write(get("/flood"))
    await eventually(lambda: written > 0)
    while True:  # until the handler is stuck in write()
        before = written
        await asyncio.sleep(0.2)
        if written == before:
            break
    assert written < total
    response = await read_head(reader)
    received = 0
    while received < len(chunk) * total:
        received += len(await asyncio.wait_for(reader.read(MiB), T))
    assert written == total
    assert response.status == 200


# Malformed requests and limits


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost test\r\n\r\n", id="header-without-colon"),
        pytest.param(b"FOO / HTTP/1.1\r\nHost: test\r\n\r\n", id="unknown-method"),
        pytest.param(b"GET /\x01 HTTP/1.1\r\nHost: t\r\n\r\n", id="control-char-in-target"),
        pytest.param(b"GET / HTTP/1.1\nHost: test\n\n", id="bare-lf"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-client-hello"),
        pytest.param(
            b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", id="bad-length"
        ),
        pytest.param(
            b"POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            id="two-lengths",
        ),
        pytest.param(b"GET /hello HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET /hello HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET /hello HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", id="two-hosts-1.0"),
    ],
)
async def test_malformed_request_gets_400(front: StartFront, raw: bytes) -> None:
    srv = await front({"/hello": hello, "/": hello})
    reader, writer = await srv.connect()
    writer.write(raw)
    response = await read_response(reader)
    assert response.status == 400
    assert response.header("content-type") == "application/json; charset=utf-8"
    assert response.header("x-request-id")
    assert response.header("connection") == "close"
    assert response.body
    await assert_closed(reader)
    assert srv.routed == []


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="te-then-cl"),
        pytest.param(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="cl-then-te"),
        pytest.param(b"Transfer-Encoding: gzip\r\n", id="te-gzip"),
        pytest.param(b"Transfer-Encoding: gzip, chunked\r\n", id="te-gzip-chunked"),
        pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", id="te-chunked-gzip"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", id="te-twice"
        ),
        pytest.param(b"Transfer-Encoding: identity\r\n", id="te-identity"),
    ],
)
async def test_ambiguous_body_framing_gets_400(front: StartFront, framing: bytes) -> None:
    # Two ways to delimit the body are how requests are smuggled past a proxy (RFC 9112 §6.1).
    ran: list[str] = []

    async def record(ex: Exchange) -> None:
        ran.append(ex.target)
        await echo(ex)

    srv = await front({"/echo": record})
    reader, writer = await srv.connect()
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: t\r\n"
        + framing
        + b"\r\n0\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    response = await read_response(reader)
    assert (response.status, response.header("connection")) == (400, "close")
    await assert_closed(reader)
    assert ran == []


async def test_chunked_transfer_coding_is_case_insensitive(front: StartFront) -> None:
    srv = await front({"/echo": echo})
    response = await srv.exchange(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    )
    assert response.body == b"ok"


@pytest.mark.parametrize("trickle", [False, True], ids=["one-write", "trickled"])
async def test_oversized_head_gets_431(front: StartFront, trickle: bool) -> None:
    srv = await front({"/hello": hello}, ServerLimits(max_head_size=8192))
    reader, writer = await srv.connect()
    raw = get(extra=b"X-Big: " + b"b" * 9000 + b"\r\n")
    if trickle:
        for i in range(0, len(raw), 1000):
            writer.write(raw[i : i + 1000])
            await writer.drain()
            await asyncio.sleep(0.002)
    else:
        writer.write(raw)
    response = await read_response(reader)
    assert (response.status, response.header("connection")) == (431, "close")
    await assert_closed(reader)


async def test_head_at_the_size_limit_is_accepted(front: StartFront) -> None:
    srv = await front({"/hello": hello}, ServerLimits(max_head_size=8192))
    response = await srv.exchange(get(extra=b"X-Big: " + b"b" * 7000 + b"\r\n"))
    assert response.status == 200


async def test_long_target_gets_414(front: StartFront) -> None:
    srv = await front({"/hello": hello}, ServerLimits(max_target_length=100))
    assert (await srv.exchange(get("/hello?" + "q" * 93))).status == 200
    response = await srv.exchange(get("/hello?" + "q" * 94))
    assert (response.status, response.header("connection")) == (414, "close")


async def test_unsupported_http_version_gets_505(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    response = await srv.exchange(b"GET /hello HTTP/2.0\r\n\r\n")
    assert response.status == 505


async def test_malformed_body_of_the_exchange_in_progress_is_refused_to_its_handler(
    front: StartFront,
) -> None:
    """Its handler reads the refusal (a 400 GatewayError) from the body; one that lets it
    escape unanswered gets it as the response, in the dialect of its path, then close."""
    got = asyncio.Event()
    errors: list[BaseException] = []

    async def reads(ex: Exchange) -> None:
        body = ex.body()
        await anext(body)
        got.set()
        try:
            await anext(body)
        except Exception as exc:
            errors.append(exc)
            raise

    srv = await front({"/upload": reads})
    reader, writer = await srv.connect()
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"3\r\nabc\r\n")
    await asyncio.wait_for(got.wait(), T)
    writer.write(b"zz\r\n")  # not a chunk size
    response = await read_response(reader)
    assert (response.status, response.header("connection")) == (400, "close")
    assert json.loads(response.body) == {
        "message": "malformed request: Invalid character in chunk size"
    }
    await assert_closed(reader)
    assert [type(error).__name__ for error in errors] == ["HttpRefusal"]


async def test_malformed_body_after_the_response_started_aborts_it(front: StartFront) -> None:
    got = asyncio.Event()
    events: list[str] = []

    async def reads(ex: Exchange) -> None:
        ex.start_response(200, "OK", [])
        await ex.write(b"partial")
        body = ex.body()
        await anext(body)
        got.set()
        try:
            await anext(body)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    srv = await front({"/upload": reads})
    reader, writer = await srv.connect()
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"3\r\nabc\r\n")
    await asyncio.wait_for(got.wait(), T)
    writer.write(b"zz\r\n")  # not a chunk size
    response = await read_head(reader)
    assert (response.status, response.header("transfer-encoding")) == (200, "chunked")
    rest = await asyncio.wait_for(reader.read(), T)
    assert not rest.endswith(b"0\r\n\r\n")  # cut off, never complete
    await eventually(lambda: events == ["cancelled"])


async def test_malformed_body_of_a_queued_request_drops_it(front: StartFront) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    async def slow(ex: Exchange) -> None:
        ran.append(ex.path)
        started.set()
        await release.wait()
        ex.respond(200, "OK", [], b"slow")

    srv = await front({"/slow": slow, "/upload": slow})
    reader, writer = await srv.connect()
    writer.write(get("/slow"))
    await asyncio.wait_for(started.wait(), T)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    await eventually(lambda: bool(srv.protocols[0]._queue))
    writer.write(b"zz\r\n")
    await eventually(lambda: not srv.protocols[0]._queue)
    release.set()
    response = await read_response(reader)
    assert (response.body, response.header("connection")) == (b"slow", "close")
    await assert_closed(reader)
    assert ran == ["/slow"]


async def test_malformed_pipelined_request_closes_after_the_response(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(get() + b"GET / HTTP/1.1\r\nHost: t\r\nbad header\r\n\r\n")
    response = await read_response(reader)
    assert (response.status, response.header("connection")) == (200, "close")
    await assert_closed(reader)


async def test_lingering_close_ends_without_the_client(
    front: StartFront, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a 400 the server stops writing at once but keeps reading (and dropping) what the
    # client still sends for a while, then closes even if the client never does.
    monkeypatch.setattr("gateway.front.protocol._LINGER", 0.1)
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(b"BAD REQUEST\r\n\r\n")
    assert (await read_response(reader)).status == 400
    assert await asyncio.wait_for(reader.read(), T) == b""  # the write side is shut
    writer.write(b"more bytes the server drops")
    await eventually(lambda: len(srv.connections) == 0)


# Timeouts


async def test_head_timeout_gets_408(front: StartFront) -> None:
    srv = await front({"/hello": hello}, ServerLimits(head_timeout=0.2))
    reader, writer = await srv.connect()
    loop = asyncio.get_running_loop()
    began = loop.time()
    writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\nHo")
    response = await read_response(reader)
    assert (response.status, response.header("connection")) == (408, "close")
    assert loop.time() - began >= 0.19
    await assert_closed(reader)


async def test_head_timeout_on_a_reused_connection(front: StartFront) -> None:
    srv = await front({"/hello": hello}, ServerLimits(head_timeout=0.4, keepalive_timeout=10))
    reader, writer = await srv.connect()
    for _ in range(3):  # a trickled head that completes in time is fine
        for piece in (b"GET /hel", b"lo HTTP/1.1\r\nHost: t\r\n", b"\r\n"):
            writer.write(piece)
            await asyncio.sleep(0.05)
        assert (await read_response(reader)).body == b"hello"
    writer.write(b"GET /hello HTTP/1.1\r\nHost: t\r\n")
    assert (await read_response(reader)).status == 408


async def test_keepalive_timeout_closes_quietly(front: StartFront) -> None:
    srv = await front({"/hello": hello}, ServerLimits(keepalive_timeout=0.2))
    reader, writer = await srv.connect()
    loop = asyncio.get_running_loop()
    writer.write(get())
    assert (await read_response(reader)).body == b"hello"
    idle_from = loop.time()
    assert await asyncio.wait_for(reader.read(), T) == b""
    assert loop.time() - idle_from >= 0.19
    silent_reader, _ = await srv.connect()  # a connection that never sends a byte, too
    assert await asyncio.wait_for(silent_reader.read(), T) == b""


async def test_no_timeout_while_a_handler_runs(front: StartFront) -> None:
    async def slow(ex: Exchange) -> None:
        await asyncio.sleep(0.5)
        ex.respond(200, "OK", [], b"slow")

    srv = await front({"/slow": slow}, ServerLimits(head_timeout=0.1, keepalive_timeout=0.1))
    reader, writer = await srv.connect()
    writer.write(get("/slow"))
    assert (await read_response(reader)).body == b"slow"


# Hand-off to aiohttp


async def test_first_request_is_handed_off_and_aiohttp_keeps_the_connection(
    front: StartFront,
) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(get("/other?q=1"))
    assert (await read_response(reader)).body == b"aiohttp GET /other?q=1\n"
    assert len(srv.connections) == 0
    for _ in range(3):  # later requests stay with aiohttp, even those the router would claim
        writer.write(get("/hello"))
        response = await read_response(reader)
        assert response.body == b"aiohttp GET /hello\n"
    assert srv.routed == [("GET", "/other")]
    assert srv.fallback_hits == ["GET /other?q=1"] + ["GET /hello"] * 3


async def test_hand_off_after_fast_requests(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    for _ in range(3):
        writer.write(get())
        assert (await read_response(reader)).body == b"hello"
    writer.write(get("/other"))
    assert (await read_response(reader)).body == b"aiohttp GET /other\n"
    writer.write(get())
    assert (await read_response(reader)).body == b"aiohttp GET /hello\n"
    assert len(srv.protocols) == 1


async def test_hand_off_with_a_request_body(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    body = bytes(range(256)) * 2048  # 512 KiB: more than one read
    writer.write(post("/upload", body))
    response = await read_response(reader)
    assert response.body == b"aiohttp POST /upload\n" + body
    writer.write(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"3\r\nabc\r\n0\r\n\r\n")
    assert (await read_response(reader)).body == b"aiohttp POST /chunked\nabc"


async def test_hand_off_of_a_head_that_arrives_in_pieces(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    raw = post("/other", b"the body", b"X-Long: " + b"z" * 200 + b"\r\n")
    for i in range(0, len(raw), 7):
        writer.write(raw[i : i + 7])
        await writer.drain()
        await asyncio.sleep(0.001)
    assert (await read_response(reader)).body == b"aiohttp POST /other\nthe body"


async def test_pipelined_fast_then_fallback_in_one_read_closes_after_the_fast_one(
    front: StartFront,
) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(get() + get("/other"))
    response = await read_response(reader)
    assert (response.body, response.header("connection")) == (b"hello", "close")
    await assert_closed(reader)
    assert srv.fallback_hits == []


async def test_pipelined_fallback_in_a_later_read_is_handed_off_after_the_response(
    front: StartFront,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        started.set()
        await release.wait()
        ex.respond(200, "OK", [], b"slow")

    srv = await front({"/slow": slow}, ServerLimits(max_buffered_body=64 * 1024))
    reader, writer = await srv.connect()
    writer.write(get("/slow"))
    await asyncio.wait_for(started.wait(), T)
    body = b"q" * MiB
    writer.write(b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
    protocol = srv.protocols[0]
    await eventually(lambda: protocol._handoff is not None)
    writer.write(body)  # held for aiohttp meanwhile, and bounded like any other body
    await eventually(lambda: not protocol.transport.is_reading())
    release.set()
    response = await read_response(reader)
    assert (response.body, response.header("connection")) == (b"slow", None)
    assert (await read_response(reader)).body == b"aiohttp POST /other\n" + body


async def test_upgrade_is_handed_off_without_asking_the_router(front: StartFront) -> None:
    srv = await front({"/ws": hello})
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{srv.url}/ws") as ws:
        await ws.send_str("hi")
        assert await asyncio.wait_for(ws.receive_str(), T) == "echo hi"
    assert srv.routed == []
    assert srv.fallback_hits == ["websocket"]
    # An Upgrade field that Connection does not name is no upgrade request (RFC 9110 §7.8).
    response = await srv.exchange(get("/ws", b"Upgrade: websocket\r\n"))
    assert response.body == b"hello"
    assert srv.routed == [("GET", "/ws")]


# Shutdown


async def test_shutdown_closes_idle_connections_at_once(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    reader, writer = await srv.connect()
    writer.write(get())
    await read_response(reader)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await srv.connections.shutdown(10.0)
    assert loop.time() - began < 1.0
    await assert_closed(reader)
    assert len(srv.connections) == 0


async def test_shutdown_lets_a_busy_exchange_finish_with_connection_close(
    front: StartFront,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        started.set()
        await release.wait()
        ex.respond(200, "OK", [], b"done")

    srv = await front({"/slow": slow})
    reader, writer = await srv.connect()
    writer.write(get("/slow"))
    await asyncio.wait_for(started.wait(), T)
    shutdown = asyncio.create_task(srv.connections.shutdown(10.0))
    await asyncio.sleep(0.05)
    assert not shutdown.done()
    release.set()
    response = await read_response(reader)
    assert (response.body, response.header("connection")) == (b"done", "close")
    await assert_closed(reader)
    await asyncio.wait_for(shutdown, T)
    assert len(srv.connections) == 0


async def test_shutdown_aborts_what_is_left_after_the_timeout(front: StartFront) -> None:
    started = asyncio.Event()
    events: list[str] = []

    async def stuck(ex: Exchange) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
            events.append("cancelled")
            raise

    srv = await front({"/stuck": stuck})
    reader, writer = await srv.connect()
    writer.write(get("/stuck"))
    await asyncio.wait_for(started.wait(), T)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await srv.connections.shutdown(0.2)
    assert 0.19 <= loop.time() - began < 2.0
    assert events == ["cancelled"]  # cancelled and awaited
    assert len(srv.connections) == 0
    await assert_closed(reader)


async def test_shutdown_drops_requests_after_the_one_in_progress(front: StartFront) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    async def slow(ex: Exchange) -> None:
        ran.append(ex.target)
        started.set()
        await release.wait()
        ex.respond(200, "OK", [], b"slow")

    srv = await front({"/slow": slow})
    reader, writer = await srv.connect()
    writer.write(get("/slow?1") + get("/slow?2"))  # the second is queued
    await asyncio.wait_for(started.wait(), T)
    shutdown = asyncio.create_task(srv.connections.shutdown(10.0))
    await asyncio.sleep(0.01)
    writer.write(get("/slow?3"))  # and this one arrives during the shutdown
    await asyncio.sleep(0.05)
    release.set()
    response = await read_response(reader)
    assert (response.body, response.header("connection")) == (b"slow", "close")
    await assert_closed(reader)
    await asyncio.wait_for(shutdown, T)
    assert ran == ["/slow?1"]


async def test_connections_after_shutdown_are_closed_at_once(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    await srv.connections.shutdown(1.0)
    reader, writer = await srv.connect()
    writer.write(get())
    await assert_closed(reader)
    assert len(srv.connections) == 0


async def test_connections_are_counted(front: StartFront) -> None:
    srv = await front({"/hello": hello})
    clients = [await srv.connect() for _ in range(3)]
    await eventually(lambda: len(srv.connections) == 3)
    clients[0][1].close()
    await eventually(lambda: len(srv.connections) == 2)


# Logging stays quiet on the normal paths.


async def test_nothing_is_logged_when_all_goes_well(
    front: StartFront, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.front")
    srv = await front({"/hello": hello})
    await srv.exchange(get())
    assert caplog.records == []


# Found in review: bounds that a hostile client must not be able to lift.


async def test_pipelining_without_reading_responses_stays_bounded(front: StartFront) -> None:
    """A client that pipelines requests and never reads the answers must not make the server
    queue requests, or buffer responses, without limit: reading pauses."""
    served = 0

    async def big(ex: Exchange) -> None:
        nonlocal served
        served += 1
        ex.respond(200, "OK", [], b"r" * 256 * 1024)

    srv = await front({"/big": big})
    reader, writer = await srv.connect()
    count = 400
    writer.write(get("/big") * count)  # ~15 KB of requests, ~100 MiB of answers
    protocol = srv.protocols[0]
    await eventually(lambda: not protocol.transport.is_reading())
    await asyncio.sleep(0.2)
    # A few answers fill the socket buffers; then no other is made until the client reads.
    # (The requests of one read are all parsed: the queue is bounded by the read size.)
    assert served < 40
    assert protocol.transport.get_write_buffer_size() <= 2 * MiB
    for _ in range(count):  # and nothing was lost: every answer arrives, in order
        assert len((await read_response(reader)).body) == 256 * 1024
    assert served == count


async def test_a_fragment_in_the_target_is_not_part_of_the_request(front: StartFront) -> None:
    seen: list[tuple[str, str, str]] = []

    async def flags(ex: Exchange) -> None:
        seen.append((ex.target, ex.path, ex.query_string))
        ex.respond(200, "OK", [], b"")

    srv = await front({"/flags": flags})
    await srv.exchange(get("/flags#x"))
    await srv.exchange(get("/flags?a=1#z"))
    assert seen == [("/flags", "/flags", ""), ("/flags?a=1", "/flags", "a=1")]


async def test_a_pending_hand_off_is_dropped_when_the_connection_closes(
    front: StartFront,
) -> None:
    """An HTTP/1.0 response without a length closes the connection; the request queued for
    aiohttp behind it is never handed off, and what the client keeps sending is dropped."""
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(ex: Exchange) -> None:
        started.set()
        await release.wait()
        ex.start_response(200, "OK", [])  # no length: close-delimited for HTTP/1.0
        await ex.write(b"slow")
        ex.finish()

    srv = await front({"/slow": slow}, ServerLimits(max_buffered_body=64 * 1024))
    _, writer = await srv.connect()
    writer.write(b"GET /slow HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await asyncio.wait_for(started.wait(), T)
    writer.write(b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")
    protocol = srv.protocols[0]
    await eventually(lambda: protocol._handoff is not None)
    release.set()
    await eventually(lambda: protocol.closed)
    for _ in range(64):  # keeps sending while the server lingers
        writer.write(b"q" * 65536)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    assert protocol._handoff is None
    assert srv.fallback_hits == []


# Requests cut anywhere: whatever the reads, each request is seen whole, in order.

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
_ROUTES = ("/echo", "/echo/x", "/echo/" + "long-" * 40)


@dataclass
class _Sent:
    raw: bytes
    method: str
    target: str
    headers: list[list[str]]
    body: bytes


def _random_request(rng: random.Random) -> _Sent:
    method = rng.choice(["GET", "GET", "POST", "PUT", "DELETE"])
    target = rng.choice(_ROUTES)
    if rng.random() < 0.5:
        target += "?q=" + "".join(rng.choices(_TOKEN_CHARS, k=rng.randint(0, 30)))
    headers = [[mixed_case(f"x-t{i}", rng), field_value(rng)] for i in range(rng.randint(0, 6))]
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *(f"{n}: {v}" for n, v in headers)]
    head = "\r\n".join(lines).encode("latin-1")
    body = framed = b""
    if method in ("POST", "PUT"):
        body, framing, framed = framed_body(rng)
        head += b"\r\n" + framing
    return _Sent(head + b"\r\n\r\n" + framed, method, target, headers, body)


async def _echo_request(ex: Exchange) -> None:
    body = await ex.read_body(MiB)
    seen = {
        "method": ex.method,
        "target": ex.path + ("?" + ex.query_string if ex.query_string else ""),
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")]
            for name, value in ex.headers
            if name.lower().startswith(b"x-t")
        ],
    }
    ex.respond(200, "OK", [], json.dumps(seen).encode() + b"\n" + body)


@pytest.mark.parametrize("seed", range(6))
async def test_requests_cut_anywhere_are_each_served_whole_and_in_order(
    front: StartFront, seed: int
) -> None:
    srv = await front(dict.fromkeys(_ROUTES, _echo_request))
    rng = random.Random(seed)
    for scenario in range(30):
        sent = [_random_request(rng) for _ in range(rng.randint(1, 5))]
        reader, writer = await srv.connect()
        for piece in cut(b"".join(request.raw for request in sent), rng):
            writer.write(piece)
            await writer.drain()
            # A turn of the loop (sometimes a little more) for the server to read this piece on
            # its own.
            await asyncio.sleep(0.001 if rng.random() < 0.1 else 0)
        for request in sent:
            response = await read_response(reader)
            where = f"seed {seed}, scenario {scenario}: {request.raw[:300]!r}"
            assert response.status == 200, where
            line, _, body = response.body.partition(b"\n")
            assert json.loads(line) == {
                "method": request.method,
                "target": request.target,
                "headers": request.headers,
            }, where
            assert body == request.body, where
        writer.write(get("/echo"))  # the connection is still in step
        assert (await read_response(reader)).status == 200
        writer.close()

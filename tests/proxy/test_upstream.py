"""The upstream pool against real servers: reuse, framing, responses, failures, retries, timeouts.

aiohttp test servers stand for well-behaved upstreams; `RawServer` scripts misbehaving ones.
Streaming and memory are in test_upstream_streaming.py, TLS in test_upstream_tls.py.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httptools
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from gateway.proxy.upstream import (
    IPAddress,
    Origin,
    RequestBodyError,
    Timeouts,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTLSError,
)
from tests.proxy.conftest import StartRawServer
from tests.proxy.servers import Peer, ReceivedRequest
from tests.streams import cut, field_value, framed_body, mixed_case
from tests.waiting import wait_for

PEERS = web.AppKey("peers", set[Any])


def echo_app() -> web.Application:
    """Echo what arrived; a few routes shape the response. Records every client connection."""

    async def echo(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.app[PEERS].add(request.transport.get_extra_info("peername"))
        body = await request.read()
        shape = request.match_info["tail"]
        if shape.startswith("status/"):
            return web.Response(status=int(shape.removeprefix("status/")))
        if shape == "cookies":
            response = web.Response(text="cookies")
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        if shape == "gzip":
            return web.Response(
                body=gzip.compress(b"compressed " * 100),
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )
        if shape.startswith("big/"):
            return web.Response(body=b"x" * int(shape.removeprefix("big/")))
        if shape == "slow":
            await asyncio.sleep(0.05)
        return web.json_response(
            {
                "method": request.method,
                "target": request.raw_path,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "body": body.decode("latin-1"),
            }
        )

    app = web.Application()
    app[PEERS] = set()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def echo(aiohttp_server: AiohttpServer) -> TestServer:
    return await aiohttp_server(echo_app())


@pytest.fixture
def origin(echo: TestServer) -> Origin:
    assert echo.port is not None
    return Origin("http", "127.0.0.1", echo.port)


def client_connections(server: TestServer) -> int:
    return len(server.app[PEERS])


async def fetch(pool: UpstreamPool, origin: Origin, target: str = "/", **kwargs: Any) -> bytes:
    async with await pool.request(origin, kwargs.pop("method", "GET"), target, **kwargs) as resp:
        return await resp.read()


async def fetch_json(pool: UpstreamPool, origin: Origin, target: str = "/", **kwargs: Any) -> Any:
    return json.loads(await fetch(pool, origin, target, **kwargs))


async def chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A port whose accept queue is full: Linux drops further SYNs, so connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


class TestKeepAlive:
    async def test_sequential_requests_share_one_connection(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        for number in range(10):
            assert (await fetch_json(pool, origin, f"/n/{number}"))["target"] == f"/n/{number}"
        assert client_connections(echo) == 1
        stats = pool.stats()
        assert (stats.connections_opened, stats.connections_reused, stats.idle) == (1, 9, 1)

    @pytest.mark.parametrize("how", ["close", "reset"])
    async def test_connection_closed_by_upstream_while_idle_is_never_reused(
        self, pool: UpstreamPool, raw_server: StartRawServer, how: str
    ) -> None:
        async def one_request_then_close(peer: Peer) -> None:
            await peer.serve(max_requests=1)
            if how == "reset":
                peer.reset()

        server = await raw_server(one_request_then_close)
        assert await fetch(pool, server.origin) == b"ok"
        await server.wait_ended(1)
        # The FIN reaches the idle connection's protocol, which leaves the idle list.
        await wait_for(lambda: pool.stats().idle == 0, what="the idle connection dropped")
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 2
        assert pool.stats().requests_retried == 0

    @pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
    async def test_stale_connection_race_retries_idempotent_request_once(
        self, pool: UpstreamPool, raw_server: StartRawServer, method: str
    ) -> None:
        server = await raw_server(serve_once_then_drop_next_request)
        assert await fetch(pool, server.origin) == b"ok"
        response = await pool.request(server.origin, method, "/", body=b"x" * (method == "PUT"))
        async with response:
            assert response.status == 200
        assert pool.stats().requests_retried == 1
        assert server.connections == 2

    async def test_stale_connection_race_does_not_retry_post_whose_body_was_sent(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        server = await raw_server(serve_once_then_drop_next_request)
        assert await fetch(pool, server.origin) == b"ok"
        with pytest.raises(UpstreamResetError) as caught:
            await pool.request(server.origin, "POST", "/write", body=b"cpu value=1")
        assert caught.value.replay_safe is False
        assert caught.value.kind == "reset"
        assert pool.stats().requests_retried == 0
        assert server.connections == 1

    async def test_stale_connection_race_does_not_retry_post_without_body(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        server = await raw_server(serve_once_then_drop_next_request)
        assert await fetch(pool, server.origin) == b"ok"
        with pytest.raises(UpstreamResetError):
            await pool.request(server.origin, "POST", "/snapshot")
        assert pool.stats().requests_retried == 0

    async def test_stale_connection_race_retries_post_still_waiting_for_100_continue(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            if peer.index == 0:
                await peer.serve(max_requests=1)
                await peer.read_head()  # the body waits for 100 Continue, which never comes
                return
            request = await peer.read_head()
            assert request is not None
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await peer.respond(body=b"got " + await peer.read_body(request))

        server = await raw_server(handler)
        assert await fetch(pool, server.origin) == b"ok"
        body = await fetch(
            pool,
            server.origin,
            method="POST",
            headers=[(b"Expect", b"100-continue")],
            body=chunks(b"not ", b"consumed"),
        )
        assert body == b"got not consumed"
        assert pool.stats().requests_retried == 1

    async def test_stale_connection_race_does_not_retry_a_streamed_body_already_pulled(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        server = await raw_server(serve_once_then_drop_next_request)
        assert await fetch(pool, server.origin) == b"ok"
        with pytest.raises(UpstreamResetError) as caught:
            await pool.request(server.origin, "PUT", "/", body=chunks(b"a", b"b"))
        assert caught.value.replay_safe is False

    async def test_failure_on_a_fresh_connection_is_not_retried(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def drop(peer: Peer) -> None:
            await peer.read_head()

        server = await raw_server(drop)
        with pytest.raises(UpstreamResetError, match="before the response"):
            await pool.request(server.origin, "GET", "/")
        assert server.connections == 1
        assert pool.stats().requests_retried == 0

    @pytest.mark.parametrize(
        "response",
        [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ],
        ids=["connection-close", "http-1.0"],
    )
    async def test_response_that_refuses_keep_alive_closes_the_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer, response: bytes
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(response)
            await peer.read_request()  # until the client closes

        server = await raw_server(handler)
        assert await fetch(pool, server.origin) == b"ok"
        await server.wait_ended(1)
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 2

    async def test_http10_keep_alive_response_is_reused(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            while await peer.read_request():
                await peer.send(
                    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                )

        server = await raw_server(handler)
        for _ in range(3):
            assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 1

    async def test_bytes_arriving_on_an_idle_connection_discard_it(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.serve(max_requests=1)
            if peer.index == 0:
                await peer.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            await peer.serve()

        server = await raw_server(handler)
        assert await fetch(pool, server.origin) == b"ok"
        await server.wait_ended(1)
        assert pool.stats().idle == 0
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 2

    async def test_idle_connections_are_closed_after_the_idle_timeout(
        self, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.serve()

        server = await raw_server(handler)
        async with UpstreamPool(idle_timeout=0.1) as pool:
            assert await fetch(pool, server.origin) == b"ok"
            assert pool.stats().idle == 1
            await server.wait_ended(1)
            assert pool.stats().idle == 0
            assert await fetch(pool, server.origin) == b"ok"
            assert server.connections == 2

    async def test_idle_connections_beyond_the_limit_go_once_unused_for_the_grace(
        self, echo: TestServer, origin: Origin
    ) -> None:
        async with UpstreamPool(max_idle_per_origin=2, surplus_grace=0.2) as pool:
            await asyncio.gather(*(fetch(pool, origin, "/slow") for _ in range(5)))
            assert pool.stats().idle == 5  # not at once: the next requests may take them
            assert pool.stats().connections_opened == 5
            await wait_for(lambda: pool.stats().idle == 2, timeout=2.0)
            await fetch(pool, origin)  # on one of the two kept
            assert pool.stats().connections_opened == 5

    async def test_a_steady_load_above_the_limit_reuses_its_connections(
        self, echo: TestServer, origin: Origin
    ) -> None:
        """Closing what goes idle above the limit would make the next requests open new ones."""
        async with UpstreamPool(max_idle_per_origin=1, surplus_grace=5.0) as pool:
            for _ in range(4):
                await asyncio.gather(*(fetch(pool, origin, "/slow") for _ in range(5)))
            assert pool.stats().connections_opened == 5
            assert pool.stats().connections_reused == 15

    async def test_no_idle_connections_means_no_keep_alive(
        self, echo: TestServer, origin: Origin
    ) -> None:
        async with UpstreamPool(max_idle_per_origin=0) as pool:
            for _ in range(3):
                await fetch(pool, origin)
            assert pool.stats().idle == 0
        assert client_connections(echo) == 3

    async def test_close_closes_idle_connections_and_refuses_new_requests(
        self, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.serve()

        server = await raw_server(handler)
        pool = UpstreamPool()
        await asyncio.gather(*(fetch(pool, server.origin) for _ in range(3)))
        assert pool.stats().idle == 3
        await pool.close()
        await server.wait_ended(3)
        assert pool.stats().idle == 0
        with pytest.raises(RuntimeError, match="closed"):
            await pool.request(server.origin, "GET", "/")

    async def test_exchange_in_progress_at_close_finishes_then_closes_its_connection(
        self, echo: TestServer, origin: Origin
    ) -> None:
        pool = UpstreamPool()
        response = await pool.request(origin, "GET", "/big/1000000")
        await pool.close()
        async with response:
            assert len(await response.read()) == 1_000_000
        assert pool.stats().idle == 0
        assert pool.stats().active == 0


async def serve_once_then_drop_next_request(peer: Peer) -> None:
    """First connection: answer one request, then take the next one's head and drop it."""
    await peer.serve(max_requests=1)
    if peer.index == 0:
        await peer.read_head()
        return
    await peer.serve()


class TestRequestFraming:
    async def test_target_and_headers_go_out_verbatim(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        seen: list[ReceivedRequest] = []

        async def handler(peer: Peer) -> None:
            request = await peer.read_request()
            assert request is not None
            seen.append(request)
            await peer.respond()

        server = await raw_server(handler)
        target = "/api/v1/query?query=up%7Bjob%3D%22a%22%7D&x=%2F..%2F&x=2"
        headers = [(b"x-MiXeD", b"Value  with  spaces"), (b"X-Dup", b"1"), (b"X-Dup", b"2")]
        await fetch(pool, server.origin, target, headers=headers)
        (request,) = seen
        assert request.target == target
        assert request.headers[:3] == headers
        assert request.header_values(b"x-dup") == [b"1", b"2"]

    async def test_framing_and_connection_fields_are_the_pools(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        seen: list[ReceivedRequest] = []

        async def handler(peer: Peer) -> None:
            while request := await peer.read_request():
                seen.append(request)
                await peer.respond()

        server = await raw_server(handler)
        caller_headers = [
            (b"Content-Length", b"999"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Upgrade", b"websocket"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"X-Kept", b"yes"),
        ]
        for _ in range(2):
            await fetch(pool, server.origin, method="POST", headers=caller_headers, body=b"abc")
        names = [name.lower() for name, _ in seen[0].headers]
        assert names.count(b"content-length") == 1
        assert seen[0].header(b"content-length") == b"3"
        for dropped in (b"transfer-encoding", b"connection", b"keep-alive", b"te", b"upgrade"):
            assert dropped not in names
        assert seen[0].header(b"x-kept") == b"yes"
        assert seen[0].body == b"abc"
        assert server.connections == 1  # the caller's "Connection: close" was not obeyed

    async def test_host_comes_from_the_origin_unless_the_caller_sets_it(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        default = await fetch_json(pool, origin)
        assert ["Host", f"127.0.0.1:{origin.port}"] in default["headers"]
        custom = await fetch_json(pool, origin, headers=[(b"Host", b"prometheus.internal")])
        assert [h for h in custom["headers"] if h[0].lower() == "host"] == [
            ["Host", "prometheus.internal"]
        ]

    @pytest.mark.parametrize(
        ("method", "content_length"), [("POST", "0"), ("PUT", "0"), ("PATCH", "0"), ("GET", None)]
    )
    async def test_request_without_body_announces_zero_length_only_where_content_is_expected(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin, method: str, content_length: str
    ) -> None:
        echoed = await fetch_json(pool, origin, method=method)
        lengths = [v for k, v in echoed["headers"] if k.lower() == "content-length"]
        assert lengths == ([content_length] if content_length else [])

    async def test_async_iterable_body_without_length_is_sent_chunked(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        seen: list[ReceivedRequest] = []

        async def handler(peer: Peer) -> None:
            request = await peer.read_request()
            assert request is not None
            seen.append(request)
            await peer.respond()

        server = await raw_server(handler)
        # An empty chunk must be skipped: written as-is it would end a chunked body early.
        await fetch(pool, server.origin, method="POST", body=chunks(b"one,", b"", b"two"))
        (request,) = seen
        assert request.header(b"transfer-encoding") == b"chunked"
        assert request.header(b"content-length") is None
        assert request.body == b"one,two"

    async def test_async_iterable_body_with_known_length_is_sent_with_content_length(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        echoed = await fetch_json(
            pool, origin, method="PUT", body=chunks(b"abc", b"def"), content_length=6
        )
        assert ["Content-Length", "6"] in echoed["headers"]
        assert echoed["body"] == "abcdef"

    @pytest.mark.parametrize(
        ("parts", "declared", "message"),
        [((b"abc",), 5, "short"), ((b"abc", b"def"), 4, "longer")],
        ids=["short", "long"],
    )
    async def test_body_not_matching_its_content_length_raises_and_drops_the_connection(
        self,
        pool: UpstreamPool,
        raw_server: StartRawServer,
        parts: tuple[bytes, ...],
        declared: int,
        message: str,
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_head()
            await peer.reader.read()  # until the client drops the connection

        server = await raw_server(handler)
        with pytest.raises(RequestBodyError, match=message):
            await pool.request(
                server.origin, "POST", "/", body=chunks(*parts), content_length=declared
            )
        await server.wait_ended(1)

    async def test_error_raised_by_the_body_iterator_propagates_and_drops_the_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        class ClientWentAway(Exception):
            pass

        async def failing_body() -> AsyncIterator[bytes]:
            yield b"first"
            raise ClientWentAway

        async def handler(peer: Peer) -> None:
            await peer.read_head()
            await peer.reader.read()

        server = await raw_server(handler)
        with pytest.raises(ClientWentAway):
            await pool.request(server.origin, "POST", "/", body=failing_body())
        await server.wait_ended(1)

    @pytest.mark.parametrize(
        "headers",
        [
            [(b"X-Evil", b"a\r\nX-Injected: 1")],
            [(b"X-Evil", b"a\nb")],
            [(b"X-Evil\r\nX-Injected", b"1")],
            [(b"X-Nul", b"a\0b")],
        ],
    )
    async def test_header_injection_is_refused_before_anything_is_sent(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin, headers: list[Any]
    ) -> None:
        with pytest.raises(ValueError, match="CR, LF or NUL"):
            await pool.request(origin, "GET", "/", headers)
        assert client_connections(echo) == 0
        assert pool.stats().connections_opened == 0

    @pytest.mark.parametrize("target", ["http://example.com/", "/a b", "/\r\nX: 1", "/é"])
    async def test_target_that_is_not_an_encoded_path_is_refused(
        self, pool: UpstreamPool, origin: Origin, target: str
    ) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - several messages, one contract
            await pool.request(origin, "GET", target)


class TestExpectContinue:
    async def test_body_waits_for_100_continue_which_is_not_shown_to_the_caller(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        early_bytes = []

        async def handler(peer: Peer) -> None:
            request = await peer.read_head()
            assert request is not None
            assert request.header(b"expect") == b"100-continue"
            try:
                async with asyncio.timeout(0.15):
                    early_bytes.append(await peer.reader.read(1))
            except TimeoutError:
                pass
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await peer.read_body(request)
            await peer.respond(201, body=b"stored " + body, reason="Created")
            await peer.serve()

        server = await raw_server(handler)
        response = await pool.request(
            server.origin,
            "POST",
            "/",
            [(b"expect", b"100-Continue")],
            chunks(b"big ", b"upload"),
            timeouts=Timeouts(expect_continue=5.0),
        )
        async with response:
            assert (response.status, response.reason) == (201, "Created")
            assert await response.read() == b"stored big upload"
        assert early_bytes == []
        assert pool.stats().idle == 1

    async def test_final_status_before_100_continue_means_the_body_is_never_sent(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        pulled = []
        received_after_head = []

        async def body() -> AsyncIterator[bytes]:
            pulled.append(True)
            yield b"too large"

        async def handler(peer: Peer) -> None:
            request = await peer.read_head()
            if peer.index == 0:
                await peer.respond(413, body=b"too large", reason="Payload Too Large")
                received_after_head.append(await peer.reader.read())  # until the client closes
            else:
                assert request is not None
                await peer.respond(body=b"ok")
                await peer.serve()

        server = await raw_server(handler)
        response = await pool.request(
            server.origin, "POST", "/", [(b"Expect", b"100-continue")], body(), content_length=9
        )
        async with response:
            assert response.status == 413
            assert await response.read() == b"too large"
        await server.wait_ended(1)
        assert pulled == []
        assert received_after_head == [b""]
        assert await fetch(pool, server.origin) == b"ok"  # on a new connection
        assert server.connections == 2

    async def test_body_goes_out_after_the_wait_when_the_upstream_ignores_expect(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            request = await peer.read_request()  # never sends 100 Continue
            assert request is not None
            await peer.respond(body=request.body)

        server = await raw_server(handler)
        started = time.monotonic()
        body = await fetch(
            pool,
            server.origin,
            method="PUT",
            headers=[(b"Expect", b"100-continue")],
            body=b"payload",
            timeouts=Timeouts(expect_continue=0.1),
        )
        assert body == b"payload"
        assert 0.09 <= time.monotonic() - started < 1.0  # libuv timers: millisecond ticks

    async def test_aiohttp_upstream_answers_the_expectation(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        echoed = await fetch_json(
            pool,
            origin,
            method="POST",
            headers=[(b"Expect", b"100-continue")],
            body=chunks(b"a" * 1000, b"b"),
            timeouts=Timeouts(expect_continue=5.0),
        )
        assert echoed["body"] == "a" * 1000 + "b"

    async def test_expectation_is_dropped_when_there_is_no_body(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        echoed = await fetch_json(pool, origin, headers=[(b"Expect", b"100-continue")])
        assert not [h for h in echoed["headers"] if h[0].lower() == "expect"]


class TestResponses:
    async def test_header_order_case_and_duplicates_are_kept(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        async with await pool.request(origin, "GET", "/cookies") as response:
            assert response.status == 200
            cookies = [v for k, v in response.headers if k == b"Set-Cookie"]
            assert cookies == [b"a=1", b"b=2"]

    async def test_head_response_has_no_body_and_the_connection_is_reused(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        async with await pool.request(origin, "HEAD", "/big/1234") as response:
            assert (b"Content-Length", b"1234") in response.headers
            assert await response.read() == b""
        assert len(await fetch(pool, origin, "/big/10")) == 10
        assert client_connections(echo) == 1

    @pytest.mark.parametrize("status", [204, 304])
    async def test_no_content_and_not_modified_have_no_body_and_keep_the_connection(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin, status: int
    ) -> None:
        async with await pool.request(origin, "GET", f"/status/{status}") as response:
            assert response.status == status
            assert await response.read() == b""
        assert len(await fetch(pool, origin, "/big/10")) == 10
        assert client_connections(echo) == 1

    async def test_head_response_without_length_keeps_the_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            await peer.serve()

        server = await raw_server(handler)
        async with await pool.request(server.origin, "HEAD", "/") as response:
            assert await response.read() == b""
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 1

    async def test_body_bytes_after_a_head_response_drop_the_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            if peer.index == 0:
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            else:
                await peer.respond(body=b"ok")
            await peer.serve()

        server = await raw_server(handler)
        async with await pool.request(server.origin, "HEAD", "/") as response:
            assert await response.read() == b""
        await server.wait_ended(1)
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 2

    async def test_interim_responses_are_dropped(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n")
            await peer.send(b"HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok")
            await peer.serve()

        server = await raw_server(handler)
        async with await pool.request(server.origin, "GET", "/") as response:
            assert response.status == 200
            assert response.headers == [(b"X-Final", b"1"), (b"Content-Length", b"2")]
            assert await response.read() == b"ok"
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 1

    async def test_head_split_across_reads_is_reassembled(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def dribbles(peer: Peer) -> None:
            await peer.read_request()
            for piece in (b"HTTP/1.1 200 Every", b"thing Is Fine\r\nX-Lo", b"ng: val", b"ue\r\n"):
                await peer.send(piece)
                await asyncio.sleep(0.01)
            await peer.send(b"Content-Length: 2\r\n\r\nok")
            await peer.serve()

        server = await raw_server(dribbles)
        async with await pool.request(server.origin, "GET", "/") as response:
            assert response.reason == "Everything Is Fine"
            assert response.headers[0] == (b"X-Long", b"value")
            assert await response.read() == b"ok"

    async def test_chunked_response_is_unframed_and_its_trailers_dropped(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await peer.send(b"5;name=value\r\nhello\r\n")
            await asyncio.sleep(0.01)
            await peer.send(b"6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n")
            await peer.serve()

        server = await raw_server(handler)
        async with await pool.request(server.origin, "GET", "/") as response:
            assert await response.read() == b"hello world"
            assert response.headers == [(b"Transfer-Encoding", b"chunked")]
        assert await fetch(pool, server.origin) == b"ok"
        assert server.connections == 1

    async def test_body_delimited_by_close_is_read_to_the_end(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            for _ in range(3):
                await peer.send(b"part,")
                await asyncio.sleep(0.01)

        server = await raw_server(handler)
        async with await pool.request(server.origin, "GET", "/") as response:
            assert await response.read() == b"part,part,part,"
        assert pool.stats().idle == 0

    async def test_compressed_body_passes_through_untouched(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        headers = [(b"Accept-Encoding", b"gzip")]
        async with await pool.request(origin, "GET", "/gzip", headers) as response:
            assert (b"Content-Encoding", b"gzip") in response.headers
            assert await response.read() == gzip.compress(b"compressed " * 100)

    @pytest.mark.parametrize(
        ("reply", "message"),
        [
            (b"HELLO WORLD\r\n\r\n", "invalid HTTP response"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "invalid"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                "invalid",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", "switched protocols"),
        ],
        ids=["garbage", "two-lengths", "length-and-chunked", "upgrade"],
    )
    async def test_unusable_response_is_a_protocol_error(
        self, pool: UpstreamPool, raw_server: StartRawServer, reply: bytes, message: str
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(reply)
            await peer.reader.read()

        server = await raw_server(handler)
        with pytest.raises(UpstreamProtocolError, match=message) as caught:
            await pool.request(server.origin, "GET", "/")
        assert caught.value.kind == "protocol"
        await server.wait_ended(1)


class TestFailures:
    async def test_protocol_error_keeps_the_parser_error_as_its_cause(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 2OO OK\r\n\r\n")

        server = await raw_server(handler)
        with pytest.raises(UpstreamProtocolError) as caught:
            await pool.request(server.origin, "GET", "/")
        assert isinstance(caught.value.__cause__, httptools.HttpParserError)

    async def test_connection_refused(self, pool: UpstreamPool) -> None:
        origin = Origin("http", "127.0.0.1", refused_port())
        with pytest.raises(UpstreamConnectError, match="cannot connect") as caught:
            await pool.request(origin, "GET", "/")
        assert caught.value.kind == "connect"
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)

    async def test_connect_timeout(self, pool: UpstreamPool, blackhole_port: int) -> None:
        origin = Origin("http", "127.0.0.1", blackhole_port)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as caught:
            await pool.request(origin, "GET", "/", timeouts=Timeouts(connect=0.2))
        assert caught.value.phase == "connect"
        assert caught.value.kind == "timeout"
        assert 0.19 <= time.monotonic() - started < 1.5  # libuv timers: millisecond ticks

    async def test_connect_timeout_covers_the_tls_handshake(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def never_speaks_tls(peer: Peer) -> None:
            await peer.reader.read()

        server = await raw_server(never_speaks_tls)
        origin = Origin("https", "127.0.0.1", server.port, tls_skip_verify=True)
        with pytest.raises(UpstreamTimeout) as caught:
            await pool.request(origin, "GET", "/", timeouts=Timeouts(connect=0.2))
        assert caught.value.phase == "connect"

    async def test_ipv6_loopback_origin(self, pool: UpstreamPool) -> None:
        hosts: list[bytes] = []

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            hosts.extend(line for line in head.split(b"\r\n") if line.startswith(b"Host:"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        try:
            server = await asyncio.start_server(answer, "::1", 0)
        except OSError:
            pytest.skip("no IPv6 loopback here")
        async with server:
            port = server.sockets[0].getsockname()[1]
            assert await fetch(pool, Origin.from_url(f"http://[::1]:{port}/")) == b"ok"
        assert hosts == [f"Host: [::1]:{port}".encode()]

    async def test_upstream_closing_after_the_head_fails_the_body(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

        server = await raw_server(handler)
        async with await pool.request(server.origin, "GET", "/") as response:
            assert await response.__anext__() == b"0123456789"
            with pytest.raises(UpstreamResetError, match="middle of the response body"):
                await response.__anext__()

    async def test_upstream_reset_mid_chunked_body_fails_the_body(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await asyncio.sleep(0.05)
            peer.reset()

        server = await raw_server(handler)
        async with await pool.request(server.origin, "GET", "/") as response:
            with pytest.raises(UpstreamResetError):
                await response.read()

    async def test_headers_timeout(self, pool: UpstreamPool, raw_server: StartRawServer) -> None:
        async def never_answers(peer: Peer) -> None:
            await peer.read_request()
            await peer.reader.read()

        server = await raw_server(never_answers)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="no response headers") as caught:
            await pool.request(server.origin, "GET", "/", timeouts=Timeouts(headers=0.2))
        assert caught.value.phase == "headers"
        assert 0.19 <= time.monotonic() - started < 1.0  # libuv timers: millisecond ticks
        await server.wait_ended(1)

    async def test_shorter_headers_timeout_on_a_reused_connection_is_honoured(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def answers_once(peer: Peer) -> None:
            await peer.serve(max_requests=1)
            await peer.read_request()
            await peer.reader.read()

        server = await raw_server(answers_once)
        assert await fetch(pool, server.origin, timeouts=Timeouts(headers=30)) == b"ok"
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request(server.origin, "GET", "/", timeouts=Timeouts(headers=0.2))
        assert time.monotonic() - started < 1.0
        assert server.connections == 1

    async def test_headers_timeout_starts_once_the_request_is_fully_sent(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def handler(peer: Peer) -> None:
            request = await peer.read_request()
            assert request is not None
            await peer.respond(body=request.body)

        server = await raw_server(handler)
        slow_upload = chunks(b"a", b"b", b"c", b"d", pause=0.1)
        body = await fetch(
            pool, server.origin, method="POST", body=slow_upload, timeouts=Timeouts(headers=0.2)
        )
        assert body == b"abcd"

    async def test_body_idle_timeout(self, pool: UpstreamPool, raw_server: StartRawServer) -> None:
        async def stalls(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            await peer.reader.read()

        server = await raw_server(stalls)
        response = await pool.request(server.origin, "GET", "/", timeouts=Timeouts(body=0.2))
        async with response:
            assert await response.__anext__() == b"0123456789"
            with pytest.raises(UpstreamTimeout, match="sent nothing") as caught:
                await response.__anext__()
        assert caught.value.phase == "body"
        await server.wait_ended(1)

    async def test_consumer_slower_than_the_body_timeout_is_not_a_timeout(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        received = 0
        response = await pool.request(origin, "GET", "/big/2000000", timeouts=Timeouts(body=0.05))
        async with response:
            async for chunk in response:
                received += len(chunk)
                if received < 600_000:
                    await asyncio.sleep(0.1)  # the upstream waits on us, not the other way round
        assert received == 2_000_000

    async def test_upstream_not_reading_the_request_body_times_out(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def never_reads_the_body(peer: Peer) -> None:
            await peer.read_head()
            await asyncio.sleep(10)

        async def endless() -> AsyncIterator[bytes]:
            block = b"x" * 65536
            while True:
                yield block

        server = await raw_server(never_reads_the_body)
        with pytest.raises(UpstreamTimeout, match="took no request body") as caught:
            await pool.request(
                server.origin, "PUT", "/", body=endless(), timeouts=Timeouts(body=0.2)
            )
        assert caught.value.phase == "body"

    def test_error_kinds_are_the_metric_labels(self) -> None:
        assert UpstreamError.kind == "error"
        kinds = {
            error.kind
            for error in (
                UpstreamConnectError,
                UpstreamTLSError,
                UpstreamTimeout,
                UpstreamResetError,
                UpstreamProtocolError,
            )
        }
        assert kinds == {"connect", "tls", "timeout", "reset", "protocol"}


class TestConsumer:
    async def test_consumer_stopping_early_closes_the_connection_instead_of_pooling_it(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        async with await pool.request(origin, "GET", "/big/5000000") as response:
            await response.__anext__()
            assert pool.stats().active == 1
        assert pool.stats() == pool.stats().__class__(0, 0, 1, 0, 0)
        assert len(await fetch(pool, origin, "/big/10")) == 10
        assert client_connections(echo) == 2

    async def test_body_fully_received_returns_the_connection_even_if_never_read(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        response = await pool.request(origin, "GET", "/big/100")
        for _ in range(10):
            if response.complete:
                break
            await asyncio.sleep(0.01)
        response.close()
        assert pool.stats().idle == 1
        assert len(await fetch(pool, origin, "/big/10")) == 10
        assert client_connections(echo) == 1

    async def test_reading_after_close_is_an_error(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        response = await pool.request(origin, "GET", "/big/5000000")
        response.close()
        with pytest.raises(RuntimeError, match="closed before its end"):
            await response.read()

    async def test_cancelled_request_drops_its_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def never_answers(peer: Peer) -> None:
            await peer.read_request()
            await peer.reader.read()

        server = await raw_server(never_answers)
        task = asyncio.create_task(pool.request(server.origin, "GET", "/"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().active == 0
        await server.wait_ended(1)

    async def test_request_cancelled_during_its_upload_closes_the_body_and_the_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        body_closed = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 1024
                    await asyncio.sleep(0.01)
            finally:
                body_closed.set()

        async def reads_everything(peer: Peer) -> None:
            await peer.read_head()
            await peer.reader.read()

        server = await raw_server(reads_everything)
        task = asyncio.create_task(pool.request(server.origin, "POST", "/", body=slow_body()))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(1):
            await body_closed.wait()
        assert pool.stats().active == 0
        await server.wait_ended(1)

    async def test_consumer_cancelled_mid_body_drops_the_connection(
        self, pool: UpstreamPool, raw_server: StartRawServer
    ) -> None:
        async def trickles(peer: Peer) -> None:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while True:
                await peer.send(b"x")
                await asyncio.sleep(0.02)

        server = await raw_server(trickles)
        response = await pool.request(server.origin, "GET", "/")

        async def consume() -> None:
            async with response:
                async for _ in response:
                    pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().active == 0
        await server.wait_ended(1)


class TestConcurrency:
    async def test_many_parallel_requests_through_one_pool(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        async def one(number: int) -> None:
            echoed = await fetch_json(
                pool, origin, f"/r/{number}", body=str(number).encode(), method="POST"
            )
            assert (echoed["target"], echoed["body"]) == (f"/r/{number}", str(number))

        await asyncio.gather(*(one(number) for number in range(200)))
        stats = pool.stats()
        assert stats.active == 0
        # All parked; those beyond the limit go once unused for surplus_grace (1 s).
        assert pool.max_idle_per_origin <= stats.idle <= stats.connections_opened
        await asyncio.gather(*(one(number) for number in range(50)))
        assert pool.stats().connections_reused >= 50

    async def test_responses_read_concurrently_do_not_mix(
        self, pool: UpstreamPool, echo: TestServer, origin: Origin
    ) -> None:
        responses: list[UpstreamResponse] = list(
            await asyncio.gather(
                *(pool.request(origin, "GET", f"/big/{n * 100_000}") for n in range(1, 9))
            )
        )
        bodies = await asyncio.gather(*(response.read() for response in responses))
        for response in responses:
            response.close()
        assert [len(body) for body in bodies] == [n * 100_000 for n in range(1, 9)]


class TestAddressFilter:
    async def test_connects_only_to_the_addresses_the_filter_returns(
        self, raw_server: StartRawServer
    ) -> None:
        server = await raw_server(serve_forever)
        calls: list[tuple[str, int, list[IPAddress]]] = []

        def ipv4_only(host: str, port: int, addresses: Sequence[IPAddress]) -> list[IPAddress]:
            calls.append((host, port, list(addresses)))
            return [address for address in addresses if address.version == 4]

        async with UpstreamPool(address_filter=ipv4_only) as pool:
            origin = Origin("http", "localhost", server.port)
            assert await fetch(pool, origin) == b"ok"
            assert await fetch(pool, origin) == b"ok"
        assert len(calls) == 1  # checked per new connection, not per request
        host, port, addresses = calls[0]
        assert (host, port) == ("localhost", server.port)
        assert ipaddress.ip_address("127.0.0.1") in addresses

    async def test_refusal_propagates_unchanged_and_nothing_connects(
        self, raw_server: StartRawServer
    ) -> None:
        class TargetRefused(Exception):
            pass

        def refuse(host: str, port: int, addresses: Sequence[IPAddress]) -> list[IPAddress]:
            raise TargetRefused(f"{addresses[0]} is in a denied network")

        server = await raw_server(serve_forever)
        async with UpstreamPool(address_filter=refuse) as pool:
            with pytest.raises(TargetRefused, match="denied network"):
                await pool.request(Origin("http", "127.0.0.1", server.port), "GET", "/")
            assert pool.stats().active == 0
        assert server.connections == 0

    async def test_next_permitted_address_is_tried_when_one_fails(
        self, raw_server: StartRawServer
    ) -> None:
        server = await raw_server(serve_forever)

        def unreachable_first(
            host: str, port: int, addresses: Sequence[IPAddress]
        ) -> list[IPAddress]:
            # 127.0.0.2 is loopback too, but nothing listens there on this port.
            return [ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("127.0.0.1")]

        async with UpstreamPool(address_filter=unreachable_first) as pool:
            assert await fetch(pool, Origin("http", "localhost", server.port)) == b"ok"

    async def test_no_permitted_address_is_a_connect_error(
        self, raw_server: StartRawServer
    ) -> None:
        server = await raw_server(serve_forever)
        async with UpstreamPool(address_filter=lambda host, port, addresses: []) as pool:
            with pytest.raises(UpstreamConnectError, match="no address"):
                await pool.request(Origin("http", "127.0.0.1", server.port), "GET", "/")


async def serve_forever(peer: Peer) -> None:
    await peer.serve()


# Responses cut anywhere: whatever the reads, each response is seen whole, and the connection
# stays in step for the next one.


def _random_response(
    rng: random.Random,
) -> tuple[bytes, int, str, list[tuple[bytes, bytes]], bytes]:
    """(raw response, status, reason, its X-R headers, body)."""
    status = rng.choice([200, 200, 201, 404, 500, 204, 304])
    reason = rng.choice(["OK", "Not Found", "", "Some Reason With Spaces"])
    headers = [
        (mixed_case(f"x-r{rng.randint(0, i)}", rng).encode(), field_value(rng).encode("latin-1"))
        for i in range(rng.randint(0, 6))
    ]
    lines = [f"HTTP/1.1 {status} {reason}".encode("latin-1")]
    lines += [name + b": " + value for name, value in headers]
    body = framed = b""
    if status not in (204, 304):
        # Trailers are not headers: the pool drops them.
        trailer = b"X-R-Trailer: t\r\n" if rng.random() < 0.3 else b""
        body, framing, framed = framed_body(rng, trailer=trailer)
        lines.append(framing)
    return b"\r\n".join(lines) + b"\r\n\r\n" + framed, status, reason, headers, body


@pytest.mark.parametrize("seed", range(6))
async def test_responses_cut_anywhere_are_read_whole_on_one_connection(
    pool: UpstreamPool, raw_server: StartRawServer, seed: int
) -> None:
    rng = random.Random(seed)
    responses = [_random_response(rng) for _ in range(40)]

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            raw = responses[int(request.target.lstrip("/"))][0]
            for piece in cut(raw, rng):
                await peer.send(piece)
                await asyncio.sleep(0.001 if rng.random() < 0.1 else 0)

    server = await raw_server(handler)
    for index, (_raw, status, reason, headers, body) in enumerate(responses):
        where = f"seed {seed}, response {index}: {_raw[:300]!r}"
        async with await pool.request(server.origin, "GET", f"/{index}") as response:
            assert (response.status, response.reason) == (status, reason), where
            assert [
                (name, value) for name, value in response.headers if name.lower().startswith(b"x-r")
            ] == headers, where
            assert await response.read() == body, where
    assert server.connections == 1

"""TLS upstreams: verification on by default, a CA file or context, verification off, SNI."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from gateway.proxy.upstream import Origin, UpstreamPool, UpstreamTLSError
from tests.proxy.servers import Peer, RawServer, ThrowawayCA, make_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_upstream(aiohttp_server: AiohttpServer, ca: ThrowawayCA) -> TestServer:
    peers: set[object] = set()

    async def hello(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.Response(text=f"hello over TLS, connection {len(peers)}")

    app = web.Application()
    app.router.add_get("/", hello)
    return await aiohttp_server(app, ssl=ca.server_context())


def origin_of(
    server: TestServer,
    host: str = "127.0.0.1",
    *,
    tls_skip_verify: bool = False,
    tls_ca_file: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Origin:
    assert server.port is not None
    return Origin(
        "https",
        host,
        server.port,
        tls_skip_verify=tls_skip_verify,
        tls_ca_file=tls_ca_file,
        ssl_context=ssl_context,
    )


async def get_text(pool: UpstreamPool, origin: Origin) -> str:
    async with await pool.request(origin, "GET", "/") as response:
        assert response.status == 200
        return (await response.read()).decode()


async def test_unknown_ca_is_refused_with_verification_on_by_default(
    pool: UpstreamPool, tls_upstream: TestServer
) -> None:
    with pytest.raises(UpstreamTLSError) as caught:
        await pool.request(origin_of(tls_upstream), "GET", "/")
    assert caught.value.kind == "tls"
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


async def test_ca_file_makes_the_certificate_trusted_and_connections_are_kept_alive(
    pool: UpstreamPool, tls_upstream: TestServer, ca: ThrowawayCA
) -> None:
    origin = origin_of(tls_upstream, tls_ca_file=str(ca.ca_file))
    for _ in range(3):
        assert await get_text(pool, origin) == "hello over TLS, connection 1"
    assert pool.stats().connections_opened == 1


async def test_name_is_verified_as_well_as_the_issuer(
    pool: UpstreamPool, tls_upstream: TestServer, ca: ThrowawayCA, tmp_path: Path
) -> None:
    assert await get_text(pool, origin_of(tls_upstream, "localhost", tls_ca_file=str(ca.ca_file)))
    other = make_ca(tmp_path, ("other.test",), with_loopback_ip=False)
    server = await RawServer(serve_ok).start(other.server_context())
    try:
        origin = Origin("https", "127.0.0.1", server.port, tls_ca_file=str(other.ca_file))
        with pytest.raises(UpstreamTLSError, match="IP address mismatch"):
            await pool.request(origin, "GET", "/")
    finally:
        await server.close()


async def test_caller_given_ssl_context_is_used(
    pool: UpstreamPool, tls_upstream: TestServer, ca: ThrowawayCA
) -> None:
    context = ssl.create_default_context(cafile=ca.ca_file)
    assert await get_text(pool, origin_of(tls_upstream, ssl_context=context))


async def test_skip_verify_accepts_an_unknown_certificate(
    pool: UpstreamPool, tls_upstream: TestServer
) -> None:
    assert await get_text(pool, origin_of(tls_upstream, "localhost", tls_skip_verify=True))


async def serve_ok(peer: Peer) -> None:
    await peer.serve()


@pytest.mark.parametrize(
    ("host", "expected_sni"), [("localhost", "localhost"), ("127.0.0.1", None)]
)
@pytest.mark.parametrize("skip_verify", [False, True])
async def test_sni_names_the_host_unless_it_is_an_address(
    pool: UpstreamPool, ca: ThrowawayCA, host: str, expected_sni: str | None, skip_verify: bool
) -> None:
    server_names: list[str | None] = []
    context = ca.server_context()
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    server = await RawServer(serve_ok).start(context)
    try:
        if skip_verify:
            origin = Origin("https", host, server.port, tls_skip_verify=True)
        else:
            origin = Origin("https", host, server.port, tls_ca_file=str(ca.ca_file))
        async with await pool.request(origin, "GET", "/") as response:
            assert await response.read() == b"ok"
    finally:
        await server.close()
    assert server_names == [expected_sni]


async def test_body_delimited_by_close_over_tls_is_complete(
    pool: UpstreamPool, ca: ThrowawayCA
) -> None:
    async def until_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 100_000)

    server = await RawServer(until_close).start(ca.server_context())
    try:
        origin = Origin("https", "127.0.0.1", server.port, tls_ca_file=str(ca.ca_file))
        async with await pool.request(origin, "GET", "/") as response:
            assert await response.read() == b"z" * 100_000
    finally:
        await server.close()


async def test_tls_to_a_plain_http_port_is_a_tls_error(
    pool: UpstreamPool, aiohttp_server: AiohttpServer
) -> None:
    server = await aiohttp_server(web.Application())  # answers the ClientHello with a 400
    assert server.port is not None
    origin = Origin("https", "127.0.0.1", server.port, tls_skip_verify=True)
    with pytest.raises(UpstreamTLSError):
        await pool.request(origin, "GET", "/")


async def test_unreadable_ca_file_is_a_tls_error(pool: UpstreamPool, tmp_path: Path) -> None:
    origin = Origin("https", "127.0.0.1", 443, tls_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(UpstreamTLSError, match="CA file"):
        await pool.request(origin, "GET", "/")

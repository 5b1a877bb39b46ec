"""Fixtures for the upstream pool's tests: a pool that must end with nothing in use, raw servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.proxy.upstream import Timeouts, UpstreamPool
from tests.proxy.servers import Handler, RawServer

StartRawServer = Callable[[Handler], Awaitable[RawServer]]


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    """A pool with short timeouts; every test must leave no connection in use (no leak)."""
    async with UpstreamPool(timeouts=Timeouts(connect=2.0, headers=5.0, body=5.0)) as pool:
        yield pool
        assert pool.stats().active == 0, "a test left an exchange open"


@pytest.fixture
async def raw_server() -> AsyncIterator[StartRawServer]:
    """`await raw_server(handler)` starts a scripted upstream on a free loopback port."""
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = await RawServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()

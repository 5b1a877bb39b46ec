"""Large bodies through the pool, both ways: flat memory, and back-pressure reaching the far end.

Memory is the process's peak RSS (VmHWM), reset just before the transfer through
/proc/self/clear_refs, so that what earlier tests in this worker allocated does not hide growth.
Where the reset is not allowed, RSS is sampled during the transfer instead.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.proxy.http1 import READ_HIGH_WATER
from gateway.proxy.upstream import UpstreamPool
from tests.proxy.conftest import StartRawServer
from tests.proxy.servers import Peer

MiB = 1024 * 1024
TOTAL = 200 * MiB
# Distinct blocks, so that a lost, repeated or reordered block changes the digest.
BLOCKS = [bytes([n]) * 65536 for n in range(7)]
# Generous against the pool's own bound (512 KiB per connection) yet far below the 200 MiB that
# a buffering client would need.
MAX_RSS_GROWTH = 32 * MiB
# The most a stalled reader lets the other side run ahead: socket buffers on both ends (Linux
# autotunes a loopback receive buffer up to tcp_rmem's 32 MiB here) plus the pool's buffer.
MAX_RUN_AHEAD = 40 * MiB


def blocks(total: int) -> AsyncIterator[bytes]:
    async def generate() -> AsyncIterator[bytes]:
        for index in range(total // 65536):
            yield BLOCKS[index % len(BLOCKS)]

    return generate()


def expected_digest(total: int) -> str:
    digest = hashlib.sha256()
    for index in range(total // 65536):
        digest.update(BLOCKS[index % len(BLOCKS)])
    return digest.hexdigest()


class PeakRss:
    """The process's peak resident set over a block of code, in bytes."""

    def __init__(self) -> None:
        self.can_reset = self._reset()
        self.baseline = self._read("VmRSS")
        self.sampled = self.baseline

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux ≥ 4.0)
        except OSError:
            return False
        return True

    @staticmethod
    def _read(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{field} not in /proc/self/status")

    def sample(self) -> None:
        self.sampled = max(self.sampled, self._read("VmRSS"))

    @property
    def growth(self) -> int:
        peak = self._read("VmHWM") if self.can_reset else self.sampled
        return peak - self.baseline


async def test_200_mib_download_streams_with_flat_memory(
    pool: UpstreamPool, raw_server: StartRawServer
) -> None:
    async def sends_200_mib(peer: Peer) -> None:
        await peer.read_request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % TOTAL)
        async for block in blocks(TOTAL):
            peer.writer.write(block)
            await peer.writer.drain()
        await peer.serve()

    server = await raw_server(sends_200_mib)
    rss = PeakRss()
    digest = hashlib.sha256()
    received = 0
    async with await pool.request(server.origin, "GET", "/big") as response:
        async for chunk in response:
            digest.update(chunk)
            received += len(chunk)
            if received % (512 * 1024) < len(chunk):
                # Slower than the upstream on average: without back-pressure the backlog would
                # grow towards the whole body.
                rss.sample()
                await asyncio.sleep(0.001)
    assert received == TOTAL
    assert digest.hexdigest() == expected_digest(TOTAL)
    assert rss.growth < MAX_RSS_GROWTH, f"peak RSS grew {rss.growth / MiB:.1f} MiB"
    assert pool.stats().idle == 1  # read to the end: the connection is reusable


async def test_200_mib_chunked_upload_streams_with_flat_memory(
    pool: UpstreamPool, raw_server: StartRawServer
) -> None:
    async def hashes_chunked_body(peer: Peer) -> None:
        await peer.read_head()
        digest = hashlib.sha256()
        size = 0
        while True:
            chunk_size = int((await peer.reader.readuntil(b"\r\n"))[:-2], 16)
            if chunk_size == 0:
                await peer.reader.readexactly(2)
                break
            remaining = chunk_size
            while remaining:
                data = await peer.reader.read(min(remaining, 262144))
                digest.update(data)
                remaining -= len(data)
            size += chunk_size
            await peer.reader.readexactly(2)
        await peer.respond(body=f"{size} {digest.hexdigest()}".encode())

    server = await raw_server(hashes_chunked_body)
    rss = PeakRss()
    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        async for block in blocks(TOTAL):
            produced += len(block)
            if produced % (4 * MiB) == 0:
                rss.sample()
            yield block

    async with await pool.request(server.origin, "POST", "/write", body=body()) as response:
        assert await response.read() == f"{TOTAL} {expected_digest(TOTAL)}".encode()
    assert rss.growth < MAX_RSS_GROWTH, f"peak RSS grew {rss.growth / MiB:.1f} MiB"


async def test_lagging_consumer_holds_the_upstream_back(
    pool: UpstreamPool, raw_server: StartRawServer
) -> None:
    total = 256 * MiB
    sent = 0

    async def sends_as_fast_as_allowed(peer: Peer) -> None:
        nonlocal sent
        await peer.read_request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        async for block in blocks(total):
            peer.writer.write(block)
            await peer.writer.drain()
            sent += len(block)

    server = await raw_server(sends_as_fast_as_allowed)
    rss = PeakRss()
    async with await pool.request(server.origin, "GET", "/") as response:
        received = len(await response.__anext__())
        await asyncio.sleep(0.3)  # a client that stopped reading
        assert sent - received < MAX_RUN_AHEAD
        for _ in range(100):
            received += len(await response.__anext__())
        await asyncio.sleep(0.1)
        assert sent - received < MAX_RUN_AHEAD
    # Closed before the end: the connection is dropped, the upstream's writes fail.
    await server.wait_ended(1)
    assert rss.growth < MAX_RSS_GROWTH
    assert pool.stats().idle == 0


async def test_upstream_reading_slowly_holds_the_body_iterator_back(
    pool: UpstreamPool, raw_server: StartRawServer
) -> None:
    total = 256 * MiB
    produced = 0
    produced_during_stall = 0

    async def reads_late(peer: Peer) -> None:
        nonlocal produced_during_stall
        request = await peer.read_head()
        assert request is not None
        await asyncio.sleep(0.3)
        produced_during_stall = produced
        remaining = total
        while remaining:
            remaining -= len(await peer.reader.read(min(remaining, 262144)))
        await peer.respond(body=b"done")

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        async for block in blocks(total):
            produced += len(block)
            yield block

    server = await raw_server(reads_late)
    response = await pool.request(server.origin, "PUT", "/", body=body(), content_length=total)
    async with response:
        assert await response.read() == b"done"
    assert 0 < produced_during_stall < MAX_RUN_AHEAD
    assert produced == total


async def test_response_buffer_fills_to_its_bound_and_no_further(
    pool: UpstreamPool, raw_server: StartRawServer
) -> None:
    async def sends_8_mib(peer: Peer) -> None:
        await peer.read_request()
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 * MiB))
        async for block in blocks(8 * MiB):
            peer.writer.write(block)
            await peer.writer.drain()

    server = await raw_server(sends_8_mib)
    # White-box: `_buffered` is what the consumer has not taken yet. One socket read (256 KiB)
    # may land on top of the high-water mark before reading pauses.
    largest = 0
    async with await pool.request(server.origin, "GET", "/") as response:
        for _ in range(5):
            await response.__anext__()
            await asyncio.sleep(0.03)
            largest = max(largest, response._buffered)
        async for _ in response:
            largest = max(largest, response._buffered)
    assert READ_HIGH_WATER <= largest <= READ_HIGH_WATER + 256 * 1024

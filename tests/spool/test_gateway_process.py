"""The spool in the real `gateway serve` process: acknowledged writes survive `kill -9` of the
gateway during an outage, several workers share the spool without delivering twice, and keep
the order of writes to a target whichever worker takes each."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.spool import SpoolStore, spool_path
from tests.conftest import ADMIN_TOKEN
from tests.process import GatewayProcess
from tests.spool.influx import InfluxProcess, StartInflux
from tests.spool.sources import BASE_SECONDS, TOKEN, gzipped, lines
from tests.spool.writes import eventually
from tests.test_workers import Workers

FAST_HEALTH = {"GATEWAY_HEALTH_INTERVAL": "1", "GATEWAY_HEALTH_TIMEOUT": "1"}
BATCH = 50


async def register(
    session: aiohttp.ClientSession, url: str, influx: InfluxProcess, db: str, **json_data: Any
) -> str:
    body = {"name": "influx", "type": "influxdb", "access": "proxy", "url": influx.url,
            "database": db, "user": influx.server.admin_user,
            "secureJsonData": {"password": influx.server.admin_password},
            "jsonData": {"version": "InfluxQL", **json_data}}  # fmt: skip
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with session.post(f"{url}/api/datasources", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        uid: str = (await response.json())["datasource"]["uid"]
        return uid


async def send(session: aiohttp.ClientSession, url: str, db: str, number: int) -> int:
    """Write batch `number` (gzip for odd numbers) with a connection of its own."""
    body, headers = lines(number * BATCH, BATCH), dict(TOKEN)
    if number % 2:
        body, headers["Content-Encoding"] = gzipped(body), "gzip"
    params = {"db": db, "precision": "s"}
    async with session.post(f"{url}/write", params=params, data=body, headers=headers) as answer:
        return answer.status


async def values(influx: InfluxProcess, db: str) -> dict[int, float]:
    rows = await influx.select(db, "SELECT value FROM $db.autogen.cpu GROUP BY host")
    return {_seconds(time) - BASE_SECONDS: value for time, value in rows}


def _seconds(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())


async def test_acknowledged_writes_survive_kill_9_of_the_gateway(
    data_dir: Path, start_influx: StartInflux
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    gateway = await asyncio.to_thread(GatewayProcess, data_dir, FAST_HEALTH)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            await register(session, gateway.url, influx, db)
            influx.kill()
            acknowledged: list[int] = []
            in_flight: int | None = None
            for number in range(1000):
                if len(acknowledged) == 20:
                    gateway.proc.kill()  # mid-outage, mid-stream: no drain, no goodbye
                in_flight = number
                try:
                    status = await send(session, gateway.url, db, number)
                except aiohttp.ClientError:
                    break
                assert status == 204
                acknowledged.append(number)
                in_flight = None
            assert len(acknowledged) >= 20
        finally:
            await asyncio.to_thread(gateway.stop)

        restarted = await asyncio.to_thread(GatewayProcess, data_dir, FAST_HEALTH)
        try:
            await asyncio.to_thread(influx.start)
            expected = {
                n: float(n) for b in acknowledged for n in range(b * BATCH, b * BATCH + BATCH)
            }

            async def delivered() -> bool:
                return len(await values(influx, db)) >= len(expected)

            await eventually(delivered, timeout=30, what="every acknowledged point delivered")
        finally:
            await asyncio.to_thread(restarted.stop)
    found = await values(influx, db)
    # Exactly what was acknowledged — plus, at most, the one batch whose answer never came.
    extra = {n: v for n, v in found.items() if n not in expected}
    assert {n: found.get(n) for n in expected} == expected
    assert in_flight is not None
    assert set(extra) <= set(range(in_flight * BATCH, in_flight * BATCH + BATCH))


async def test_two_workers_share_the_spool_and_deliver_each_write_once(
    data_dir: Path, start_influx: StartInflux
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    workers = await asyncio.to_thread(Workers, data_dir, 2, dict(FAST_HEALTH))
    connector = aiohttp.TCPConnector(force_close=True)  # spread over both workers
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            await register(session, workers.url, influx, db)
            await _seen_by_every_worker(session, workers, db)
            influx.kill()
            statuses = await asyncio.gather(*(send(session, workers.url, db, n) for n in range(40)))
            assert set(statuses) == {204}
            await asyncio.to_thread(influx.start)

            async def delivered() -> bool:
                return len(await values(influx, db)) == 40 * BATCH

            await eventually(delivered, timeout=30, what="every write delivered")
            text = await _metrics(session, workers.url)

            async def counted() -> bool:
                nonlocal text
                text = await _metrics(session, workers.url)
                return _total(text, "gateway_spool_delivered_total") == 40

            await eventually(counted, what="the deliveries counted")
        assert _total(text, "gateway_spool_appended_total") == 40
    finally:
        await asyncio.to_thread(workers.stop)


# Two workers and an influxd starting, then four freeze-thaw rounds: under a busy machine's load
# that has taken over 30 s.
@pytest.mark.timeout(120)
async def test_writes_through_two_workers_keep_their_order_per_target(
    data_dir: Path, start_influx: StartInflux
) -> None:
    """Each round: a write through one worker finds InfluxDB frozen and is queued after
    forwardTimeout; InfluxDB thaws; then writes to the same point alternate between the
    workers at once — before the other worker's next scan of the spool could tell it of the
    queue. Every round must end with the last value written: a write that went straight to
    InfluxDB while an earlier one was still queued would be overwritten by its replay."""
    influx = await start_influx()
    db = await influx.create_database()
    # No probes in the way (each worker probes on its own): only the writes decide.
    workers = await asyncio.to_thread(
        Workers, data_dir, 2, {"GATEWAY_HEALTH_INTERVAL": "600", "GATEWAY_HEALTH_TIMEOUT": "1"}
    )
    try:
        async with aiohttp.ClientSession() as setup:
            # timeout 0.2: the shipper's delivery to the frozen InfluxDB gives up quickly and
            # backs off, so its replay comes after InfluxDB thaws, not from its socket buffer.
            await register(
                setup, workers.url, influx, db, writeBuffer={"forwardTimeout": 1}, timeout=0.2
            )
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as spread:
            await _seen_by_every_worker(spread, workers, db)
        pinned = await _connection_per_worker(workers, db)
        try:
            by_round = {}
            for round_number in range(4):
                stamp = BASE_SECONDS + round_number
                influx.freeze()
                try:
                    await _write_value(pinned[0], workers, db, stamp, 0)  # queued, after 1 s
                    await asyncio.sleep(0.3)  # the shipper's try times out: it backs off
                finally:
                    influx.thaw()
                for value in (1, 2, 3):  # worker 1, 0, 1: straight away
                    await _write_value(pinned[value % 2], workers, db, stamp, value)
                await _drained(data_dir)
                rows = await influx.select(
                    db, f"SELECT value FROM $db.autogen.ordered WHERE time = {stamp}s"
                )
                by_round[round_number] = [value for _, value in rows]
        finally:
            for session in pinned.values():
                await session.close()
    finally:
        await asyncio.to_thread(workers.stop)
    assert by_round == {round_number: [3] for round_number in range(4)}
    served = {r["request_id"]: r["worker"] for r in workers.events("request")}
    # The point of the test: the queued write and the last one went through different workers
    # (each connection stays with its worker, unless the server closed one in between).
    crossed = [
        stamp
        for stamp in range(BASE_SECONDS, BASE_SECONDS + 4)
        if served[f"ordered-{stamp}-0"] != served[f"ordered-{stamp}-3"]
    ]
    assert crossed, served


async def _connection_per_worker(workers: Workers, db: str) -> dict[int, aiohttp.ClientSession]:
    """A session of one kept-alive connection per worker (SO_REUSEPORT picks a worker per
    connection): which worker took each is read from the request log by request id."""
    pinned: dict[int, aiohttp.ClientSession] = {}
    deadline = time.monotonic() + 20
    for attempt in itertools.count():
        if len(pinned) == 2 or time.monotonic() > deadline:
            break
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        request_id = f"pin-{attempt}"
        headers = {**TOKEN, "X-Request-Id": request_id}
        try:
            async with session.post(
                f"{workers.url}/write", params={"db": db}, data=b"pin v=1", headers=headers
            ) as response:
                assert response.status == 204
        except BaseException:
            await session.close()
            raise
        worker = _worker_of(workers, request_id)
        if worker in pinned:
            await session.close()
        else:
            pinned[worker] = session
    assert set(pinned) == {0, 1}, "no connection reached both workers"
    return pinned


def _worker_of(workers: Workers, request_id: str) -> int:
    for _ in range(100):
        for record in workers.events("request"):
            if record.get("request_id") == request_id:
                worker = record["worker"]
                assert isinstance(worker, int)
                return worker
        time.sleep(0.02)
    raise AssertionError(f"request {request_id} not logged")


async def _write_value(
    session: aiohttp.ClientSession, workers: Workers, db: str, stamp: int, value: int
) -> None:
    params = {"db": db, "precision": "s"}
    body = f"ordered value={value} {stamp}".encode()
    request_id = f"ordered-{stamp}-{value}"
    headers = {**TOKEN, "X-Request-Id": request_id}
    async with session.post(f"{workers.url}/write", params=params, data=body, headers=headers) as r:
        assert r.status == 204, await r.text()


async def _drained(data_dir: Path) -> None:
    async with SpoolStore.open(spool_path(data_dir)) as spool:

        async def empty() -> bool:
            return await spool.targets_with_backlog() == []

        await eventually(empty, timeout=20, what="the spool drained")


async def _seen_by_every_worker(session: aiohttp.ClientSession, workers: Workers, db: str) -> None:
    """Until both workers took a write for the source: each notices a new one within a second."""

    async def taken() -> bool:
        params = {"db": db}
        async with session.post(
            f"{workers.url}/write", params=params, data=b"probe v=1", headers=TOKEN
        ):
            pass
        answered = workers.events("request")
        return {
            r.get("worker") for r in answered if r["path"] == "/write" and r["status"] == 204
        } == {0, 1}

    await eventually(taken, what="the source known to both workers")


async def _metrics(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/metrics") as response:
        return await response.text()


def _total(text: str, name: str) -> float:
    pattern = re.compile(rf"^{name}\{{[^}}]*\}} (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))

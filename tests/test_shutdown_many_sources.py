"""SIGTERM to a real `gateway serve` holding many sources: it exits 0 within its drain timeout.

Issue 20's benchmark saw a SQLite gateway with 10,000 sources still running 60 s after SIGTERM.
Every due source gets a probe task at start-up, and all but a few wait for a probe slot;
stopping the monitor cancels them all, and asyncio.Semaphore removes each cancelled waiter by
scanning its queue: quadratic, seconds of CPU, more on a loaded machine. Here the upstream
accepts connections and never answers, so the probes in flight hold their slots and every
other source's probe is still queued when the signal comes.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sqlite3
import time
from pathlib import Path

from gateway.health.monitor import Slots
from gateway.registry.models import DataSourceSpec
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import SqliteBackend
from tests.conftest import SECRET_KEY
from tests.process import GatewayProcess

# Enough that the old quadratic stop took 6-7 s of CPU (15-30 s of wall time on this shared
# machine), few enough that start-up stays a few seconds: the stop now takes ~1.3 s of CPU.
# Wall time is the machine's (the full suite runs on every core, and took 12 s with the fix
# and a 10 s drain timeout): the drain timeout is the default, and the CPU is what tells.
SOURCES = 40_000
DRAIN_TIMEOUT = 30.0
STOP_CPU_SECONDS = 4.0
# Probes of new sources all start within the monitor's NEW_SOURCE_DELAY (1 s) of start-up.
QUEUED_AFTER = 2.0


async def fill(database: Path, upstream: str, count: int) -> None:
    """One source through the registry (schema, encryption), then `count - 1` copies of its row
    under other names and uids, in one statement: the registry's own writes would take
    minutes for this many."""
    async with SqliteBackend(database).open(SecretBox(SECRET_KEY)) as registry:
        await registry.create_source(
            1,
            DataSourceSpec(
                name="source-0",
                uid="s0",
                type="prometheus",
                access="proxy",
                url=upstream,
                secure_json_data={"basicAuthPassword": "pw"},
            ),
        )
    columns = [
        row[1]
        for row in sqlite3.connect(database).execute("PRAGMA table_info(data_source)")
        if row[1] not in ("id", "name", "uid")
    ]
    listed = ", ".join(columns)
    with sqlite3.connect(database) as db:
        db.execute(
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            f"INSERT INTO data_source (name, uid, {listed}) "
            f"SELECT 'source-' || i, 's' || i, {listed} FROM n, "
            f"(SELECT * FROM data_source WHERE uid = 's0')",
            (count - 1,),
        )
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM data_source").fetchone()[0] == count


def cpu_seconds(pid: int) -> float:
    """User + system CPU a running process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def test_a_gateway_with_many_sources_exits_0_within_its_drain_timeout(
    tmp_path: Path,
) -> None:
    # Accepts (in the kernel's backlog) and never answers: each probe waits its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(128)
    try:
        data = tmp_path / "data"
        data.mkdir()
        upstream = f"http://127.0.0.1:{silent.getsockname()[1]}"
        await fill(data / "gateway.db", upstream, SOURCES)
        gateway = await asyncio.to_thread(
            GatewayProcess,
            data,
            {"GATEWAY_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT)},
        )
        try:
            await asyncio.sleep(QUEUED_AFTER)
            assert gateway.proc.poll() is None, "\n".join(gateway.lines[-20:])
            cpu_before = cpu_seconds(gateway.proc.pid)
            children_before = children_cpu_seconds()
            started = time.monotonic()
            gateway.proc.terminate()
            code = await asyncio.to_thread(gateway.stop, DRAIN_TIMEOUT + 5)
            stopped_in = time.monotonic() - started
            # This test's process reaps no other child meanwhile: the growth is the gateway's
            # whole life, and what it had used before the signal is known.
            stop_cpu = children_cpu_seconds() - children_before - cpu_before
        finally:
            if gateway.proc.poll() is None:
                gateway.proc.kill()
                gateway.proc.wait()
        assert code == 0, "\n".join(gateway.lines[-20:])
        assert stopped_in < DRAIN_TIMEOUT, f"exited {stopped_in:.1f} s after SIGTERM"
        assert stop_cpu < STOP_CPU_SECONDS, f"stopping took {stop_cpu:.1f} s of CPU"
    finally:
        silent.close()


class TestSlots:
    """The monitor's probe slots: a semaphore, with cancelled waiters leaving in O(1)."""

    async def test_waiters_get_freed_slots_in_arrival_order(self) -> None:
        slots = Slots(1)
        order: list[int] = []

        async def take(n: int) -> None:
            async with slots:
                order.append(n)
                await asyncio.sleep(0)

        await asyncio.gather(*(take(n) for n in range(5)))
        assert order == [0, 1, 2, 3, 4]

    async def test_a_cancelled_waiter_does_not_lose_or_keep_a_slot(self) -> None:
        slots = Slots(1)
        entered: list[str] = []

        async def take(name: str) -> None:
            async with slots:
                entered.append(name)

        await slots.__aenter__()
        cancelled = asyncio.create_task(take("cancelled"))
        handed = asyncio.create_task(take("handed"))
        after = asyncio.create_task(take("after"))
        await asyncio.sleep(0)  # all three wait
        cancelled.cancel()  # cancelled while waiting: it leaves the queue
        await asyncio.gather(cancelled, return_exceptions=True)
        # No await yields between these two: the slot is handed to the oldest waiter left,
        # which is cancelled before it runs, and must pass the slot on.
        await slots.__aexit__(None, None, None)
        handed.cancel()
        await asyncio.gather(handed, return_exceptions=True)
        await asyncio.wait_for(after, 1)
        assert entered == ["after"]
        # The one slot is free again, neither lost nor doubled.
        await asyncio.wait_for(slots.__aenter__(), 1)
        blocked = asyncio.create_task(take("blocked"))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        await slots.__aexit__(None, None, None)
        await asyncio.wait_for(blocked, 1)

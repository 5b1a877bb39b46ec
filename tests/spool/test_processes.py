"""The spool across real processes: kill -9 durability, leases, one delivery per entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from gateway.spool import SpoolStore
from tests.spool.child import numbered_target
from tests.spool.writes import TARGET, eventually, numbered_write

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.spool.child", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def acked(line: str) -> tuple[int, int]:
    """The entry id and write number of an "acked ID NUMBER" line."""
    _, entry_id, number = line.split()
    return int(entry_id), int(number)


def finish(child: subprocess.Popen[str], timeout: float = 30) -> list[str]:
    output, _ = child.communicate(timeout=timeout)
    assert child.returncode == 0, output
    return output.splitlines()


async def test_every_acknowledged_append_survives_kill_9(spool_file: Path) -> None:
    child = start_child("append", str(spool_file), "100000", "8")
    assert child.stdout is not None
    acknowledged: dict[int, int] = {}
    while len(acknowledged) < 300:  # well into the stream, with groups of up to 8 being committed
        line = child.stdout.readline()
        assert line, "the child stopped early"
        entry_id, number = acked(line)
        acknowledged[entry_id] = number
    os.kill(child.pid, signal.SIGKILL)
    # Lines the child wrote before it died are still in the pipe; a torn last line is not one.
    rest, _ = child.communicate(timeout=10)
    for line in rest.split("\n")[:-1]:
        entry_id, number = acked(line)
        acknowledged[entry_id] = number
    assert child.returncode == -signal.SIGKILL

    async with SpoolStore.open(spool_file) as spool:
        entries = await spool.peek(TARGET, limit=200_000, max_bytes=1 << 40)
    stored = {entry.id: entry.write for entry in entries}
    assert [entry_id for entry_id in acknowledged if entry_id not in stored] == []
    for entry_id, number in acknowledged.items():
        assert stored[entry_id] == numbered_write(number), entry_id


def test_two_processes_claiming_together_never_share_a_target(spool_file: Path) -> None:
    targets = 40
    children = [
        start_child("claim", str(spool_file), owner, "60", str(targets))
        for owner in ("worker-a", "worker-b")
    ]
    claimed = [
        {int(line.split()[1]) for line in finish(child) if line.startswith("claimed")}
        for child in children
    ]

    assert claimed[0].isdisjoint(claimed[1])
    assert claimed[0] | claimed[1] == set(range(targets))


async def test_a_killed_holders_lease_is_taken_over_once_it_expires(
    spool_file: Path,
) -> None:
    lease = 1.0
    # Before the child starts, so before its claim: its lease ends no earlier than this + lease.
    started = time.time()
    child = start_child("hold", str(spool_file), "worker-a", str(lease))
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "claimed"

    async with SpoolStore.open(spool_file) as spool:
        assert not await spool.claim(TARGET, "worker-b", lease_seconds=60)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=10)  # reaps it and closes the pipes

        async def taken_over() -> bool:
            return await spool.claim(TARGET, "worker-b", lease_seconds=60)

        await eventually(taken_over, what="worker-b takes the lease over")

        # Not before the killed holder's lease ran out.
        assert time.time() >= started + lease
        [status] = await spool.status()
        assert status.lease_owner == "worker-b"


async def test_two_shippers_deliver_every_entry_exactly_once(spool_file: Path) -> None:
    async with SpoolStore.open(spool_file) as spool:
        appended = {
            await spool.append(numbered_write(number, numbered_target(number % 4)))
            for number in range(60)
        }

    shippers = [start_child("ship", str(spool_file), owner) for owner in ("ship-a", "ship-b")]
    outputs = [finish(child) for child in shippers]

    deliveries: Counter[int] = Counter()
    for lines in outputs:
        for line in lines:
            if line.startswith("delivered"):
                deliveries.update(int(word) for word in line.split()[1:])
    assert set(deliveries) == appended
    assert [entry_id for entry_id, times in deliveries.items() if times > 1] == []
    async with SpoolStore.open(spool_file) as spool:
        assert await spool.targets_with_backlog() == []


def test_processes_appending_together_all_succeed(spool_file: Path) -> None:
    """Two processes write the same file at once: busy_timeout makes them wait, not fail."""
    children = [start_child("append", str(spool_file), "200", "4") for _ in range(2)]
    outputs = [finish(child) for child in children]

    ids = [acked(line)[0] for lines in outputs for line in lines if line.startswith("acked")]
    assert len(set(ids)) == 400
    assert all(lines[-1] == "done" for lines in outputs)

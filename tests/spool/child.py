"""A second process on the same spool file, driven by the tests in test_processes.py.

    python -m tests.spool.child append PATH COUNT WRITERS  # "acked ID NUMBER" per append
    python -m tests.spool.child claim PATH OWNER LEASE N   # tries targets 0..N-1: "claimed I"
    python -m tests.spool.child hold PATH OWNER LEASE      # claims TARGET, waits for stdin EOF
    python -m tests.spool.child ship PATH OWNER            # a minimal shipper, until no backlog

Every line is flushed as soon as what it reports has happened.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.spool import SpoolStore, TargetKey
from tests.spool.writes import TARGET, numbered_write


def say(line: str) -> None:
    print(line, flush=True)


def numbered_target(number: int) -> TargetKey:
    return TargetKey(source_id=100 + number, url=f"http://influx-{number}:8086")


async def append(spool: SpoolStore, count: int, writers: int) -> None:
    async def writer(first: int) -> None:
        for number in range(first, count, writers):
            entry_id = await spool.append(numbered_write(number))
            say(f"acked {entry_id} {number}")

    await asyncio.gather(*(writer(first) for first in range(writers)))
    say("done")


async def claim(spool: SpoolStore, owner: str, lease: float, targets: int) -> None:
    for number in range(targets):
        if await spool.claim(numbered_target(number), owner, lease):
            say(f"claimed {number}")
    say("done")


async def hold(spool: SpoolStore, owner: str, lease: float) -> None:
    say("claimed" if await spool.claim(TARGET, owner, lease) else "refused")
    await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin (or kills us)


async def ship(spool: SpoolStore, owner: str) -> None:
    """Claim a target with backlog, take a few entries, report them delivered, ack, release."""
    while backlog := await spool.targets_with_backlog():
        for target in backlog:
            if not await spool.claim(target, owner, lease_seconds=30):
                continue
            entries = await spool.peek(target, limit=3)
            say("delivered " + " ".join(str(entry.id) for entry in entries))
            await spool.ack(entry.id for entry in entries)
            await spool.release(target, owner)
        await asyncio.sleep(0)  # let the other shipper have a turn at the lock
    say("done")


async def main(command: str, path: Path, args: list[str]) -> None:
    async with SpoolStore.open(path) as spool:
        if command == "append":
            await append(spool, int(args[0]), int(args[1]))
        elif command == "claim":
            await claim(spool, args[0], float(args[1]), int(args[2]))
        elif command == "hold":
            await hold(spool, args[0], float(args[1]))
        elif command == "ship":
            await ship(spool, args[0])
        else:
            raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:]))

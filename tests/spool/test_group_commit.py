"""Concurrent appends share commits: each commit is one fsync of the WAL."""

from __future__ import annotations

import asyncio

from gateway.spool import SpoolStore
from tests.spool.writes import TARGET, numbered_write

WRITERS = 50


async def test_fifty_concurrent_appends_take_far_fewer_than_fifty_commits(
    spool: SpoolStore,
) -> None:
    before = spool.commits

    ids = await asyncio.gather(*(spool.append(numbered_write(n)) for n in range(WRITERS)))

    commits = spool.commits - before
    # The first append may commit alone while the other 49 queue up behind it; a few more
    # groups allow for a loaded machine. One commit per append would be 50.
    assert 1 <= commits <= 5, commits
    assert len(set(ids)) == WRITERS
    queued = await spool.peek(TARGET, limit=WRITERS, max_bytes=1 << 30)
    assert {entry.id for entry in queued} == set(ids)


async def test_sequential_appends_commit_one_by_one(spool: SpoolStore) -> None:
    """The other side of the bargain: a lone writer is never held back to wait for a group."""
    before = spool.commits
    for number in range(5):
        await spool.append(numbered_write(number))
    assert spool.commits - before == 5

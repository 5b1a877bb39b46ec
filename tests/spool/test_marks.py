"""The spool's shared queue marks (gateway/spool/marks.py): set by an append before it is
acknowledged, seen by another process at once, cleared only when a queue is found empty."""

from __future__ import annotations

from pathlib import Path

from gateway.spool import SpoolStore
from gateway.spool.marks import marks_path
from tests.spool.test_processes import acked, start_child
from tests.spool.writes import OTHER, TARGET, numbered_write


async def test_an_append_in_another_process_is_seen_before_its_writer_hears_of_it(
    spool_file: Path,
) -> None:
    async with SpoolStore.open(spool_file) as spool:
        assert not spool.queued(TARGET)
        child = start_child("append", str(spool_file), "1", "1")
        assert child.stdout is not None
        acked(child.stdout.readline())  # the child's append is acknowledged...
        assert spool.queued(TARGET)  # ...so this process already counts the target as queued
        assert not spool.queued(OTHER)
        child.communicate(timeout=10)


async def test_a_mark_is_cleared_only_once_the_queue_is_empty(spool_file: Path) -> None:
    async with SpoolStore.open(spool_file) as spool:
        first = await spool.append(numbered_write(1))
        second = await spool.append(numbered_write(2))
        await spool.ack([first])
        assert await spool.settle(TARGET) is True  # one left: still queued
        assert spool.queued(TARGET)
        await spool.ack([second])
        assert spool.queued(TARGET)  # acknowledging leaves the mark: only settle clears it
        assert await spool.settle(TARGET) is False
        assert not spool.queued(TARGET)


async def test_dead_letters_retried_mark_their_queue_again(spool_file: Path) -> None:
    async with SpoolStore.open(spool_file) as spool:
        entry = await spool.append(numbered_write(1))
        await spool.dead_letter(entry, "HTTP 400: field type conflict")
        await spool.settle(TARGET)
        assert not spool.queued(TARGET)
        await spool.retry([entry])
        assert spool.queued(TARGET)


async def test_opening_the_spool_rebuilds_lost_or_stale_marks(spool_file: Path) -> None:
    async with SpoolStore.open(spool_file) as spool:
        await spool.append(numbered_write(1))  # TARGET stays queued
        entry = await spool.append(numbered_write(2, OTHER))
        await spool.ack([entry])  # OTHER's mark is now stale
        assert spool.queued(OTHER)
    # A power cut may lose the marks file's pages: here, all of them.
    marks_path(spool_file).write_bytes(b"")
    async with SpoolStore.open(spool_file) as spool:
        assert spool.queued(TARGET)
        assert not spool.queued(OTHER)

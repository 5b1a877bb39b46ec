"""SpoolStore: a durable FIFO queue of InfluxDB writes per target, in its own SQLite file.

    async with SpoolStore.open(spool_path(settings.data_dir)) as spool:
        entry_id = await spool.append(write)            # durable when it returns
        if await spool.claim(target, owner, lease_seconds=30):
            entries = await spool.peek(target, limit=100, max_bytes=8 << 20)
            ...                                          # deliver them, in order
            await spool.ack([entry.id for entry in entries])

Delivery is at-least-once: an entry delivered but not yet acknowledged when its shipper dies is
delivered again by the next one. InfluxDB overwrites an identical point, so that is harmless.

Several processes (`gateway serve --workers N`) may open the same file. Any of them may append;
each target's queue is shipped by whoever holds its lease (`claim`), so one entry goes out
through one shipper, and in order. A lease expires, so a killed worker's targets are taken
over. The store does not check the lease on `peek`/`ack`: the shipper renews it (`claim` again)
before each round and stops shipping that target when renewal fails.

Which targets have a queue is also kept in memory shared by those processes (`queued`, see
marks.py): an append marks its target before it commits, and only `settle` — the shipper's
"found it empty" — clears the mark, under the write lock. That is what keeps the order of writes
to a target across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TypeVar

from gateway.spool import queries, schema
from gateway.spool.committer import Committer, Operation
from gateway.spool.marks import QueueMarks, marks_path
from gateway.spool.models import DeadLetter, SpooledWrite, SpoolEntry, TargetKey, TargetStatus

T = TypeVar("T")

SPOOL_FILE_NAME = "spool.sqlite3"
DEFAULT_MAX_BYTES = 1 << 30  # per target; the default
DEFAULT_MIN_FREE_BYTES = 256 << 20  # refuse appends before the disk is full, not at full
# Other processes hold the write lock for one group commit at a time (milliseconds); waiting
# this long for it means something is badly wrong, and the writer should hear it.
DEFAULT_BUSY_TIMEOUT = 10.0


def spool_path(data_dir: Path) -> Path:
    """The spool's file in the data directory: its own file, never the registry's."""
    return data_dir / SPOOL_FILE_NAME


class SpoolStore:
    def __init__(self, committer: Committer, default_max_bytes: int, marks: QueueMarks) -> None:
        self._committer = committer
        self._default_max_bytes = default_max_bytes
        self._marks = marks

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> AsyncIterator[SpoolStore]:
        """Open (creating if needed) the spool file; every job queued before the block ends is
        finished before it closes.

        **Parameters:**
        - `max_bytes`: the per-target bound used when `append` is given none.
        - `min_free_bytes`: appends are refused (`SpoolFull`) once they would leave less free
          disk space than this.
        - `busy_timeout`: how long to wait for another process's write lock.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(_connect, path, busy_timeout)
        try:
            marks = QueueMarks(marks_path(path))
        except BaseException:
            conn.close()
            raise
        committer = Committer(
            conn, path, min_free_bytes, name=f"spool-committer:{path.name}", marks=marks
        )
        try:
            store = cls(committer, max_bytes, marks)
            await store.sync_marks()  # the marks file is not durable: rebuilt before any write
            yield store
        finally:
            await committer.close()
            marks.close()

    @property
    def commits(self) -> int:
        """Write transactions this store has committed (each one fsync of the WAL)."""
        return self._committer.commits

    async def append(self, write: SpooledWrite, *, max_bytes: int | None = None) -> int:
        """Queue `write` at the end of its target's queue; return its id once it is durable
        (committed and fsynced). Concurrent appends share one commit.

        Raises `SpoolFull` when the target's queue would exceed `max_bytes` (default: the
        store's) or the disk would fall under its free-space floor; nothing queued is dropped.
        """
        limit = self._default_max_bytes if max_bytes is None else max_bytes
        return await self._committer.append(write, limit, time.time())

    async def peek(
        self, target: TargetKey, limit: int = 100, max_bytes: int = 8 << 20
    ) -> list[SpoolEntry]:
        """The oldest entries of `target`'s queue in append order, without removing them: at
        most `limit` entries and `max_bytes` of bodies, but always the first if there is one."""
        return await self._read(lambda conn: queries.peek(conn, target, limit, max_bytes))

    async def ack(self, ids: Iterable[int]) -> int:
        """Delete delivered entries; returns how many were still queued."""
        ordered = sorted(set(ids))
        return await self._write(lambda conn: queries.ack(conn, ordered))

    async def dead_letter(self, entry_id: int, reason: str) -> bool:
        """Move a queued entry to the dead letters with `reason` (the upstream's message);
        False if it was no longer queued."""
        now = time.time()
        return await self._write(lambda conn: queries.dead_letter(conn, entry_id, reason, now))

    async def expire(
        self, max_age: float, now: float | None = None, *, target: TargetKey | None = None
    ) -> int:
        """Move entries enqueued more than `max_age` seconds before `now` (default: the
        current time) to the dead letters with reason "expired"; only `target`'s if given
        (each source has its own maxAge). Returns how many were moved."""
        moment = time.time() if now is None else now
        cutoff = moment - max_age
        return await self._write(lambda conn: queries.expire(conn, cutoff, target, moment))

    async def dead_letters(self, source_id: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest id first; only `source_id`'s if given. Bodies are not loaded."""
        return await self._read(lambda conn: queries.dead_letters(conn, source_id))

    async def retry(self, ids: Iterable[int]) -> list[int]:
        """Put dead letters back in their queues; returns their new entry ids.

        Each goes to the END of its target's queue, not the head: the shipper may be sending
        the head right now, and putting an entry in front of what it already peeked would break
        the order it is relying on. The price: a retried write lands after writes that came
        later, so if both set the same series at the same timestamp, the retried (older) value
        wins. An operator retries after fixing the cause (a type conflict, a missing database),
        which such overlaps rarely survive; the enqueue time restarts so it does not expire at
        once. Retry ignores `max_bytes`: an operator's decision, not a writer's.
        """
        wanted = list(ids)
        now = time.time()

        def retry(conn: sqlite3.Connection) -> list[int]:
            new_ids = queries.retry(conn, wanted, now)
            self._marks.sync(conn)  # their queues have entries again: marked before COMMIT
            return new_ids

        return await self._write(retry)

    async def drop(self, ids: Iterable[int]) -> int:
        """Delete dead letters for good; returns how many existed."""
        ordered = sorted(set(ids))
        return await self._write(lambda conn: queries.drop(conn, ordered))

    async def claim(self, target: TargetKey, owner: str, lease_seconds: float) -> bool:
        """Take or renew the lease on `target`'s queue for `lease_seconds`: True if `owner`
        holds it now. Held by someone else and unexpired: False."""
        now = time.time()
        return await self._write(
            lambda conn: queries.claim(conn, target, owner, lease_seconds, now)
        )

    async def release(self, target: TargetKey, owner: str) -> bool:
        """Give up `owner`'s lease on `target`; False if `owner` did not hold it."""
        return await self._write(lambda conn: queries.release(conn, target, owner))

    def queued(self, target: TargetKey) -> bool:
        """Whether `target` may have a queue, appended by any process on this spool: the
        question a write asks before it is sent straight to its target (no I/O)."""
        return self._marks.marked(target)

    async def settle(self, target: TargetKey) -> bool:
        """The shipper found `target`'s queue empty: clear its mark, under the write lock, unless
        something was queued since — then True (ship on)."""
        return await self._write(lambda conn: self._marks.settle(conn, target))

    async def sync_marks(self) -> None:
        """Rebuild every mark from the queues' counts, under the write lock."""
        await self._write(self._marks.sync)

    async def status(self) -> list[TargetStatus]:
        """Every target the spool has seen, with its queue's size and age, dead letters and
        current lease holder. Reads kept counts: no scan of the queue."""
        now = time.time()
        return await self._read(lambda conn: queries.status(conn, now))

    async def targets_with_backlog(self) -> list[TargetKey]:
        return await self._read(queries.targets_with_backlog)

    async def _read(self, operation: Operation[T]) -> T:
        return await self._committer.call(operation, writes=False)

    async def _write(self, operation: Operation[T]) -> T:
        return await self._committer.call(operation, writes=True)


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    _make_private(path)
    conn = schema.connect(str(path), busy_timeout)
    # A newly created file's directory entry is durable only once the directory is fsynced.
    # SQLite does that for the journal and WAL files it creates, not for the database file; once
    # per open is cheap insurance that a power cut right after the first append keeps the file.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return conn


def _make_private(path: Path) -> None:
    """Queued writes are the users' data: owner only, as the rest of the data directory.
    SQLite gives the -wal and -shm files it creates the database file's mode, so the file is
    created 0600 before SQLite opens it; one made by an older version is narrowed, with any
    journal it left."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, 0o600)

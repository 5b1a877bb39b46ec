"""The spool's one thread: it owns the SQLite connection and commits appends in groups.

Every operation is a job on a queue. The thread takes everything queued at once: all appends
among them share ONE transaction and so one fsync (group commit), then each other job runs in
a transaction of its own. While a commit is being fsynced, new appends pile up on the queue
and form the next group, so the busier the writers, the larger the groups: 50 concurrent
appends cost a handful of fsyncs, not 50.

A thread of our own rather than aiosqlite: aiosqlite would run each statement as a separate
round trip through its thread and the event loop; here a whole group is inserted and committed
without returning to the loop, and its futures are settled with one wake-up of the loop.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.spool import queries
from gateway.spool.errors import SpoolClosed, SpoolError, SpoolFull
from gateway.spool.marks import QueueMarks
from gateway.spool.models import SpooledWrite

T = TypeVar("T")
# One spool operation: statements run inside the transaction the committer opened for it.
Operation = Callable[[sqlite3.Connection], T]


@dataclass(slots=True)
class _Append:
    write: SpooledWrite
    max_bytes: int
    enqueued_at: float
    future: asyncio.Future[int]


@dataclass(slots=True)
class _Call:
    operation: Callable[[sqlite3.Connection], Any]
    writes: bool  # runs in BEGIN IMMEDIATE and counts as a commit; else a read snapshot
    future: asyncio.Future[Any]


_Job = _Append | _Call


@dataclass(slots=True)
class _Outcomes:
    """Results to hand back to the event loop in one `call_soon_threadsafe`."""

    settled: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = field(
        default_factory=list
    )

    def add(self, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        self.settled.append((future, result, error))


class Committer:
    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        min_free_bytes: int,
        name: str,
        marks: QueueMarks,
    ) -> None:
        self._conn = conn
        self._marks = marks
        self._directory = path.parent
        self._min_free_bytes = min_free_bytes
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        # Written only by the committer thread; read by anyone (an int read is atomic).
        self.commits = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def append(
        self, write: SpooledWrite, max_bytes: int, enqueued_at: float
    ) -> asyncio.Future[int]:
        future: asyncio.Future[int] = self._loop.create_future()
        self._submit(_Append(write, max_bytes, enqueued_at, future))
        return future

    def call(self, operation: Operation[T], *, writes: bool) -> asyncio.Future[T]:
        future: asyncio.Future[T] = self._loop.create_future()
        self._submit(_Call(operation, writes, future))
        return future

    async def close(self) -> None:
        """Finish every job already queued, then close the connection."""
        if not self._closing:
            self._closing = True
            self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _submit(self, job: _Job) -> None:
        if self._closing:
            raise SpoolClosed()
        self._jobs.put(job)

    def _run(self) -> None:
        try:
            while True:
                jobs = [self._jobs.get()]
                while not self._jobs.empty():
                    jobs.append(self._jobs.get_nowait())
                stop = None in jobs
                outcomes = _Outcomes()
                appends = [job for job in jobs if isinstance(job, _Append)]
                if appends:
                    self._commit_appends(appends, outcomes)
                for job in jobs:
                    if isinstance(job, _Call):
                        self._run_call(job, outcomes)
                self._loop.call_soon_threadsafe(_settle, outcomes)
                if stop:
                    return
        finally:
            self._conn.close()

    def _commit_appends(self, appends: list[_Append], outcomes: _Outcomes) -> None:
        free = shutil.disk_usage(self._directory).free
        accepted: list[tuple[_Append, int]] = []
        refused: list[tuple[_Append, SpoolFull]] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            batch_bytes = 0
            for job in appends:
                write = job.write
                target = queries.target_id(self._conn, write.target, create=True)
                assert target is not None
                if queries.queued_bytes(self._conn, target) + write.size > job.max_bytes:
                    refused.append((job, SpoolFull(write.target, "queue at max_bytes")))
                    continue
                # What the disk keeps free must stay above the floor after this write: the
                # spool fails its writers early, before SQLite fails with the disk full.
                if free - batch_bytes - write.size < self._min_free_bytes:
                    refused.append((job, SpoolFull(write.target, "disk nearly full")))
                    continue
                entry_id = queries.insert_entry(self._conn, target, write, job.enqueued_at)
                # Before COMMIT, so before the writer's 204: every process's next write to the
                # target queues behind this one (marks.py says why that keeps the order).
                self._marks.mark(write.target)
                batch_bytes += write.size
                accepted.append((job, entry_id))
            self._conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            for job in appends:
                outcomes.add(job.future, None, _translate(exc, job.write))
            return
        self.commits += 1
        for job, entry_id in accepted:
            outcomes.add(job.future, entry_id, None)
        for job, error in refused:
            outcomes.add(job.future, None, error)

    def _run_call(self, job: _Call, outcomes: _Outcomes) -> None:
        changes = self._conn.total_changes
        try:
            self._conn.execute("BEGIN IMMEDIATE" if job.writes else "BEGIN")
            result = job.operation(self._conn)
            self._conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            outcomes.add(job.future, None, _translate(exc, None))
            return
        if self._conn.total_changes != changes:  # one that changed nothing wrote no WAL
            self.commits += 1
        outcomes.add(job.future, result, None)

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _settle(outcomes: _Outcomes) -> None:
    for future, result, error in outcomes.settled:
        if future.cancelled():
            continue  # the caller gave up; an append may still have been committed
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _translate(exc: BaseException, write: SpooledWrite | None) -> BaseException:
    """SQLite's errors become the spool's, here and nowhere else."""
    if isinstance(exc, sqlite3.Error):
        if write is not None and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            error: BaseException = SpoolFull(write.target, "disk full")
        else:
            error = SpoolError(f"write spool: {exc}")
        error.__cause__ = exc
        return error
    return exc

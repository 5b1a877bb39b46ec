"""QueueMarks: which targets have a queue, shared by every process on the spool, readable on the
hot path without a system call.

A small file beside the spool's (`spool.queued`), mapped into memory by every process that opens
the spool (`gateway serve --workers N`, the `gateway spool` CLI): one byte per slot, a target's
slot picked by a hash of its key that every process computes alike (CRC-32, not Python's salted
`hash`). A slot is 1 while some target hashing to it has something queued. Two targets sharing
a slot only cost the one with no queue some needless queueing while the other has one, never
order. Reading a mark is one byte of shared memory: cheap enough for every write.

Why a worker that forwards a write straight to its target after checking the mark cannot
overtake a write already acknowledged from the queue (the issue's "once a target has a queue,
later writes queue behind it until it is drained"), whichever worker took either:

1. Marks change only inside a write transaction of the spool file, so under SQLite's write lock,
   which one process at a time holds: their changes are serialized with every change to a
   queue.
2. An append sets its target's mark inside its transaction, before COMMIT (committer.py), so
   before its writer gets 204. So does `retry` (dead letters back into their queues).
3. A mark is cleared only by `settle` (a shipper found the queue empty) and `sync` (at open),
   each inside a write transaction, and only when the counts read in that same transaction say
   that no target of the slot has anything queued. No append can commit in between, so a slot
   is never cleared while a committed queue of one of its targets is not empty.
4. Entries leave a queue (delivered, dead-lettered, expired) without touching the marks: a mark
   can be left set with an empty queue (until the next `settle`), which only queues writes
   needlessly; never cleared with a non-empty queue.

So if write A was acknowledged (its append committed) before write B is checked, the check
sees the mark — unless a shipper had found the queue empty since, in which case A was delivered
(and acknowledged by the upstream) before B is sent. A queued B gets a larger entry id than A
(appends are serialized by the same lock; ids grow) and the shipper sends in id order. The 204
to A's writer is sent after the mark was stored and the commit's system calls returned; B is
read from the network after that: the stored byte is visible to B's check, in any process,
through the shared page.

A mark set by a transaction that then failed, or by a process killed before its COMMIT, is left
set: needless queueing until the shipper settles the target. The file itself is not fsynced: after
a power cut it may have lost marks, so every open rebuilds it from the spool's counts (`sync`),
under the write lock, before the process takes a write.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import zlib
from pathlib import Path

from gateway.spool.models import TargetKey

MARKS_SUFFIX = ".queued"
# Slots: the file is sparse and only touched pages cost memory; with 2^20 of them, a thousand
# targets share a slot with probability ~0.05 %.
SLOTS = 1 << 20


def marks_path(spool_file: Path) -> Path:
    """The marks of the spool file `spool_file` (spool.sqlite3 → spool.queued)."""
    return spool_file.with_name(spool_file.stem + MARKS_SUFFIX)


class QueueMarks:
    def __init__(self, path: Path) -> None:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < SLOTS:
                # Processes opening a new file together each extend it to the same size.
                os.ftruncate(descriptor, SLOTS)
            self._map = mmap.mmap(descriptor, SLOTS, mmap.MAP_SHARED)
        finally:
            os.close(descriptor)  # the mapping keeps the file
        self._slots: dict[TargetKey, int] = {}

    def close(self) -> None:
        self._map.close()

    def slot(self, key: TargetKey) -> int:
        slot = self._slots.get(key)
        if slot is None:
            digest = zlib.crc32(f"{key.source_id}\n{key.url}".encode())
            slot = self._slots[key] = digest % SLOTS
        return slot

    def marked(self, key: TargetKey) -> bool:
        """Whether `key` may have a queue (in any process): the hot path's question."""
        return self._map[self.slot(key)] != 0

    # --- changes: only inside a write transaction of the spool file (see the docstring) -------

    def mark(self, key: TargetKey) -> None:
        self._map[self.slot(key)] = 1

    def settle(self, conn: sqlite3.Connection, key: TargetKey) -> bool:
        """Clear `key`'s slot unless a target of it has something queued; True when `key`
        itself still has (something was queued since its shipper found it empty)."""
        slot = self.slot(key)
        keep = still_queued = False
        for queued in _queued_targets(conn):
            if queued == key:
                still_queued = True
            if self.slot(queued) == slot:
                keep = True
        self._map[slot] = 1 if keep else 0
        return still_queued

    def sync(self, conn: sqlite3.Connection) -> None:
        """Make every slot say exactly what the spool's counts say."""
        wanted = {self.slot(key) for key in _queued_targets(conn)}
        position = self._map.find(b"\x01")
        while position != -1:
            if position not in wanted:
                self._map[position] = 0
            position = self._map.find(b"\x01", position + 1)
        for slot in wanted:
            self._map[slot] = 1


def _queued_targets(conn: sqlite3.Connection) -> list[TargetKey]:
    rows = conn.execute("SELECT source_id, url FROM target WHERE queued_entries > 0").fetchall()
    return [TargetKey(source_id, url) for source_id, url in rows]

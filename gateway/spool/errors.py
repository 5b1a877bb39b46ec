"""Errors of the write spool.

    SpoolError          the spool file could not be used (an SQLite error, translated)
    ├── SpoolFull       a target's queue is at its max_bytes, or the disk is (nearly) full
    └── SpoolClosed     the store was used after its `open()` block ended

`SpoolFull` is the one a writer is meant to see (503 with Retry-After); nothing already queued
is dropped to make room.
"""

from __future__ import annotations

from gateway.spool.models import TargetKey


class SpoolError(Exception):
    pass


class SpoolFull(SpoolError):
    def __init__(self, target: TargetKey, reason: str) -> None:
        super().__init__(f"write spool full for source {target.source_id} ({target.url}): {reason}")
        self.target = target
        self.reason = reason

    def __repr__(self) -> str:
        return f"SpoolFull(target={self.target!r}, reason={self.reason!r})"


class SpoolClosed(SpoolError):
    def __init__(self) -> None:
        super().__init__("the write spool is closed")

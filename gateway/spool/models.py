"""What the spool keeps and reports: plain frozen values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class WritePath(StrEnum):
    """The InfluxDB write API a request came in on; the shipper replays it on the same one."""

    V1 = "/write"
    V2 = "/api/v2/write"


@dataclass(frozen=True, slots=True)
class TargetKey:
    """One upstream a source writes to: a source has one target per replica URL (fan-out), and
    each has its own queue, order and lease."""

    source_id: int
    url: str


@dataclass(frozen=True, slots=True)
class SpooledWrite:
    """A write request exactly as received, to be replayed later.

    `params` holds the write parameters of the query string (db, rp, precision, consistency,
    org, bucket, ...); the caller leaves out credentials (u, p), which the shipper takes from
    the source, so that no password lands in the spool file. `body` is kept byte for byte,
    compressed or not: `content_encoding` says which.
    """

    target: TargetKey
    path: WritePath
    params: Mapping[str, str]
    body: bytes
    content_type: str | None = None
    content_encoding: str | None = None

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A queued write: `id` grows with append order and is never reused."""

    id: int
    write: SpooledWrite
    enqueued_at: float  # Unix time, seconds


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A write taken out of its queue (rejected by the upstream, or too old), kept for an
    operator to retry or drop. The body stays in the file; listings don't load it."""

    id: int  # the id it had in its queue
    target: TargetKey
    path: WritePath
    params: Mapping[str, str]
    size: int
    enqueued_at: float
    reason: str  # the upstream's message, or "expired"
    dead_at: float


@dataclass(frozen=True, slots=True)
class TargetStatus:
    target: TargetKey
    queued_entries: int
    queued_bytes: int
    oldest_enqueued_at: float | None  # None when nothing is queued
    dead_letters: int
    lease_owner: str | None  # the shipper holding an unexpired lease, if any

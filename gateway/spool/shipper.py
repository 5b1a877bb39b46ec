"""Shippers: the queued writes of each target sent on, in order, once the target takes them.

`Shippers.run` (a task of the app) scans the spool about every second — and at once when this
process queues a write — and keeps one `TargetShipper` task per target with a backlog. A target
shipper, each round:

1. renews its lease on the target (`SpoolStore.claim`): with `--workers N` one shipper per
   target sends, the others leave it (the owner is the host and worker index, so a restarted
   worker takes its own queues back at once; another worker takes them over when the lease
   runs out);
2. takes the head of the queue (`peek`); when it is empty, clears the target's shared mark
   (`settle`: later writes, through any worker, go straight to the target again), releases
   the lease and ends;
3. moves entries older than the source's maxAge to the dead letters (`expire`);
4. sends the first batch: consecutive plain (uncompressed) entries with the same path,
   parameters and content type are joined into one body, as InfluxDB's write API takes many
   lines at once; a compressed entry goes alone, as it was received;
5. 2xx: acknowledges the batch; 4xx (but 408 and 429): a batch of several is sent again entry by
   entry, and the entry the upstream rejects becomes a dead letter with the upstream's message;
   5xx, 408, 429 or no answer: asks health for a probe now and waits — exponential backoff with
   jitter, cut short when a probe finds the target healthy again.

Delivery is at-least-once: an entry delivered but not acknowledged when the process dies is sent
again by the next shipper (InfluxDB overwrites an identical point).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import Context
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.registry.models import DataSource, target_label
from gateway.spool.models import SpoolEntry, TargetKey, WritePath
from gateway.spool.service import WriteSpool

log = structlog.get_logger(__name__)

LEASE_SECONDS = 60.0  # longer than one round: connect + response timeouts of one delivery
SCAN_SECONDS = 1.0
BATCH_ENTRIES = 1000
BATCH_BYTES = 8 << 20
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 15.0
_RETRIED_4XX = frozenset({408, 429})
_MESSAGE_LIMIT = 1000


class DeliveryFailed(Exception):
    """No answer from the target (connect error, reset, timeout): try again later."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request of the shipper: a batch of entries of one target."""

    path: WritePath
    params: dict[str, str]
    body: bytes
    content_type: str | None
    content_encoding: str | None
    entries: tuple[SpoolEntry, ...]


class Deliver(Protocol):
    """Send a delivery to the target `url` of `source` with the source's credentials (the
    Forwarder's pool): the upstream's status and the start of its body. Raises
    DeliveryFailed when there was no answer."""

    async def __call__(
        self, source: DataSource, url: str, delivery: Delivery
    ) -> tuple[int, str]: ...


class TargetHealth(Protocol):
    def report_failure(self, source_id: int, url: str | None = None) -> None: ...


# The registered sources by id (the SourceCache's snapshot).
SourceLookup = Callable[[], Awaitable[Mapping[int, DataSource]]]


class Shippers:
    def __init__(
        self,
        spool: WriteSpool,
        sources: SourceLookup,
        deliver: Deliver,
        health: TargetHealth | None,
        owner: str,
        *,
        scan_seconds: float = SCAN_SECONDS,
    ) -> None:
        self._spool = spool
        self._sources = sources
        self._deliver = deliver
        self._health = health
        self._owner = owner
        self._scan_seconds = scan_seconds
        self._shippers: dict[TargetKey, TargetShipper] = {}
        self._tasks: dict[TargetKey, asyncio.Task[None]] = {}
        self._gone: set[TargetKey] = set()
        spool.add_append_listener(self.wake)

    async def run(self) -> None:
        """Scan until cancelled; then cancel every target shipper and wait for them."""
        try:
            while True:
                try:
                    self._spool.sources = await self._sources()
                    snapshot = await self._spool.refresh()
                except Exception:  # the registry or the spool failed: the next scan tries again
                    log.exception("spool_scan_failed")
                else:
                    for status in snapshot.targets:
                        if status.queued_entries and self._shippable(status.target):
                            self.wake(status.target)
                await asyncio.sleep(self._scan_seconds)
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _shippable(self, key: TargetKey) -> bool:
        """Whether `key` is still a target of a registered source; a queue left behind by a
        deleted source or a removed replica stays in the file (see `gateway spool status`),
        logged once."""
        source = self._spool.sources.get(key.source_id)
        if source is not None and key.url in source.target_urls:
            self._gone.discard(key)
            return True
        if key not in self._gone:
            self._gone.add(key)
            log.warning("spool_target_gone", source_id=key.source_id, target=target_label(key.url))
        return False

    def wake(self, key: TargetKey) -> None:
        """Make sure a shipper runs for `key` (a write was queued, or a scan saw a backlog)."""
        task = self._tasks.get(key)
        if task is not None and not task.done():
            self._shippers[key].appended.set()
            return
        shipper = TargetShipper(key, self._spool, self._sources, self._deliver, self._health)
        self._shippers[key] = shipper
        # A context of its own: one made while serving a request would log its request id.
        task = asyncio.create_task(
            shipper.run(self._owner), name=f"spool-shipper-{key.url}", context=Context()
        )
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def target_changed(self, source: DataSource, url: str, healthy: bool) -> None:
        """A health listener: a target found healthy again ends its shipper's backoff."""
        shipper = self._shippers.get(TargetKey(source.id, url))
        if healthy and shipper is not None:
            shipper.recovered.set()

    def _finished(self, key: TargetKey, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            del self._shippers[key]
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            log.error("spool_shipper_crashed", target=target_label(key.url), exc_info=error)


class TargetShipper:
    def __init__(
        self,
        key: TargetKey,
        spool: WriteSpool,
        sources: SourceLookup,
        deliver: Deliver,
        health: TargetHealth | None,
    ) -> None:
        self.key = key
        self._spool = spool
        self._store = spool.store
        self._sources = sources
        self._deliver = deliver
        self._health = health
        self.appended = asyncio.Event()
        self.recovered = asyncio.Event()
        self._backoff = BACKOFF_FIRST
        self._split_until = 0  # entries up to this id go one by one (a batch had a 4xx)

    async def run(self, owner: str) -> None:
        key = self.key
        try:
            while True:
                source = (await self._sources()).get(key.source_id)
                if source is None or key.url not in source.target_urls:
                    return  # deleted or changed meanwhile: the scan logs it
                if not await self._store.claim(key, owner, LEASE_SECONDS):
                    return  # another shipper holds it; the scan looks again later
                if not await self._round(source):
                    return
        finally:
            with contextlib.suppress(Exception):
                await self._store.release(key, owner)

    async def _round(self, source: DataSource) -> bool:
        """One round: expire, send one batch; False once the queue is empty."""
        key, store = self.key, self._store
        appends = self._spool.appends(key)
        self.appended.clear()
        entries = await store.peek(key, limit=BATCH_ENTRIES, max_bytes=BATCH_BYTES)
        if not entries:
            if self.appended.is_set():
                return True  # queued meanwhile: look again
            if await store.settle(key):
                return True  # queued meanwhile by another process: look again
            self._spool.drained(key, appends)
            return False
        buffer = self._spool.defaults(source)
        if entries[0].enqueued_at < time.time() - buffer.max_age:
            expired = await store.expire(buffer.max_age, target=key)
            labels = self._spool.metrics.labels(key, source.org_id, source.uid)
            self._spool.metrics.dead_lettered.labels(*labels, "expired").inc(expired)
            log.warning(
                "spool_expired", source_uid=source.uid, target=target_label(key.url), count=expired
            )
            return True
        delivery = batch(entries, single=entries[0].id <= self._split_until)
        try:
            status, message = await self._deliver(source, key.url, delivery)
        except DeliveryFailed as exc:
            await self._failed(source, f"no answer: {exc}")
            return True
        if 200 <= status < 300:
            await self._delivered(source, delivery)
        elif 400 <= status < 500 and status not in _RETRIED_4XX:
            await self._rejected(source, delivery, status, message)
        else:
            await self._failed(source, f"HTTP {status}: {message[:200]}")
        return True

    async def _delivered(self, source: DataSource, delivery: Delivery) -> None:
        await self._store.ack([entry.id for entry in delivery.entries])
        self._backoff = BACKOFF_FIRST
        metrics = self._spool.metrics
        labels = metrics.labels(self.key, source.org_id, source.uid)
        metrics.delivered.labels(*labels).inc(len(delivery.entries))
        metrics.replayed_bytes.labels(*labels).inc(sum(e.write.size for e in delivery.entries))
        metrics.replayed_points.labels(*labels).inc(sum(points(e) for e in delivery.entries))

    async def _rejected(
        self, source: DataSource, delivery: Delivery, status: int, message: str
    ) -> None:
        if len(delivery.entries) > 1:
            # Which entry was it? Send them one by one: the good ones are delivered (again, for
            # the points of a partial write: harmless), the bad one becomes a dead letter.
            self._split_until = delivery.entries[-1].id
            return
        (entry,) = delivery.entries
        reason = f"HTTP {status}: {message.strip()[:_MESSAGE_LIMIT]}"
        await self._store.dead_letter(entry.id, reason)
        metrics = self._spool.metrics
        labels = metrics.labels(self.key, source.org_id, source.uid)
        metrics.dead_lettered.labels(*labels, "rejected").inc()
        log.warning(
            "spool_dead_letter",
            source_uid=source.uid,
            target=target_label(self.key.url),
            entry=entry.id,
            reason=reason,
        )

    async def _failed(self, source: DataSource, reason: str) -> None:
        """The target did not take the batch: a probe now, then wait (backoff with jitter),
        or until health finds the target healthy again."""
        log.info(
            "spool_delivery_failed",
            source_uid=source.uid,
            target=target_label(self.key.url),
            reason=reason,
            retry_in=round(self._backoff, 2),
        )
        if self._health is not None:
            self._health.report_failure(source.id, self.key.url)
        delay = self._backoff / 2 + random.uniform(0, self._backoff / 2)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self.recovered.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.recovered.wait(), delay)


def batch(entries: Sequence[SpoolEntry], *, single: bool = False) -> Delivery:
    """The first delivery of `entries`: the head, with the plain entries after it that share
    its path, parameters and content type (their bodies joined, one line protocol body)."""
    head = entries[0]
    first = head.write
    taken = [head]
    if not single and not first.content_encoding:
        for entry in entries[1:]:
            write = entry.write
            if (
                write.content_encoding
                or write.path != first.path
                or write.params != first.params
                or write.content_type != first.content_type
            ):
                break
            taken.append(entry)
    if len(taken) == 1:
        body = first.body
    else:
        body = b"".join(
            e.write.body if e.write.body.endswith(b"\n") else e.write.body + b"\n" for e in taken
        )
    return Delivery(
        first.path,
        dict(first.params),
        body,
        first.content_type,
        first.content_encoding,
        tuple(taken),
    )


def points(entry: SpoolEntry) -> int:
    """Lines of line protocol in the entry (decompressed in pieces when gzip)."""
    body = entry.write.body
    if entry.write.content_encoding == "gzip":
        try:
            return _gzip_lines(body)
        except zlib.error:
            return 0
    return _lines(body)


def _lines(text: bytes) -> int:
    return sum(1 for line in text.split(b"\n") if line.strip() and not line.startswith(b"#"))


def _gzip_lines(body: bytes) -> int:
    decompressor = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    count, pending, data = 0, b"", body
    while data:
        chunk = decompressor.decompress(data, 1 << 20)
        data = decompressor.unconsumed_tail
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        count += sum(1 for line in lines if line.strip() and not line.startswith(b"#"))
        if decompressor.eof:
            break
    return count + _lines(pending + decompressor.flush())

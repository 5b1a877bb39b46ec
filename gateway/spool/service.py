"""WriteSpool: what the proxy and the shippers share about the spool of one gateway process.

- `buffer(source)`: a source's spool settings (gateway/spool/policy.py), None when it is off;
- `queued(target)`: whether something is queued for a target — an in-memory answer, on the hot
  path: the spool's shared marks (marks.py), which every worker's appends set before their
  writers hear 204 and only a shipper that found the queue empty clears, so a write never
  overtakes one acknowledged before it through any worker. This process also counts a target
  as queued from the moment it starts an append for it (before the append is durable), until
  its shipper found the queue empty or a status read says so;
- `append`: queue one write, durably, counted; the shippers hear of it at once;
- `snapshot`: the spool's status (per target: queued entries, bytes, oldest entry, dead
  letters) as of the last refresh, for metrics and health checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from gateway.registry.models import DataSource
from gateway.spool.errors import SpoolFull
from gateway.spool.metrics import SpoolMetrics, StatusSnapshot
from gateway.spool.models import SpooledWrite, TargetKey
from gateway.spool.policy import DEFAULT_FORWARD_TIMEOUT, WriteBuffer, write_buffer
from gateway.spool.store import SpoolStore

AppendListener = Callable[[TargetKey], None]


class WriteSpool:
    def __init__(
        self,
        store: SpoolStore,
        metrics: SpoolMetrics,
        *,
        default_max_bytes: int,
        default_max_age: float,
        max_body_bytes: int,
        default_forward_timeout: float = DEFAULT_FORWARD_TIMEOUT,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self._default_max_bytes = default_max_bytes
        self._default_max_age = default_max_age
        self._default_forward_timeout = default_forward_timeout
        self._buffers: dict[int, tuple[int, WriteBuffer | None]] = {}  # id → (version, buffer)
        self._backlog: set[TargetKey] = set()
        # Appends started by this process per target: a status read before an append must not
        # clear the mark that append set.
        self._appends: dict[TargetKey, int] = {}
        self._listeners: list[AppendListener] = []
        self.snapshot = StatusSnapshot()
        self.sources: Mapping[int, DataSource] = {}  # as of the shippers' latest scan

    def source_labels(self, source_id: int) -> tuple[str, str] | None:
        """(org, uid) of a source, for the metrics; None when it is not registered."""
        source = self.sources.get(source_id)
        return None if source is None else (str(source.org_id), source.uid)

    def buffer(self, source: DataSource) -> WriteBuffer | None:
        cached = self._buffers.get(source.id)
        if cached is not None and cached[0] == source.version:
            return cached[1]
        buffer = write_buffer(
            source, self._default_max_bytes, self._default_max_age, self._default_forward_timeout
        )
        self._buffers[source.id] = (source.version, buffer)
        return buffer

    def defaults(self, source: DataSource) -> WriteBuffer:
        """The source's settings, or the defaults when its spool was turned off meanwhile:
        what is already queued is still delivered."""
        return self.buffer(source) or WriteBuffer(
            self._default_max_bytes,
            self._default_max_age,
            mirror=False,
            forward_timeout=self._default_forward_timeout,
        )

    def queued(self, key: TargetKey) -> bool:
        return key in self._backlog or self.store.queued(key)

    def add_append_listener(self, listener: AppendListener) -> None:
        self._listeners.append(listener)

    async def append(self, write: SpooledWrite, buffer: WriteBuffer, source: DataSource) -> int:
        """Queue `write` durably; raises SpoolFull (counted) when it cannot be taken."""
        key = write.target
        self._backlog.add(key)
        self._appends[key] = self._appends.get(key, 0) + 1
        labels = self.metrics.labels(key, source.org_id, source.uid)
        try:
            entry_id = await self.store.append(write, max_bytes=buffer.max_bytes)
        except SpoolFull as exc:
            reason = "full" if "max_bytes" in exc.reason else "disk"
            self.metrics.rejected.labels(*labels, reason).inc()
            raise
        self.metrics.appended.labels(*labels).inc()
        for listener in self._listeners:
            listener(key)
        return entry_id

    def appends(self, key: TargetKey) -> int:
        return self._appends.get(key, 0)

    def drained(self, key: TargetKey, appends_before: int) -> None:
        """A shipper found `key`'s queue empty, having read `appends(key)` before it looked."""
        if self._appends.get(key, 0) == appends_before:
            self._backlog.discard(key)

    async def refresh(self) -> StatusSnapshot:
        """Read the spool's status; mark every target with a queue, clear the others (unless
        this process appended to them since)."""
        before = dict(self._appends)
        statuses = await self.store.status()
        self.snapshot = StatusSnapshot(time.time(), statuses)
        unmarked = False
        for status in statuses:
            key = status.target
            if status.queued_entries:
                self._backlog.add(key)
                unmarked = unmarked or not self.store.queued(key)
            elif self._appends.get(key, 0) == before.get(key, 0):
                self._backlog.discard(key)
        if unmarked:
            # Drained and settled since the status was read, or a marks file that lost a mark
            # (it should not): the counts decide, under the write lock.
            await self.store.sync_marks()
        return self.snapshot

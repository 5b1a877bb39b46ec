"""SourceCache: every data source in memory, so the proxy and the monitor never wait on SQL.

The registry tells the cache when anything was committed (here or by another process); the cache
only marks itself stale then, and the next reader reloads the whole table once. Readers after
a write therefore always see it — no window in which a just-created source is unknown — and a
read with no write in between costs a dictionary lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.registry.interface import Registry
from gateway.registry.models import DataSource


@dataclass(frozen=True, slots=True)
class Snapshot:
    sources: tuple[DataSource, ...] = ()
    by_id: dict[int, DataSource] = field(default_factory=dict)
    by_uid: dict[tuple[int, str], DataSource] = field(default_factory=dict)
    by_org: dict[int, tuple[DataSource, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, sources: Iterable[DataSource]) -> Snapshot:
        ordered = tuple(sources)
        by_org: dict[int, list[DataSource]] = {}
        for source in ordered:
            by_org.setdefault(source.org_id, []).append(source)
        return cls(
            sources=ordered,
            by_id={s.id: s for s in ordered},
            by_uid={(s.org_id, s.uid): s for s in ordered},
            by_org={org: tuple(members) for org, members in by_org.items()},
        )

    def get(
        self, org_id: int, *, id: int | None = None, uid: str | None = None
    ) -> DataSource | None:
        """One org's source by id or uid; None when absent or another org's (no leak)."""
        source = self.by_id.get(id) if id is not None else self.by_uid.get((org_id, uid or ""))
        if source is None or source.org_id != org_id:
            return None
        return source


class SourceCache:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._snapshot = Snapshot()
        self._stale = True
        self._lock = asyncio.Lock()
        self._subscribers: list[Callable[[], None]] = []
        registry.subscribe(self._invalidate)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (synchronously, cheaply) whenever the registry may have changed."""
        self._subscribers.append(callback)

    def _invalidate(self) -> None:
        self._stale = True
        for callback in self._subscribers:
            callback()

    async def snapshot(self) -> Snapshot:
        # A reader that arrives while another reloads waits for that reload: `_stale` is
        # already cleared then, and the snapshot in hand is the one from before the change.
        if self._stale or self._lock.locked():
            async with self._lock:
                if self._stale:
                    # Cleared before reading: a commit landing during the SELECT marks us stale
                    # again, so it is picked up by the next reader instead of being lost.
                    self._stale = False
                    try:
                        self._snapshot = Snapshot.of(await self._registry.list_sources())
                    except BaseException:
                        self._stale = True
                        raise
        return self._snapshot

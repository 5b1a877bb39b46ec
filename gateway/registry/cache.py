"""SourceCache: every data source in memory, so the proxy and the monitor never wait on SQL.

The registry tells the cache when anything was committed (here or by another process); the cache
only marks itself stale then, and the next reader reloads the whole table once. Readers after
a write therefore always see it — no window in which a just-created source is unknown — and a
read with no write in between costs a dictionary lookup.

While the registry's database is unreachable (PostgreSQL restarting, a network partition) the
last snapshot goes on being served rather than failing proxied requests: the registry refreshes
everything once the database is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from gateway.errors import RegistryUnavailable
from gateway.registry.interface import Registry
from gateway.registry.models import DataSource

log = structlog.get_logger(__name__)


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
        self._loaded = False
        self._failures = 0  # reloads that found the database unreachable
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

    def fresh(self) -> Snapshot | None:
        """The snapshot when it is current (what `snapshot` would return without waiting),
        else None: the proxied path asks this first, and awaits `snapshot` only then."""
        if self._stale or self._lock.locked():
            return None
        return self._snapshot

    async def snapshot(self) -> Snapshot:
        if self._stale and self._keeps_last():
            return self._snapshot  # no SQL while the database is known to be lost
        # A reader that arrives while another reloads waits for that reload: `_stale` is
        # already cleared then, and the snapshot in hand is the one from before the change.
        if self._stale or self._lock.locked():
            failures = self._failures
            async with self._lock:
                # A reload that failed while this reader waited means the database is not
                # answering: the reader takes the last snapshot instead of trying again.
                if self._stale and not (self._failures != failures and self._loaded):
                    if self._keeps_last():
                        return self._snapshot
                    # Cleared before reading: a commit landing during the SELECT marks us stale
                    # again, so it is picked up by the next reader instead of being lost.
                    self._stale = False
                    try:
                        self._snapshot = Snapshot.of(await self._registry.list_sources())
                    except RegistryUnavailable as exc:
                        self._stale = True
                        self._failures += 1
                        if not self._loaded:
                            raise
                        log.warning("source_cache_kept", reason=exc.message)
                    except BaseException:
                        self._stale = True
                        raise
                    else:
                        self._loaded = True
        return self._snapshot

    def _keeps_last(self) -> bool:
        """Whether to serve the last snapshot as it is: the database is known to be lost."""
        return self._loaded and self._registry.unavailable_for() is not None

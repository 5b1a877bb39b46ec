"""SourceCache over every backend: writes invalidate it, and no reader gets the state from
before a write it was told about."""

from __future__ import annotations

import asyncio

from gateway.registry.cache import SourceCache
from gateway.registry.interface import Registry
from tests.registry.sources import spec


async def test_a_write_is_seen_by_the_next_snapshot(registry: Registry) -> None:
    cache = SourceCache(registry)
    assert (await cache.snapshot()).sources == ()
    created = await registry.create_source(1, spec())
    assert [source.id for source in (await cache.snapshot()).sources] == [created.id]
    await registry.delete_source(1, created.id)
    assert (await cache.snapshot()).sources == ()


async def test_a_reader_arriving_during_a_reload_waits_for_it(registry: Registry) -> None:
    """Told of a change, a subscriber reads the snapshot; if another reader is reloading at that
    moment the subscriber must get that reload's result, not the snapshot from before."""
    cache = SourceCache(registry)
    await cache.snapshot()
    seen: list[list[int]] = []
    changed = asyncio.Event()
    cache.subscribe(changed.set)

    created = await registry.create_source(1, spec())
    assert changed.is_set()
    first = asyncio.create_task(cache.snapshot())  # begins the reload
    await asyncio.sleep(0)  # ... and is now waiting on the database
    seen.append([source.id for source in (await cache.snapshot()).sources])
    seen.append([source.id for source in (await first).sources])
    assert seen == [[created.id], [created.id]]

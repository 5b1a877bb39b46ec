"""SharedProbing: this gateway's part in a cluster's probing — membership, ownership, storage.

One task keeps it going, every interval / HEARTBEATS_PER_INTERVAL:
1. heartbeat, and read the live members;
2. read the stored health states and have the monitor adopt those of sources it does not own
   (before ownership moves, so a source taken over continues from its latest stored state);
3. when the live members changed, tell the monitor, which re-reads `owns` for every source.
Another task stores the owned sources' states soon after each probe result (`stored_changed`),
in batches.

While the database cannot be reached, heartbeats fail and the others soon see this member as
gone; once this member's own heartbeat would count as stale it takes itself as the only member
and probes every source (a gateway that cannot share state must still know its sources'
health), until a heartbeat succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import structlog
from asyncpg import Record

from gateway.cluster import membership, stored
from gateway.cluster.hashing import owner_of, source_key
from gateway.config import Settings
from gateway.health.monitor import HealthMonitor
from gateway.health.state import SourceState
from gateway.registry.backends import backend_for
from gateway.registry.interface import StoreUnusable
from gateway.registry.models import DataSource
from gateway.registry.postgres import PostgresBackend
from gateway.registry.postgres.backend import CONNECT_ERRORS
from gateway.registry.postgres.watch import CONNECTION_ERRORS  # TimeoutError among them

log = structlog.get_logger(__name__)

PUBLISH_DELAY = 0.1  # results coming in together are stored together
CLOSE_SECONDS = 2.0  # at most this long each to leave the cluster and close the pool on stop
APPLICATION_NAME = "datasource-gateway-cluster"  # this pool's connections, in pg_stat_activity


class SharedProbing:
    def __init__(self, pool: asyncpg.Pool[Record], member: str, interval: float) -> None:
        self._pool = pool
        self.member = member
        self._interval = interval
        self._members: tuple[str, ...] = (member,)
        self._last_heartbeat = time.monotonic()
        self._dirty: dict[int, SourceState] = {}
        self._dirty_event = asyncio.Event()
        self._unreachable = False

    @property
    def members(self) -> tuple[str, ...]:
        """The live members as this one last saw them (itself included)."""
        return self._members

    def owns(self, source: DataSource) -> bool:
        """Whether this member probes `source`: the monitor's `owns`."""
        return owner_of(source_key(source), self._members) == self.member

    def stored_changed(self, state: SourceState) -> None:
        """The monitor's `on_result`: an owned source's state changed; store it soon."""
        self._dirty[state.source.id] = state
        self._dirty_event.set()

    async def join(self) -> None:
        """Heartbeat once and learn the members, before the monitor schedules anything.

        With others live this member owns nothing at first: its share is taken once the
        monitor has adopted the stored states (`run`), so that a source failing for a while
        does not look like a new failure (and is not logged again) because it changed hands."""
        async with self._pool.acquire() as db:
            await membership.heartbeat(db, self.member)
            live = await self._live(db)
        self._last_heartbeat = time.monotonic()
        others = tuple(member for member in live if member != self.member)
        self._members = others or live
        log.info("cluster_joined", member=self.member, members=len(live))

    async def run(self, monitor: HealthMonitor) -> None:
        """Until cancelled: heartbeats and adoption, and storing results."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._keep_in_touch(monitor))
            tasks.create_task(self._publish())

    async def leave(self) -> None:
        """Delete this member's row so the others take its share at their next look."""
        try:
            # Bounded: a gateway stopping while the database is away must not hang on it.
            async with asyncio.timeout(min(self._interval, CLOSE_SECONDS)):
                async with self._pool.acquire() as db:
                    await membership.leave(db, self.member)
        except CONNECTION_ERRORS as exc:
            log.warning("cluster_leave_failed", member=self.member, error=str(exc))

    async def _keep_in_touch(self, monitor: HealthMonitor) -> None:
        await monitor.synced()  # a state for each source, to adopt stored states into
        period = self._interval / membership.HEARTBEATS_PER_INTERVAL
        beats = 0
        while True:
            try:
                async with asyncio.timeout(max(period * 2, 1.0)), self._pool.acquire() as db:
                    await membership.heartbeat(db, self.member)
                    members = await self._live(db)
                    states = await stored.load(db)
                    beats += 1
                    if beats % 100 == 0:
                        await membership.forget_dead(db, self._interval)
            except CONNECTION_ERRORS as exc:
                self._lost_touch(monitor, exc)
            else:
                self._last_heartbeat = time.monotonic()
                if self._unreachable:
                    self._unreachable = False
                    log.info("cluster_database_reachable", member=self.member)
                for state in states:
                    monitor.adopt(state)
                self._set_members(monitor, members)
            await asyncio.sleep(period)

    def _lost_touch(self, monitor: HealthMonitor, exc: BaseException) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("cluster_database_unreachable", member=self.member, error=str(exc))
        stale = time.monotonic() - self._last_heartbeat > self._interval * membership.LIVE_INTERVALS
        if stale and self._members != (self.member,):
            log.warning("cluster_probing_alone", member=self.member)
            self._set_members(monitor, [self.member])

    async def _live(self, db: membership.Db) -> tuple[str, ...]:
        members = set(await membership.live_members(db, self._interval))
        members.add(self.member)  # just heartbeated: live whatever the clocks say
        return tuple(sorted(members))

    def _set_members(self, monitor: HealthMonitor, members: list[str] | tuple[str, ...]) -> None:
        members = tuple(members)
        if members == self._members:
            return
        self._members = members
        log.info("cluster_members_changed", member=self.member, members=len(members))
        monitor.ownership_changed()

    async def _publish(self) -> None:
        while True:
            await self._dirty_event.wait()
            await asyncio.sleep(PUBLISH_DELAY)
            self._dirty_event.clear()
            batch, self._dirty = self._dirty, {}
            owned = [state.stored() for state in batch.values() if state.owned]
            try:
                async with asyncio.timeout(self._interval), self._pool.acquire() as db:
                    await stored.publish(db, owned, self.member)
            except CONNECTION_ERRORS as exc:
                log.warning("cluster_publish_failed", member=self.member, error=str(exc))
                # Newer results than these keep their place; the rest are tried again.
                self._dirty = batch | self._dirty
                await asyncio.sleep(self._interval / membership.HEARTBEATS_PER_INTERVAL)
                self._dirty_event.set()


def cluster_url(settings: Settings) -> str | None:
    """The PostgreSQL registry's URL when the settings select one (shared probing), else None."""
    backend = backend_for(settings)
    return backend.url if isinstance(backend, PostgresBackend) else None


async def serving_members(settings: Settings) -> tuple[list[str], float]:
    """The cluster members serving the PostgreSQL registry the settings select, and the window
    (seconds since a last heartbeat) in which a member counts as serving; ([], window) for
    SQLite, where the data directory's lock says whether a gateway serves it. For commands that
    must run alone (`gateway keys rotate`): the other gateways keep the registry's key in
    memory."""
    window = settings.health_interval * membership.LIVE_INTERVALS
    url = cluster_url(settings)
    if url is None:
        return [], window
    where = PostgresBackend(url).location
    try:
        timeout = settings.database_query_timeout
        db = await asyncpg.connect(url, timeout=timeout, command_timeout=timeout)
    except CONNECT_ERRORS as exc:
        raise StoreUnusable(f"cannot connect to the PostgreSQL registry at {where}: {exc}") from exc
    try:
        return await membership.live_members(db, settings.health_interval), window
    except CONNECTION_ERRORS as exc:
        raise StoreUnusable(f"cannot read the cluster's members at {where}: {exc}") from exc
    finally:
        try:
            await db.close(timeout=CLOSE_SECONDS)
        except CONNECTION_ERRORS:  # a server that stopped answering: drop the socket
            db.terminate()


@contextlib.asynccontextmanager
async def open_shared_probing(settings: Settings) -> AsyncIterator[SharedProbing | None]:
    """SharedProbing joined to the cluster when the registry is PostgreSQL; None (every source
    probed here, as ever) when it is SQLite. Leaves the cluster on exit."""
    url = cluster_url(settings)
    if url is None:
        yield None
        return
    where = PostgresBackend(url).location
    try:
        pool: asyncpg.Pool[Record] = await asyncpg.create_pool(
            url, min_size=1, max_size=2, server_settings={"application_name": APPLICATION_NAME}
        )
    except CONNECT_ERRORS as exc:
        raise StoreUnusable(f"cannot connect to the PostgreSQL registry at {where}: {exc}") from exc
    try:
        probing = SharedProbing(pool, membership.new_member_id(), settings.health_interval)
        try:
            await probing.join()
        except CONNECTION_ERRORS as exc:
            raise StoreUnusable(f"cannot join the cluster at {where}: {exc}") from exc
        try:
            yield probing
        finally:
            await probing.leave()
    finally:
        try:
            await asyncio.wait_for(pool.close(), CLOSE_SECONDS)
        except CONNECTION_ERRORS:  # TimeoutError among them
            pool.terminate()

"""The change watch: a dedicated connection LISTENing on the registry's change channel.

Every write NOTIFYs the channel in its transaction (registry.py), so each gateway hears every
other's commits as they happen. A lost connection (the server restarted, an operator terminated
the backend, the network broke) is noticed through asyncpg's termination callback or, for a
silent loss (a frozen server, a dead network path), a keep-alive query that does not answer in
time; the watch then reports the loss (the registry counts the database as unreachable from
then on: /ready's grace period), reconnects with a growing delay, LISTENs again, and only then
signals "changed": whatever was committed while nobody listened is picked up by the full
refresh that signal causes (SourceCache reloads).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from asyncpg import Record

from gateway.registry.postgres.failures import describe_database_error

log = structlog.get_logger(__name__)

# What losing the connection (or failing to make it) may raise.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
# Short: how soon a restarted server is noticed (/ready back to 200, caches refreshed); a refused
# connection costs the server next to nothing.
MAX_RETRY_SECONDS = 5.0


class ChangeWatch:
    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection[Record]]],
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None],
        on_reconnect: Callable[[], None],
        keepalive_seconds: float,
        retry_seconds: float,
        query_timeout: float,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._on_reconnect = on_reconnect
        self._keepalive = keepalive_seconds
        self._query_timeout = query_timeout
        self._retry = retry_seconds
        self._conn: asyncpg.Connection[Record] | None = None
        self._lost = asyncio.Event()

    async def start(self) -> None:
        """Connect and LISTEN; raises if it cannot (the registry is not opened then)."""
        self._conn = await self._listen()

    async def run(self) -> None:
        """Until cancelled: keep the LISTEN connection up; after a loss, reconnect and signal."""
        while True:
            await self._wait_for_loss()
            log.warning("registry_change_watch_lost", channel=self._channel)
            self._on_lost()
            await self._close()
            self._conn = await self._reconnect()
            log.info("registry_change_watch_restored", channel=self._channel)
            self._on_reconnect()

    async def close(self) -> None:
        await self._close()

    async def _listen(self) -> asyncpg.Connection[Record]:
        conn = await self._connect()
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, self._heard)
        except BaseException:
            conn.terminate()
            raise
        self._lost = lost
        return conn

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self._on_notify(str(payload))

    async def _wait_for_loss(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._keepalive)
                return
            conn = self._conn
            if conn is None or conn.is_closed():
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), self._query_timeout)
            except CONNECTION_ERRORS as exc:
                log.warning("registry_change_watch_keepalive_failed", error=self._describe(exc))
                return

    async def _reconnect(self) -> asyncpg.Connection[Record]:
        delay = self._retry
        while True:
            try:
                return await self._listen()
            except CONNECTION_ERRORS as exc:
                log.warning(
                    "registry_change_watch_reconnect_failed",
                    error=self._describe(exc),
                    retry_in=delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

    def _describe(self, exc: BaseException) -> str:
        # In words, as the registry's 503s say it: a timeout's own text is empty.
        return describe_database_error(exc, timeout=self._query_timeout)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), self._query_timeout)
        except CONNECTION_ERRORS:
            conn.terminate()  # a broken connection is dropped, not closed politely
        except asyncio.CancelledError:
            conn.terminate()
            raise

"""PostgresBackend: the registry in a PostgreSQL database that several gateways share."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from asyncpg import Record

from gateway.registry.interface import StoreUnusable
from gateway.registry.postgres import schema
from gateway.registry.postgres.registry import CHANGE_CHANNEL, PostgresRegistry
from gateway.registry.postgres.watch import CONNECTION_ERRORS, ChangeWatch
from gateway.registry.secrets import SecretBox, SecretKeyMismatch

# Connecting may also raise ValueError: a URL asyncpg cannot read.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (ValueError, *CONNECTION_ERRORS)
APPLICATION_NAME = "datasource-gateway"
WATCH_APPLICATION_NAME = "datasource-gateway-watch"  # the LISTEN connection, in pg_stat_activity


@dataclass(frozen=True, slots=True)
class PostgresBackend:
    url: str  # postgresql://user[:password]@host[:port]/database[?options], as libpq takes it
    pool_size: int = 4
    # Connecting, and each statement, may take this long; longer counts as the database being
    # unreachable (a frozen server answers nothing, and no error would ever come).
    query_timeout: float = 5.0
    # How often the change watch makes sure its connection is alive, and its first retry delay.
    keepalive_seconds: float = 5.0
    retry_seconds: float = 0.5
    channel: str = CHANGE_CHANNEL

    @property
    def location(self) -> str:
        """The URL without its password (and without options, which may hold one)."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username}@{host}" if parts.username else host
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is not None:
            netloc += f":{port}"
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @contextlib.asynccontextmanager
    async def open(self, box: SecretBox) -> AsyncIterator[PostgresRegistry]:
        """Connect, check the key, migrate and seed (under a lock), LISTEN for other gateways'
        writes, and yield the registry until closed."""
        try:
            pool: asyncpg.Pool[Record] = await asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.query_timeout,
                command_timeout=self.query_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except CONNECT_ERRORS as exc:
            raise StoreUnusable(
                f"cannot connect to the PostgreSQL registry at {self.location}: {exc}"
            ) from exc
        try:
            try:
                async with pool.acquire() as db:
                    await schema.prepare(db, box)
            except (SecretKeyMismatch, StoreUnusable):
                raise
            except CONNECTION_ERRORS as exc:
                raise StoreUnusable(
                    f"the PostgreSQL registry at {self.location} is not usable: {exc}"
                ) from exc
            registry = PostgresRegistry(pool, box, self.channel, query_timeout=self.query_timeout)
            watch = ChangeWatch(
                self._connect_watch,
                self.channel,
                on_notify=registry.heard,
                on_lost=registry.connection_lost,
                on_reconnect=registry.connection_restored,
                keepalive_seconds=self.keepalive_seconds,
                retry_seconds=self.retry_seconds,
                query_timeout=self.query_timeout,
            )
            # LISTEN before anyone holds the registry: a commit by another gateway from here on
            # is heard, however soon it comes.
            try:
                await watch.start()
            except CONNECTION_ERRORS as exc:
                raise StoreUnusable(
                    f"cannot LISTEN on the PostgreSQL registry at {self.location}: {exc}"
                ) from exc
            task = asyncio.create_task(watch.run(), name="registry-change-watch")
            try:
                yield registry
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await watch.close()
        finally:
            await pool.close()

    async def _connect_watch(self) -> asyncpg.Connection[Record]:
        return await asyncpg.connect(
            self.url,
            timeout=self.query_timeout,
            server_settings={"application_name": WATCH_APPLICATION_NAME},
        )

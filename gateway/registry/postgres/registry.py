"""PostgresRegistry: the `Registry` of the PostgreSQL backend.

A small asyncpg pool: reads run side by side; every write is one transaction that first takes
the registry's write lock (`pg_advisory_xact_lock`, cluster-wide, released at commit), so writes
are serialised across gateways as SQLite's `BEGIN IMMEDIATE` serialises processes.

Every write also NOTIFYs the change channel inside its transaction: PostgreSQL delivers it at
commit, to every gateway LISTENing (see `watch.py`), and not at all on rollback. The payload is
this registry's instance id, so it does not hear its own writes twice: it tells its listeners
itself, after the commit.

Losing the database is translated here, at the boundary: a query that cannot reach the server
(refused, reset, no answer within the backend's query timeout) raises `RegistryUnavailable`, a
503 with Retry-After in either API's dialect. Only API calls meet it: proxied requests are
served from the caches, which keep their last snapshot while the change watch reports the
database lost (`unavailable_for`, which /ready compares with its grace period): lost since the
change watch lost its connection or a query went unanswered, until a query is answered or the
watch is back.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeAlias, TypeVar

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import DataSourceNotFound, OrgNotFound, RegistryUnavailable
from gateway.registry.identifiers import new_influx_id
from gateway.registry.interface import ChangeListener, Mutation, OrgNameTaken
from gateway.registry.models import DataSource, DataSourceSpec, Org, Principal, Role, TokenInfo
from gateway.registry.postgres import schema, writes
from gateway.registry.postgres.batch import PostgresBatch
from gateway.registry.postgres.failures import describe_database_error
from gateway.registry.postgres.rows import (
    SOURCE_COLUMNS,
    RowReader,
    list_sources_sql,
    now,
    org_of,
    source_of,
)
from gateway.registry.secrets import SecretBox
from gateway.registry.validation import org_name_taken

# A connection from the pool (generic only to the type checker).
Db: TypeAlias = "PoolConnectionProxy[Record]"

# The NOTIFY channel every write signals on.
CHANGE_CHANNEL = "datasource_gateway_registry"
# Session advisory lock held around a provisioning apply: one gateway applies at a time (the
# others then find their files already applied, and change nothing). Away from schema.py's
# numbers, which may grow.
PROVISIONING_LOCK = 0x6473_6777_0000_0010  # "dsgw" 16
# Waiting for a lock is waiting for another gateway's work (a long provisioning apply), not a
# sign of an unreachable server: it gets longer than one query.
LOCK_WAIT_SECONDS = 60.0

# What not reaching the server raises (as opposed to a statement it refused): the socket, the
# query timeout, a connection the server closed, a server shutting down or starting up, one
# with no connection slot left.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

P = ParamSpec("P")
R = TypeVar("R")


def _reachable(
    method: Callable[Concatenate[PostgresRegistry, P], Awaitable[R]],
) -> Callable[Concatenate[PostgresRegistry, P], Coroutine[Any, Any, R]]:
    """Translate an unreachable database into the domain's 503 (see the module docstring)."""

    @functools.wraps(method)
    async def translated(self: PostgresRegistry, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = await method(self, *args, **kwargs)
        except UNREACHABLE_ERRORS as exc:
            raise self.unreachable(exc) from exc
        self.reached()
        return result

    return translated


class PostgresRegistry:
    def __init__(
        self,
        pool: asyncpg.Pool[Record],
        box: SecretBox,
        channel: str = CHANGE_CHANNEL,
        *,
        query_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._timeout = query_timeout
        self._box = box
        self._reader = RowReader(box)
        self._channel = channel
        self._listeners: list[ChangeListener] = []
        self.instance = secrets.token_hex(8)  # the NOTIFY payload of this registry's writes
        self._lost_since: float | None = None  # monotonic time the server was found unreachable

    # --- the backend itself ------------------------------------------------------------------

    @property
    def engine(self) -> str:
        return "PostgreSQL"

    @_reachable
    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

    def unavailable_for(self) -> float | None:
        lost = self._lost_since
        return None if lost is None else time.monotonic() - lost

    @_reachable
    async def schema_version(self) -> int:
        async with self._acquire() as db:
            return await schema.schema_version(db)

    # --- change notification -----------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def notify_listeners(self) -> None:
        """Tell every listener something may have changed (also: the change watch was lost and
        is back, so notifications may have been missed)."""
        for listener in self._listeners:
            listener()

    def connection_lost(self) -> None:
        """The server did not answer (the change watch lost it, or a query failed): count it
        unreachable until something reaches it again."""
        if self._lost_since is None:
            self._lost_since = time.monotonic()

    def reached(self) -> None:
        """A query was answered: the server is reachable, whatever the watch is doing."""
        self._lost_since = None

    def unreachable(self, exc: BaseException) -> RegistryUnavailable:
        """The domain error for a query that did not reach the server, which counts as lost."""
        self.connection_lost()
        return RegistryUnavailable(describe_database_error(exc, timeout=self._timeout))

    def connection_restored(self) -> None:
        """The change watch is LISTENing again: the server is back, and notifications sent
        meanwhile were missed, so everything may have changed."""
        self._lost_since = None
        self.notify_listeners()

    def heard(self, payload: str) -> None:
        """A NOTIFY on the change channel: another registry (here or on another gateway)
        committed a write."""
        if payload != self.instance:
            self.notify_listeners()

    # --- orgs --------------------------------------------------------------------------------

    @_reachable
    async def create_org(self, name: str) -> Org:
        try:
            async with self._write() as db:
                org_id: int = await db.fetchval(
                    "INSERT INTO org (influx_id, name, created) VALUES ($1, $2, $3) RETURNING id",
                    new_influx_id(),
                    name,
                    now(),
                )
        except asyncpg.UniqueViolationError as exc:
            raise OrgNameTaken(org_name_taken(await self._org_name_like(name))) from exc
        return await self.get_org(org_id)

    @_reachable
    async def get_org(self, org_id: int) -> Org:
        row = await self._fetchrow("SELECT * FROM org WHERE id = $1", org_id)
        if row is None:
            raise OrgNotFound()
        return org_of(row)

    @_reachable
    async def find_org(self, *, name: str | None = None, influx_id: str | None = None) -> Org:
        if name is not None:
            row = await self._fetchrow(
                "SELECT * FROM org WHERE ascii_lower(name) = ascii_lower($1)", name
            )
        else:
            row = await self._fetchrow("SELECT * FROM org WHERE influx_id = $1", influx_id)
        if row is None:
            raise OrgNotFound()
        return org_of(row)

    async def _org_name_like(self, name: str) -> str:
        """The stored name that `name` collides with (it may differ in case)."""
        try:
            return (await self.find_org(name=name)).name
        except OrgNotFound:  # gone since: name what was given
            return name

    @_reachable
    async def list_orgs(self) -> list[Org]:
        return [org_of(row) for row in await self._fetch("SELECT * FROM org ORDER BY id")]

    # --- tokens ------------------------------------------------------------------------------

    @_reachable
    async def create_token(
        self, org_id: int, role: Role, token_hash: str, description: str = ""
    ) -> int:
        async with self._write() as db:
            return await writes.insert_token(db, org_id, role, token_hash, description)

    @_reachable
    async def ensure_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        async with self._write() as db:
            row = await db.fetchrow(
                "SELECT id, role, org_id, revoked FROM api_token WHERE token_hash = $1",
                token_hash,
            )
            if row is None:
                await writes.insert_token(db, org_id, role, token_hash, description)
                return True
            if row["revoked"] is None and row["role"] == role.value and row["org_id"] == org_id:
                return False
            await db.execute(
                "UPDATE api_token SET revoked = NULL, role = $1, org_id = $2 WHERE id = $3",
                role.value,
                org_id,
                row["id"],
            )
            return True

    @_reachable
    async def create_first_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        async with self._write() as db:
            if await db.fetchval("SELECT 1 FROM api_token WHERE revoked IS NULL LIMIT 1"):
                return False
            await writes.insert_token(db, org_id, role, token_hash, description)
            return True

    @_reachable
    async def find_principal(self, token_hash: str) -> Principal | None:
        row = await self._fetchrow(
            "SELECT t.id AS token_id, t.role, o.id, o.influx_id, o.name, o.created "
            "FROM api_token t JOIN org o ON o.id = t.org_id "
            "WHERE t.token_hash = $1 AND t.revoked IS NULL",
            token_hash,
        )
        if row is None:
            return None
        return Principal(token_id=row["token_id"], org=org_of(row), role=Role(row["role"]))

    @_reachable
    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._fetch(
            "SELECT t.id, o.name AS org_name, t.role, t.description, t.created, t.revoked "
            "FROM api_token t JOIN org o ON o.id = t.org_id ORDER BY t.id"
        )
        return [
            TokenInfo(
                id=row["id"],
                org_name=row["org_name"],
                role=Role(row["role"]),
                description=row["description"],
                created=row["created"],
                revoked=row["revoked"],
            )
            for row in rows
        ]

    @_reachable
    async def revoke_token(self, token_id: int) -> bool:
        async with self._write() as db:
            revoked = await db.fetchval(
                "UPDATE api_token SET revoked = $1 WHERE id = $2 AND revoked IS NULL RETURNING id",
                now(),
                token_id,
            )
            return revoked is not None

    # --- data sources ------------------------------------------------------------------------

    @_reachable
    async def list_sources(self, org_id: int | None = None) -> list[DataSource]:
        sql, params = list_sources_sql(org_id)
        rows = await self._fetch(sql, *params)
        if org_id is not None:
            return [source_of(row, self._box) for row in rows]
        return self._reader.sources(rows)  # every source: what a cache reload asks for

    @_reachable
    async def get_source(
        self,
        org_id: int,
        *,
        id: int | None = None,
        uid: str | None = None,
        name: str | None = None,
    ) -> DataSource:
        value: Any
        if id is not None:
            where, value = "id = $2", id
        elif uid is not None:
            where, value = "uid = $2", uid
        elif name is not None:
            # SQLite's NOCASE: ASCII case only, as the unique index compares.
            where, value = "ascii_lower(name) = ascii_lower($2)", name
        else:
            raise TypeError("get_source needs id, uid or name")
        row = await self._fetchrow(
            f"SELECT {SOURCE_COLUMNS} FROM data_source WHERE org_id = $1 AND {where}",
            org_id,
            value,
        )
        if row is None:
            raise DataSourceNotFound()
        return source_of(row, self._box)

    @_reachable
    async def create_source(self, org_id: int, spec: DataSourceSpec) -> DataSource:
        async with self._write() as db:
            return await writes.create_source(db, self._box, org_id, spec, provisioned_by=None)

    @_reachable
    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
    ) -> DataSource:
        async with self._write() as db:
            return await writes.update_source(
                db,
                self._box,
                org_id,
                source_id,
                mutate,
                expected_version=expected_version,
                provisioned_by=None,
            )

    @_reachable
    async def delete_source(
        self,
        org_id: int,
        source_id: int,
        *,
        allow_read_only: bool = False,
        check: Callable[[DataSource], object] | None = None,
    ) -> DataSource:
        async with self._write() as db:
            return await writes.delete_source(
                db, self._box, org_id, source_id, allow_read_only=allow_read_only, check=check
            )

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[PostgresBatch]:
        try:
            async with self._locked() as db:
                batch = PostgresBatch(db, self._box)
                yield batch
                # A batch that changed nothing (provisioning files applied already, by this
                # gateway or another) does not make every gateway drop its caches.
                if batch.changed:
                    await self._announce(db)
        except UNREACHABLE_ERRORS as exc:
            raise self.unreachable(exc) from exc
        self.reached()
        if batch.changed:
            self.notify_listeners()

    @asynccontextmanager
    async def provisioning_lock(self) -> AsyncIterator[None]:
        try:
            async with self._acquire() as db:
                await db.execute(
                    "SELECT pg_advisory_lock($1)", PROVISIONING_LOCK, timeout=LOCK_WAIT_SECONDS
                )
                try:
                    yield
                finally:
                    # Best effort: a lost connection has released it already, and the pool's
                    # reset unlocks whatever a returned connection still holds.
                    with contextlib.suppress(*UNREACHABLE_ERRORS):
                        await db.execute("SELECT pg_advisory_unlock($1)", PROVISIONING_LOCK)
        except UNREACHABLE_ERRORS as exc:
            raise self.unreachable(exc) from exc

    # --- keys --------------------------------------------------------------------------------

    @_reachable
    async def rotate_key(self, new_box: SecretBox) -> int:
        async with self._write() as db:
            rows = await db.fetch("SELECT id, secure_json_data FROM data_source ORDER BY id")
            for row in rows:
                plain = self._box.decrypt(row["secure_json_data"])
                await db.execute(
                    "UPDATE data_source SET secure_json_data = $1 WHERE id = $2",
                    new_box.encrypt(plain),
                    row["id"],
                )
            await db.execute(
                "UPDATE meta SET value = $1 WHERE key = $2", new_box.key_check(), schema.KEY_CHECK
            )
        self._box = new_box
        self._reader = RowReader(new_box)
        return len(rows)

    # --- internals ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Db]:
        """One write transaction: the write lock first, the NOTIFY last, then this process's
        listeners once it has committed."""
        async with self._locked() as db:
            yield db
            await self._announce(db)
        self.notify_listeners()

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[Db]:
        """A transaction holding the registry's write lock (released at commit or rollback)."""
        async with self._acquire() as db, db.transaction():
            await db.execute(
                "SELECT pg_advisory_xact_lock($1)", schema.WRITE_LOCK, timeout=LOCK_WAIT_SECONDS
            )
            yield db

    def _acquire(self) -> AbstractAsyncContextManager[Db]:
        """A pooled connection, within the query timeout: waiting for a free one, and giving it
        back (asyncpg waits for a timed-out query's cancellation then, which a frozen server
        never confirms) are bounded too, so a caller always gets its answer, or a 503."""
        return self._pool.acquire(timeout=self._timeout)

    async def _fetch(self, sql: str, *args: Any) -> list[Record]:
        async with self._acquire() as db:
            return await db.fetch(sql, *args)

    async def _fetchrow(self, sql: str, *args: Any) -> Record | None:
        async with self._acquire() as db:
            return await db.fetchrow(sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._acquire() as db:
            return await db.fetchval(sql, *args)

    async def _announce(self, db: Db) -> None:
        """NOTIFY the other gateways, on commit of the transaction `db` is in."""
        await db.execute("SELECT pg_notify($1, $2)", self._channel, self.instance)

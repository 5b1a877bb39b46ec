"""PostgresRegistry: the `Registry` of the PostgreSQL backend.

A small asyncpg pool: reads run side by side; every write is one transaction that first takes
the registry's write lock (`pg_advisory_xact_lock`, cluster-wide, released at commit), so writes
are serialised across gateways as SQLite's `BEGIN IMMEDIATE` serialises processes.

Every write also NOTIFYs the change channel inside its transaction: PostgreSQL delivers it at
commit, to every gateway LISTENing (see `watch.py`), and not at all on rollback. The payload is
this registry's instance id, so it does not hear its own writes twice: it tells its listeners
itself, after the commit.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import DataSourceNotFound, OrgNotFound
from gateway.registry.identifiers import new_influx_id
from gateway.registry.interface import ChangeListener, Mutation, OrgNameTaken
from gateway.registry.models import DataSource, DataSourceSpec, Org, Principal, Role, TokenInfo
from gateway.registry.postgres import schema, writes
from gateway.registry.postgres.batch import PostgresBatch
from gateway.registry.postgres.rows import SOURCE_COLUMNS, list_sources_sql, now, org_of, source_of
from gateway.registry.secrets import SecretBox

# A connection from the pool (generic only to the type checker).
Db: TypeAlias = "PoolConnectionProxy[Record]"

# The NOTIFY channel every write signals on.
CHANGE_CHANNEL = "datasource_gateway_registry"


class PostgresRegistry:
    def __init__(
        self, pool: asyncpg.Pool[Record], box: SecretBox, channel: str = CHANGE_CHANNEL
    ) -> None:
        self._pool = pool
        self._box = box
        self._channel = channel
        self._listeners: list[ChangeListener] = []
        self.instance = secrets.token_hex(8)  # the NOTIFY payload of this registry's writes

    # --- the backend itself ------------------------------------------------------------------

    @property
    def engine(self) -> str:
        return "PostgreSQL"

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def schema_version(self) -> int:
        async with self._pool.acquire() as db:
            return await schema.schema_version(db)

    # --- change notification -----------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def notify_listeners(self) -> None:
        """Tell every listener something may have changed (also: the change watch was lost and
        is back, so notifications may have been missed)."""
        for listener in self._listeners:
            listener()

    def heard(self, payload: str) -> None:
        """A NOTIFY on the change channel: another registry (here or on another gateway)
        committed a write."""
        if payload != self.instance:
            self.notify_listeners()

    # --- orgs --------------------------------------------------------------------------------

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
            raise OrgNameTaken(f"an org named {name!r} already exists") from exc
        return await self.get_org(org_id)

    async def get_org(self, org_id: int) -> Org:
        row = await self._pool.fetchrow("SELECT * FROM org WHERE id = $1", org_id)
        if row is None:
            raise OrgNotFound()
        return org_of(row)

    async def find_org(self, *, name: str | None = None, influx_id: str | None = None) -> Org:
        if name is not None:
            row = await self._pool.fetchrow(
                "SELECT * FROM org WHERE ascii_lower(name) = ascii_lower($1)", name
            )
        else:
            row = await self._pool.fetchrow("SELECT * FROM org WHERE influx_id = $1", influx_id)
        if row is None:
            raise OrgNotFound()
        return org_of(row)

    async def list_orgs(self) -> list[Org]:
        return [org_of(row) for row in await self._pool.fetch("SELECT * FROM org ORDER BY id")]

    # --- tokens ------------------------------------------------------------------------------

    async def create_token(
        self, org_id: int, role: Role, token_hash: str, description: str = ""
    ) -> int:
        async with self._write() as db:
            return await writes.insert_token(db, org_id, role, token_hash, description)

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

    async def create_first_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        async with self._write() as db:
            if await db.fetchval("SELECT 1 FROM api_token WHERE revoked IS NULL LIMIT 1"):
                return False
            await writes.insert_token(db, org_id, role, token_hash, description)
            return True

    async def find_principal(self, token_hash: str) -> Principal | None:
        row = await self._pool.fetchrow(
            "SELECT t.id AS token_id, t.role, o.id, o.influx_id, o.name, o.created "
            "FROM api_token t JOIN org o ON o.id = t.org_id "
            "WHERE t.token_hash = $1 AND t.revoked IS NULL",
            token_hash,
        )
        if row is None:
            return None
        return Principal(token_id=row["token_id"], org=org_of(row), role=Role(row["role"]))

    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._pool.fetch(
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

    async def revoke_token(self, token_id: int) -> bool:
        async with self._write() as db:
            revoked = await db.fetchval(
                "UPDATE api_token SET revoked = $1 WHERE id = $2 AND revoked IS NULL RETURNING id",
                now(),
                token_id,
            )
            return revoked is not None

    # --- data sources ------------------------------------------------------------------------

    async def list_sources(self, org_id: int | None = None) -> list[DataSource]:
        sql, params = list_sources_sql(org_id)
        return [source_of(row, self._box) for row in await self._pool.fetch(sql, *params)]

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
        row = await self._pool.fetchrow(
            f"SELECT {SOURCE_COLUMNS} FROM data_source WHERE org_id = $1 AND {where}",
            org_id,
            value,
        )
        if row is None:
            raise DataSourceNotFound()
        return source_of(row, self._box)

    async def create_source(self, org_id: int, spec: DataSourceSpec) -> DataSource:
        async with self._write() as db:
            return await writes.create_source(db, self._box, org_id, spec, provisioned_by=None)

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
        async with self._write() as db:
            yield PostgresBatch(db, self._box)

    # --- keys --------------------------------------------------------------------------------

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
        return len(rows)

    # --- internals ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Db]:
        """One write transaction: the write lock first, the NOTIFY last, then this process's
        listeners once it has committed."""
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock($1)", schema.WRITE_LOCK)
            yield db
            await db.execute("SELECT pg_notify($1, $2)", self._channel, self.instance)
        self.notify_listeners()

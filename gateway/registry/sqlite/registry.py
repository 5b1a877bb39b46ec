"""SqliteRegistry: the `Registry` of the SQLite backend.

One aiosqlite connection in autocommit mode; every write is an explicit `BEGIN IMMEDIATE`
transaction, and an asyncio lock keeps coroutines from interleaving statements on the shared
connection. WAL lets the CLI (another process) write while the server reads.

Listeners are told after every commit made here and — through `watch_external_changes`
polling `PRAGMA data_version`, which `SqliteBackend.open` runs — after commits made by other
processes such as `gateway token revoke`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiosqlite
import structlog

from gateway.errors import DataSourceNotFound, OrgNotFound
from gateway.registry.identifiers import new_influx_id
from gateway.registry.interface import ChangeListener, Mutation, OrgNameTaken
from gateway.registry.models import DataSource, DataSourceSpec, Org, Principal, Role, TokenInfo
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import schema, writes
from gateway.registry.sqlite.batch import SqliteBatch
from gateway.registry.sqlite.rows import (
    SOURCE_COLUMNS,
    PlainRow,
    RowReader,
    list_sources_sql,
    now,
    org_of,
    parse_time,
    source_of,
)
from gateway.registry.validation import org_name_taken

log = structlog.get_logger(__name__)


class SqliteRegistry:
    def __init__(self, conn: aiosqlite.Connection, box: SecretBox) -> None:
        self._conn = conn
        self._box = box
        self._reader = RowReader(box)
        self._lock = asyncio.Lock()
        self._listeners: list[ChangeListener] = []

    # --- the backend itself ------------------------------------------------------------------

    @property
    def engine(self) -> str:
        return "SQLite"

    async def ping(self) -> None:
        await self._fetchone("SELECT 1")

    async def schema_version(self) -> int:
        async with self._lock:
            return await schema.schema_version(self._conn)

    # --- change notification -----------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def unavailable_for(self) -> float | None:
        return None  # a file does not go away while open

    def provisioning_lock(self) -> AbstractAsyncContextManager[None]:
        # BEGIN IMMEDIATE already serialises every writer of the file, the batch included.
        return contextlib.nullcontext()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def data_version(self) -> int:
        """SQLite's count of commits by other connections: it changes when another process
        commits."""
        row = await self._fetchone("PRAGMA data_version")
        return int(row[0]) if row else 0

    async def watch_external_changes(self, interval: float, seen: int | None = None) -> None:
        """Run until cancelled: notify listeners when another process commits to the database
        after `seen` (a `data_version` read earlier; None: from the first poll on)."""
        while True:
            try:
                version = await self.data_version()
            except (sqlite3.Error, ValueError) as exc:
                # A transient database error must not end the watch: caches would go stale
                # silently. Assume something changed and try again next round.
                log.warning("change_watch_failed", error=str(exc))
                self._notify()
            else:
                if seen is not None and version != seen:
                    self._notify()
                seen = version
            await asyncio.sleep(interval)

    # --- orgs --------------------------------------------------------------------------------

    async def create_org(self, name: str) -> Org:
        try:
            async with self._write() as db:
                cursor = await db.execute(
                    "INSERT INTO org (influx_id, name, created) VALUES (?, ?, ?)",
                    (new_influx_id(), name, now()),
                )
                org_id = cursor.lastrowid
        except sqlite3.IntegrityError as exc:
            raise OrgNameTaken(org_name_taken(await self._org_name_like(name))) from exc
        assert org_id is not None
        return await self.get_org(org_id)

    async def get_org(self, org_id: int) -> Org:
        row = await self._fetchone("SELECT * FROM org WHERE id = ?", (org_id,))
        if row is None:
            raise OrgNotFound()
        return org_of(row)

    async def find_org(self, *, name: str | None = None, influx_id: str | None = None) -> Org:
        if name is not None:
            row = await self._fetchone("SELECT * FROM org WHERE name = ?", (name,))
        else:
            row = await self._fetchone("SELECT * FROM org WHERE influx_id = ?", (influx_id,))
        if row is None:
            raise OrgNotFound()
        return org_of(row)

    async def _org_name_like(self, name: str) -> str:
        """The stored name that `name` collides with (it may differ in case)."""
        try:
            return (await self.find_org(name=name)).name
        except OrgNotFound:  # gone since: name what was given
            return name

    async def list_orgs(self) -> list[Org]:
        return [org_of(row) for row in await self._fetchall("SELECT * FROM org ORDER BY id")]

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
            cursor = await db.execute(
                "SELECT id, role, org_id, revoked FROM api_token WHERE token_hash = ?",
                (token_hash,),
            )
            row = await cursor.fetchone()
            if row is None:
                await writes.insert_token(db, org_id, role, token_hash, description)
                return True
            if row["revoked"] is None and row["role"] == role.value and row["org_id"] == org_id:
                return False
            await db.execute(
                "UPDATE api_token SET revoked = NULL, role = ?, org_id = ? WHERE id = ?",
                (role.value, org_id, row["id"]),
            )
            return True

    async def create_first_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        async with self._write() as db:
            cursor = await db.execute("SELECT 1 FROM api_token WHERE revoked IS NULL LIMIT 1")
            if await cursor.fetchone() is not None:
                return False
            await writes.insert_token(db, org_id, role, token_hash, description)
            return True

    async def find_principal(self, token_hash: str) -> Principal | None:
        row = await self._fetchone(
            "SELECT t.id AS token_id, t.role, o.id, o.influx_id, o.name, o.created "
            "FROM api_token t JOIN org o ON o.id = t.org_id "
            "WHERE t.token_hash = ? AND t.revoked IS NULL",
            (token_hash,),
        )
        if row is None:
            return None
        return Principal(token_id=row["token_id"], org=org_of(row), role=Role(row["role"]))

    async def list_tokens(self) -> list[TokenInfo]:
        rows = await self._fetchall(
            "SELECT t.id, o.name AS org_name, t.role, t.description, t.created, t.revoked "
            "FROM api_token t JOIN org o ON o.id = t.org_id ORDER BY t.id"
        )
        return [
            TokenInfo(
                id=row["id"],
                org_name=row["org_name"],
                role=Role(row["role"]),
                description=row["description"],
                created=parse_time(row["created"]),
                revoked=parse_time(row["revoked"]) if row["revoked"] else None,
            )
            for row in rows
        ]

    async def revoke_token(self, token_id: int) -> bool:
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE api_token SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (now(), token_id),
            )
            return cursor.rowcount == 1

    # --- data sources ------------------------------------------------------------------------

    async def list_sources(self, org_id: int | None = None) -> list[DataSource]:
        if org_id is not None:
            rows = await self._fetchall(*list_sources_sql(org_id))
            return [source_of(row, self._box) for row in rows]
        # Every source: what a cache reload asks for, after any change. Plain tuples fetch in
        # half the time of sqlite3.Row and are the reader's keys as they come.
        return self._reader.sources(await self._fetchall_plain(*list_sources_sql(None)))

    async def get_source(
        self,
        org_id: int,
        *,
        id: int | None = None,
        uid: str | None = None,
        name: str | None = None,
    ) -> DataSource:
        value: int | str
        if id is not None:
            where, value = "id = ?", id
        elif uid is not None:
            where, value = "uid = ?", uid
        elif name is not None:
            where, value = "name = ?", name  # the column's NOCASE collation folds ASCII case
        else:
            raise TypeError("get_source needs id, uid or name")
        row = await self._fetchone(
            f"SELECT {SOURCE_COLUMNS} FROM data_source WHERE org_id = ? AND {where}",
            (org_id, value),
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
    async def batch(self) -> AsyncIterator[SqliteBatch]:
        async with self._write() as db:
            yield SqliteBatch(db, self._box)

    # --- keys --------------------------------------------------------------------------------

    async def rotate_key(self, new_box: SecretBox) -> int:
        async with self._write() as db:
            cursor = await db.execute("SELECT id, secure_json_data FROM data_source")
            rows = list(await cursor.fetchall())
            for row in rows:
                plain = self._box.decrypt(row["secure_json_data"])
                await db.execute(
                    "UPDATE data_source SET secure_json_data = ? WHERE id = ?",
                    (new_box.encrypt(plain), row["id"]),
                )
            await db.execute(
                "UPDATE meta SET value = ? WHERE key = ?", (new_box.key_check(), schema.KEY_CHECK)
            )
        self._box = new_box
        self._reader = RowReader(new_box)
        return len(rows)

    # --- internals ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")
        self._notify()

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        async with self._lock:
            cursor = await self._conn.execute(sql, tuple(params))
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            cursor = await self._conn.execute(sql, tuple(params))
            return list(await cursor.fetchall())

    async def _fetchall_plain(self, sql: str, params: Iterable[Any] = ()) -> list[PlainRow]:
        """Rows as plain tuples of the selected columns' values, not `sqlite3.Row`s."""
        async with self._lock:
            cursor = await self._conn.execute(sql, tuple(params))
            cursor.row_factory = None
            rows: list[PlainRow] = list(await cursor.fetchall())  # type: ignore[arg-type]
            return rows

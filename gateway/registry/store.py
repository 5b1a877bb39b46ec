"""RegistryStore: every SQL statement of the gateway lives here.

One aiosqlite connection in autocommit mode; every write is an explicit `BEGIN IMMEDIATE`
transaction, and an asyncio lock keeps coroutines from interleaving statements on the shared
connection. WAL lets the CLI (another process) write while the server reads.

Callers that keep in-memory caches register with `add_listener`; they are told after every commit
made here, and — through `watch_external_changes` polling `PRAGMA data_version` — after commits
made by other processes such as `gateway token revoke`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import string
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from gateway.errors import (
    DataSourceNotFound,
    NameConflict,
    OrgNotFound,
    ReadOnlySourceDelete,
    UidConflict,
    VersionConflict,
)
from gateway.registry.migrations import MIGRATIONS
from gateway.registry.models import (
    DEFAULT_ORG_ID,
    DataSource,
    DataSourceSpec,
    Org,
    Principal,
    Role,
    TokenInfo,
)
from gateway.registry.secrets import SecretBox, SecretKeyMismatch

log = structlog.get_logger(__name__)

DEFAULT_ORG_NAME = "Main Org."
_KEY_CHECK = "key_check"
_SOURCE_COLUMNS = (
    "id, org_id, uid, name, type, access, url, user, database, basic_auth, basic_auth_user, "
    "with_credentials, is_default, json_data, secure_json_data, version, read_only, api_version, "
    "created, updated, provisioned_by"
)
Mutation = Callable[[DataSource], DataSourceSpec]


class StoreUnusable(Exception):
    """The database cannot be opened as this gateway's registry; `str()` says why."""


class RegistryStore:
    def __init__(self, conn: aiosqlite.Connection, box: SecretBox) -> None:
        self._conn = conn
        self._box = box
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[], None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path, box: SecretBox) -> AsyncIterator[RegistryStore]:
        """Open (creating if needed) the database, check the key, migrate, seed the default org.

        The key is checked before any migration so a wrong key changes nothing on disk.
        """
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            # Token hashes and encrypted secrets: owner only. SQLite gives the -wal and -shm
            # files the database file's mode, so setting it before WAL starts covers them.
            os.chmod(path, 0o600)
            conn.row_factory = sqlite3.Row
            store = cls(conn, box)
            try:
                await _enable_wal(conn)
                await conn.execute("PRAGMA foreign_keys=ON")
                await conn.execute("PRAGMA busy_timeout=5000")
                await conn.execute("PRAGMA synchronous=NORMAL")
                await store._verify_key()
                await store._migrate()
                await store._seed()
            except sqlite3.DatabaseError as exc:
                raise StoreUnusable(f"{path} is not a usable SQLite database: {exc}") from exc
            yield store

    async def _verify_key(self) -> None:
        if not await self._table_exists("meta"):
            return
        row = await self._fetchone("SELECT value FROM meta WHERE key = ?", (_KEY_CHECK,))
        if row is not None:
            self._box.verify_key_check(row["value"])

    async def _migrate(self) -> None:
        """Apply each pending migration in its own IMMEDIATE transaction, re-reading the schema
        version under that lock: workers starting together must not both apply one."""
        for number, script in enumerate(MIGRATIONS, start=1):
            async with self._lock:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    cursor = await self._conn.execute("PRAGMA user_version")
                    row = await cursor.fetchone()
                    current = int(row[0]) if row else 0
                    if current > len(MIGRATIONS):
                        raise StoreUnusable(
                            f"the database schema is version {current}, newer than this gateway "
                            f"knows ({len(MIGRATIONS)}); upgrade the gateway"
                        )
                    applied = current < number
                    if applied:
                        # Statement by statement: executescript would COMMIT first.
                        for statement in _split_sql(script):
                            await self._conn.execute(statement)
                        await self._conn.execute(f"PRAGMA user_version = {number}")
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
                await self._conn.execute("COMMIT")
            if applied:
                log.info("migration_applied", schema_version=number)

    async def _seed(self) -> None:
        async with self._write() as db:
            await db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                (_KEY_CHECK, self._box.key_check()),
            )
            cursor = await db.execute("SELECT 1 FROM org WHERE id = ?", (DEFAULT_ORG_ID,))
            if await cursor.fetchone() is None:
                await db.execute(
                    "INSERT INTO org (id, influx_id, name, created) VALUES (?, ?, ?, ?)",
                    (DEFAULT_ORG_ID, _new_influx_id(), DEFAULT_ORG_NAME, _now()),
                )

    async def schema_version(self) -> int:
        row = await self._fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        await self._fetchone("SELECT 1")

    # --- change notification -----------------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    async def watch_external_changes(self, interval: float = 1.0) -> None:
        """Run forever: notify listeners when another process commits to the database."""
        seen: int | None = None
        while True:
            try:
                row = await self._fetchone("PRAGMA data_version")
            except (sqlite3.Error, ValueError) as exc:
                # A transient database error must not end the watch: caches would go stale
                # silently. Assume something changed and try again next round.
                log.warning("change_watch_failed", error=str(exc))
                self._notify()
            else:
                version = int(row[0]) if row else 0
                if seen is not None and version != seen:
                    self._notify()
                seen = version
            await asyncio.sleep(interval)

    # --- orgs --------------------------------------------------------------------------------

    async def create_org(self, name: str) -> Org:
        created = _now()
        try:
            async with self._write() as db:
                cursor = await db.execute(
                    "INSERT INTO org (influx_id, name, created) VALUES (?, ?, ?)",
                    (_new_influx_id(), name, created),
                )
                org_id = cursor.lastrowid
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"an org named {name!r} already exists") from exc
        assert org_id is not None
        return await self.get_org(org_id)

    async def get_org(self, org_id: int) -> Org:
        row = await self._fetchone("SELECT * FROM org WHERE id = ?", (org_id,))
        if row is None:
            raise OrgNotFound()
        return _org(row)

    async def find_org(self, *, name: str | None = None, influx_id: str | None = None) -> Org:
        if name is not None:
            row = await self._fetchone("SELECT * FROM org WHERE name = ?", (name,))
        else:
            row = await self._fetchone("SELECT * FROM org WHERE influx_id = ?", (influx_id,))
        if row is None:
            raise OrgNotFound()
        return _org(row)

    async def list_orgs(self) -> list[Org]:
        return [_org(row) for row in await self._fetchall("SELECT * FROM org ORDER BY id")]

    # --- tokens ------------------------------------------------------------------------------

    async def create_token(
        self, org_id: int, role: Role, token_hash: str, description: str = ""
    ) -> int:
        async with self._write() as db:
            return await _insert_token(db, org_id, role, token_hash, description)

    async def ensure_token(
        self, org_id: int, role: Role, token_hash: str, description: str
    ) -> bool:
        """Make sure an active token with this hash and role exists; True when it had to act."""
        async with self._write() as db:
            cursor = await db.execute(
                "SELECT id, role, org_id, revoked FROM api_token WHERE token_hash = ?",
                (token_hash,),
            )
            row = await cursor.fetchone()
            if row is None:
                await _insert_token(db, org_id, role, token_hash, description)
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
        """Create this token only if no active token exists yet; True when it was created.

        One transaction, so two processes starting together cannot both make one."""
        async with self._write() as db:
            cursor = await db.execute("SELECT 1 FROM api_token WHERE revoked IS NULL LIMIT 1")
            if await cursor.fetchone() is not None:
                return False
            await _insert_token(db, org_id, role, token_hash, description)
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
        return Principal(token_id=row["token_id"], org=_org(row), role=Role(row["role"]))

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
                created=_parse_time(row["created"]),
                revoked=_parse_time(row["revoked"]) if row["revoked"] else None,
            )
            for row in rows
        ]

    async def revoke_token(self, token_id: int) -> bool:
        """Revoke one token; False when no active token has that id."""
        async with self._write() as db:
            cursor = await db.execute(
                "UPDATE api_token SET revoked = ? WHERE id = ? AND revoked IS NULL",
                (_now(), token_id),
            )
            return cursor.rowcount == 1

    # --- data sources ------------------------------------------------------------------------

    async def list_sources(self, org_id: int | None = None) -> list[DataSource]:
        return [self._source(row) for row in await self._fetchall(*_list_sources_sql(org_id))]

    async def get_source(
        self,
        org_id: int,
        *,
        id: int | None = None,
        uid: str | None = None,
        name: str | None = None,
    ) -> DataSource:
        """One source of one org, by exactly one of id, uid or name; DataSourceNotFound else."""
        value: int | str
        if id is not None:
            where, value = "id = ?", id
        elif uid is not None:
            where, value = "uid = ?", uid
        elif name is not None:
            where, value = "name = ?", name
        else:
            raise TypeError("get_source needs id, uid or name")
        row = await self._fetchone(
            f"SELECT {_SOURCE_COLUMNS} FROM data_source WHERE org_id = ? AND {where}",
            (org_id, value),
        )
        if row is None:
            raise DataSourceNotFound()
        return self._source(row)

    async def create_source(self, org_id: int, spec: DataSourceSpec) -> DataSource:
        """Insert a source. An empty name becomes `<type>`, `<type>-1`, …; an empty uid is
        generated; the first source of an org becomes its default."""
        async with self._write() as db:
            return await self._create(db, org_id, spec, provisioned_by=None)

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        expected_version: int | None = None,
    ) -> DataSource:
        """Replace a source with `mutate(current)`, atomically.

        `mutate` sees the stored row inside the transaction, so merges (kept secrets, partial
        patches) cannot lose a concurrent write; it may raise to refuse. With `expected_version`,
        the UPDATE itself only matches while the stored version is not newer than it; otherwise
        VersionConflict.
        """
        async with self._write() as db:
            return await self._update(db, org_id, source_id, mutate, expected_version, None)

    async def delete_source(
        self,
        org_id: int,
        source_id: int,
        *,
        allow_read_only: bool = False,
        check: Callable[[DataSource], object] | None = None,
    ) -> DataSource:
        """Delete and return a source. `check(current)` runs inside the transaction and may raise
        to refuse (e.g. the source is not of the type the caller's API manages)."""
        async with self._write() as db:
            return await self._delete(db, org_id, source_id, allow_read_only, check)

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[RegistryBatch]:
        """Several changes in one transaction: all of them are committed, or none."""
        async with self._write() as db:
            yield RegistryBatch(self, db)

    async def _create(
        self,
        db: aiosqlite.Connection,
        org_id: int,
        spec: DataSourceSpec,
        *,
        provisioned_by: str | None,
    ) -> DataSource:
        now = _now()
        names = await self._names(db, org_id)
        name = spec.name or _available_name(spec.type, names)
        uid = spec.uid or _new_uid()
        is_default = spec.is_default or not names
        try:
            cursor = await db.execute(
                "INSERT INTO data_source (org_id, uid, name, type, access, url, user, "
                "database, basic_auth, basic_auth_user, with_credentials, is_default, "
                "json_data, secure_json_data, version, read_only, api_version, created, "
                "updated, provisioned_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,?,?,?,?,?)",
                (
                    org_id, uid, name, spec.type, spec.access, spec.url, spec.user,
                    spec.database, spec.basic_auth, spec.basic_auth_user,
                    spec.with_credentials, is_default, json.dumps(dict(spec.json_data)),
                    self._box.encrypt(spec.secure_json_data), spec.read_only,
                    spec.api_version, now, now, provisioned_by,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError as exc:
            raise _conflict(exc) from exc
        source_id = cursor.lastrowid
        assert source_id is not None
        if is_default:
            await self._clear_other_defaults(db, org_id, source_id)
        return self._source(await self._row(db, org_id, source_id))

    async def _update(
        self,
        db: aiosqlite.Connection,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        expected_version: int | None,
        provisioned_by: str | None,
    ) -> DataSource:
        current = self._source(await self._row(db, org_id, source_id))
        spec = mutate(current)
        condition = "id = ? AND org_id = ? AND version = ?"
        params: list[Any] = [source_id, org_id, current.version]
        if expected_version is not None:
            condition += " AND version <= ?"
            params.append(expected_version)
        try:
            cursor = await db.execute(
                "UPDATE data_source SET uid = ?, name = ?, type = ?, access = ?, url = ?, "
                "user = ?, database = ?, basic_auth = ?, basic_auth_user = ?, "
                "with_credentials = ?, is_default = ?, json_data = ?, secure_json_data = ?, "
                "read_only = ?, api_version = ?, version = version + 1, updated = ?, "
                f"provisioned_by = coalesce(?, provisioned_by) WHERE {condition}",
                (
                    spec.uid or current.uid, spec.name, spec.type, spec.access, spec.url,
                    spec.user, spec.database, spec.basic_auth, spec.basic_auth_user,
                    spec.with_credentials, spec.is_default, json.dumps(dict(spec.json_data)),
                    self._box.encrypt(spec.secure_json_data), spec.read_only,
                    spec.api_version, _now(), provisioned_by, *params,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError as exc:
            raise _conflict(exc) from exc
        if cursor.rowcount != 1:
            raise VersionConflict()
        if spec.is_default:
            await self._clear_other_defaults(db, org_id, source_id)
        return self._source(await self._row(db, org_id, source_id))

    async def _delete(
        self,
        db: aiosqlite.Connection,
        org_id: int,
        source_id: int,
        allow_read_only: bool,
        check: Callable[[DataSource], object] | None,
    ) -> DataSource:
        source = self._source(await self._row(db, org_id, source_id))
        if check is not None:
            check(source)
        if source.read_only and not allow_read_only:
            raise ReadOnlySourceDelete()
        await db.execute("DELETE FROM data_source WHERE id = ? AND org_id = ?", (source_id, org_id))
        return source

    # --- keys --------------------------------------------------------------------------------

    async def rotate_key(self, new_box: SecretBox) -> int:
        """Re-encrypt every row's secrets and the key check under `new_box`, in one transaction.

        Returns the number of sources re-encrypted. On any error nothing changes.
        """
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
                "UPDATE meta SET value = ? WHERE key = ?", (new_box.key_check(), _KEY_CHECK)
            )
        self._box = new_box
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

    async def _table_exists(self, name: str) -> bool:
        row = await self._fetchone(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return row is not None

    @staticmethod
    async def _row(db: aiosqlite.Connection, org_id: int, source_id: int) -> sqlite3.Row:
        cursor = await db.execute(
            f"SELECT {_SOURCE_COLUMNS} FROM data_source WHERE id = ? AND org_id = ?",
            (source_id, org_id),
        )
        row: sqlite3.Row | None = await cursor.fetchone()
        if row is None:
            raise DataSourceNotFound()
        return row

    @staticmethod
    async def _names(db: aiosqlite.Connection, org_id: int) -> set[str]:
        cursor = await db.execute("SELECT name FROM data_source WHERE org_id = ?", (org_id,))
        return {row["name"].lower() for row in await cursor.fetchall()}

    @staticmethod
    async def _clear_other_defaults(db: aiosqlite.Connection, org_id: int, keep: int) -> None:
        await db.execute(
            "UPDATE data_source SET is_default = 0 WHERE org_id = ? AND id <> ? AND is_default",
            (org_id, keep),
        )

    def _source(self, row: sqlite3.Row) -> DataSource:
        return DataSource(
            id=row["id"],
            org_id=row["org_id"],
            uid=row["uid"],
            name=row["name"],
            type=row["type"],
            access=row["access"],
            url=row["url"],
            user=row["user"],
            database=row["database"],
            basic_auth=bool(row["basic_auth"]),
            basic_auth_user=row["basic_auth_user"],
            with_credentials=bool(row["with_credentials"]),
            is_default=bool(row["is_default"]),
            json_data=json.loads(row["json_data"]),
            secure_json_data=self._box.decrypt(row["secure_json_data"]),
            version=row["version"],
            read_only=bool(row["read_only"]),
            api_version=row["api_version"],
            created=_parse_time(row["created"]),
            updated=_parse_time(row["updated"]),
            provisioned_by=row["provisioned_by"],
        )


class RegistryBatch:
    """Changes inside one open transaction (see `RegistryStore.batch`). Provisioning uses it to
    apply a whole set of files all-or-nothing, and to mark what each file manages."""

    def __init__(self, store: RegistryStore, db: aiosqlite.Connection) -> None:
        self._store = store
        self._db = db

    async def sources(self, org_id: int | None = None) -> list[DataSource]:
        cursor = await self._db.execute(*_list_sources_sql(org_id))
        return [self._store._source(row) for row in await cursor.fetchall()]

    async def org_exists(self, org_id: int) -> bool:
        cursor = await self._db.execute("SELECT 1 FROM org WHERE id = ?", (org_id,))
        return await cursor.fetchone() is not None

    async def create_source(
        self, org_id: int, spec: DataSourceSpec, *, provisioned_by: str | None = None
    ) -> DataSource:
        return await self._store._create(self._db, org_id, spec, provisioned_by=provisioned_by)

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        provisioned_by: str | None = None,
    ) -> DataSource:
        """As `RegistryStore.update_source`; `provisioned_by` None keeps the stored marker."""
        return await self._store._update(self._db, org_id, source_id, mutate, None, provisioned_by)

    async def delete_source(self, org_id: int, source_id: int) -> DataSource:
        """Delete, read-only or not: provisioning manages read-only sources."""
        return await self._store._delete(self._db, org_id, source_id, True, None)


def _split_sql(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _conflict(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "data_source.uid" in text:
        return UidConflict()
    if "data_source.name" in text:
        return NameConflict()
    return exc


def _available_name(type_: str, taken: set[str]) -> str:
    """Grafana's rule: `<type>`, then `<type>-1`, `<type>-2`, … (case-insensitively free)."""
    if type_.lower() not in taken:
        return type_
    n = 1
    while f"{type_}-{n}".lower() in taken:
        n += 1
    return f"{type_}-{n}"


_UID_ALPHABET = string.ascii_lowercase + string.digits


def _new_uid() -> str:
    """Grafana's shape: a letter a-f, a random base36 body, a letter a-f (14 characters)."""
    body = "".join(secrets.choice(_UID_ALPHABET) for _ in range(12))
    return secrets.choice("abcdef") + body + secrets.choice("abcdef")


def _new_influx_id() -> str:
    while True:
        value = secrets.token_hex(8)
        if int(value, 16) != 0:
            return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _org(row: sqlite3.Row) -> Org:
    created = _parse_time(row["created"])
    return Org(id=row["id"], influx_id=row["influx_id"], name=row["name"], created=created)


__all__ = ["DEFAULT_ORG_NAME", "RegistryStore", "SecretKeyMismatch", "StoreUnusable"]


async def _enable_wal(conn: aiosqlite.Connection, patience: float = 10.0) -> None:
    """Switch to WAL, waiting for other processes that open the same new database.

    Changing the journal mode needs an exclusive lock, and SQLite answers "database is locked"
    at once rather than calling the busy handler when it would otherwise deadlock (two workers
    of `--workers N` starting together on a fresh data dir do exactly this). Retry briefly.
    """
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.05)


def _list_sources_sql(org_id: int | None) -> tuple[str, tuple[Any, ...]]:
    """Every source, or one org's, in id order."""
    if org_id is None:
        return f"SELECT {_SOURCE_COLUMNS} FROM data_source ORDER BY id", ()
    return f"SELECT {_SOURCE_COLUMNS} FROM data_source WHERE org_id = ? ORDER BY id", (org_id,)


async def _insert_token(
    db: aiosqlite.Connection, org_id: int, role: Role, token_hash: str, description: str
) -> int:
    cursor = await db.execute(
        "INSERT INTO api_token (org_id, role, token_hash, description, created) "
        "VALUES (?, ?, ?, ?, ?)",
        (org_id, role.value, token_hash, description, _now()),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid

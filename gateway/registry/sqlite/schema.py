"""Making a fresh connection ready: PRAGMAs, WAL, key check, migrations, the default org.

Runs before the connection is shared, so no lock is needed; every change is its own
`BEGIN IMMEDIATE` transaction because other processes (workers starting together, the CLI) may
open the same file at the same moment.
"""

from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite
import structlog

from gateway.registry.identifiers import new_influx_id
from gateway.registry.interface import DEFAULT_ORG_NAME, StoreUnusable
from gateway.registry.models import DEFAULT_ORG_ID
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite.migrations import MIGRATIONS
from gateway.registry.sqlite.rows import now

log = structlog.get_logger(__name__)

KEY_CHECK = "key_check"  # the `meta` row that holds the secret box's key check


async def prepare(conn: aiosqlite.Connection, box: SecretBox) -> None:
    """Configure the connection, then check the key before any migration, so a wrong key
    changes nothing on disk."""
    await _enable_wal(conn)
    await conn.execute("PRAGMA foreign_keys=ON")
    await conn.execute("PRAGMA busy_timeout=5000")
    await conn.execute("PRAGMA synchronous=NORMAL")
    await _verify_key(conn, box)
    await _migrate(conn)
    await _seed(conn, box)


async def schema_version(conn: aiosqlite.Connection) -> int:
    cursor = await conn.execute("PRAGMA user_version")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


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


async def _verify_key(conn: aiosqlite.Connection, box: SecretBox) -> None:
    cursor = await conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    )
    if await cursor.fetchone() is None:
        return
    cursor = await conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK,))
    row = await cursor.fetchone()
    if row is not None:
        box.verify_key_check(row["value"])


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Apply each pending migration in its own IMMEDIATE transaction, re-reading the schema
    version under that lock: workers starting together must not both apply one."""
    for number, script in enumerate(MIGRATIONS, start=1):
        await conn.execute("BEGIN IMMEDIATE")
        try:
            current = await schema_version(conn)
            if current > len(MIGRATIONS):
                raise StoreUnusable(
                    f"the database schema is version {current}, newer than this gateway "
                    f"knows ({len(MIGRATIONS)}); upgrade the gateway"
                )
            applied = current < number
            if applied:
                # Statement by statement: executescript would COMMIT first.
                for statement in _split_sql(script):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        if applied:
            log.info("migration_applied", schema_version=number)


async def _seed(conn: aiosqlite.Connection, box: SecretBox) -> None:
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (KEY_CHECK, box.key_check())
        )
        cursor = await conn.execute("SELECT 1 FROM org WHERE id = ?", (DEFAULT_ORG_ID,))
        if await cursor.fetchone() is None:
            await conn.execute(
                "INSERT INTO org (id, influx_id, name, created) VALUES (?, ?, ?, ?)",
                (DEFAULT_ORG_ID, new_influx_id(), DEFAULT_ORG_NAME, now()),
            )
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


def _split_sql(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]

"""Making a new registry's database ready: the key check, migrations, the default org.

Several gateways may start together on one database, so all of it runs under a session-level
advisory lock (`pg_advisory_lock`): the first applies the migrations and seeds, the others wait,
then find nothing left to do. The key is checked before any change, so a gateway started with
the wrong key changes nothing.
"""

from __future__ import annotations

from typing import TypeAlias

import structlog
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from gateway.registry.identifiers import new_influx_id
from gateway.registry.interface import DEFAULT_ORG_NAME, StoreUnusable
from gateway.registry.models import DEFAULT_ORG_ID
from gateway.registry.postgres.migrations import MIGRATIONS
from gateway.registry.postgres.rows import now
from gateway.registry.secrets import SecretBox

log = structlog.get_logger(__name__)

# A connection from the pool (generic only to the type checker).
Db: TypeAlias = "PoolConnectionProxy[Record]"

KEY_CHECK = "key_check"  # the `meta` row that holds the secret box's key check
# pg_advisory_lock keys (64-bit, per database): one for start-up, one every write takes.
MIGRATION_LOCK = 0x6473_6777_0000_0001  # "dsgw" 1
WRITE_LOCK = 0x6473_6777_0000_0002  # "dsgw" 2


async def prepare(db: Db, box: SecretBox) -> None:
    await db.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await _verify_key(db, box)
        await _migrate(db)
        await _seed(db, box)
    finally:
        await db.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)


async def schema_version(db: Db) -> int:
    if await db.fetchval("SELECT to_regclass('schema_migration')") is None:
        return 0
    version = await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_migration")
    return int(version)


async def _verify_key(db: Db, box: SecretBox) -> None:
    if await db.fetchval("SELECT to_regclass('meta')") is None:
        return
    stored = await db.fetchval("SELECT value FROM meta WHERE key = $1", KEY_CHECK)
    if stored is not None:
        box.verify_key_check(stored)


async def _migrate(db: Db) -> None:
    """Apply each pending migration in its own transaction, recording it there too."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migration ("
        " version integer PRIMARY KEY,"
        " applied timestamptz NOT NULL DEFAULT now())"
    )
    current = await schema_version(db)
    if current > len(MIGRATIONS):
        raise StoreUnusable(
            f"the database schema is version {current}, newer than this gateway "
            f"knows ({len(MIGRATIONS)}); upgrade the gateway"
        )
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= current:
            continue
        async with db.transaction():
            await db.execute(script)
            await db.execute("INSERT INTO schema_migration (version) VALUES ($1)", number)
        log.info("migration_applied", schema_version=number)


async def _seed(db: Db, box: SecretBox) -> None:
    async with db.transaction():
        await db.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            KEY_CHECK,
            box.key_check(),
        )
        inserted = await db.fetchval(
            "INSERT INTO org (id, influx_id, name, created) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            DEFAULT_ORG_ID,
            new_influx_id(),
            DEFAULT_ORG_NAME,
            now(),
        )
        if inserted is not None:
            # The default org's id was given, not drawn: the next org must not draw it again.
            await db.execute(
                "SELECT setval(pg_get_serial_sequence('org', 'id'), (SELECT max(id) FROM org))"
            )

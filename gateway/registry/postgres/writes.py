"""The statements that change data sources, run on a connection inside an open transaction.

Shared by single writes (`PostgresRegistry`) and batches (`PostgresBatch`), which differ only in
who opens and commits the transaction. What a write decides (a new source's name, uid and
default; when a delete is refused) is the same for every backend: gateway/registry/write_rules.py.

Every write transaction holds the registry's write lock (see `PostgresRegistry._write`), as
SQLite's `BEGIN IMMEDIATE` does: names, defaults and versions are read and written with no
other writer in between, on any gateway.

A statement that may break a unique constraint runs in a savepoint: in PostgreSQL a failed
statement spoils the whole transaction, in SQLite it does not, and a batch caller that catches
the domain error may go on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from gateway.errors import (
    DataSourceNotFound,
    NameConflict,
    UidConflict,
    VersionConflict,
)
from gateway.registry.interface import Mutation
from gateway.registry.models import DataSource, DataSourceSpec, Role
from gateway.registry.postgres.migrations import SOURCE_NAME_KEY, SOURCE_UID_KEY
from gateway.registry.postgres.rows import (
    SOURCE_COLUMNS,
    WRITABLE_COLUMNS,
    column_values,
    now,
    quote,
    source_of,
)
from gateway.registry.secrets import SecretBox
from gateway.registry.write_rules import check_deletable, new_source, updated_source

# A connection from the pool (generic only to the type checker).
Db: TypeAlias = "PoolConnectionProxy[Record]"

_N = len(WRITABLE_COLUMNS)
_INSERT = (
    f"INSERT INTO data_source (org_id, {', '.join(map(quote, WRITABLE_COLUMNS))}, version, "
    f"created, updated, provisioned_by) VALUES ($1, "
    f"{', '.join(f'${n}' for n in range(2, _N + 2))}, 1, ${_N + 2}, ${_N + 3}, ${_N + 4}) "
    "RETURNING id"
)
# provisioned_by: a write through an API (None) leaves the file that manages a source in place.
_UPDATE = (
    "UPDATE data_source SET "
    f"{', '.join(f'{quote(column)} = ${n}' for n, column in enumerate(WRITABLE_COLUMNS, 1))}, "
    f"version = version + 1, updated = ${_N + 1}, "
    f"provisioned_by = coalesce(${_N + 2}::text, provisioned_by) "
    f"WHERE id = ${_N + 3} AND org_id = ${_N + 4} AND version = ${_N + 5} "
    f"AND (${_N + 6}::bigint IS NULL OR version <= ${_N + 6}::bigint) "
    "RETURNING id"
)


async def create_source(
    db: Db,
    box: SecretBox,
    org_id: int,
    spec: DataSourceSpec,
    *,
    provisioned_by: str | None,
) -> DataSource:
    stamp = now()
    stored = new_source(spec, await _names(db, org_id))
    try:
        async with db.transaction():
            source_id: int = await db.fetchval(
                _INSERT, org_id, *column_values(stored, box), stamp, stamp, provisioned_by
            )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from exc
    if stored.is_default:
        await _clear_other_defaults(db, org_id, source_id)
    return source_of(await source_row(db, org_id, source_id), box)


async def update_source(
    db: Db,
    box: SecretBox,
    org_id: int,
    source_id: int,
    mutate: Mutation,
    *,
    expected_version: int | None,
    provisioned_by: str | None,
) -> DataSource:
    current = source_of(await source_row(db, org_id, source_id, lock=True), box)
    spec = mutate(current)
    stored = updated_source(spec, current)
    # The version read above is re-checked by the UPDATE itself, and `expected_version` with it.
    try:
        async with db.transaction():
            updated = await db.fetchval(
                _UPDATE,
                *column_values(stored, box),
                now(),
                provisioned_by,
                source_id,
                org_id,
                current.version,
                expected_version,
            )
    except asyncpg.UniqueViolationError as exc:
        raise _conflict(exc) from exc
    if updated is None:
        raise VersionConflict()
    if spec.is_default:
        await _clear_other_defaults(db, org_id, source_id)
    return source_of(await source_row(db, org_id, source_id), box)


async def delete_source(
    db: Db,
    box: SecretBox,
    org_id: int,
    source_id: int,
    *,
    allow_read_only: bool,
    check: Callable[[DataSource], object] | None,
) -> DataSource:
    source = source_of(await source_row(db, org_id, source_id, lock=True), box)
    check_deletable(source, allow_read_only=allow_read_only, check=check)
    await db.execute("DELETE FROM data_source WHERE id = $1 AND org_id = $2", source_id, org_id)
    return source


async def insert_token(db: Db, org_id: int, role: Role, token_hash: str, description: str) -> int:
    token_id: int = await db.fetchval(
        "INSERT INTO api_token (org_id, role, token_hash, description, created) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
        org_id,
        role.value,
        token_hash,
        description,
        now(),
    )
    return token_id


async def source_row(db: Db, org_id: int, source_id: int, *, lock: bool = False) -> Record:
    row = await db.fetchrow(
        f"SELECT {SOURCE_COLUMNS} FROM data_source WHERE id = $1 AND org_id = $2"
        + (" FOR UPDATE" if lock else ""),
        source_id,
        org_id,
    )
    if row is None:
        raise DataSourceNotFound()
    return row


async def _names(db: Db, org_id: int) -> set[str]:
    rows = await db.fetch("SELECT name FROM data_source WHERE org_id = $1", org_id)
    return {row["name"].lower() for row in rows}


async def _clear_other_defaults(db: Db, org_id: int, keep: int) -> None:
    await db.execute(
        "UPDATE data_source SET is_default = false WHERE org_id = $1 AND id <> $2 AND is_default",
        org_id,
        keep,
    )


def _conflict(exc: asyncpg.UniqueViolationError) -> Exception:
    constraint: Any = exc.constraint_name
    if constraint == SOURCE_UID_KEY:
        return UidConflict()
    if constraint == SOURCE_NAME_KEY:
        return NameConflict()
    return exc

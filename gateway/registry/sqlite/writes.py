"""The statements that change data sources, run on a connection inside an open transaction.

Shared by single writes (`SqliteRegistry`) and batches (`SqliteBatch`), which differ only in
who opens and commits the transaction. What a write decides (a new source's name, uid and
default; when a delete is refused) is the same for every backend: gateway/registry/write_rules.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite

from gateway.errors import (
    DataSourceNotFound,
    NameConflict,
    UidConflict,
    VersionConflict,
)
from gateway.registry.interface import Mutation
from gateway.registry.models import DataSource, DataSourceSpec, Role
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite.rows import (
    SOURCE_COLUMNS,
    WRITABLE_COLUMNS,
    column_values,
    now,
    source_of,
)
from gateway.registry.write_rules import check_deletable, new_source, updated_source

_INSERT = (
    f"INSERT INTO data_source (org_id, {', '.join(WRITABLE_COLUMNS)}, version, created, updated, "
    f"provisioned_by) VALUES (?, {', '.join('?' for _ in WRITABLE_COLUMNS)}, 1, ?, ?, ?)"
)
# provisioned_by: a write through an API (None) leaves the file that manages a source in place.
_UPDATE = (
    f"UPDATE data_source SET {', '.join(f'{column} = ?' for column in WRITABLE_COLUMNS)}, "
    "version = version + 1, updated = ?, provisioned_by = coalesce(?, provisioned_by)"
)


async def create_source(
    db: aiosqlite.Connection,
    box: SecretBox,
    org_id: int,
    spec: DataSourceSpec,
    *,
    provisioned_by: str | None,
) -> DataSource:
    stamp = now()
    stored = new_source(spec, await _names(db, org_id))
    try:
        cursor = await db.execute(
            _INSERT, (org_id, *column_values(stored, box), stamp, stamp, provisioned_by)
        )
    except sqlite3.IntegrityError as exc:
        raise _conflict(exc) from exc
    source_id = cursor.lastrowid
    assert source_id is not None
    if stored.is_default:
        await _clear_other_defaults(db, org_id, source_id)
    return source_of(await source_row(db, org_id, source_id), box)


async def update_source(
    db: aiosqlite.Connection,
    box: SecretBox,
    org_id: int,
    source_id: int,
    mutate: Mutation,
    *,
    expected_version: int | None,
    provisioned_by: str | None,
) -> DataSource:
    current = source_of(await source_row(db, org_id, source_id), box)
    spec = mutate(current)
    # The version read above is re-checked by the UPDATE itself: a writer in another process
    # that committed in between makes it match nothing (VersionConflict), never lose an update.
    condition = "id = ? AND org_id = ? AND version = ?"
    params: list[Any] = [source_id, org_id, current.version]
    if expected_version is not None:
        condition += " AND version <= ?"
        params.append(expected_version)
    stored = updated_source(spec, current)
    try:
        cursor = await db.execute(
            f"{_UPDATE} WHERE {condition}",
            (*column_values(stored, box), now(), provisioned_by, *params),
        )
    except sqlite3.IntegrityError as exc:
        raise _conflict(exc) from exc
    if cursor.rowcount != 1:
        raise VersionConflict()
    if spec.is_default:
        await _clear_other_defaults(db, org_id, source_id)
    return source_of(await source_row(db, org_id, source_id), box)


async def delete_source(
    db: aiosqlite.Connection,
    box: SecretBox,
    org_id: int,
    source_id: int,
    *,
    allow_read_only: bool,
    check: Callable[[DataSource], object] | None,
) -> DataSource:
    source = source_of(await source_row(db, org_id, source_id), box)
    check_deletable(source, allow_read_only=allow_read_only, check=check)
    await db.execute("DELETE FROM data_source WHERE id = ? AND org_id = ?", (source_id, org_id))
    return source


async def insert_token(
    db: aiosqlite.Connection, org_id: int, role: Role, token_hash: str, description: str
) -> int:
    cursor = await db.execute(
        "INSERT INTO api_token (org_id, role, token_hash, description, created) "
        "VALUES (?, ?, ?, ?, ?)",
        (org_id, role.value, token_hash, description, now()),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


async def source_row(db: aiosqlite.Connection, org_id: int, source_id: int) -> sqlite3.Row:
    cursor = await db.execute(
        f"SELECT {SOURCE_COLUMNS} FROM data_source WHERE id = ? AND org_id = ?",
        (source_id, org_id),
    )
    row: sqlite3.Row | None = await cursor.fetchone()
    if row is None:
        raise DataSourceNotFound()
    return row


async def _names(db: aiosqlite.Connection, org_id: int) -> set[str]:
    cursor = await db.execute("SELECT name FROM data_source WHERE org_id = ?", (org_id,))
    return {row["name"].lower() for row in await cursor.fetchall()}


async def _clear_other_defaults(db: aiosqlite.Connection, org_id: int, keep: int) -> None:
    await db.execute(
        "UPDATE data_source SET is_default = 0 WHERE org_id = ? AND id <> ? AND is_default",
        (org_id, keep),
    )


def _conflict(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    if "data_source.uid" in text:
        return UidConflict()
    if "data_source.name" in text:
        return NameConflict()
    return exc

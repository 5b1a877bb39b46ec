"""The statements of every spool operation, as plain functions on a `sqlite3.Connection` that
is already inside the transaction the committer opened for them (see committer.py)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence

from gateway.spool.models import (
    DeadLetter,
    SpooledWrite,
    SpoolEntry,
    TargetKey,
    TargetStatus,
    WritePath,
)

# SQLite's default limit on host parameters is 32766 (3.32+); chunk id lists well below it.
_IDS_PER_STATEMENT = 500
_WRITE_COLUMNS = "target_id, enqueued_at, path, params, content_type, content_encoding, size"


def target_id(conn: sqlite3.Connection, target: TargetKey, *, create: bool) -> int | None:
    row = conn.execute(
        "SELECT id FROM target WHERE source_id = ? AND url = ?", (target.source_id, target.url)
    ).fetchone()
    if row is not None:
        return int(row[0])
    if not create:
        return None
    cursor = conn.execute(
        "INSERT INTO target (source_id, url) VALUES (?, ?)", (target.source_id, target.url)
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def queued_bytes(conn: sqlite3.Connection, target: int) -> int:
    row = conn.execute("SELECT queued_bytes FROM target WHERE id = ?", (target,)).fetchone()
    return int(row[0])


def insert_entry(
    conn: sqlite3.Connection, target: int, write: SpooledWrite, enqueued_at: float
) -> int:
    cursor = conn.execute(
        f"INSERT INTO entry ({_WRITE_COLUMNS}, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            target,
            enqueued_at,
            write.path.value,
            _params_text(write.params),
            write.content_type,
            write.content_encoding,
            write.size,
            write.body,
        ),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def peek(
    conn: sqlite3.Connection, target: TargetKey, limit: int, max_bytes: int
) -> list[SpoolEntry]:
    """The first entries of the queue, at most `limit` and `max_bytes` together, but always the
    first one however large it is, so that a big entry can never block its queue."""
    key = target_id(conn, target, create=False)
    if key is None:
        return []
    # Sizes first, without the bodies: only the bodies that fit are read.
    sizes = conn.execute(
        "SELECT id, size FROM entry WHERE target_id = ? ORDER BY id LIMIT ?", (key, limit)
    ).fetchall()
    last_id, total = None, 0
    for entry_id, size in sizes:
        if last_id is not None and total + size > max_bytes:
            break
        last_id, total = entry_id, total + size
    if last_id is None:
        return []
    rows = conn.execute(
        "SELECT id, enqueued_at, path, params, content_type, content_encoding, body FROM entry "
        "WHERE target_id = ? AND id <= ? ORDER BY id",
        (key, last_id),
    ).fetchall()
    return [
        SpoolEntry(
            id=row[0],
            enqueued_at=row[1],
            write=SpooledWrite(
                target=target,
                path=WritePath(row[2]),
                params=json.loads(row[3]),
                content_type=row[4],
                content_encoding=row[5],
                body=row[6],
            ),
        )
        for row in rows
    ]


def ack(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    return _delete_ids(conn, "entry", ids)


def dead_letter(conn: sqlite3.Connection, entry_id: int, reason: str, now: float) -> bool:
    return _move_to_dead_letters(conn, "id = ?", (entry_id,), reason, now) == 1


def expire(conn: sqlite3.Connection, cutoff: float, target: TargetKey | None, now: float) -> int:
    if target is None:
        return _move_to_dead_letters(conn, "enqueued_at < ?", (cutoff,), "expired", now)
    key = target_id(conn, target, create=False)
    if key is None:
        return 0
    return _move_to_dead_letters(
        conn, "target_id = ? AND enqueued_at < ?", (key, cutoff), "expired", now
    )


def dead_letters(conn: sqlite3.Connection, source_id: int | None) -> list[DeadLetter]:
    condition, params = ("", ()) if source_id is None else ("WHERE t.source_id = ?", (source_id,))
    rows = conn.execute(
        "SELECT d.id, t.source_id, t.url, d.path, d.params, d.size, d.enqueued_at, d.reason, "
        f"d.dead_at FROM dead_letter d JOIN target t ON t.id = d.target_id {condition} "
        "ORDER BY d.id",
        params,
    ).fetchall()
    return [
        DeadLetter(
            id=row[0],
            target=TargetKey(row[1], row[2]),
            path=WritePath(row[3]),
            params=json.loads(row[4]),
            size=row[5],
            enqueued_at=row[6],
            reason=row[7],
            dead_at=row[8],
        )
        for row in rows
    ]


def retry(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> list[int]:
    """Re-append each dead letter (in id order) at the end of its queue; returns the new ids.

    The enqueue time restarts at `now`: with the old one, an expired entry would expire again
    at the next `expire`.
    """
    new_ids = []
    for dead_id in sorted(set(ids)):
        cursor = conn.execute(
            f"INSERT INTO entry ({_WRITE_COLUMNS}, body) "
            "SELECT target_id, ?, path, params, content_type, content_encoding, size, body "
            "FROM dead_letter WHERE id = ?",
            (now, dead_id),
        )
        if cursor.rowcount == 1:
            assert cursor.lastrowid is not None
            new_ids.append(cursor.lastrowid)
            conn.execute("DELETE FROM dead_letter WHERE id = ?", (dead_id,))
    return new_ids


def drop(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    return _delete_ids(conn, "dead_letter", ids)


def claim(
    conn: sqlite3.Connection, target: TargetKey, owner: str, lease_seconds: float, now: float
) -> bool:
    key = target_id(conn, target, create=True)
    cursor = conn.execute(
        "UPDATE target SET lease_owner = ?, lease_expires = ? WHERE id = ? "
        "AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires <= ?)",
        (owner, now + lease_seconds, key, owner, now),
    )
    return cursor.rowcount == 1


def release(conn: sqlite3.Connection, target: TargetKey, owner: str) -> bool:
    cursor = conn.execute(
        "UPDATE target SET lease_owner = NULL, lease_expires = NULL "
        "WHERE source_id = ? AND url = ? AND lease_owner = ?",
        (target.source_id, target.url, owner),
    )
    return cursor.rowcount == 1


def status(conn: sqlite3.Connection, now: float) -> list[TargetStatus]:
    rows = conn.execute(
        "SELECT t.source_id, t.url, t.queued_entries, t.queued_bytes, "
        "(SELECT enqueued_at FROM entry WHERE target_id = t.id ORDER BY id LIMIT 1), "
        "(SELECT count(*) FROM dead_letter WHERE target_id = t.id), "
        "CASE WHEN t.lease_expires > ? THEN t.lease_owner END "
        "FROM target t ORDER BY t.source_id, t.url",
        (now,),
    ).fetchall()
    return [
        TargetStatus(
            target=TargetKey(row[0], row[1]),
            queued_entries=row[2],
            queued_bytes=row[3],
            oldest_enqueued_at=row[4],
            dead_letters=row[5],
            lease_owner=row[6],
        )
        for row in rows
    ]


def targets_with_backlog(conn: sqlite3.Connection) -> list[TargetKey]:
    rows = conn.execute(
        "SELECT source_id, url FROM target WHERE queued_entries > 0 ORDER BY id"
    ).fetchall()
    return [TargetKey(row[0], row[1]) for row in rows]


def _move_to_dead_letters(
    conn: sqlite3.Connection,
    condition: str,
    params: tuple[object, ...],
    reason: str,
    now: float,
) -> int:
    conn.execute(
        f"INSERT INTO dead_letter (id, {_WRITE_COLUMNS}, reason, dead_at, body) "
        f"SELECT id, {_WRITE_COLUMNS}, ?, ?, body FROM entry WHERE {condition}",
        (reason, now, *params),
    )
    return conn.execute(f"DELETE FROM entry WHERE {condition}", params).rowcount


def _delete_ids(conn: sqlite3.Connection, table: str, ids: Sequence[int]) -> int:
    deleted = 0
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk = ids[start : start + _IDS_PER_STATEMENT]
        marks = ", ".join("?" for _ in chunk)
        deleted += conn.execute(f"DELETE FROM {table} WHERE id IN ({marks})", chunk).rowcount
    return deleted


def _params_text(params: Mapping[str, str]) -> str:
    return json.dumps(dict(params), separators=(",", ":"), sort_keys=True)

"""Health state in the database: `source_health` and `target_health` (PostgreSQL migration 3).

The owner of a source writes its state after its probes (`publish`); every gateway reads all of
it back (`load`) and the monitor adopts what it does not own. A state is stored with the
version of the source it was probed at: a gateway that knows another version ignores it.

Rows are read from the database, written by any gateway of the cluster: each is checked for
shape before use, and a malformed one is skipped, not trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from asyncpg import Record

from gateway.cluster.membership import Db
from gateway.health.probes import HealthCheck
from gateway.health.state import StoredSource, StoredTarget

STATUSES = ("pass", "fail")

# Only while the source exists: a source deleted meanwhile takes its state with it (ON DELETE
# CASCADE), and a state written after the delete must not fail the batch.
_UPSERT_SOURCE = """
INSERT INTO source_health (source_id, version, status, since, owner, updated)
SELECT id, $2, $3, $4, $5, now() FROM data_source WHERE id = $1
ON CONFLICT (source_id) DO UPDATE SET
    version = excluded.version, status = excluded.status, since = excluded.since,
    owner = excluded.owner, updated = excluded.updated
RETURNING source_id
"""
_UPSERT_TARGET = """
INSERT INTO target_health (source_id, position, status, since, last_result, checked_at,
                           consecutive_failures, consecutive_passes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (source_id, position) DO UPDATE SET
    status = excluded.status, since = excluded.since, last_result = excluded.last_result,
    checked_at = excluded.checked_at, consecutive_failures = excluded.consecutive_failures,
    consecutive_passes = excluded.consecutive_passes
"""
_LOAD = """
SELECT s.source_id, s.version, s.status, s.since,
       t.position, t.status AS target_status, t.since AS target_since, t.last_result,
       t.checked_at, t.consecutive_failures, t.consecutive_passes
FROM source_health s JOIN target_health t USING (source_id)
ORDER BY s.source_id, t.position
"""


async def publish(db: Db, states: Iterable[StoredSource], owner: str) -> None:
    """Store each state (in one transaction), as written by `owner`."""
    async with db.transaction():
        for state in states:
            stored = await db.fetchval(
                _UPSERT_SOURCE, state.source_id, state.version, state.status, state.since, owner
            )
            if stored is None:
                continue  # the source is gone
            await db.executemany(
                _UPSERT_TARGET,
                [
                    (
                        state.source_id,
                        target.position,
                        target.status,
                        target.since,
                        None if target.last_result is None else json.dumps(target.last_result),
                        target.checked_at,
                        target.consecutive_failures,
                        target.consecutive_passes,
                    )
                    for target in state.targets
                ],
            )
            # A new version may have fewer replicas than the one stored before.
            await db.execute(
                "DELETE FROM target_health WHERE source_id = $1 AND position >= $2",
                state.source_id,
                len(state.targets),
            )


async def load(db: Db) -> list[StoredSource]:
    """Every stored state; a malformed row is left out (and its source with it)."""
    rows = await db.fetch(_LOAD)
    by_source: dict[int, tuple[Record, list[StoredTarget]]] = {}
    malformed: set[int] = set()
    for row in rows:
        source_id = int(row["source_id"])
        try:
            _status(row["status"])
            target = _target(row)
        except _Malformed:
            malformed.add(source_id)
            continue
        by_source.setdefault(source_id, (row, []))[1].append(target)
    return [
        StoredSource(
            source_id=source_id,
            version=int(row["version"]),
            status=_status(row["status"]),
            since=_time(row["since"]),
            targets=tuple(targets),
        )
        for source_id, (row, targets) in by_source.items()
        if source_id not in malformed
    ]


class _Malformed(Exception):
    pass


def _status(value: object) -> str | None:
    if value is None or (isinstance(value, str) and value in STATUSES):
        return value
    raise _Malformed


def _target(row: Record) -> StoredTarget:
    return StoredTarget(
        position=int(row["position"]),
        status=_status(row["target_status"]),
        since=_time(row["target_since"]),
        last_result=_result(row["last_result"]),
        checked_at=_time(row["checked_at"]),
        consecutive_failures=max(0, int(row["consecutive_failures"])),
        consecutive_passes=max(0, int(row["consecutive_passes"])),
    )


def _result(text: object) -> HealthCheck | None:
    """A stored probe result: a JSON object with a valid status."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise _Malformed
    try:
        value: Any = json.loads(text)
    except ValueError as exc:
        raise _Malformed from exc
    if not isinstance(value, dict) or value.get("status") not in (*STATUSES, "warn"):
        raise _Malformed
    result: HealthCheck = value
    return result


def _time(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None

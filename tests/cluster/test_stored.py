"""Health states and members in PostgreSQL (gateway/cluster/stored.py and membership.py), on a
real server: what an owner stores is what the others load, for sources that still exist, and a
malformed row is left out rather than trusted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from gateway.cluster import membership, stored
from gateway.health.probes import HealthCheck
from gateway.health.state import ProbePolicy, SourceState
from gateway.registry.models import DEFAULT_ORG_ID, DataSource
from gateway.registry.postgres import PostgresBackend, PostgresRegistry
from gateway.registry.secrets import SecretBox
from tests.registry.sources import spec

POLICY = ProbePolicy(enabled=True, interval=1.0, timeout=0.5, rise=2, fall=3)
PASS: HealthCheck = {"name": "r", "status": "pass", "message": "ok", "checks": []}
FAIL: HealthCheck = {"name": "r", "status": "fail", "message": "503", "checks": []}


@pytest.fixture
async def registry(postgres_url: str) -> AsyncIterator[PostgresRegistry]:
    async with PostgresBackend(postgres_url).open(SecretBox("k")) as registry:
        yield registry


@pytest.fixture
async def db(
    registry: PostgresRegistry, postgres_url: str
) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn = await asyncpg.connect(postgres_url)  # after the registry migrated the database
    try:
        yield conn
    finally:
        await conn.close()


async def probed_state(registry: PostgresRegistry, *results: HealthCheck) -> SourceState:
    """A source with a replica, its primary given `results` and its replica one pass."""
    source: DataSource = await registry.create_source(
        DEFAULT_ORG_ID,
        spec("replicated", url="http://a:9090", json_data={"replicaUrls": ["http://b:9090"]}),
    )
    state = SourceState.new(source, POLICY)
    primary, replica = state.targets.values()
    now = datetime.now(UTC)
    for result in results:
        primary.apply(dict(result), POLICY, now)
    replica.apply(dict(PASS), POLICY, now)
    state.settle(now)
    return state


async def test_a_published_state_loads_back_as_it_was(
    registry: PostgresRegistry, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    state = await probed_state(registry, FAIL, FAIL)
    await stored.publish(db, [state.stored()], owner="gw-a")
    assert await stored.load(db) == [state.stored()]
    assert await db.fetchval("SELECT owner FROM source_health") == "gw-a"


async def test_a_republished_state_replaces_the_stored_one(
    registry: PostgresRegistry, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    state = await probed_state(registry, PASS)
    await stored.publish(db, [state.stored()], owner="gw-a")
    replica = list(state.targets.values())[1]
    del state.targets[replica.url]  # the next version has one target fewer
    await stored.publish(db, [state.stored()], owner="gw-b")
    assert await stored.load(db) == [state.stored()]


async def test_a_deleted_sources_state_is_neither_stored_nor_kept(
    registry: PostgresRegistry, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    state = await probed_state(registry, PASS)
    await stored.publish(db, [state.stored()], owner="gw-a")
    await registry.delete_source(DEFAULT_ORG_ID, state.source.id)
    assert await stored.load(db) == []  # gone with the source
    await stored.publish(db, [state.stored()], owner="gw-a")  # a late result: no error
    assert await stored.load(db) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [("last_result", "not json"), ("last_result", '{"status": "maybe"}'), ("status", None)],
)
async def test_a_malformed_row_is_left_out(
    registry: PostgresRegistry,
    db: asyncpg.Connection[asyncpg.Record],
    column: str,
    value: str | None,
) -> None:
    state = await probed_state(registry, PASS)
    other = SourceState.new(await registry.create_source(DEFAULT_ORG_ID, spec("other")), POLICY)
    await stored.publish(db, [state.stored(), other.stored()], owner="gw-a")
    if column == "status":  # a status outside the CHECK cannot be written: drop the CHECK
        await db.execute("ALTER TABLE target_health DROP CONSTRAINT target_health_status_check")
        value = "maybe"
    await db.execute(
        f"UPDATE target_health SET {column} = $1 WHERE source_id = $2 AND position = 1",
        value,
        state.source.id,
    )
    assert await stored.load(db) == [other.stored()]


async def test_members_are_live_while_they_heartbeat(
    registry: PostgresRegistry, db: asyncpg.Connection[asyncpg.Record]
) -> None:
    interval = 0.4  # live for 1.25 intervals: half a second
    await membership.heartbeat(db, "gw-a")
    await membership.heartbeat(db, "gw-b")
    assert await membership.live_members(db, interval) == ["gw-a", "gw-b"]
    for _ in range(4):
        await asyncio.sleep(0.2)
        await membership.heartbeat(db, "gw-b")
    assert await membership.live_members(db, interval) == ["gw-b"]
    await membership.leave(db, "gw-b")
    assert await membership.live_members(db, interval) == []

"""Membership of a cluster: each gateway's row in `cluster_member`, kept fresh by heartbeats.

A member is live while its latest heartbeat is younger than `LIVE_INTERVALS` health intervals,
measured on the database's clock (`now()`), so the gateways' own clocks may disagree. A member
that leaves cleanly deletes its row (its share moves at the others' next look); one that dies
stops heartbeating and drops out of the live list. Rows long dead are swept by any member.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TypeAlias

import asyncpg
from asyncpg import Record

Db: TypeAlias = "asyncpg.Connection[Record] | asyncpg.pool.PoolConnectionProxy[Record]"

# Heartbeats come every interval / HEARTBEATS_PER_INTERVAL; a member is live while its latest
# is younger than LIVE_INTERVALS intervals (five heartbeats missed in a row). A member that dies
# is out of the list within 1.25 intervals, seen so by the others within a quarter more, and its
# sources probed within a tenth more (monitor.TAKEOVER_DELAY): within two intervals in all.
HEARTBEATS_PER_INTERVAL = 4
LIVE_INTERVALS = 1.25
FORGET_SECONDS = 3600.0  # rows of members dead this long are deleted


def new_member_id() -> str:
    """This process's id in the cluster: host and pid for people, a random part so that a pid
    reused after a restart is a new member."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


async def heartbeat(db: Db, member: str) -> None:
    """Join, or say this member is still alive."""
    await db.execute(
        "INSERT INTO cluster_member (id, hostname, pid, started, heartbeat)"
        " VALUES ($1, $2, $3, now(), now())"
        " ON CONFLICT (id) DO UPDATE SET heartbeat = now()",
        member,
        socket.gethostname(),
        os.getpid(),
    )


async def live_members(db: Db, interval: float) -> list[str]:
    """The ids of the members whose heartbeat is younger than LIVE_INTERVALS intervals."""
    rows = await db.fetch(
        "SELECT id FROM cluster_member"
        " WHERE heartbeat > now() - make_interval(secs => $1) ORDER BY id",
        interval * LIVE_INTERVALS,
    )
    return [str(row["id"]) for row in rows]


async def forget_dead(db: Db, interval: float) -> None:
    await db.execute(
        "DELETE FROM cluster_member WHERE heartbeat < now() - make_interval(secs => $1)",
        max(FORGET_SECONDS, interval * 10),
    )


async def leave(db: Db, member: str) -> None:
    await db.execute("DELETE FROM cluster_member WHERE id = $1", member)

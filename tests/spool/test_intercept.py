"""The write spool on the proxy's write path, end to end: the real app, a real influxd of the
test's own that the test kills and starts again (tests/spool/influx.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.keys import SPOOL
from gateway.spool import TargetKey
from tests.conftest import ADMIN_TOKEN, Headers
from tests.spool.influx import StartInflux
from tests.spool.sources import BASE_SECONDS, TOKEN, add_influx_source, gzipped, lines
from tests.spool.writes import eventually
from tests.types import AppClient


async def write(
    client: AppClient, source: dict[str, Any], db: str, body: bytes, **options: str
) -> tuple[int, str]:
    """POST `body` to /write for `source` (precision=s); `encoding="gzip"` compresses it."""
    headers = dict(TOKEN)
    if options.pop("encoding", "") == "gzip":
        body = gzipped(body)
        headers["Content-Encoding"] = "gzip"
    params = {"db": db, "precision": "s", "source": source["uid"], **options}
    response = await client.post("/write", params=params, data=body, headers=headers)
    return response.status, await response.text()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_healthy_upstream_answers_the_writer_itself(
    client: AppClient, start_influx: StartInflux
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    source = await add_influx_source(client, influx, db)
    assert await write(client, source, db, lines(0, 3)) == (204, "")
    status, text = await write(client, source, db, b"cpu value=\n")
    assert status == 400  # influxd's own answer: the writer hears of its mistake
    assert "unable to parse" in text
    status, text = await write(client, source, db.upper() + "_absent", lines(0, 1))
    assert status == 404
    assert "database not found" in text
    assert client.app[SPOOL].snapshot.targets == []  # nothing was queued
    assert len(await influx.select(db, "SELECT value FROM $db.autogen.cpu")) == 3


async def test_a_write_larger_than_the_spool_takes_streams_through_unspooled(
    client: AppClient, start_influx: StartInflux
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    source = await add_influx_source(client, influx, db)
    spool = client.app[SPOOL]
    spool.max_body_bytes = 50  # a batch of 3 lines is more than that
    body = lines(0, 3)
    assert len(body) > spool.max_body_bytes
    assert await write(client, source, db, body) == (204, "")  # influxd's own 204
    assert spool.snapshot.targets == []  # nothing was queued
    assert len(await influx.select(db, "SELECT value FROM $db.autogen.cpu")) == 3


async def test_writes_during_an_outage_are_acknowledged_and_replayed_exactly(
    client: AppClient, start_influx: StartInflux, metrics_registry: CollectorRegistry
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    await influx.server.query(
        f'CREATE RETENTION POLICY "kept" ON "{db}" DURATION INF REPLICATION 1'
    )
    source = await add_influx_source(client, influx, db)
    influx.kill()

    expected: dict[int, int] = {}
    for batch in range(30):  # plain and gzip, /write and the proxy route, 10 points each
        body = lines(batch * 10, 10)
        if batch % 3 == 0:
            status, _ = await write(client, source, db, body, encoding="gzip")
        elif batch % 3 == 1:
            status, _ = await write(client, source, db, body)
        else:
            response = await client.post(
                f"/api/datasources/proxy/uid/{source['uid']}/write",
                params={"db": db, "precision": "s"},
                data=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            status = response.status
        assert status == 204
        expected.update((n, n) for n in range(batch * 10, batch * 10 + 10))
    # The same point twice: the later value must win (order kept).
    twice = f"cpu,host=h0 value=-1 {BASE_SECONDS}\n".encode()
    assert (await write(client, source, db, twice))[0] == 204
    expected[0] = -1
    # InfluxDB 1.x credentials in the query string (u, p: the gateway token) and another rp.
    response = await client.post(
        "/write",
        params={"db": db, "rp": "kept", "precision": "s", "source": source["uid"],
                "u": "writer", "p": ADMIN_TOKEN},
        data=lines(1000, 5, "mem"),
    )  # fmt: skip
    assert response.status == 204

    spool = client.app[SPOOL]
    key = TargetKey(source["id"], influx.url)
    queued = await spool.store.peek(key, limit=1000, max_bytes=1 << 30)
    assert len(queued) == 32
    assert queued[-1].write.params == {"db": db, "rp": "kept", "precision": "s"}  # no u, p
    assert queued[0].write.content_encoding == "gzip"
    assert queued[0].write.body == gzipped(lines(0, 10))  # byte for byte
    labels = {"org": "1", "source_uid": source["uid"], "target": influx.url}
    assert sample(metrics_registry, "gateway_spool_appended_total", **labels) == 32

    await asyncio.to_thread(influx.start)

    async def all_there() -> bool:
        rows = await influx.select(db, "SELECT count(value) FROM $db.autogen.cpu")
        return bool(rows) and rows[0][1] == len(expected)

    await eventually(all_there, timeout=20, what="every acknowledged point delivered")
    await eventually(lambda: _drained(spool, key), what="queue empty")
    rows = await influx.select(db, "SELECT value FROM $db.autogen.cpu GROUP BY host")
    assert sorted(int(value) for _, value in rows) == sorted(expected.values())
    kept = await influx.select(db, 'SELECT count(value) FROM $db."kept".mem')
    assert kept[0][1] == 5
    assert sample(metrics_registry, "gateway_spool_delivered_total", **labels) == 32
    assert sample(metrics_registry, "gateway_spool_replayed_points_total", **labels) == 306


async def _drained(spool: Any, key: TargetKey) -> bool:
    return not await spool.store.peek(key, limit=1)


async def test_a_rejected_write_becomes_a_dead_letter_with_influxdb_message(
    client: AppClient, start_influx: StartInflux, metrics_registry: CollectorRegistry
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    source = await add_influx_source(client, influx, db)
    influx.kill()
    assert (await write(client, source, db, b"kind value=1i 1700000000\n"))[0] == 204
    assert (await write(client, source, db, b'kind value="text" 1700000001\n'))[0] == 204
    assert (await write(client, source, db, b"kind value=3i 1700000002\n"))[0] == 204
    await asyncio.to_thread(influx.start)

    store = client.app[SPOOL].store
    await eventually(lambda: _drained(client.app[SPOOL], TargetKey(source["id"], influx.url)))
    (letter,) = await store.dead_letters(source["id"])
    assert "field type conflict" in letter.reason
    assert letter.reason.startswith("HTTP 400")
    rows = await influx.select(db, "SELECT value FROM $db.autogen.kind")
    assert [value for _, value in rows] == [1, 3]  # the others were delivered, in order
    labels = {"org": "1", "source_uid": source["uid"], "target": influx.url, "reason": "rejected"}
    assert sample(metrics_registry, "gateway_spool_dead_lettered_total", **labels) == 1


async def test_a_full_queue_answers_503_and_loses_nothing_queued(
    client: AppClient, start_influx: StartInflux, metrics_registry: CollectorRegistry
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    source = await add_influx_source(client, influx, db, writeBuffer={"maxBytes": 1000})
    influx.kill()
    accepted = 0
    while True:
        response = await client.post(
            "/write",
            params={"db": db, "precision": "s", "source": source["uid"]},
            data=lines(accepted * 10, 10),
            headers=TOKEN,
        )
        if response.status != 204:
            break
        accepted += 1
    assert accepted == 3  # 3 x ~300 bytes fit in 1000
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert response.headers["X-Platform-Error-Code"] == "unavailable"
    message = json.loads(await response.text())["message"]
    assert source["name"] in message
    assert "full" in message
    labels = {"org": "1", "source_uid": source["uid"], "target": influx.url, "reason": "full"}
    assert sample(metrics_registry, "gateway_spool_rejected_total", **labels) == 1

    await asyncio.to_thread(influx.start)

    async def delivered() -> bool:
        rows = await influx.select(db, "SELECT count(value) FROM $db.autogen.cpu")
        return bool(rows) and rows[0][1] == accepted * 10

    await eventually(delivered, timeout=20, what="the queued writes delivered")


async def test_a_frozen_upstream_gets_the_write_spooled_after_forward_timeout(
    client: AppClient, start_influx: StartInflux
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    source = await add_influx_source(client, influx, db, writeBuffer={"forwardTimeout": 1})
    assert await write(client, source, db, lines(0, 10)) == (204, "")  # directly
    influx.freeze()  # SIGSTOP: connections are taken, nothing answers
    try:
        started = time.monotonic()
        assert await write(client, source, db, lines(10, 10)) == (204, "")
        # Given up on after forwardTimeout, not the 30 s response timeout, and queued.
        assert 0.9 <= time.monotonic() - started < 3
        started = time.monotonic()
        assert await write(client, source, db, lines(20, 10)) == (204, "")
        assert time.monotonic() - started < 0.5  # behind the queue: no wait for the upstream
    finally:
        influx.thaw()

    async def all_there() -> bool:
        rows = await influx.select(db, "SELECT value FROM $db.autogen.cpu GROUP BY host")
        return sorted(value for _, value in rows) == list(range(30))

    # The timed-out write may have been applied by influxd when it woke, and again on replay:
    # the same points, overwritten with the same values.
    await eventually(all_there, timeout=20, what="every write there after SIGCONT")


async def test_mirror_delivers_to_every_replica_while_one_is_down(
    client: AppClient, start_influx: StartInflux
) -> None:
    a, b = await start_influx(), await start_influx()
    db = await a.create_database()
    for replica in (a, b):  # one user the source logs in as, on both
        await replica.server.query(
            f'CREATE DATABASE "{db}"; CREATE USER "mirror" WITH PASSWORD \'pw\' WITH ALL PRIVILEGES'
        )
    source = await add_influx_source(
        client, a, db, user=("mirror", "pw"), replicaUrls=[b.url], writeMirror=True
    )
    b.kill()
    for batch in range(5):
        assert (await write(client, source, db, lines(batch * 10, 10)))[0] == 204

    async def count(influx: Any) -> int:
        rows = await influx.select(db, "SELECT count(value) FROM $db.autogen.cpu")
        return int(rows[0][1]) if rows else 0

    async def a_has_all() -> bool:
        return await count(a) == 50

    await eventually(a_has_all, what="the healthy replica got every write")  # b still down
    await asyncio.to_thread(b.start)

    async def b_has_all() -> bool:
        return await count(b) == 50

    await eventually(b_has_all, timeout=20, what="the returning replica caught up")


async def test_write_buffer_settings_are_checked_at_save(
    client: AppClient, admin_headers: Headers
) -> None:
    for json_data, field in (
        ({"writeBuffer": {"maxBytes": -1}}, "jsonData.writeBuffer.maxBytes"),
        ({"writeBuffer": {"maxAge": "7d"}}, "jsonData.writeBuffer.maxAge"),
        ({"writeBuffer": {"forwardTimeout": 0}}, "jsonData.writeBuffer.forwardTimeout"),
        ({"writeBuffer": {"enabled": "yes"}}, "jsonData.writeBuffer.enabled"),
        ({"writeBuffer": []}, "jsonData.writeBuffer"),
        ({"writeMirror": 1}, "jsonData.writeMirror"),
    ):
        body: dict[str, Any] = {"name": "w", "type": "influxdb", "access": "proxy",
                "url": "http://influx:8086", "jsonData": json_data}  # fmt: skip
        response = await client.post("/api/datasources", json=body, headers=admin_headers)
        assert response.status == 400, json_data
        assert (await response.json())["message"].startswith(field), json_data


async def test_the_health_check_warns_while_writes_are_queued(
    client: AppClient, admin_headers: Headers, dead_url: str
) -> None:
    body = {"name": "down", "type": "influxdb", "access": "proxy", "url": dead_url,
            "jsonData": {"version": "InfluxQL"}}  # fmt: skip
    response = await client.post("/api/datasources", json=body, headers=admin_headers)
    source = (await response.json())["datasource"]
    params = {"db": "x", "source": source["uid"]}
    assert (await client.post("/write", params=params, data=b"m v=1", headers=TOKEN)).status == 204

    async def warned() -> bool:
        answer = await client.get(f"/api/v2/sources/{source['id']:016x}/health", headers=TOKEN)
        checks = (await answer.json()).get("checks", [])
        return any(
            check["name"] == "write spool"
            and check["status"] == "warn"
            and check["message"].startswith("1 writes (5 bytes) queued")
            for check in checks
        )

    await eventually(warned, what="a warn check naming the queue")


async def test_writes_older_than_max_age_become_dead_letters(
    client: AppClient, admin_headers: Headers, dead_url: str, metrics_registry: CollectorRegistry
) -> None:
    body = {"name": "gone", "type": "influxdb", "access": "proxy", "url": dead_url,
            "jsonData": {"version": "InfluxQL", "writeBuffer": {"maxAge": 0.5}}}  # fmt: skip
    response = await client.post("/api/datasources", json=body, headers=admin_headers)
    source = (await response.json())["datasource"]
    params = {"db": "x", "source": source["uid"]}
    assert (await client.post("/write", params=params, data=b"m v=1", headers=TOKEN)).status == 204
    store = client.app[SPOOL].store

    async def expired() -> bool:
        return [letter.reason for letter in await store.dead_letters(source["id"])] == ["expired"]

    await eventually(expired, what="the old write moved to the dead letters")
    labels = {"org": "1", "source_uid": source["uid"], "target": dead_url, "reason": "expired"}
    assert sample(metrics_registry, "gateway_spool_dead_lettered_total", **labels) == 1

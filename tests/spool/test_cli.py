"""`gateway spool status | dead-letters | retry | drop`, run as a user runs them, on the spool
file of a gateway that is running (the in-process app of the test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.keys import SPOOL
from gateway.spool import TargetKey
from tests.conftest import Headers
from tests.process import run_cli
from tests.spool.sources import TOKEN
from tests.types import AppClient


async def cli(data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = await asyncio.to_thread(run_cli, "spool", *args, data_dir=data_dir)
    return result.returncode, result.stdout, result.stderr


async def test_status_dead_letters_retry_and_drop_while_the_gateway_runs(
    client: AppClient, admin_headers: Headers, data_dir: Path, dead_url: str
) -> None:
    body = {"name": "down", "type": "influxdb", "access": "proxy", "url": dead_url,
            "jsonData": {"version": "InfluxQL"}}  # fmt: skip
    response = await client.post("/api/datasources", json=body, headers=admin_headers)
    source = (await response.json())["datasource"]
    for value in (1, 2):
        response = await client.post(
            "/write", params={"db": "x", "source": source["uid"]}, data=f"m v={value}",
            headers=TOKEN,
        )  # fmt: skip
        assert response.status == 204

    code, out, _ = await cli(data_dir, "status")
    assert code == 0
    (row,) = [line for line in out.splitlines() if line.startswith(source["uid"])]
    assert row.split()[2:4] == ["2", "10"]  # queued writes, bytes

    store = client.app[SPOOL].store
    first, second = await store.peek(TargetKey(source["id"], dead_url))
    await store.dead_letter(first.id, "HTTP 400: partial write: field type conflict")
    await store.dead_letter(second.id, "expired")
    code, out, err = await cli(data_dir, "dead-letters", "--source", source["uid"])
    assert code == 0
    assert "field type conflict" in out
    assert "db=x" in out
    assert "2 dead letter(s)" in err
    code, _, err = await cli(data_dir, "dead-letters", "--source", "nope")
    assert code == 1
    assert "no source with uid 'nope'" in err

    code, _, err = await cli(data_dir, "retry", str(first.id))
    assert code == 0
    assert "1 dead letter(s) queued again" in err
    (queued,) = await store.peek(TargetKey(source["id"], dead_url))
    assert queued.write.body == b"m v=1"
    code, _, err = await cli(data_dir, "drop", str(second.id), "99999")
    assert code == 1
    assert "1 dead letter(s) dropped" in err
    assert await store.dead_letters() == []

"""Sources and writes for the spool's end-to-end tests: InfluxQL sources registered through the
Grafana API on a test's own influxd, and line protocol whose values say what they are."""

from __future__ import annotations

import gzip
from typing import Any

from tests.conftest import ADMIN_TOKEN
from tests.spool.influx import InfluxProcess
from tests.types import AppClient

TOKEN = {"Authorization": f"Token {ADMIN_TOKEN}"}
BASE_SECONDS = 1_700_000_000


async def add_influx_source(
    client: AppClient,
    influx: InfluxProcess,
    db: str,
    *,
    user: tuple[str, str] | None = None,
    **json_data: Any,
) -> dict[str, Any]:
    """An InfluxQL source on `influx` (as its admin, or `user`: name and password)."""
    name, password = user or (influx.server.admin_user, influx.server.admin_password)
    body = {
        "name": f"influx-{db}",
        "type": "influxdb",
        "access": "proxy",
        "url": influx.url,
        "database": db,
        "user": name,
        "secureJsonData": {"password": password},
        "jsonData": {"version": "InfluxQL", **json_data},
    }
    response = await client.post(
        "/api/datasources", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status == 200, await response.text()
    source: dict[str, Any] = (await response.json())["datasource"]
    return source


def lines(first: int, count: int, measurement: str = "cpu") -> bytes:
    """Points `first`..`first+count-1`: value = number, one second apart (precision=s)."""
    return "".join(
        f"{measurement},host=h{n % 3} value={n} {BASE_SECONDS + n}\n"
        for n in range(first, first + count)
    ).encode()


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)

"""The spool's settings: the free-disk floor (`spool.min_free_bytes`) and the direct write's
answer timeout (`spool.forward_timeout`), parsed and validated like every setting; the floor
applied by the running app (the timeout's test is in test_intercept.py: it proxies)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import Settings, SettingsError, load_settings
from gateway.keys import SPOOL
from gateway.registry.models import DataSource
from gateway.spool import TargetKey
from gateway.spool.policy import write_buffer
from tests.conftest import GatewayClient
from tests.spool.influx import StartInflux
from tests.spool.sources import TOKEN, add_influx_source, lines
from tests.spool.writes import eventually


def test_the_spool_settings_have_their_defaults_and_env_names(tmp_path: Path) -> None:
    defaults = load_settings(None, {})
    assert defaults.spool_min_free_bytes == 256 << 20
    assert defaults.spool_forward_timeout == 8.0
    environ = {"GATEWAY_SPOOL_MIN_FREE_BYTES": "0", "GATEWAY_SPOOL_FORWARD_TIMEOUT": "2.5"}
    settings = load_settings(None, environ)
    assert settings.spool_min_free_bytes == 0  # no floor: the disk's own limit
    assert settings.spool_forward_timeout == 2.5
    toml = tmp_path / "gateway.toml"
    toml.write_text("[spool]\nmin_free_bytes = 1073741824\nforward_timeout = 3\n")
    from_file = load_settings(toml, {})
    assert from_file.spool_min_free_bytes == 1 << 30
    assert from_file.spool_forward_timeout == 3.0


def test_a_sources_forward_timeout_overrides_the_setting() -> None:
    spool_defaults = (1 << 30, 3600.0, 7.0)
    now = datetime.now(UTC)
    source = DataSource(
        id=1, org_id=1, uid="u", name="n", type="influxdb", access="proxy",
        url="http://influx:8086", user="", database="db", basic_auth=False, basic_auth_user="",
        with_credentials=False, is_default=False,
        json_data={"writeBuffer": {"forwardTimeout": 1.5}}, secure_json_data={}, version=1,
        read_only=False, api_version="", created=now, updated=now,
    )  # fmt: skip
    buffer = write_buffer(source, *spool_defaults)
    assert buffer is not None
    assert buffer.forward_timeout == 1.5
    plain = write_buffer(dataclasses.replace(source, json_data={}), *spool_defaults)
    assert plain is not None
    assert plain.forward_timeout == 7.0


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("GATEWAY_SPOOL_MIN_FREE_BYTES", "-1"),
        ("GATEWAY_SPOOL_MIN_FREE_BYTES", "256MiB"),
        ("GATEWAY_SPOOL_MIN_FREE_BYTES", "1.5"),
        ("GATEWAY_SPOOL_FORWARD_TIMEOUT", "0"),
        ("GATEWAY_SPOOL_FORWARD_TIMEOUT", "soon"),
        ("GATEWAY_SPOOL_FORWARD_TIMEOUT", "inf"),
    ],
)
def test_invalid_spool_settings_stop_start_up_naming_the_key(env: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(None, {env: value})
    assert env in str(raised.value)


async def test_writes_past_the_free_disk_floor_get_503_and_nothing_queued_is_lost(
    settings: Settings, gateway_client: GatewayClient, start_influx: StartInflux
) -> None:
    influx = await start_influx()
    db = await influx.create_database()
    # First with the default floor: three writes queued during an outage.
    client = await gateway_client(create_app(settings, metrics_registry=CollectorRegistry()))
    source = await add_influx_source(client, influx, db)
    params = {"db": db, "precision": "s", "source": source["uid"]}
    influx.kill()
    for batch in range(3):
        response = await client.post(
            "/write", params=params, data=lines(batch * 10, 10), headers=TOKEN
        )
        assert response.status == 204
    await client.close()

    # Then restarted with a floor above what the disk has free: new writes are refused.
    free = shutil.disk_usage(settings.data_dir).free
    floored = dataclasses.replace(settings, spool_min_free_bytes=free + (1 << 40))
    registry = CollectorRegistry()
    client = await gateway_client(create_app(floored, metrics_registry=registry))
    response = await client.post("/write", params=params, data=lines(30, 10), headers=TOKEN)
    assert response.status == 503
    assert response.headers["Retry-After"] == "30"
    assert response.headers["X-Platform-Error-Code"] == "unavailable"
    message = json.loads(await response.text())["message"]
    assert source["name"] in message
    assert source["uid"] in message
    assert "disk" in message
    labels = {"org": "1", "source_uid": source["uid"], "target": influx.url, "reason": "disk"}
    assert registry.get_sample_value("gateway_spool_rejected_total", labels) == 1

    # What was queued before is still delivered: the floor only refuses new appends.
    await asyncio.to_thread(influx.start)

    async def delivered() -> bool:
        rows = await influx.select(db, "SELECT count(value) FROM $db.autogen.cpu")
        return bool(rows) and rows[0][1] == 30

    await eventually(delivered, timeout=20, what="the queued writes delivered")
    store = client.app[SPOOL].store

    async def drained() -> bool:
        return not await store.peek(TargetKey(source["id"], influx.url))

    await eventually(drained, what="the queue acknowledged")

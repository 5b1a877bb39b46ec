"""/health, /ready, /ping: no token, and the shapes operators and Docker rely on."""

from __future__ import annotations

import aiosqlite
import structlog

from gateway import __version__
from gateway.config import Settings
from gateway.keys import LIFECYCLE, STORE
from gateway.registry.audit import AuditedRegistry
from gateway.registry.sqlite import SqliteRegistry
from tests.conftest import ADMIN_TOKEN
from tests.types import AppClient


async def test_ping_is_204_with_influx_version_headers(client: AppClient) -> None:
    response = await client.get("/ping")
    assert response.status == 204
    assert response.headers["X-Influxdb-Version"] == __version__
    assert await response.read() == b""


async def test_health_is_an_influx_healthcheck_with_the_store_check(client: AppClient) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = await response.json()
    assert body["name"] == "datasource-gateway"
    assert body["status"] == "pass"
    assert body["version"] == __version__
    assert isinstance(body["commit"], str)
    assert body["commit"]
    store_check = next(check for check in body["checks"] if check["name"] == "store")
    assert store_check["status"] == "pass"
    assert store_check["message"].startswith("SQLite answered in ")


async def test_health_fails_with_503_when_the_database_is_gone(
    client: AppClient, settings: Settings
) -> None:
    audited = client.app[STORE]
    assert isinstance(audited, AuditedRegistry)
    store = audited.inner
    # The connection is the SQLite backend's own: the test kills it from outside.
    assert isinstance(store, SqliteRegistry)
    await store._conn.close()  # the database connection dies under us
    try:
        response = await client.get("/health")
        assert response.status == 503
        body = await response.json()
        assert body["status"] == "fail"
        assert body["message"].startswith("database error")
    finally:  # give the app a live connection back so its shutdown can close it
        store._conn = await aiosqlite.connect(settings.db_path, isolation_level=None)


async def test_ready_is_200_after_start_up_and_503_while_draining(client: AppClient) -> None:
    response = await client.get("/ready")
    assert response.status == 200
    assert (await response.json())["status"] == "ready"
    client.app[LIFECYCLE].draining = True
    response = await client.get("/ready")
    assert response.status == 503
    assert await response.json() == {"status": "draining"}


async def test_unknown_paths_answer_in_the_dialect_of_their_api(client: AppClient) -> None:
    headers = {"Authorization": "Bearer dsg_test-admin-token"}
    grafana = await client.get("/api/nothing-here", headers=headers)
    assert grafana.status == 404
    assert await grafana.json() == {"message": "Not found"}
    influx = await client.get("/api/v2/nothing-here", headers=headers)
    assert influx.status == 404
    assert await influx.json() == {"code": "not found", "message": "path not found"}
    assert influx.headers["X-Platform-Error-Code"] == "not found"


async def test_health_with_a_token_logs_the_tokens_org(client: AppClient) -> None:
    """/health is public, yet reads a token to list that org's sources: its line names the org
    (issue 18 item 6)."""
    with structlog.testing.capture_logs() as logs:
        await client.get("/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        await client.get("/health")
    with_token, anonymous = [entry for entry in logs if entry["event"] == "request"]
    assert (with_token["path"], with_token["org"]) == ("/health", 1)
    assert anonymous["org"] is None

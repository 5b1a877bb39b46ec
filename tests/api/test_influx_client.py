"""The official `influxdb-client` SourcesService, unchanged, driving the gateway.

The client is synchronous, so each call runs in a thread (`asyncio.to_thread`) while the test
server keeps serving on this loop. Upstreams are real: influxd 1.x and the InfluxDB 2.x double.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.domain.bucket import Bucket
from influxdb_client.domain.buckets import Buckets
from influxdb_client.domain.health_check import HealthCheck
from influxdb_client.domain.source import Source
from influxdb_client.domain.sources import Sources
from influxdb_client.rest import ApiException
from influxdb_client.service.sources_service import SourcesService

from gateway.keys import STORE
from tests.conftest import ADMIN_TOKEN, MakeToken
from tests.services.influxdb import FakeInfluxDB2, InfluxDB1, closed_port_url
from tests.types import AppClient


class Sync:
    """A SourcesService whose calls run in a worker thread: `await sources.call("get_sources")`."""

    def __init__(self, service: SourcesService) -> None:
        self.service = service

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        bound: Callable[..., Any] = getattr(self.service, method)
        return await asyncio.to_thread(bound, *args, **kwargs)

    async def fails(self, method: str, *args: Any, **kwargs: Any) -> ApiException:
        with pytest.raises(ApiException) as caught:
            await self.call(method, *args, **kwargs)
        return caught.value


@contextlib.asynccontextmanager
async def sources_service(client: AppClient, token: str) -> AsyncIterator[Sync]:
    url = str(client.make_url("")).rstrip("/")
    influx = InfluxDBClient(url=url, token=token, timeout=10_000)
    try:
        yield Sync(SourcesService(influx.api_client))
    finally:
        await asyncio.to_thread(influx.close)


@pytest.fixture
async def sources(client: AppClient) -> AsyncIterator[Sync]:
    async with sources_service(client, ADMIN_TOKEN) as service:
        yield service


def service_for(
    client: AppClient, headers: dict[str, str]
) -> contextlib.AbstractAsyncContextManager[Sync]:
    _, token = headers["Authorization"].split(" ", 1)
    return sources_service(client, token)


async def test_the_whole_lifecycle_of_a_v1_source(
    client: AppClient, sources: Sync, influxdb: InfluxDB1
) -> None:
    db = await influxdb.create_database(retention_policies={"week": "7d"})
    created, status, headers = await sources.call(
        "post_sources_with_http_info",
        Source(
            name="influx1",
            type="v1",
            url=influxdb.url,
            username=influxdb.admin_user,
            password=influxdb.admin_password,
            default_rp="week",
        ),
    )
    assert status == 201
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    org = await client.app[STORE].find_org(name="Main Org.")
    assert isinstance(created, Source)
    assert (created.org_id, created.name, created.type, created.default_rp) == (
        org.influx_id,
        "influx1",
        "v1",
        "week",
    )
    assert (created.password, created.token, created.languages) == (None, None, ["influxql"])
    assert created.links._self == f"/api/v2/sources/{created.id}"
    assert created.links.buckets == f"/api/v2/sources/{created.id}/buckets"

    listed = await sources.call("get_sources", org="Main Org.")
    assert isinstance(listed, Sources)
    assert [s.id for s in listed.sources] == [created.id]
    assert listed.links._self == "/api/v2/sources"

    fetched = await sources.call("get_sources_id", created.id)
    assert fetched.to_dict() == created.to_dict()

    patched = await sources.call("patch_sources_id", created.id, Source(name="renamed"))
    assert patched.to_dict() == {**created.to_dict(), "name": "renamed"}

    buckets = await sources.call("get_sources_id_buckets", created.id)
    assert isinstance(buckets, Buckets)
    mine = {b.name: b for b in buckets.buckets if b.name.startswith(f"{db}/")}
    assert sorted(mine) == [f"{db}/autogen", f"{db}/week"]
    assert isinstance(mine[f"{db}/week"], Bucket)
    assert mine[f"{db}/week"].retention_rules[0].every_seconds == 604800
    assert mine[f"{db}/autogen"].retention_rules[0].every_seconds == 0

    health = await sources.call("get_sources_id_health", created.id)
    assert isinstance(health, HealthCheck)
    assert (health.name, health.status) == ("renamed", "pass")

    assert await sources.call("delete_sources_id", created.id) is None
    error = await sources.fails("get_sources_id", created.id)
    assert (error.status, error.message) == (404, "source not found")


async def test_a_v2_source_lists_the_upstreams_buckets(
    sources: Sync, fake_influxdb2: FakeInfluxDB2
) -> None:
    fake_influxdb2.add_bucket("telegraf", 2592000)
    created = await sources.call(
        "post_sources",
        Source(name="influx2", type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token),
    )
    assert created.languages == ["flux"]
    buckets = await sources.call("get_sources_id_buckets", created.id, org="Main Org.")
    assert [(b.name, b.retention_rules[0].every_seconds) for b in buckets.buckets] == [
        ("_monitoring", 604800),
        ("_tasks", 259200),
        ("telegraf", 2592000),
    ]
    assert buckets.links._self == f"/api/v2/sources/{created.id}/buckets"
    assert [r.authorization for r in fake_influxdb2.bucket_requests()] == [
        f"Token {fake_influxdb2.token}"
    ]
    health = await sources.call("get_sources_id_health", created.id)
    assert health.status == "pass"


async def test_a_source_sent_back_whole_round_trips(sources: Sync) -> None:
    created = await sources.call(
        "post_sources", Source(name="whole", type="self", insecure_skip_verify=True)
    )
    assert created.languages == ["flux", "influxql"]
    created.name = "whole-again"
    patched = await sources.call("patch_sources_id", created.id, created)
    assert patched.to_dict() == created.to_dict()


async def test_errors_reach_the_client_as_influxdb_errors(
    client: AppClient, sources: Sync, make_token: MakeToken
) -> None:
    error = await sources.fails("get_sources", org="nowhere")
    assert (error.status, error.message) == (404, 'organization name "nowhere" not found')
    assert error.headers["X-Platform-Error-Code"] == "not found"

    error = await sources.fails("get_sources_id", "123")
    assert (error.status, error.message) == (400, "id must have a length of 16 bytes")

    error = await sources.fails("post_sources", {"name": "x", "url": "nope"})
    assert (error.status, error.message) == (
        400,
        "url: must be an absolute http or https URL with a host",
    )

    await sources.call("post_sources", Source(name="dup", url="http://i:8086"))
    error = await sources.fails("post_sources", Source(name="dup", url="http://i:8086"))
    assert (error.status, error.message) == (
        422,
        "a source with the same name already exists in this organization",
    )

    async with service_for(client, await make_token(role="viewer", scheme="Token")) as viewer:
        error = await viewer.fails("post_sources", Source(name="v", url="http://i:8086"))
        assert error.status == 403
        assert (await viewer.call("get_sources")).sources[0].name == "dup"

    async with sources_service(client, "not-a-token") as stranger:
        error = await stranger.fails("get_sources")
        assert (error.status, error.message) == (401, "unauthorized access")


async def test_another_orgs_sources_are_invisible(
    client: AppClient, sources: Sync, make_token: MakeToken
) -> None:
    ours = await sources.call("post_sources", Source(name="ours", url="http://i:8086"))
    async with service_for(client, await make_token(role="editor", org="Other")) as other:
        theirs = await other.call("post_sources", Source(name="ours", url="http://i:8086"))
        assert theirs.org_id != ours.org_id
        assert [s.id for s in (await other.call("get_sources")).sources] == [theirs.id]
        error = await other.fails("get_sources_id", ours.id)
        assert (error.status, error.message) == (404, "source not found")
        error = await other.fails("delete_sources_id", ours.id)
        assert error.status == 404
        error = await other.fails("get_sources", org="Main Org.")
        assert error.status == 404
    assert [s.id for s in (await sources.call("get_sources")).sources] == [ours.id]


async def test_an_unreachable_source_raises_with_the_health_check_as_body(sources: Sync) -> None:
    created = await sources.call(
        "post_sources",
        Source(name="down", type="v2", url=closed_port_url(), token="any"),
    )
    error = await sources.fails("get_sources_id_health", created.id)
    assert error.status == 503
    assert error.headers["Content-Type"] == "application/json; charset=utf-8"
    health = json.loads(error.body)
    assert (health["name"], health["status"]) == ("down", "fail")
    error = await sources.fails("get_sources_id_buckets", created.id)
    assert (error.status, error.message) == (503, "source is unreachable: connection refused")


async def test_refused_credentials_do_not_look_like_a_bad_gateway_token(
    sources: Sync, fake_influxdb2: FakeInfluxDB2
) -> None:
    created = await sources.call(
        "post_sources",
        Source(name="badtoken", type="v2", url=fake_influxdb2.url, token="wrong"),
    )
    error = await sources.fails("get_sources_id_buckets", created.id)
    assert (error.status, error.message) == (400, "source rejected the credentials")
    assert (await sources.call("get_sources_id", created.id)).name == "badtoken"


async def test_zap_trace_span_becomes_the_request_id(sources: Sync) -> None:
    _, status, headers = await sources.call(
        "get_sources_with_http_info", zap_trace_span="trace-from-client"
    )
    assert status == 200
    assert headers["X-Request-Id"] == "trace-from-client"

"""The SSRF policy where sources are saved (400) and where probes connect (refused)."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import MONITOR, STORE
from gateway.registry.models import DataSourceSpec
from tests.conftest import ADMIN_TOKEN, Headers
from tests.types import AppClient
from tests.waiting import wait_for

METADATA_URL = "http://169.254.169.254/latest/meta-data/"
DENIED = "169.254.169.254 is in the denied network 169.254.0.0/16"


async def test_grafana_create_refuses_a_metadata_url(
    client: AppClient, admin_headers: Headers
) -> None:
    response = await client.post(
        "/api/datasources",
        json={"name": "meta", "type": "prometheus", "access": "proxy", "url": METADATA_URL},
        headers=admin_headers,
    )
    assert response.status == 400
    assert await response.json() == {"message": f"Data source URL is not allowed: {DENIED}"}


async def test_grafana_update_refuses_a_metadata_url(
    client: AppClient, admin_headers: Headers
) -> None:
    created = await client.post(
        "/api/datasources",
        json={"name": "p", "type": "prometheus", "access": "proxy", "url": "http://127.0.0.1:9"},
        headers=admin_headers,
    )
    source_id = (await created.json())["id"]
    response = await client.put(
        f"/api/datasources/{source_id}",
        json={"name": "p", "type": "prometheus", "access": "proxy", "url": METADATA_URL},
        headers=admin_headers,
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith("Data source URL is not allowed")


async def test_influx_create_refuses_a_metadata_url(
    client: AppClient, admin_headers: Headers
) -> None:
    response = await client.post(
        "/api/v2/sources",
        json={"name": "meta", "type": "v1", "url": METADATA_URL},
        headers=admin_headers,
    )
    assert response.status == 400
    body = await response.json()
    assert body["code"] == "invalid"
    assert DENIED in body["message"]


class TestConnectTime:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        """Loopback denied, so a name that resolves to it can stand in for a rebound name."""
        return dataclasses.replace(settings, proxy_denied_networks=("127.0.0.0/8", "::1/128"))

    async def test_probes_never_connect_to_a_denied_address(
        self, aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, settings: Settings
    ) -> None:
        hits: list[str] = []

        async def handler(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.Response(text="ok")

        upstream_app = web.Application()
        upstream_app.router.add_get("/{tail:.*}", handler)
        upstream = await aiohttp_server(upstream_app)
        client = await aiohttp_client(create_app(settings))
        # Saved directly: as if the name resolved elsewhere when it was saved (DNS rebinding).
        source = await client.app[STORE].create_source(
            1,
            DataSourceSpec(
                name="rebound", type="generic", url=f"http://localhost:{upstream.port}/"
            ),
        )
        response = await client.get(
            f"/api/datasources/uid/{source.uid}/health",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status == 400
        assert (await response.json())["status"] == "ERROR"
        assert hits == []

    async def test_probes_and_bucket_listings_never_connect_to_a_denied_literal(
        self, aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer, settings: Settings
    ) -> None:
        """aiohttp asks no resolver about an IP literal; a provisioned source (or one saved
        before the policy changed) can hold one, so the literal is checked before connecting."""
        hits: list[str] = []

        async def handler(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.Response(text="ok")

        upstream_app = web.Application()
        upstream_app.router.add_route("*", "/{tail:.*}", handler)
        upstream = await aiohttp_server(upstream_app)
        client = await aiohttp_client(create_app(settings))
        store = client.app[STORE]
        url = f"http://127.0.0.1:{upstream.port}"
        generic = await store.create_source(1, DataSourceSpec(name="g", type="t", url=url))
        influx = await store.create_source(1, DataSourceSpec(name="i", type="influxdb", url=url))
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        health = await client.get(f"/api/datasources/uid/{generic.uid}/health", headers=auth)
        assert (await health.json())["message"].startswith("not probed: 127.0.0.1 is in")
        buckets = await client.get(f"/api/v2/sources/{influx.id:016x}/buckets", headers=auth)
        assert buckets.status == 403
        assert (await buckets.json())["code"] == "forbidden"
        monitor = client.app[MONITOR]

        def probed(source_id: int) -> bool:
            state = monitor.state(source_id)
            return state is not None and state.last_checked is not None

        await wait_for(lambda: probed(generic.id) and probed(influx.id), what="first probes")
        assert hits == []

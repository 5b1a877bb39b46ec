"""The real `grafana-client` package against the gateway, the way Grafana users' scripts use it.

grafana-client is synchronous, so each call runs in a worker thread (`asyncio.to_thread`) while
the event loop keeps serving the aiohttp test server it talks to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from grafana_client.api import GrafanaApi
from grafana_client.client import (
    GrafanaBadInputError,
    GrafanaClientError,
    GrafanaUnauthorizedError,
)
from grafana_client.model import DatasourceIdentifier, DatasourceModel
from pytest_aiohttp import AiohttpServer

from tests.conftest import Headers, MakeToken
from tests.types import AppClient

T = TypeVar("T")

# A type without a dedicated probe: its health is "the base URL answers below 500".
GENERIC_TYPE = "acme-custom-datasource"
VERSION_CONFLICT = (
    "Datasource has already been updated by someone else. Please reload and try again"
)


async def call(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args)


def prometheus(name: str = "Prom", **fields: Any) -> dict[str, Any]:
    model = DatasourceModel(
        name=name, type="prometheus", url="http://prom.example:9090", access="proxy"
    )
    # asdict() sends the unset optional fields as JSON null, as real scripts do.
    body: dict[str, Any] = {**model.asdict(), **fields}
    return body


@pytest.fixture
def connect(client: AppClient) -> Iterator[Callable[..., GrafanaApi]]:
    """`connect(headers, **options)` → a GrafanaApi on the test server, closed afterwards."""
    made: list[GrafanaApi] = []

    def make(headers: Headers, **options: Any) -> GrafanaApi:
        token = headers["Authorization"].split(" ", 1)[1]
        api = GrafanaApi(
            auth=token,
            host=client.server.host,
            port=client.server.port,
            protocol="http",
            **options,
        )
        made.append(api)
        return api

    yield make
    for api in made:
        api.client.s.close()


@pytest.fixture
def grafana(connect: Callable[..., GrafanaApi], admin_headers: Headers) -> GrafanaApi:
    return connect(admin_headers)


@pytest.fixture
async def upstream_url(aiohttp_server: AiohttpServer) -> str:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("/"))


async def test_version_comes_from_frontend_settings(grafana: GrafanaApi) -> None:
    assert await call(lambda: grafana.version) == "11.0.0"
    build_info = await call(grafana.connect)
    assert build_info["version"] == "11.0.0"


async def test_from_url_connects_the_same_way(client: AppClient, admin_headers: Headers) -> None:
    token = admin_headers["Authorization"].split(" ", 1)[1]
    api = GrafanaApi.from_url(str(client.make_url("/")), credential=token)
    try:
        assert await call(api.datasource.list_datasources) == []
    finally:
        api.client.s.close()


async def test_create_then_every_lookup_and_list(grafana: GrafanaApi) -> None:
    datasource = grafana.datasource
    created = await call(datasource.create_datasource, prometheus(uid="prom-uid"))
    assert (created["message"], created["name"]) == ("Datasource added", "Prom")
    single = created["datasource"]
    assert (single["uid"], single["type"], single["id"]) == (
        "prom-uid",
        "prometheus",
        created["id"],
    )

    assert await call(datasource.get_datasource_by_id, created["id"]) == single
    assert await call(datasource.get_datasource_by_uid, "prom-uid") == single
    assert await call(datasource.get_datasource_by_name, "Prom") == single
    assert await call(datasource.find_datasource, "Prom") == single
    assert await call(datasource.get_datasource_id_by_name, "Prom") == {"id": created["id"]}
    for identifier in [
        DatasourceIdentifier(id=str(created["id"])),
        DatasourceIdentifier(uid="prom-uid"),
        DatasourceIdentifier(name="Prom"),
    ]:
        assert await call(datasource.get, identifier) == single

    await call(datasource.create_datasource, prometheus("another"))
    listed = await call(datasource.list_datasources)
    assert [(item["name"], item["typeName"]) for item in listed] == [
        ("another", "Prometheus"),
        ("Prom", "Prometheus"),
    ]


async def test_update_by_id_and_by_uid_round_trip_a_fetched_dto(grafana: GrafanaApi) -> None:
    datasource = grafana.datasource
    created = await call(datasource.create_datasource, prometheus(uid="u"))
    # The usual script: fetch, change, send the whole DTO back (version included).
    fetched = await call(datasource.get_datasource_by_uid, "u")
    fetched["url"] = "https://prom2.example"
    by_id = await call(datasource.update_datasource, created["id"], fetched)
    assert (by_id["message"], by_id["datasource"]["type"]) == ("Datasource updated", "prometheus")
    assert (by_id["datasource"]["url"], by_id["datasource"]["version"]) == (
        "https://prom2.example",
        2,
    )

    again = await call(datasource.get_datasource_by_uid, "u")
    again["jsonData"] = {"httpMethod": "GET"}
    again["secureJsonData"] = {"basicAuthPassword": "pw"}
    by_uid = await call(datasource.update_datasource_by_uid, "u", again)
    assert by_uid["datasource"]["jsonData"] == {"httpMethod": "GET"}
    assert by_uid["datasource"]["secureJsonFields"] == {"basicAuthPassword": True}
    assert by_uid["datasource"]["version"] == 3


async def test_stale_version_is_a_409(grafana: GrafanaApi) -> None:
    datasource = grafana.datasource
    created = await call(datasource.create_datasource, prometheus())
    mine = await call(datasource.get_datasource_by_id, created["id"])
    theirs = dict(mine)
    await call(datasource.update_datasource, created["id"], {**theirs, "user": "them"})
    with pytest.raises(GrafanaClientError) as raised:
        await call(datasource.update_datasource, created["id"], {**mine, "user": "me"})
    assert raised.value.status_code == 409
    assert raised.value.response == {"message": VERSION_CONFLICT}
    current = await call(datasource.get_datasource_by_id, created["id"])
    assert current["user"] == "them"


async def test_duplicate_name_is_a_409_then_the_example_flow_updates_it(
    grafana: GrafanaApi,
) -> None:
    datasource = grafana.datasource
    await call(datasource.create_datasource, prometheus("probe"))
    with pytest.raises(GrafanaClientError) as raised:
        await call(datasource.create_datasource, prometheus("probe"))
    assert raised.value.status_code == 409
    assert raised.value.response == {"message": "data source with the same name already exists"}
    # examples/datasource-health-probe.py: on 409, look it up by name and PUT by id.
    existing = await call(datasource.get_datasource_by_name, "probe")
    updated = await call(
        datasource.update_datasource, existing["id"], prometheus("probe", url="http://new:9090")
    )
    assert updated["datasource"]["url"] == "http://new:9090"


async def test_invalid_input_is_a_bad_input_error(grafana: GrafanaApi) -> None:
    with pytest.raises(GrafanaBadInputError) as raised:
        await call(grafana.datasource.create_datasource, prometheus(uid="*"))
    assert raised.value.response == {"message": 'uid: must be 1 to 40 letters, digits, "-" or "_"'}


async def test_deletes_by_id_name_and_uid(grafana: GrafanaApi) -> None:
    datasource = grafana.datasource
    by_id = await call(datasource.create_datasource, prometheus("a"))
    by_name = await call(datasource.create_datasource, prometheus("b"))
    by_uid = await call(datasource.create_datasource, prometheus("c", uid="c-uid"))

    assert await call(datasource.delete_datasource_by_id, by_id["id"]) == {
        "message": "Data source deleted"
    }
    assert await call(datasource.delete_datasource_by_name, "b") == {
        "message": "Data source deleted",
        "id": by_name["id"],
    }
    assert await call(datasource.delete_datasource_by_uid, "c-uid") == {
        "message": "Data source deleted",
        "id": by_uid["id"],
    }
    assert await call(datasource.list_datasources) == []
    with pytest.raises(GrafanaClientError) as raised:
        await call(datasource.get_datasource_by_uid, "c-uid")
    assert (raised.value.status_code, raised.value.response) == (
        404,
        {"message": "Data source not found"},
    )


class TestHealth:
    async def test_healthy_source(self, grafana: GrafanaApi, upstream_url: str) -> None:
        datasource = grafana.datasource
        await call(
            datasource.create_datasource, prometheus(type=GENERIC_TYPE, uid="up", url=upstream_url)
        )
        native = await call(datasource.health, "up")
        assert (native.keys(), native["status"]) == ({"status", "message"}, "OK")
        inquiry = await call(datasource.health_inquiry, "up")
        assert (inquiry.success, inquiry.status, inquiry.type) == (True, "OK", GENERIC_TYPE)
        assert isinstance(inquiry.message, str)
        assert inquiry.message

    async def test_unreachable_source(self, grafana: GrafanaApi, dead_url: str) -> None:
        datasource = grafana.datasource
        await call(
            datasource.create_datasource, prometheus(type=GENERIC_TYPE, uid="dead", url=dead_url)
        )
        with pytest.raises(GrafanaBadInputError) as raised:
            await call(datasource.health, "dead")
        assert raised.value.response["status"] == "ERROR"
        inquiry = await call(datasource.health_inquiry, "dead")
        assert (inquiry.success, inquiry.status) == (False, "ERROR")
        assert inquiry.message

    async def test_unknown_uid(self, grafana: GrafanaApi) -> None:
        with pytest.raises(GrafanaClientError) as raised:
            await call(grafana.datasource.health, "nope")
        assert raised.value.status_code == 404
        inquiry = await call(grafana.datasource.health_inquiry, "nope")
        assert (inquiry.success, inquiry.status, inquiry.message) == (
            False,
            "ERROR",
            "Data source not found",
        )


class TestAccess:
    async def test_viewer_reads_but_cannot_write(
        self, grafana: GrafanaApi, connect: Callable[..., GrafanaApi], make_token: MakeToken
    ) -> None:
        await call(grafana.datasource.create_datasource, prometheus())
        viewer = connect(await make_token(role="viewer"))
        assert [s["name"] for s in await call(viewer.datasource.list_datasources)] == ["Prom"]
        with pytest.raises(GrafanaClientError) as raised:
            await call(viewer.datasource.create_datasource, prometheus("mine"))
        assert raised.value.status_code == 403
        assert raised.value.response == {
            "message": "You'll need additional permissions to perform this action. "
            "Permissions needed: datasources:create"
        }
        with pytest.raises(GrafanaClientError) as raised:
            await call(viewer.datasource.delete_datasource_by_name, "Prom")
        assert raised.value.status_code == 403

    async def test_other_org_sees_nothing_and_org_header_must_match(
        self,
        grafana: GrafanaApi,
        connect: Callable[..., GrafanaApi],
        make_token: MakeToken,
        admin_headers: Headers,
    ) -> None:
        created = await call(grafana.datasource.create_datasource, prometheus(uid="mine"))
        other = connect(await make_token(role="admin", org="Other Org"))
        assert await call(other.datasource.list_datasources) == []
        with pytest.raises(GrafanaClientError) as raised:
            await call(other.datasource.get_datasource_by_id, created["id"])
        assert raised.value.status_code == 404

        wrong_org = connect(admin_headers, organization_id=2)
        with pytest.raises(GrafanaClientError) as raised:
            await call(wrong_org.datasource.list_datasources)
        assert raised.value.status_code == 403
        right_org = connect(admin_headers, organization_id=1)
        assert len(await call(right_org.datasource.list_datasources)) == 1

    async def test_unknown_token_is_unauthorized(self, connect: Callable[..., GrafanaApi]) -> None:
        stranger = connect({"Authorization": "Bearer dsg_not-a-token"})
        with pytest.raises(GrafanaUnauthorizedError):
            await call(stranger.datasource.list_datasources)

"""The data source proxy in front of Debian's real Prometheus.

The real `grafana-client` drives the gateway the way Grafana users' scripts do (it is synchronous,
so each call runs in a worker thread while the event loop serves the gateway). Prometheus is one
process per xdist worker (`prometheus_url`), plus one that demands basic auth
(`prometheus_basic_auth_url`); each test registers its own sources in its own gateway.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaBadInputError, GrafanaClientError
from yarl import URL

from tests.conftest import Headers, MakeToken
from tests.services.prometheus import PROMETHEUS_PASSWORD, PROMETHEUS_USER
from tests.types import AppClient

T = TypeVar("T")

AUTH_FAILED = "Authentication to data source failed"
DELETE_SERIES = "api/v1/admin/tsdb/delete_series"
DELETE_SERIES_HANDLER = "/api/v1/admin/tsdb/delete_series"


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def add_source(client: AppClient, headers: Headers, **fields: Any) -> dict[str, Any]:
    """Register a source through the Grafana API; returns its DTO (id, uid, ...)."""
    body = {"name": "Prom", "type": "prometheus", "access": "proxy", **fields}
    response = await client.post("/api/datasources", json=body, headers=headers)
    assert response.status == 200, await response.text()
    source: dict[str, Any] = (await response.json())["datasource"]
    return source


@pytest.fixture
def connect(client: AppClient) -> Iterator[Callable[[Headers], GrafanaApi]]:
    """`connect(headers)` → a GrafanaApi on the gateway's test server, closed afterwards."""
    made: list[GrafanaApi] = []

    def make(headers: Headers) -> GrafanaApi:
        token = headers["Authorization"].split(" ", 1)[1]
        api = GrafanaApi(
            auth=token, host=client.server.host, port=client.server.port, protocol="http"
        )
        made.append(api)
        return api

    yield make
    for api in made:
        api.client.s.close()


@pytest.fixture
def grafana(connect: Callable[[Headers], GrafanaApi], admin_headers: Headers) -> GrafanaApi:
    return connect(admin_headers)


@pytest.fixture
async def prom(client: AppClient, admin_headers: Headers, prometheus_url: str) -> dict[str, Any]:
    return await add_source(client, admin_headers, url=prometheus_url, uid="prom-real")


async def prometheus_handler_requests(prometheus_url: str, handler: str) -> float:
    """How many requests Prometheus itself has answered on `handler`, from its own /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus_url}/metrics") as response,
    ):
        text = await response.text()
    total = 0.0
    pattern = re.compile(r"^prometheus_http_requests_total\{(.*)\} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and f'handler="{handler}"' in match.group(1):
            total += float(match.group(2))
    return total


# --- grafana-client's query(), query_range(), series() ----------------------------------------


async def test_grafana_client_query_by_id_and_by_uid(
    grafana: GrafanaApi, prom: dict[str, Any]
) -> None:
    by_id = await call(grafana.datasource.query, prom["id"], "6 * 7", 1_700_000_000)
    assert by_id == {
        "status": "success",
        "data": {"resultType": "scalar", "result": [1_700_000_000, "42"]},
    }
    by_uid = await call(
        grafana.datasource.query, None, "vector(5)", 1_700_000_000, datasource_uid=prom["uid"]
    )
    assert by_uid["status"] == "success"
    assert by_uid["data"]["resultType"] == "vector"
    assert by_uid["data"]["result"] == [{"metric": {}, "value": [1_700_000_000, "5"]}]


async def test_grafana_client_query_range_returns_every_step(
    grafana: GrafanaApi, prom: dict[str, Any]
) -> None:
    start = 1_700_000_000
    answer = await call(
        grafana.datasource.query_range, prom["id"], "vector(3)", start, start + 600, 60
    )
    assert answer["status"] == "success"
    assert answer["data"]["resultType"] == "matrix"
    (series,) = answer["data"]["result"]
    assert series["metric"] == {}
    assert series["values"] == [[start + 60 * n, "3"] for n in range(11)]


async def test_grafana_client_series_and_prometheus_errors_pass_through(
    grafana: GrafanaApi, prom: dict[str, Any]
) -> None:
    # This Prometheus scrapes nothing: no series, but a well-formed success.
    now = int(time.time())
    answer = await call(grafana.datasource.series, prom["id"], "up", now - 3600, now)
    assert answer == {"status": "success", "data": []}
    # Prometheus's own 400 (a bad matcher) reaches the client as Prometheus wrote it.
    with pytest.raises(GrafanaBadInputError) as caught:
        await call(
            grafana.datasource.series,
            None,
            "{",
            now - 3600,
            now,
            datasource_uid=prom["uid"],
        )
    assert caught.value.response["status"] == "error"
    assert caught.value.response["errorType"] == "bad_data"
    assert "parse error" in caught.value.response["error"]


async def test_viewer_queries_but_only_an_admin_reads_the_flags(
    connect: Callable[[Headers], GrafanaApi],
    make_token: MakeToken,
    grafana: GrafanaApi,
    prom: dict[str, Any],
    prometheus_url: str,
) -> None:
    viewer = connect(await make_token(role="viewer"))
    assert (await call(viewer.datasource.query, prom["id"], "1", 1_700_000_000))["status"] == (
        "success"
    )
    flags_path = f"/datasources/proxy/{prom['id']}/api/v1/status/flags"
    with pytest.raises(GrafanaClientError) as caught:
        await call(viewer.client.GET, flags_path)
    assert caught.value.status_code == 403
    assert caught.value.response == {"message": "plugin proxy route access denied"}
    flags = await call(grafana.client.GET, flags_path)
    assert flags["status"] == "success"
    assert flags["data"]["web.listen-address"] == prometheus_url.removeprefix("http://")


# --- basic auth against a Prometheus that demands it ------------------------------------------


async def test_basic_auth_source_reaches_a_protected_prometheus(
    client: AppClient,
    admin_headers: Headers,
    grafana: GrafanaApi,
    prometheus_basic_auth_url: str,
) -> None:
    source = await add_source(
        client,
        admin_headers,
        url=prometheus_basic_auth_url,
        basicAuth=True,
        basicAuthUser=PROMETHEUS_USER,
        secureJsonData={"basicAuthPassword": PROMETHEUS_PASSWORD},
    )
    answer = await call(grafana.datasource.query, source["id"], "2 + 2", 1_700_000_000)
    assert answer["data"]["result"] == [1_700_000_000, "4"]
    ready = await client.get(
        f"/api/datasources/proxy/uid/{source['uid']}/-/ready", headers=admin_headers
    )
    assert ready.status == 200
    assert await ready.text() == "Prometheus Server is Ready.\n"


async def test_wrong_basic_auth_is_400_authentication_failed(
    client: AppClient,
    admin_headers: Headers,
    grafana: GrafanaApi,
    prometheus_basic_auth_url: str,
) -> None:
    source = await add_source(
        client,
        admin_headers,
        url=prometheus_basic_auth_url,
        basicAuth=True,
        basicAuthUser=PROMETHEUS_USER,
        secureJsonData={"basicAuthPassword": "not-the-password"},
    )
    with pytest.raises(GrafanaBadInputError) as caught:
        await call(grafana.datasource.query, source["id"], "1", 1_700_000_000)
    assert caught.value.response == AUTH_FAILED
    # Raw: Prometheus's 401 and its `WWW-Authenticate: Basic` (a browser login prompt) are gone.
    response = await client.get(
        f"/api/datasources/proxy/{source['id']}/api/v1/status/buildinfo", headers=admin_headers
    )
    assert response.status == 400
    assert await response.text() == AUTH_FAILED
    assert "WWW-Authenticate" not in response.headers


async def test_the_gateway_token_never_authenticates_upstream_but_x_ds_authorization_does(
    client: AppClient, admin_headers: Headers, prometheus_basic_auth_url: str
) -> None:
    # No credentials on the source: what Prometheus sees is only what the client may inject.
    source = await add_source(client, admin_headers, url=prometheus_basic_auth_url)
    path = f"/api/datasources/proxy/{source['id']}/api/v1/query"
    form = {"query": "1", "time": "1700000000"}
    # A client sending the Prometheus credentials as its own Authorization does not get them
    # through: that header is the gateway token's place, and is never forwarded.
    wrong_place = await client.post(
        path,
        data=form,
        headers={"Authorization": basic(PROMETHEUS_USER, PROMETHEUS_PASSWORD)},
    )
    assert wrong_place.status == 401  # the gateway's own refusal: not a token of ours
    anonymous = await client.post(path, data=form, headers=admin_headers)
    assert anonymous.status == 400
    assert await anonymous.text() == AUTH_FAILED
    injected = await client.post(
        path,
        data=form,
        headers={
            **admin_headers,
            "X-DS-Authorization": basic(PROMETHEUS_USER, PROMETHEUS_PASSWORD),
        },
    )
    assert injected.status == 200, await injected.text()
    assert (await injected.json())["data"]["result"] == [1_700_000_000, "1"]


# --- allow-list on the real thing -------------------------------------------------------------


async def test_admin_api_is_refused_and_never_reaches_prometheus(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any], prometheus_url: str
) -> None:
    before = await prometheus_handler_requests(prometheus_url, DELETE_SERIES_HANDLER)
    base = f"/api/datasources/proxy/{prom['id']}"
    for method in ("POST", "PUT", "DELETE"):
        response = await client.request(
            method, f"{base}/{DELETE_SERIES}?match[]=up", headers=admin_headers
        )
        assert response.status == 403, method
        assert await response.json() == {
            "message": f"non allow-listed {method}s not allowed on proxied prometheus datasource"
        }
    # Hidden behind an allow-listed prefix: refused as traversal before any allow-list match.
    for sneaky in (
        "api/v1/query/..%2fadmin/tsdb/delete_series",
        "api/v1/query/%2e%2e/admin/tsdb/delete_series",
        "api/v1/query%2f..%2fadmin%2ftsdb%2fdelete_series",
    ):
        # Sent exactly as written: the client library must not normalise the dots away.
        url = URL(f"{client.make_url('/')}{base.lstrip('/')}/{sneaky}?match[]=up", encoded=True)
        response = await client.session.post(url, headers=admin_headers)
        assert response.status == 400, sneaky
        assert "invalid proxy path" in (await response.json())["message"]
    assert await prometheus_handler_requests(prometheus_url, DELETE_SERIES_HANDLER) == before
    # The counter does see a request that reaches Prometheus (admin APIs are off: it answers
    # 500 "admin APIs disabled"), so the equality above is not vacuous.
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{prometheus_url}/{DELETE_SERIES}?match[]=up") as direct,
    ):
        assert (await direct.json())["error"] == "admin APIs disabled"
    assert await prometheus_handler_requests(prometheus_url, DELETE_SERIES_HANDLER) == before + 1


async def test_get_ready_passes_through_with_the_sandbox_policy(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any]
) -> None:
    for path in (f"proxy/{prom['id']}/-/ready", f"proxy/uid/{prom['uid']}/-/ready"):
        response = await client.get(f"/api/datasources/{path}", headers=admin_headers)
        assert response.status == 200
        assert await response.text() == "Prometheus Server is Ready.\n"
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["Content-Security-Policy"] == "sandbox"
        assert "X-Request-Id" in response.headers


async def test_large_gzipped_answer_is_byte_identical_to_prometheus_own(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any], prometheus_url: str
) -> None:
    # 11,000 points (Prometheus's cap per series): a few hundred KB of JSON, gzipped by
    # Prometheus because the client accepts it; the gateway must pass the gzip bytes as they are.
    query = "query=vector(1)&start=1700000000&end=1700010999&step=1"
    headers = {"Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(
            f"{prometheus_url}/api/v1/query_range?{query}", headers=headers
        ) as direct:
            assert direct.headers["Content-Encoding"] == "gzip"
            direct_length = direct.headers.get("Content-Length")
            expected = await direct.read()
        async with session.get(
            client.make_url(f"/api/datasources/proxy/{prom['id']}/api/v1/query_range?{query}"),
            headers={**admin_headers, **headers},
        ) as proxied:
            assert proxied.status == 200
            assert proxied.headers["Content-Encoding"] == "gzip"
            # Framing follows the upstream's: Go chunks a body this size, and so do we.
            assert proxied.headers.get("Content-Length") == direct_length
            body = await proxied.read()
    assert body == expected
    (series,) = json.loads(gzip.decompress(body))["data"]["result"]
    assert len(series["values"]) == 11_000


# --- framing and encoding on the real thing -----------------------------------------------------


async def test_the_query_string_reaches_prometheus_byte_for_byte(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any]
) -> None:
    # `%2B` is a plus; were the query decoded and re-encoded loosely, `+` would become a space
    # and Prometheus would see `1 1`. The gateway's own `token` parameter is dropped.
    path = f"/api/datasources/proxy/{prom['id']}/api/v1/query"
    query = "query=40%2B2&time=1700000000&token=dsg_secret"
    url = URL(f"{client.make_url('/')}{path.lstrip('/')}?{query}", encoded=True)
    response = await client.session.get(url, headers=admin_headers)
    assert response.status == 200, await response.text()
    assert (await response.json())["data"]["result"] == [1_700_000_000, "42"]


async def test_a_form_body_too_big_to_buffer_streams_to_prometheus(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any]
) -> None:
    # ~240 KB of PromQL (mostly a comment): above the size the gateway reads whole, so it
    # streams, with its length.
    expression = "vector(7) # " + "padding " * 30_000
    response = await client.post(
        f"/api/datasources/proxy/{prom['id']}/api/v1/query",
        data={"query": expression, "time": "1700000000"},
        headers=admin_headers,
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["data"]["result"] == [
        {"metric": {}, "value": [1_700_000_000, "7"]}
    ]


async def test_expect_100_continue_is_honoured_end_to_end(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any]
) -> None:
    response = await client.post(
        f"/api/datasources/proxy/{prom['id']}/api/v1/query",
        data={"query": "1", "time": "1700000000"},
        headers=admin_headers,
        expect100=True,
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["data"]["result"] == [1_700_000_000, "1"]


async def test_head_and_a_redirect_from_prometheus_pass_as_they_are(
    client: AppClient, admin_headers: Headers, prom: dict[str, Any], prometheus_url: str
) -> None:
    head = await client.head(f"/api/datasources/proxy/{prom['id']}/-/ready", headers=admin_headers)
    assert head.status == 200
    assert await head.read() == b""
    # Prometheus redirects its root to its UI: returned to the client as Prometheus wrote it
    # (Location not rewritten), never followed.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus_url}/", allow_redirects=False) as direct,
    ):
        assert direct.status == 302
        location = direct.headers["Location"]
    for path in (f"proxy/{prom['id']}", f"proxy/uid/{prom['uid']}/"):
        root = await client.get(
            f"/api/datasources/{path}", headers=admin_headers, allow_redirects=False
        )
        assert root.status == 302, path
        assert root.headers["Location"] == location

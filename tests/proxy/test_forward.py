"""The proxy's request and response rules, against real upstream servers that echo what they get."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer
from yarl import URL

from gateway.config import Settings
from gateway.keys import STORE
from gateway.registry.models import DataSource, DataSourceSpec
from tests.conftest import ADMIN_TOKEN, Headers, MakeToken
from tests.types import AppClient

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body": body.decode("latin-1"),
        }
    )


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/somewhere-else"})


async def unauthorized(request: web.Request) -> web.Response:
    return web.Response(status=401, text="who are you", headers={"WWW-Authenticate": "Basic"})


async def cookies_and_hops(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("Set-Cookie", "session=upstream; Path=/")
    response.headers.add("Set-Cookie", "other=x")
    response.headers.add("X-Multi", "one")
    response.headers.add("X-Multi", "two")
    response.headers["Connection"] = "X-Hop-Secret"
    response.headers["X-Hop-Secret"] = "do not forward"
    response.headers["Content-Security-Policy"] = "default-src *"
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("delay", "2")))
    return web.Response(text="late")


async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "1000000"})
    await response.prepare(request)
    await response.write(b"x" * 1000)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return response


async def peer_port(request: web.Request) -> web.Response:
    """The gateway's port on the connection this request came in on: which connection it used."""
    assert request.transport is not None
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))


ENDLESS_CLOSED = web.AppKey("endless_closed", asyncio.Event)


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    try:
        while True:
            await response.write(b"y" * 65536)
            await asyncio.sleep(0.001)
    finally:  # a failed write, or aiohttp cancelling us once the gateway hung up
        request.app[ENDLESS_CLOSED].set()


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/base/redirect", redirect)
    app.router.add_route("*", "/base/unauthorized", unauthorized)
    app.router.add_route("*", "/base/cookies", cookies_and_hops)
    app.router.add_route("*", "/base/slow", slow)
    app.router.add_route("*", "/base/reset", reset_mid_body)
    app.router.add_route("*", "/base/endless", endless)
    app.router.add_route("*", "/base/peer", peer_port)
    app.router.add_route("*", "/{tail:.*}", echo)
    app[ENDLESS_CLOSED] = asyncio.Event()
    return await aiohttp_server(app)


@pytest.fixture
def registry(metrics_registry: CollectorRegistry) -> CollectorRegistry:
    return metrics_registry


AddSource = Callable[..., Awaitable[DataSource]]


@pytest.fixture
def add_source(client: AppClient, upstream: TestServer) -> AddSource:
    async def add(org_id: int = 1, **fields: Any) -> DataSource:
        values: dict[str, Any] = {
            "name": f"src-{len(await client.app[STORE].list_sources(org_id))}",
            "type": "prometheus",
            "url": str(upstream.make_url("/base")),
        }
        values.update(fields)
        return await client.app[STORE].create_source(org_id, DataSourceSpec(**values))

    return add


async def raw_status(client: AppClient, path: str) -> int:
    """Send `path` exactly as written: aiohttp's client would resolve `..` before sending."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: {AUTH['Authorization']}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


async def proxied(
    client: AppClient, source: DataSource, path: str, method: str = "GET", **kwargs: Any
) -> aiohttp.ClientResponse:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    url = URL(f"/api/datasources/proxy/uid/{source.uid}/{path}", encoded=True)
    return await client.request(method, url, headers=headers, **kwargs)


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echoed["headers"] if key.lower() == name.lower()]


class TestRequestRules:
    async def test_the_gateway_token_and_client_identity_headers_never_reach_the_upstream(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(
            client,
            source,
            "api/v1/labels",
            headers={
                "Origin": "https://evil.example",
                "Referer": "https://evil.example/page",
                "X-Forwarded-Host": "forged",
                "X-Forwarded-Port": "1",
                "X-Forwarded-Proto": "gopher",
                "Proxy-Authorization": "Basic c2VjcmV0",
                "Connection": "keep-alive, X-Private",
                "X-Private": "hop-by-hop by naming",
                "Keep-Alive": "timeout=5",
                "X-Kept": "yes",
            },
        )
        assert response.status == 200
        echoed = await response.json()
        names = {key.lower() for key, _ in echoed["headers"]}
        for dropped in (
            "authorization", "origin", "referer", "x-forwarded-host", "x-forwarded-port",
            "x-forwarded-proto", "proxy-authorization", "x-private", "keep-alive",
        ):  # fmt: skip
            assert dropped not in names, dropped
        assert ADMIN_TOKEN not in str(echoed)
        assert header_values(echoed, "X-Kept") == ["yes"]

    async def test_auth_query_parameters_are_stripped_and_the_rest_passes_verbatim(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(
            client, source, "api/v1/query?query=rate(x%5B5m%5D)&auth_token=abc&token=t&b=%2F"
        )
        assert (await response.json())["path"] == "/base/api/v1/query?query=rate(x%5B5m%5D)&b=%2F"

    async def test_the_path_is_joined_under_the_source_base_path(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        assert (await (await proxied(client, source, "")).json())["path"] == "/base"
        by_id = await client.get(f"/api/datasources/proxy/{source.id}/a/b%20c", headers=AUTH)
        assert (await by_id.json())["path"] == "/base/a/b%20c"

    async def test_x_forwarded_for_gets_the_client_appended_and_the_request_id_passes(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(
            client,
            source,
            "x",
            headers={"X-Forwarded-For": "203.0.113.9", "X-Request-Id": "trace-me-1"},
        )
        echoed = await response.json()
        assert header_values(echoed, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
        assert header_values(echoed, "X-Request-Id") == ["trace-me-1"]
        assert response.headers["X-Request-Id"] == "trace-me-1"

    async def test_cookies_pass_only_when_kept_and_never_the_session_cookie(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        plain = await add_source()
        keeping = await add_source(json_data={"keepCookies": ["foo", "grafana_session"]})
        cookie = {"Cookie": "grafana_session=s3ss; foo=1; bar=2"}
        echoed = await (await proxied(client, plain, "c", headers=cookie)).json()
        assert header_values(echoed, "Cookie") == []
        echoed = await (await proxied(client, keeping, "c", headers=cookie)).json()
        assert header_values(echoed, "Cookie") == ["foo=1"]


class TestCredentials:
    async def test_basic_auth_is_injected(self, client: AppClient, add_source: AddSource) -> None:
        source = await add_source(
            basic_auth=True,
            basic_auth_user="alice",
            secure_json_data={"basicAuthPassword": "wonder land"},
        )
        echoed = await (await proxied(client, source, "q")).json()
        expected = "Basic " + base64.b64encode(b"alice:wonder land").decode()
        assert header_values(echoed, "Authorization") == [expected]

    async def test_influxql_user_and_password_and_flux_token(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        v1 = await add_source(type="influxdb", user="reader", secure_json_data={"password": "pw"})
        v2 = await add_source(
            type="influxdb", json_data={"version": "Flux"}, secure_json_data={"token": "t0k"}
        )
        echoed = await (await proxied(client, v1, "query")).json()
        assert header_values(echoed, "Authorization") == [
            "Basic " + base64.b64encode(b"reader:pw").decode()
        ]
        echoed = await (await proxied(client, v2, "api/v2/query", "POST", data=b"{}")).json()
        assert header_values(echoed, "Authorization") == ["Token t0k"]

    async def test_custom_headers_and_a_custom_authorization_wins(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source(
            basic_auth=True,
            basic_auth_user="u",
            json_data={"httpHeaderName1": "X-Scope-OrgID", "httpHeaderName2": "Authorization"},
            secure_json_data={
                "basicAuthPassword": "p",
                "httpHeaderValue1": "tenant-a",
                "httpHeaderValue2": "Bearer custom",
            },
        )
        echoed = await (
            await proxied(client, source, "q", headers={"X-DS-Authorization": "Bearer ds"})
        ).json()
        assert header_values(echoed, "X-Scope-OrgID") == ["tenant-a"]
        assert header_values(echoed, "Authorization") == ["Bearer custom"]
        assert header_values(echoed, "X-DS-Authorization") == []

    async def test_x_ds_authorization_becomes_authorization(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source(
            basic_auth=True, basic_auth_user="u", secure_json_data={"basicAuthPassword": "p"}
        )
        echoed = await (
            await proxied(client, source, "q", headers={"X-DS-Authorization": "Bearer ds"})
        ).json()
        assert header_values(echoed, "Authorization") == ["Bearer ds"]


class TestPolicy:
    @pytest.mark.parametrize(
        "path",
        [
            "..",
            "a/../../admin",
            "a/%2e%2e/admin",
            "a/%2E%2E/admin",
            "a/%252e%252e/admin",
            "a%2fb",
            "a%2F..%2Fadmin",
            "a/%5c..%5cadmin",
        ],
    )
    async def test_traversal_variants_are_refused(
        self, client: AppClient, add_source: AddSource, path: str
    ) -> None:
        source = await add_source()
        for prefix in (f"uid/{source.uid}", str(source.id)):
            assert await raw_status(client, f"/api/datasources/proxy/{prefix}/{path}") == 400
        if ".." not in path.split("/"):  # aiohttp's client would resolve a literal `..` itself
            response = await proxied(client, source, path)
            assert (await response.json())["message"].startswith("invalid proxy path")

    async def test_prometheus_admin_posts_are_refused_before_reaching_the_upstream(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(client, source, "api/v1/admin/tsdb/delete_series", "POST")
        assert response.status == 403
        assert await response.json() == {
            "message": "non allow-listed POSTs not allowed on proxied prometheus datasource"
        }
        allowed = await proxied(client, source, "api/v1/query", "POST", data={"query": "up"})
        assert allowed.status == 200

    async def test_elasticsearch_deletes_are_refused(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source(type="elasticsearch")
        response = await proxied(client, source, "logs", "DELETE")
        assert response.status == 403

    async def test_unknown_and_other_orgs_sources_are_not_found(
        self, client: AppClient, add_source: AddSource, make_token: MakeToken
    ) -> None:
        source = await add_source()
        other_headers: Headers = await make_token(role="admin", org="Other")
        response = await client.get(
            f"/api/datasources/proxy/uid/{source.uid}/x", headers=other_headers
        )
        assert response.status == 404
        assert await response.json() == {"message": "Unable to find datasource"}
        assert (await client.get("/api/datasources/proxy/999/x", headers=AUTH)).status == 404
        bad_id = await client.get("/api/datasources/proxy/abc/x", headers=AUTH)
        assert (bad_id.status, await bad_id.json()) == (400, {"message": "id is invalid"})
        bad_uid = await client.get("/api/datasources/proxy/uid/a*b/x", headers=AUTH)
        assert (bad_uid.status, await bad_uid.json()) == (400, {"message": "UID is invalid"})
        for no_uid in ["/api/datasources/proxy/uid//x", "/api/datasources/proxy/uid/"]:
            missing_uid = await client.get(no_uid, headers=AUTH)
            assert (missing_uid.status, await missing_uid.json()) == (
                400,
                {"message": "UID is invalid"},
            ), no_uid

    async def test_viewers_may_query(
        self, client: AppClient, add_source: AddSource, make_token: MakeToken
    ) -> None:
        source = await add_source()
        viewer = await make_token(role="viewer")
        url = f"/api/datasources/proxy/uid/{source.uid}/api/v1/query"
        assert (await client.post(url, data={"query": "up"}, headers=viewer)).status == 200


class TestResponses:
    async def test_set_cookie_and_hop_by_hop_are_dropped_and_csp_sandbox_added(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(client, source, "cookies")
        assert response.status == 200
        assert "Set-Cookie" not in response.headers
        assert "X-Hop-Secret" not in response.headers
        assert response.headers.getall("Content-Security-Policy") == ["sandbox"]
        assert response.headers.getall("X-Multi") == ["one", "two"]

    async def test_redirects_are_returned_not_followed(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(client, source, "redirect", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "/somewhere-else"

    async def test_an_upstream_401_becomes_400(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source()
        response = await proxied(client, source, "unauthorized")
        assert response.status == 400
        assert await response.text() == "Authentication to data source failed"
        assert "WWW-Authenticate" not in response.headers


class TestFailures:
    async def test_a_refused_connection_is_502_with_a_trace_id(
        self, client: AppClient, add_source: AddSource, registry: CollectorRegistry
    ) -> None:
        source = await add_source(url="http://127.0.0.1:9/")
        response = await proxied(client, source, "x", headers={"X-Request-Id": "rid-502"})
        assert response.status == 502
        assert await response.json() == {"message": "upstream connect error", "traceID": "rid-502"}
        labels = {"org": "1", "source_uid": source.uid, "source_type": "prometheus"}
        assert (
            registry.get_sample_value(
                "gateway_proxy_upstream_errors_total", {**labels, "kind": "connect"}
            )
            == 1
        )
        assert (
            registry.get_sample_value(
                "gateway_proxy_requests_total", {**labels, "method": "GET", "code": "502"}
            )
            == 1
        )

    async def test_waiting_longer_than_json_data_timeout_is_504(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source(json_data={"timeout": "0.3"})
        response = await proxied(client, source, "slow?delay=3")
        assert response.status == 504
        assert (await response.json())["message"] == "upstream headers timeout"

    async def test_a_reset_mid_body_aborts_the_client_connection(
        self, client: AppClient, add_source: AddSource, registry: CollectorRegistry
    ) -> None:
        source = await add_source()
        response = await proxied(client, source, "reset")
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
        labels = {"org": "1", "source_uid": source.uid, "source_type": "prometheus"}
        for _ in range(50):  # the handler finishes its bookkeeping just after the abort
            failed = registry.get_sample_value(
                "gateway_proxy_requests_total", {**labels, "method": "GET", "code": "502"}
            )
            if failed:
                break
            await asyncio.sleep(0.02)
        assert failed == 1  # a failure on the error-ratio panel, not a 200

    async def test_a_client_that_leaves_releases_the_upstream(
        self, client: AppClient, add_source: AddSource, upstream: TestServer
    ) -> None:
        source = await add_source()
        response = await proxied(client, source, "endless")
        assert response.status == 200
        await response.content.read(200_000)
        with structlog.testing.capture_logs() as logs:
            response.close()  # the client goes away mid-stream
            await asyncio.wait_for(upstream.app[ENDLESS_CLOSED].wait(), 5)
            await asyncio.sleep(0.05)
        lines = [entry for entry in logs if entry["event"] == "request"]
        assert [line["status"] for line in lines] == [499]


class TestSsrfAtConnectTime:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        """Loopback denied, so a name that resolves to it can stand in for a rebound name."""
        return dataclasses.replace(settings, proxy_denied_networks=("127.0.0.0/8", "::1/128"))

    async def test_a_name_resolving_to_a_denied_address_is_403_and_never_connected(
        self, client: AppClient, upstream: TestServer
    ) -> None:
        source = await client.app[STORE].create_source(
            1,
            DataSourceSpec(name="n", type="prometheus", url=f"http://localhost:{upstream.port}"),
        )
        response = await client.get(f"/api/datasources/proxy/uid/{source.uid}/x", headers=AUTH)
        assert response.status == 403
        assert "denied network" in (await response.json())["message"]


class TestSourceHeadersWin:
    async def test_a_client_cannot_override_a_header_the_source_sets(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        source = await add_source(
            type="loki",
            json_data={"httpHeaderName1": "X-Scope-OrgID"},
            secure_json_data={"httpHeaderValue1": "tenant-a"},
        )
        echoed = await (
            await proxied(client, source, "loki/api/v1/labels", headers={"x-scope-orgid": "b"})
        ).json()
        assert header_values(echoed, "X-Scope-OrgID") == ["tenant-a"]


async def upstream_ports(client: AppClient, source: DataSource, requests: int = 3) -> set[str]:
    """The gateway's ports on the upstream connections `requests` sequential requests used."""
    return {await (await proxied(client, source, "peer")).text() for _ in range(requests)}


class TestKeepAliveToUpstreams:
    async def test_sequential_requests_reuse_one_upstream_connection(
        self, client: AppClient, add_source: AddSource
    ) -> None:
        assert len(await upstream_ports(client, await add_source())) == 1

    class TestWithKeepAliveOff:
        @pytest.fixture
        def settings(self, settings: Settings) -> Settings:
            return dataclasses.replace(settings, proxy_max_idle_connections=0)

        async def test_each_request_gets_a_connection_of_its_own(
            self, client: AppClient, add_source: AddSource
        ) -> None:
            assert len(await upstream_ports(client, await add_source())) == 3

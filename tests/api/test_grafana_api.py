"""Grafana's data source API over raw HTTP: exact statuses and bodies, every error path, both
roles, two orgs. Real app, real SQLite, real upstreams (aiohttp test servers) for health."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from gateway import __version__
from gateway.health.probes import probe_source
from gateway.keys import HTTP, MONITOR, SETTINGS, STORE
from gateway.registry.models import DEFAULT_ORG_ID, DataSourceSpec
from tests.conftest import Headers, MakeToken
from tests.types import AppClient
from tests.waiting import wait_for

PROMETHEUS = {
    "name": "Prom",
    "type": "prometheus",
    "access": "proxy",
    "url": "http://prom.example:9090",
}
PROMETHEUS_LOGO = "public/app/plugins/datasource/prometheus/img/prometheus_logo.svg"
NOT_FOUND = {"message": "Data source not found"}
ID_INVALID = {"message": "id is invalid"}
NOT_HTTP = "url: must be an absolute http or https URL with a host"
INVALID_UID = {"message": 'uid: must be 1 to 40 letters, digits, "-" or "_"'}
ORG_MISMATCH = {"message": "API key does not belong to the requested organization"}
VERSION_CONFLICT = {
    "message": "Datasource has already been updated by someone else. Please reload and try again"
}
NAME_TAKEN = "data source with the same name already exists"
GENERATED_UID = re.compile(r"[a-f][a-z0-9]{12}[a-f]")
# A type without a dedicated probe: its health is "the base URL answers below 500".
GENERIC_TYPE = "acme-custom-datasource"


def without_timings(message: str) -> str:
    return re.sub(r"\d+", "N", message)


def permission_denied(action: str) -> dict[str, str]:
    return {
        "message": "You'll need additional permissions to perform this action. "
        f"Permissions needed: {action}"
    }


async def create(client: AppClient, headers: Headers, **fields: Any) -> dict[str, Any]:
    """POST a Prometheus source with `fields` overriding the defaults; the created DTO."""
    response = await client.post("/api/datasources", json={**PROMETHEUS, **fields}, headers=headers)
    assert response.status == 200, await response.text()
    datasource: dict[str, Any] = (await response.json())["datasource"]
    return datasource


async def answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


@pytest.fixture
async def viewer(make_token: MakeToken) -> Headers:
    return await make_token(role="viewer")


@pytest.fixture
async def editor(make_token: MakeToken) -> Headers:
    return await make_token(role="editor")


@pytest.fixture
async def other_org(make_token: MakeToken) -> Headers:
    return await make_token(role="admin", org="Other Org")


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> TestServer:
    """A real upstream: `/` answers 200, `/broken` answers 500."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_get("/", ok)
    app.router.add_get("/broken", broken)
    return await aiohttp_server(app)


class TestCreate:
    async def test_answers_grafanas_created_body(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.post("/api/datasources", json=PROMETHEUS, headers=admin_headers)
        status, body = await answer(response)
        assert status == 200
        source_id, uid = body["id"], body["datasource"]["uid"]
        assert GENERATED_UID.fullmatch(uid)
        assert body == {
            "message": "Datasource added",
            "id": source_id,
            "name": "Prom",
            "datasource": {
                "id": source_id,
                "uid": uid,
                "orgId": DEFAULT_ORG_ID,
                "name": "Prom",
                "type": "prometheus",
                "typeLogoUrl": PROMETHEUS_LOGO,
                "access": "proxy",
                "url": "http://prom.example:9090",
                "user": "",
                "database": "",
                "basicAuth": False,
                "basicAuthUser": "",
                "withCredentials": False,
                "isDefault": True,
                "jsonData": {},
                "secureJsonFields": {},
                "version": 1,
                "readOnly": False,
                "apiVersion": "",
            },
        }

    async def test_stores_every_field_it_is_given(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        source = await create(
            client,
            admin_headers,
            uid="my-prom_1",
            user="reader",
            database="metrics",
            basicAuth=True,
            basicAuthUser="alice",
            withCredentials=True,
            jsonData={"httpMethod": "POST", "timeout": 30},
            secureJsonData={"basicAuthPassword": "pw", "password": ""},
            apiVersion="v1",
        )
        assert {key: source[key] for key in source if key not in ("id",)} == {
            "uid": "my-prom_1",
            "orgId": DEFAULT_ORG_ID,
            "name": "Prom",
            "type": "prometheus",
            "typeLogoUrl": PROMETHEUS_LOGO,
            "access": "proxy",
            "url": "http://prom.example:9090",
            "user": "reader",
            "database": "metrics",
            "basicAuth": True,
            "basicAuthUser": "alice",
            "withCredentials": True,
            "isDefault": True,
            "jsonData": {"httpMethod": "POST", "timeout": 30},
            "secureJsonFields": {"basicAuthPassword": True},
            "version": 1,
            "readOnly": False,
            "apiVersion": "v1",
        }

    async def test_first_source_of_an_org_becomes_default_and_default_is_exclusive(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        first = await create(client, admin_headers, name="first")
        second = await create(client, admin_headers, name="second")
        assert (first["isDefault"], second["isDefault"]) == (True, False)
        third = await create(client, admin_headers, name="third", isDefault=True)
        assert third["isDefault"] is True
        listed = await (await client.get("/api/datasources", headers=admin_headers)).json()
        assert [s["name"] for s in listed if s["isDefault"]] == ["third"]

    async def test_empty_name_is_generated_from_the_type(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        names = [(await create(client, admin_headers, name=""))["name"] for _ in range(3)]
        assert names == ["prometheus", "prometheus-1", "prometheus-2"]
        response = await client.post(
            "/api/datasources", json={**PROMETHEUS, "name": "PROMETHEUS"}, headers=admin_headers
        )
        assert await answer(response) == (
            409,
            {"message": "data source with the same name already exists"},
        )

    async def test_duplicate_name_is_409_case_insensitively(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        await create(client, admin_headers, name="Metrics")
        response = await client.post(
            "/api/datasources", json={**PROMETHEUS, "name": "mETRICS"}, headers=admin_headers
        )
        assert await answer(response) == (
            409,
            {"message": "data source with the same name already exists"},
        )

    async def test_duplicate_uid_is_409(self, client: AppClient, admin_headers: Headers) -> None:
        await create(client, admin_headers, name="a", uid="same")
        response = await client.post(
            "/api/datasources",
            json={**PROMETHEUS, "name": "b", "uid": "same"},
            headers=admin_headers,
        )
        assert await answer(response) == (
            409,
            {"message": "data source with the same uid already exists"},
        )

    @pytest.mark.parametrize(
        "uid", ["*", "a*", "a/b", "a b", "a.b", "ä", "x" * 41, "$__all", "../x", "a\nb"]
    )
    async def test_uid_outside_the_safe_charset_is_rejected(
        self, client: AppClient, admin_headers: Headers, uid: str
    ) -> None:
        response = await client.post(
            "/api/datasources", json={**PROMETHEUS, "uid": uid}, headers=admin_headers
        )
        assert await answer(response) == (400, INVALID_UID)
        assert await (await client.get("/api/datasources", headers=admin_headers)).json() == []

    async def test_uid_of_40_safe_characters_is_accepted(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        uid = "Aa0_-" * 8
        assert (await create(client, admin_headers, uid=uid))["uid"] == uid

    async def test_name_over_190_characters_is_rejected(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.post(
            "/api/datasources", json={**PROMETHEUS, "name": "n" * 191}, headers=admin_headers
        )
        assert await answer(response) == (
            400,
            {"message": "name: must be at most 190 characters, got 191"},
        )
        assert (await create(client, admin_headers, name="é" * 190))["name"] == "é" * 190

    async def test_url_over_255_characters_is_rejected(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        base = "http://prom.example/"
        response = await client.post(
            "/api/datasources",
            json={**PROMETHEUS, "url": base + "p" * (256 - len(base))},
            headers=admin_headers,
        )
        assert await answer(response) == (
            400,
            {"message": "url: must be at most 255 characters"},
        )
        longest = base + "p" * (255 - len(base))
        assert (await create(client, admin_headers, url=longest))["url"] == longest

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("prom.example:9090", NOT_HTTP),  # no scheme (Grafana would prepend http://)
            ("ftp://prom.example/", NOT_HTTP),
            ("file:///etc/passwd", NOT_HTTP),
            ("javascript:alert(1)", NOT_HTTP),
            ("gopher://prom.example:70/", NOT_HTTP),
            ("http://", NOT_HTTP),
            ("http:///path-only", NOT_HTTP),
            ("://prom.example", NOT_HTTP),
            (
                "http://prom example/",
                "url: must not contain spaces, control characters or backslashes",
            ),
            (
                "http://prom.example/\n",
                "url: must not contain spaces, control characters or backslashes",
            ),
            (
                " http://prom.example/",
                "url: must not contain spaces, control characters or backslashes",
            ),
            (
                "http://prom.example\\@evil.example/",
                "url: must not contain spaces, control characters or backslashes",
            ),
            ("http://[::1/", NOT_HTTP),
            ("http://prom.example:99999/", "url: port must be a number from 1 to 65535"),
            ("http://prom.example:port/", "url: port must be a number from 1 to 65535"),
            ("http://prom.example:0/", "url: port must be a number from 1 to 65535"),
        ],
    )
    async def test_url_that_is_not_absolute_http_is_rejected(
        self, client: AppClient, admin_headers: Headers, url: str, message: str
    ) -> None:
        response = await client.post(
            "/api/datasources", json={**PROMETHEUS, "url": url}, headers=admin_headers
        )
        assert await answer(response) == (400, {"message": message})

    @pytest.mark.parametrize(
        "url", ["https://prom.example", "HTTP://[::1]:9090/prom?x=1", "http://10.0.0.1/"]
    )
    async def test_http_and_https_urls_are_accepted(
        self, client: AppClient, admin_headers: Headers, url: str
    ) -> None:
        assert (await create(client, admin_headers, url=url))["url"] == url

    async def test_empty_url_is_allowed_on_create(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        source = await create(client, admin_headers, type="testdata", url="")
        assert source["url"] == ""

    async def test_read_only_in_the_body_is_ignored(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        source = await create(client, admin_headers, readOnly=True)
        assert source["readOnly"] is False
        response = await client.delete(f"/api/datasources/{source['id']}", headers=admin_headers)
        assert response.status == 200

    async def test_legacy_top_level_passwords_are_refused_not_dropped(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.post(
            "/api/datasources",
            json={**PROMETHEUS, "password": "legacy-pw", "basicAuthPassword": "legacy-bapw"},
            headers=admin_headers,
        )
        text = await response.text()
        assert response.status == 400
        assert json.loads(text) == {
            "message": "password: not supported: put it in secureJsonData.password; "
            "basicAuthPassword: not supported: put it in secureJsonData.basicAuthPassword"
        }
        assert "legacy-" not in text
        assert await client.app[STORE].list_sources(DEFAULT_ORG_ID) == []

    async def test_null_fields_take_their_zero_values(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        source = await create(
            client,
            admin_headers,
            type="testdata",  # needs no url
            name=None,
            url=None,
            uid=None,
            basicAuth=None,
            jsonData=None,
            secureJsonData={"password": None},
            version=None,
        )
        assert (source["name"], source["url"], source["basicAuth"]) == ("testdata", "", False)
        assert (source["jsonData"], source["secureJsonFields"]) == ({}, {})


class TestSecrets:
    async def test_secure_json_data_is_never_returned(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        secret = "s3cret-value-never-shown"
        created = await client.post(
            "/api/datasources",
            json={**PROMETHEUS, "secureJsonData": {"password": secret, "token": secret}},
            headers=admin_headers,
        )
        source = (await created.json())["datasource"]
        assert source["secureJsonFields"] == {"password": True, "token": True}
        updated = await client.put(
            f"/api/datasources/{source['id']}", json=PROMETHEUS, headers=admin_headers
        )
        responses = [
            created,
            updated,
            await client.get(f"/api/datasources/{source['id']}", headers=admin_headers),
            await client.get(f"/api/datasources/uid/{source['uid']}", headers=admin_headers),
            await client.get("/api/datasources/name/Prom", headers=admin_headers),
            await client.get("/api/datasources", headers=admin_headers),
        ]
        for response in responses:
            assert response.status == 200
            assert secret not in await response.text()
            assert "secureJsonData" not in await response.text()


class TestBodyValidation:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            ({"name": "x", "access": "proxy"}, "type: required"),
            ({"name": "x", "type": "prometheus", "url": "http://p"}, "access: required"),
            ({"name": "x", "type": "", "access": "proxy"}, "type: required"),
            ({**PROMETHEUS, "access": "bogus"}, 'access: must be "proxy" or "direct", got "bogus"'),
            ({**PROMETHEUS, "jsonData": 5}, "jsonData: must be an object, got a number"),
            ({**PROMETHEUS, "jsonData": "{}"}, "jsonData: must be an object, got a string"),
            ({**PROMETHEUS, "jsonData": []}, "jsonData: must be an object, got an array"),
            ({**PROMETHEUS, "basicAuth": "yes"}, "basicAuth: must be a boolean, got a string"),
            ({**PROMETHEUS, "basicAuth": 1}, "basicAuth: must be a boolean, got a number"),
            ({**PROMETHEUS, "isDefault": "true"}, "isDefault: must be a boolean, got a string"),
            (
                {**PROMETHEUS, "withCredentials": 0},
                "withCredentials: must be a boolean, got a number",
            ),
            ({**PROMETHEUS, "name": 7}, "name: must be a string, got a number"),
            ({**PROMETHEUS, "type": ["prometheus"]}, "type: must be a string, got an array"),
            ({**PROMETHEUS, "url": {"host": "x"}}, "url: must be a string, got an object"),
            ({**PROMETHEUS, "uid": 5}, "uid: must be a string, got a number"),
            ({**PROMETHEUS, "user": False}, "user: must be a string, got a boolean"),
            (
                {**PROMETHEUS, "secureJsonData": []},
                "secureJsonData: must be an object, got an array",
            ),
            (
                {**PROMETHEUS, "secureJsonData": {"password": 1}},
                "secureJsonData.password: must be a string, got a number",
            ),
            (
                {**PROMETHEUS, "secureJsonData": {"password": {"nested": "x"}}},
                "secureJsonData.password: must be a string, got an object",
            ),
            ({**PROMETHEUS, "version": "1"}, "version: must be a whole number, got a string"),
            ({**PROMETHEUS, "version": 1.5}, "version: must be a whole number, got a number"),
            ({**PROMETHEUS, "version": True}, "version: must be a whole number, got a boolean"),
            ({**PROMETHEUS, "version": 2**63}, "version: must be a whole number of 64 bits"),
            ({**PROMETHEUS, "name": "a\tb"}, "name: must not contain control characters"),
            ({**PROMETHEUS, "foo": 1}, "foo: unknown field"),
            (
                {**PROMETHEUS, "isDefault": "yes", "name": 123, "access": None},
                "name: must be a string, got a number; isDefault: must be a boolean, got a string",
            ),
            ([PROMETHEUS], "request body: must be a JSON object, got an array"),
            ("prometheus", "request body: must be a JSON object, got a string"),
            (42, "request body: must be a JSON object, got a number"),
        ],
    )
    async def test_each_bad_body_is_400_naming_its_problem_on_every_write(
        self, client: AppClient, admin_headers: Headers, body: Any, message: str
    ) -> None:
        target = await create(client, admin_headers, name="target", uid="target")
        for method, path in [
            ("POST", "/api/datasources"),
            ("PUT", f"/api/datasources/{target['id']}"),
            ("PUT", "/api/datasources/uid/target"),
        ]:
            response = await client.request(method, path, json=body, headers=admin_headers)
            assert await answer(response) == (400, {"message": message}), (method, path)
        stored = await client.app[STORE].get_source(DEFAULT_ORG_ID, uid="target")
        assert stored.version == 1
        assert len(await client.app[STORE].list_sources(DEFAULT_ORG_ID)) == 1

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"", "request body: empty, expected a JSON object"),
            (
                b"{",
                "request body: not valid JSON: Expecting property name enclosed in double "
                "quotes (line 1, column 2)",
            ),
            (
                b'{"name": "x",}',
                "request body: not valid JSON: Expecting property name enclosed in double quotes "
                "(line 1, column 14)",
            ),
            (
                b'{"name": "x"}\n trailing',
                "request body: not valid JSON: Extra data (line 2, column 2)",
            ),
            (
                b'{"type": "prometheus", "access": "proxy", "jsonData": {"x": NaN}}',
                "request body: not valid JSON: NaN is not valid JSON",
            ),
            (
                b'{"type": "prometheus", "access": "proxy", "jsonData": {"x": Infinity}}',
                "request body: not valid JSON: Infinity is not valid JSON",
            ),
            (
                b'{"type": "prometheus", "access": "proxy", "name": "\xff\xfe"}',
                "request body: not UTF-8 text (at byte 51)",
            ),
            # Text SQLite cannot store, or that has no place in a name, URL or header.
            (
                b'{"type": "testdata", "access": "proxy", "name": "a\\ud800"}',
                "name: must be valid Unicode text (no lone surrogates)",
            ),
            (
                b'{"type": "testdata", "access": "proxy", "name": "nul\\u0000"}',
                "name: must not contain control characters",
            ),
            (
                b'{"type": "testdata", "access": "proxy", "jsonData": {"k\\udc00": 1}}',
                "jsonData: must not contain NUL characters or lone surrogates",
            ),
            (
                b'{"type": "testdata", "access": "proxy", "jsonData": {"k": ["\\u0000"]}}',
                "jsonData: must not contain NUL characters or lone surrogates",
            ),
            (
                b'{"type": "testdata", "access": "proxy", "secureJsonData": {"p": "\\ud800"}}',
                "secureJsonData.p: must not contain NUL characters or lone surrogates",
            ),
            (b"null", "request body: must be a JSON object, got null"),
            (b"[" * 100_000 + b"]" * 100_000, "request body: nested too deeply"),
            (b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "request body: nested too deeply"),
        ],
    )
    async def test_malformed_json_says_what_and_where(
        self, client: AppClient, admin_headers: Headers, raw: bytes, message: str
    ) -> None:
        headers = {**admin_headers, "Content-Type": "application/json"}
        response = await client.post("/api/datasources", data=raw, headers=headers)
        assert await answer(response) == (400, {"message": message})

    @pytest.mark.parametrize(
        ("content_type", "message"),
        [
            ("text/plain", 'Content-Type: must be application/json, got "text/plain"'),
            (
                "application/x-www-form-urlencoded",
                'Content-Type: must be application/json, got "application/x-www-form-urlencoded"',
            ),
            (
                "application/jsonx",
                'Content-Type: must be application/json, got "application/jsonx"',
            ),
            (None, "Content-Type: required, send application/json"),
        ],
    )
    async def test_a_wrong_or_missing_content_type_is_400_naming_it(
        self, client: AppClient, admin_headers: Headers, content_type: str | None, message: str
    ) -> None:
        headers = dict(admin_headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.post(
            "/api/datasources",
            data=json.dumps(PROMETHEUS).encode(),
            headers=headers,
            skip_auto_headers=["Content-Type"],
        )
        assert await answer(response) == (400, {"message": message})

    async def test_a_body_over_the_limit_is_413_saying_the_limit(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        body = {**PROMETHEUS, "jsonData": {"big": "x" * (1 << 20)}}
        response = await client.post(
            "/api/datasources",
            data=io.BytesIO(json.dumps(body).encode()),
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert await answer(response) == (
            413,
            {"message": "request body: larger than the limit of 1048576 bytes"},
        )
        assert await client.app[STORE].list_sources(DEFAULT_ORG_ID) == []

    async def test_json_content_type_with_a_charset_is_accepted(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        headers = {**admin_headers, "Content-Type": "application/json; charset=utf-8"}
        response = await client.post(
            "/api/datasources", data=json.dumps(PROMETHEUS), headers=headers
        )
        assert response.status == 200

    async def test_fields_of_our_answers_are_accepted_and_ignored(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        source = await create(client, admin_headers, orgId=99, id=12345, typeName="x")
        assert source["orgId"] == DEFAULT_ORG_ID
        assert source["id"] != 12345
        again = await create(client, admin_headers, **{**source, "name": "again", "uid": ""})
        assert again["name"] == "again"


class TestRead:
    async def test_get_by_id_uid_and_name_return_the_same_single_dto(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, name="My Prom", uid="prom-1")
        for path in [
            f"/api/datasources/{created['id']}",
            "/api/datasources/uid/prom-1",
            "/api/datasources/name/My%20Prom",
            "/api/datasources/name/my%20prom",
        ]:
            assert await answer(await client.get(path, headers=admin_headers)) == (200, created)

    async def test_id_by_name(self, client: AppClient, admin_headers: Headers) -> None:
        created = await create(client, admin_headers, name="Prom")
        response = await client.get("/api/datasources/id/Prom", headers=admin_headers)
        assert await answer(response) == (200, {"id": created["id"]})

    async def test_list_uses_the_list_dto_sorted_by_name_case_insensitively(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        for name in ["beta", "Delta", "alpha", "Charlie"]:
            await create(client, admin_headers, name=name, jsonData={"n": name})
        response = await client.get("/api/datasources", headers=admin_headers)
        status, listed = await answer(response)
        assert status == 200
        assert [item["name"] for item in listed] == ["alpha", "beta", "Charlie", "Delta"]
        beta = listed[1]
        assert beta == {
            "id": beta["id"],
            "uid": beta["uid"],
            "orgId": DEFAULT_ORG_ID,
            "name": "beta",
            "type": "prometheus",
            "typeName": "Prometheus",
            "typeLogoUrl": PROMETHEUS_LOGO,
            "access": "proxy",
            "url": "http://prom.example:9090",
            "user": "",
            "database": "",
            "basicAuth": False,
            "isDefault": True,
            "jsonData": {"n": "beta"},
            "readOnly": False,
        }

    async def test_type_name_and_logo_for_known_aliased_and_unknown_types(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        await create(client, admin_headers, name="a", type="loki")
        await create(client, admin_headers, name="b", type="testdata", url="")
        await create(client, admin_headers, name="c", type="acme-custom-datasource", url="")
        listed = await (await client.get("/api/datasources", headers=admin_headers)).json()
        assert [(s["type"], s["typeName"], s["typeLogoUrl"]) for s in listed] == [
            ("loki", "Loki", "public/app/plugins/datasource/loki/img/loki_icon.svg"),
            (
                "grafana-testdata-datasource",
                "TestData",
                "public/app/plugins/datasource/grafana-testdata-datasource/img/testdata.svg",
            ),
            ("acme-custom-datasource", "acme-custom-datasource", "public/img/icn-datasource.svg"),
        ]
        single = await (await client.get("/api/datasources/name/b", headers=admin_headers)).json()
        assert "typeName" not in single
        assert single["type"] == "grafana-testdata-datasource"

    async def test_access_control_metadata_only_when_asked(
        self, client: AppClient, admin_headers: Headers, viewer: Headers
    ) -> None:
        created = await create(client, admin_headers, uid="ac")
        plain = await (await client.get("/api/datasources/uid/ac", headers=viewer)).json()
        assert "accessControl" not in plain
        as_viewer = await client.get("/api/datasources/uid/ac?accesscontrol=true", headers=viewer)
        assert (await as_viewer.json())["accessControl"] == {
            "datasources.id:read": True,
            "datasources:query": True,
            "datasources:read": True,
        }
        as_admin = await client.get(
            f"/api/datasources/{created['id']}?accesscontrol=1", headers=admin_headers
        )
        assert (await as_admin.json())["accessControl"] == {
            "datasources.id:read": True,
            "datasources:delete": True,
            "datasources:query": True,
            "datasources:read": True,
            "datasources:write": True,
        }
        by_name = await client.get("/api/datasources/name/Prom?accesscontrol=true", headers=viewer)
        assert "accessControl" not in await by_name.json()

    async def test_an_empty_org_lists_nothing(self, client: AppClient, viewer: Headers) -> None:
        assert await answer(await client.get("/api/datasources", headers=viewer)) == (200, [])


class TestIdsAndNotFound:
    @pytest.mark.parametrize(
        "raw_id",
        [
            "abc",
            "1.5",
            "1e3",
            "%201",
            "0x10",
            "1_0",
            "%D9%A1",
            "+",
            "--1",
            "9223372036854775808",
            "-9223372036854775809",
            "9" * 5000,  # beyond what int() will even parse: must still be a 400, not a 500
        ],
    )
    async def test_non_integer_id_is_400_on_every_id_route(
        self, client: AppClient, admin_headers: Headers, raw_id: str
    ) -> None:
        for method in ["GET", "PUT", "DELETE"]:
            response = await client.request(
                method, f"/api/datasources/{raw_id}", json=PROMETHEUS, headers=admin_headers
            )
            assert await answer(response) == (400, ID_INVALID), method
        response = await client.get(f"/api/datasources/{raw_id}/health", headers=admin_headers)
        assert await answer(response) == (400, ID_INVALID)

    async def test_ids_parse_like_go_int64(self, client: AppClient, admin_headers: Headers) -> None:
        created = await create(client, admin_headers)
        assert created["id"] == 1
        for raw_id in ["+1", "01", "0" * 5000 + "1"]:
            response = await client.get(f"/api/datasources/{raw_id}", headers=admin_headers)
            assert await answer(response) == (200, created), raw_id
        response = await client.get("/api/datasources/9223372036854775807", headers=admin_headers)
        assert await answer(response) == (404, NOT_FOUND)

    async def test_zero_and_negative_ids(self, client: AppClient, admin_headers: Headers) -> None:
        get_zero = await client.get("/api/datasources/0", headers=admin_headers)
        assert await answer(get_zero) == (400, {"message": "Datasource id is missing"})
        get_negative = await client.get("/api/datasources/-1", headers=admin_headers)
        assert await answer(get_negative) == (404, NOT_FOUND)
        for raw_id in ["0", "-1"]:
            response = await client.delete(f"/api/datasources/{raw_id}", headers=admin_headers)
            assert await answer(response) == (400, {"message": "Missing valid datasource id"})

    async def test_unknown_source_is_404_everywhere(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        await create(client, admin_headers, name="exists", uid="exists")
        for method, path in [
            ("GET", "/api/datasources/999"),
            ("GET", "/api/datasources/+999"),
            ("GET", "/api/datasources/uid/nope"),
            ("GET", "/api/datasources/uid/EXISTS"),  # uids are case-sensitive
            ("GET", "/api/datasources/name/nope"),
            ("GET", "/api/datasources/id/nope"),
            ("PUT", "/api/datasources/999"),
            ("PUT", "/api/datasources/uid/nope"),
            ("DELETE", "/api/datasources/999"),
            ("DELETE", "/api/datasources/uid/nope"),
            ("DELETE", "/api/datasources/name/nope"),
            ("GET", "/api/datasources/999/health"),
            ("GET", "/api/datasources/uid/nope/health"),
        ]:
            response = await client.request(
                method, path, json={**PROMETHEUS, "name": "x"}, headers=admin_headers
            )
            assert await answer(response) == (404, NOT_FOUND), (method, path)

    async def test_missing_token_is_401(self, client: AppClient) -> None:
        response = await client.get("/api/datasources", headers={"Authorization": "Bearer nope"})
        assert await answer(response) == (401, {"message": "Unauthorized"})


class TestUpdate:
    async def test_put_by_id_answers_grafanas_updated_body(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, uid="u1")
        response = await client.put(
            f"/api/datasources/{created['id']}",
            json={**PROMETHEUS, "name": "Renamed", "jsonData": {"a": 1}, "version": 1},
            headers=admin_headers,
        )
        status, body = await answer(response)
        assert status == 200
        # Every bool is written, so the omitted isDefault turns the org's default off.
        changes = {"name": "Renamed", "jsonData": {"a": 1}, "version": 2, "isDefault": False}
        assert body == {
            "message": "Datasource updated",
            "id": created["id"],
            "name": "Renamed",
            "datasource": {**created, **changes},
        }
        fetched = await client.get("/api/datasources/uid/u1", headers=admin_headers)
        assert await fetched.json() == body["datasource"]

    async def test_put_by_uid(self, client: AppClient, admin_headers: Headers) -> None:
        created = await create(client, admin_headers, uid="u1")
        response = await client.put(
            "/api/datasources/uid/u1",
            json={**PROMETHEUS, "type": "loki", "url": "https://loki.example"},
            headers=admin_headers,
        )
        status, body = await answer(response)
        assert status == 200
        assert (body["message"], body["id"]) == ("Datasource updated", created["id"])
        assert (body["datasource"]["type"], body["datasource"]["url"]) == (
            "loki",
            "https://loki.example",
        )

    async def test_version_is_an_optimistic_lock(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"/api/datasources/{created['id']}"
        first = await client.put(path, json={**PROMETHEUS, "version": 1}, headers=admin_headers)
        assert (await first.json())["datasource"]["version"] == 2
        stale = await client.put(
            path, json={**PROMETHEUS, "user": "late", "version": 1}, headers=admin_headers
        )
        assert await answer(stale) == (409, VERSION_CONFLICT)
        fetched = await (await client.get(path, headers=admin_headers)).json()
        assert (fetched["user"], fetched["version"]) == ("", 2)
        # No version, 0, or a newer one than stored: the write goes through.
        for version in [None, 0, 50]:
            forced = await client.put(
                path, json={**PROMETHEUS, "version": version}, headers=admin_headers
            )
            assert forced.status == 200, version

    async def test_secure_json_data_merges_on_update(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(
            client,
            admin_headers,
            secureJsonData={"password": "p", "basicAuthPassword": "b", "httpHeaderValue1": "h"},
        )
        response = await client.put(
            f"/api/datasources/{created['id']}",
            json={**PROMETHEUS, "secureJsonData": {"password": "", "token": "t"}},
            headers=admin_headers,
        )
        assert (await response.json())["datasource"]["secureJsonFields"] == {
            "basicAuthPassword": True,
            "httpHeaderValue1": True,
            "token": True,
        }
        stored = await client.app[STORE].get_source(DEFAULT_ORG_ID, id=created["id"])
        assert stored.secure_json_data == {
            "basicAuthPassword": "b",
            "httpHeaderValue1": "h",
            "token": "t",
        }

    async def test_json_data_is_replaced_whole(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, jsonData={"a": 1, "b": 2})
        path = f"/api/datasources/{created['id']}"
        replaced = await client.put(
            path, json={**PROMETHEUS, "jsonData": {"c": 3}}, headers=admin_headers
        )
        assert (await replaced.json())["datasource"]["jsonData"] == {"c": 3}
        omitted = await client.put(path, json=PROMETHEUS, headers=admin_headers)
        assert (await omitted.json())["datasource"]["jsonData"] == {}

    async def test_empty_url_and_basic_auth_user_keep_stored_values(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, basicAuth=True, basicAuthUser="alice")
        response = await client.put(
            f"/api/datasources/{created['id']}",
            json={**PROMETHEUS, "url": "", "basicAuthUser": "", "basicAuth": True, "user": ""},
            headers=admin_headers,
        )
        source = (await response.json())["datasource"]
        assert (source["url"], source["basicAuthUser"]) == ("http://prom.example:9090", "alice")

    async def test_other_fields_are_written_even_when_empty_or_false(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(
            client, admin_headers, user="u", database="d", basicAuth=True, withCredentials=True
        )
        response = await client.put(
            f"/api/datasources/{created['id']}", json=PROMETHEUS, headers=admin_headers
        )
        source = (await response.json())["datasource"]
        assert (source["user"], source["database"], source["basicAuth"]) == ("", "", False)
        assert source["withCredentials"] is False

    async def test_name_type_and_access_are_required(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        for missing in ["name", "type", "access"]:
            body = {key: value for key, value in PROMETHEUS.items() if key != missing}
            response = await client.put(
                f"/api/datasources/{created['id']}", json=body, headers=admin_headers
            )
            assert await answer(response) == (400, {"message": f"{missing}: required"}), missing

    async def test_renaming_onto_another_sources_name_is_409(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        await create(client, admin_headers, name="Taken")
        other = await create(client, admin_headers, name="Other")
        response = await client.put(
            f"/api/datasources/{other['id']}",
            json={**PROMETHEUS, "name": "TAKEN"},
            headers=admin_headers,
        )
        assert await answer(response) == (
            409,
            {"message": f"Failed to update datasource: {NAME_TAKEN}"},
        )

    async def test_uid_cannot_be_changed_or_made_unsafe(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, uid="keep")
        path = f"/api/datasources/{created['id']}"
        changed = await client.put(path, json={**PROMETHEUS, "uid": "other"}, headers=admin_headers)
        assert await answer(changed) == (400, {"message": "A data source's uid cannot be changed"})
        unsafe = await client.put(path, json={**PROMETHEUS, "uid": "*"}, headers=admin_headers)
        assert await answer(unsafe) == (400, INVALID_UID)
        same = await client.put(path, json={**PROMETHEUS, "uid": "keep"}, headers=admin_headers)
        assert same.status == 200
        fetched = await client.get("/api/datasources/uid/keep", headers=admin_headers)
        assert (await fetched.json())["version"] == 2

    async def test_put_by_uid_with_another_uid_in_the_body_is_400(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        await create(client, admin_headers, uid="path-uid")
        response = await client.put(
            "/api/datasources/uid/path-uid",
            json={**PROMETHEUS, "uid": "body-uid"},
            headers=admin_headers,
        )
        assert await answer(response) == (
            400,
            {"message": "The uid in the request body does not match the uid in the URL"},
        )

    async def test_invalid_url_name_and_length_on_update(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"/api/datasources/{created['id']}"
        for body, expected in [
            ({**PROMETHEUS, "url": "ftp://x"}, {"message": NOT_HTTP}),
            (
                {**PROMETHEUS, "url": "http://x/" + "p" * 250},
                {"message": "url: must be at most 255 characters"},
            ),
            (
                {**PROMETHEUS, "name": "n" * 191},
                {"message": "name: must be at most 190 characters, got 191"},
            ),
        ]:
            assert await answer(await client.put(path, json=body, headers=admin_headers)) == (
                400,
                expected,
            )

    async def test_is_default_is_exclusive_and_can_be_cleared(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        first = await create(client, admin_headers, name="first")
        second = await create(client, admin_headers, name="second")

        async def defaults() -> list[str]:
            listed = await (await client.get("/api/datasources", headers=admin_headers)).json()
            return [s["name"] for s in listed if s["isDefault"]]

        await client.put(
            f"/api/datasources/{second['id']}",
            json={**PROMETHEUS, "name": "second", "isDefault": True},
            headers=admin_headers,
        )
        assert await defaults() == ["second"]
        await client.put(
            f"/api/datasources/{second['id']}",
            json={**PROMETHEUS, "name": "second", "isDefault": False},
            headers=admin_headers,
        )
        assert await defaults() == []
        assert first["isDefault"] is True

    async def test_read_only_in_the_body_does_not_make_a_source_read_only(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        response = await client.put(
            f"/api/datasources/{created['id']}",
            json={**PROMETHEUS, "readOnly": True},
            headers=admin_headers,
        )
        assert (await response.json())["datasource"]["readOnly"] is False


class TestReadOnlySources:
    @pytest.fixture
    async def provisioned(self, client: AppClient) -> dict[str, Any]:
        store = client.app[STORE]
        spec = DataSourceSpec(
            name="Provisioned", type="prometheus", url="http://p:9090", uid="prov", read_only=True
        )
        source = await store.create_source(DEFAULT_ORG_ID, spec)
        return {"id": source.id}

    async def test_updates_are_403(
        self, client: AppClient, admin_headers: Headers, provisioned: dict[str, Any]
    ) -> None:
        body = {**PROMETHEUS, "name": "Provisioned"}
        for path in [f"/api/datasources/{provisioned['id']}", "/api/datasources/uid/prov"]:
            response = await client.put(path, json=body, headers=admin_headers)
            assert await answer(response) == (
                403,
                {"message": "Cannot update read-only data source"},
            )
        fetched = await client.get("/api/datasources/uid/prov", headers=admin_headers)
        assert (await fetched.json())["readOnly"] is True

    async def test_deletes_are_403(
        self, client: AppClient, admin_headers: Headers, provisioned: dict[str, Any]
    ) -> None:
        for path in [
            f"/api/datasources/{provisioned['id']}",
            "/api/datasources/uid/prov",
            "/api/datasources/name/Provisioned",
        ]:
            response = await client.delete(path, headers=admin_headers)
            assert await answer(response) == (
                403,
                {"message": "Cannot delete read-only data source"},
            )
        assert (await client.get("/api/datasources/uid/prov", headers=admin_headers)).status == 200


class TestDelete:
    async def test_delete_by_id_has_no_id_in_the_answer(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"/api/datasources/{created['id']}"
        response = await client.delete(path, headers=admin_headers)
        assert await answer(response) == (200, {"message": "Data source deleted"})
        assert await answer(await client.get(path, headers=admin_headers)) == (404, NOT_FOUND)

    async def test_delete_by_uid_and_by_name_answer_the_id(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        by_uid = await create(client, admin_headers, name="a", uid="del-a")
        by_name = await create(client, admin_headers, name="Name With Space")
        response = await client.delete("/api/datasources/uid/del-a", headers=admin_headers)
        assert await answer(response) == (
            200,
            {"message": "Data source deleted", "id": by_uid["id"]},
        )
        response = await client.delete(
            "/api/datasources/name/Name%20With%20Space", headers=admin_headers
        )
        assert await answer(response) == (
            200,
            {"message": "Data source deleted", "id": by_name["id"]},
        )
        assert await answer(await client.get("/api/datasources", headers=admin_headers)) == (
            200,
            [],
        )


class TestRoles:
    async def test_viewer_may_list_read_and_check_health(
        self, client: AppClient, admin_headers: Headers, viewer: Headers, upstream: TestServer
    ) -> None:
        url = str(upstream.make_url("/"))
        created = await create(client, admin_headers, uid="v", type=GENERIC_TYPE, url=url)
        for path in [
            "/api/datasources",
            f"/api/datasources/{created['id']}",
            "/api/datasources/uid/v",
            "/api/datasources/name/Prom",
            "/api/datasources/id/Prom",
            "/api/datasources/uid/v/health",
            f"/api/datasources/{created['id']}/health",
        ]:
            assert (await client.get(path, headers=viewer)).status == 200, path

    async def test_viewer_writes_are_403_with_grafanas_permission_message(
        self, client: AppClient, admin_headers: Headers, viewer: Headers
    ) -> None:
        created = await create(client, admin_headers, uid="v")
        for method, path, action in [
            ("POST", "/api/datasources", "datasources:create"),
            ("PUT", f"/api/datasources/{created['id']}", "datasources:write"),
            ("PUT", "/api/datasources/uid/v", "datasources:write"),
            ("DELETE", f"/api/datasources/{created['id']}", "datasources:delete"),
            ("DELETE", "/api/datasources/uid/v", "datasources:delete"),
            ("DELETE", "/api/datasources/name/Prom", "datasources:delete"),
            # The role is checked before the body or the id is even looked at.
            ("PUT", "/api/datasources/not-a-number", "datasources:write"),
        ]:
            response = await client.request(
                method, path, json={**PROMETHEUS, "name": "hijack"}, headers=viewer
            )
            assert await answer(response) == (403, permission_denied(action)), (method, path)
        listed = await (await client.get("/api/datasources", headers=viewer)).json()
        assert [(s["name"], s["uid"]) for s in listed] == [("Prom", "v")]

    async def test_editor_may_create_update_and_delete(
        self, client: AppClient, editor: Headers
    ) -> None:
        created = await create(client, editor, uid="e")
        updated = await client.put(
            "/api/datasources/uid/e", json={**PROMETHEUS, "name": "Edited"}, headers=editor
        )
        assert (await updated.json())["name"] == "Edited"
        deleted = await client.delete(f"/api/datasources/{created['id']}", headers=editor)
        assert deleted.status == 200


class TestOrgs:
    async def test_another_orgs_sources_are_not_found(
        self, client: AppClient, admin_headers: Headers, other_org: Headers
    ) -> None:
        mine = await create(client, admin_headers, name="Mine", uid="mine")
        assert await answer(await client.get("/api/datasources", headers=other_org)) == (200, [])
        for method, path in [
            ("GET", f"/api/datasources/{mine['id']}"),
            ("GET", "/api/datasources/uid/mine"),
            ("GET", "/api/datasources/name/Mine"),
            ("GET", "/api/datasources/id/Mine"),
            ("PUT", f"/api/datasources/{mine['id']}"),
            ("PUT", "/api/datasources/uid/mine"),
            ("DELETE", f"/api/datasources/{mine['id']}"),
            ("DELETE", "/api/datasources/uid/mine"),
            ("DELETE", "/api/datasources/name/Mine"),
            ("GET", f"/api/datasources/{mine['id']}/health"),
            ("GET", "/api/datasources/uid/mine/health"),
        ]:
            response = await client.request(
                method, path, json={**PROMETHEUS, "name": "Mine"}, headers=other_org
            )
            assert await answer(response) == (404, NOT_FOUND), (method, path)
        fetched = await client.get("/api/datasources/uid/mine", headers=admin_headers)
        assert await fetched.json() == mine

    async def test_each_org_has_its_own_names_uids_and_default(
        self, client: AppClient, admin_headers: Headers, other_org: Headers
    ) -> None:
        mine = await create(client, admin_headers, name="Shared", uid="shared")
        theirs = await create(client, other_org, name="Shared", uid="shared")
        assert theirs["orgId"] != mine["orgId"]
        assert (mine["isDefault"], theirs["isDefault"]) == (True, True)
        assert theirs["id"] != mine["id"]
        deleted = await client.delete("/api/datasources/uid/shared", headers=other_org)
        assert await deleted.json() == {"message": "Data source deleted", "id": theirs["id"]}
        fetched = await client.get("/api/datasources/uid/shared", headers=admin_headers)
        assert await fetched.json() == mine

    @pytest.mark.parametrize("org_header", ["2", "999", "-1", "+2"])
    async def test_org_header_naming_another_org_is_403(
        self, client: AppClient, admin_headers: Headers, org_header: str
    ) -> None:
        headers = {**admin_headers, "X-Grafana-Org-Id": org_header}
        for method, path in [("GET", "/api/datasources"), ("POST", "/api/datasources")]:
            response = await client.request(method, path, json=PROMETHEUS, headers=headers)
            assert await answer(response) == (403, ORG_MISMATCH), method
        assert await (await client.get("/api/datasources", headers=admin_headers)).json() == []

    async def test_org_header_naming_the_tokens_org_is_accepted(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        # Grafana ignores a value it cannot parse as an int64 (and 0): the token's org is used.
        unparsable = ["abc", "1.0", "\u0661", "1" * 5000, "9" * 20, "0"]
        for org_header in [str(DEFAULT_ORG_ID), f" 0{DEFAULT_ORG_ID} ", "", *unparsable]:
            headers = {**admin_headers, "X-Grafana-Org-Id": org_header}
            response = await client.get("/api/datasources", headers=headers)
            assert await answer(response) == (200, []), org_header
        headers = {**admin_headers, "X-Grafana-Org-Id": str(DEFAULT_ORG_ID)}
        response = await client.post("/api/datasources", json=PROMETHEUS, headers=headers)
        assert response.status == 200


class TestHealth:
    async def test_reachable_upstream_is_200_ok(
        self, client: AppClient, admin_headers: Headers, upstream: TestServer
    ) -> None:
        created = await create(
            client, admin_headers, uid="up", type=GENERIC_TYPE, url=str(upstream.make_url("/"))
        )
        for path in ["/api/datasources/uid/up/health", f"/api/datasources/{created['id']}/health"]:
            status, body = await answer(await client.get(path, headers=admin_headers))
            assert status == 200
            assert body.keys() == {"status", "message"}
            assert body["status"] == "OK"
            assert isinstance(body["message"], str)
            assert body["message"]

    async def test_failing_upstream_is_400_error(
        self, client: AppClient, admin_headers: Headers, upstream: TestServer
    ) -> None:
        url = str(upstream.make_url("/broken"))
        await create(client, admin_headers, uid="down", type=GENERIC_TYPE, url=url)
        response = await client.get("/api/datasources/uid/down/health", headers=admin_headers)
        status, body = await answer(response)
        assert (status, body.keys(), body["status"]) == (400, {"status", "message"}, "ERROR")
        assert "500" in body["message"]

    async def test_unreachable_upstream_is_400_error_with_the_probes_message(
        self, client: AppClient, admin_headers: Headers, dead_url: str
    ) -> None:
        await create(client, admin_headers, uid="dead", type=GENERIC_TYPE, url=dead_url)
        response = await client.get("/api/datasources/uid/dead/health", headers=admin_headers)
        status, body = await answer(response)
        app = client.app
        source = await app[STORE].get_source(DEFAULT_ORG_ID, uid="dead")
        probed = await probe_source(app[HTTP], source, app[SETTINGS].health_timeout)
        assert (status, body["status"]) == (400, "ERROR")
        assert without_timings(body["message"]) == without_timings(probed["message"])

    async def test_the_monitors_state_is_served_before_probing(
        self, client: AppClient, admin_headers: Headers, upstream: TestServer
    ) -> None:
        url = str(upstream.make_url("/"))
        created = await create(client, admin_headers, uid="watched", type=GENERIC_TYPE, url=url)
        monitor = client.app[MONITOR]
        await wait_for(lambda: monitor.state(created["id"]), timeout=3, what="monitor picks it up")
        state = monitor.state(created["id"])
        assert state is not None
        # Enough failures to turn the state to fail whatever the scheduler did before.
        failure = {"name": "Prom", "status": "fail", "message": "from the monitor", "checks": []}
        for _ in range(state.policy.fall):
            monitor.record(state.source, failure)
        # The upstream is healthy: a probe now would answer OK, so ERROR comes from the monitor.
        response = await client.get("/api/datasources/uid/watched/health", headers=admin_headers)
        status, body = await answer(response)
        assert (status, body["status"]) == (400, "ERROR")

    async def test_source_without_url_is_not_probed_and_passes(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        await create(client, admin_headers, uid="nourl", type="testdata", url="")
        response = await client.get("/api/datasources/uid/nourl/health", headers=admin_headers)
        status, body = await answer(response)
        assert (status, body) == (
            200,
            {"status": "OK", "message": "not probed: testdata sources have no URL"},
        )

    async def test_health_answers_any_method(
        self, client: AppClient, admin_headers: Headers, upstream: TestServer
    ) -> None:
        url = str(upstream.make_url("/"))
        await create(client, admin_headers, uid="up", type=GENERIC_TYPE, url=url)
        response = await client.post("/api/datasources/uid/up/health", headers=admin_headers)
        assert (response.status, (await response.json())["status"]) == (200, "OK")

    async def test_uid_outside_the_charset_is_400_and_unknown_is_404(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        bad = await client.get("/api/datasources/uid/a.b/health", headers=admin_headers)
        assert await answer(bad) == (400, {"message": "UID is invalid"})
        unknown = await client.get(
            "/api/datasources/uid/" + "x" * 60 + "/health", headers=admin_headers
        )
        assert await answer(unknown) == (404, NOT_FOUND)


class TestPublicRoutes:
    async def test_frontend_settings_need_no_token_and_carry_both_versions(
        self, client: AppClient
    ) -> None:
        status, body = await answer(await client.get("/api/frontend/settings"))
        assert status == 200
        assert body["buildInfo"]["version"] == "11.0.0"
        assert body["datasourceGateway"]["version"] == __version__
        assert body["buildInfo"]["commit"] == body["datasourceGateway"]["commit"]

    async def test_grafana_health_has_grafanas_shape(self, client: AppClient) -> None:
        status, body = await answer(await client.get("/api/health"))
        assert status == 200
        assert body.keys() == {"database", "version", "commit"}
        assert (body["database"], body["version"]) == ("ok", "11.0.0")


async def test_numbers_json_cannot_hold_are_refused_not_stored(
    client: AppClient, admin_headers: Headers
) -> None:
    for raw in (b'{"a": 1e999}', b'{"a": -1e400}'):
        body = b'{"name":"n","type":"prometheus","access":"proxy","jsonData":' + raw + b"}"
        response = await client.post(
            "/api/datasources",
            data=body,
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert response.status == 400
        assert await response.json() == {
            "message": f"request body: not valid JSON: number {raw[6:-1].decode()} is out of range"
        }


async def test_credentials_in_a_url_are_refused(client: AppClient, admin_headers: Headers) -> None:
    for url in ("http://admin:hunter2@prom:9090", "http://admin@prom:9090"):
        response = await client.post(
            "/api/datasources",
            json={"name": "n", "type": "prometheus", "access": "proxy", "url": url},
            headers=admin_headers,
        )
        assert response.status == 400
        body = await response.json()
        assert body["message"] == (
            "url: must not contain a user or password: give credentials as the source's "
            "basic auth user and password"
        )
        assert "hunter2" not in str(body)

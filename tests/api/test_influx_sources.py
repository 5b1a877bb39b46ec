"""/api/v2/sources by raw HTTP: exact statuses, bodies and headers, over the real registry.

Upstreams are real: Debian's influxd 1.x (`influxdb` fixture) and an aiohttp InfluxDB 2.x double
(`fake_influxdb2`). Success bodies are validated against the OpenAPI schemas of the shared
reference (format checks off: InfluxDB's own links are relative paths).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientResponse, web
from pytest_aiohttp import AiohttpServer

from gateway.config import Settings
from gateway.keys import MONITOR, STORE
from gateway.registry.interface import Registry
from gateway.registry.models import DataSourceSpec, Org
from tests.conftest import Headers, MakeToken
from tests.services.influxdb import FakeInfluxDB2, InfluxDB1, closed_port_url
from tests.types import AppClient
from tests.waiting import wait_for

JSON_CT = "application/json; charset=utf-8"
SOURCES = "/api/v2/sources"
OPENAPI = Path(__file__).resolve().parents[1] / "data" / "influxdb-openapi-schemas.yml"
PASSWORD, TOKEN, SHARED = "pw-Secret-1", "tok-Secret-2", "shared-Secret-3"
UNKNOWN_ID = "0000000000abcdef"
NOT_HTTP = "url: must be an absolute http or https URL with a host"
BAD_PORT = "url: port must be a number from 1 to 65535"
FORBIDDEN_CHARACTERS = "url: must not contain spaces, control characters or backslashes"
URL_WITH_CREDENTIALS = (
    "url: must not contain a user or password: give credentials as the source's basic auth "
    "user and password"
)


# --- OpenAPI validation ------------------------------------------------------------------------


@functools.cache
def _schemas() -> dict[str, Any]:
    assert OPENAPI.exists(), f"the InfluxDB OpenAPI contract is missing: {OPENAPI}"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with OPENAPI.open() as file:
        spec = yaml.load(file, Loader=loader)  # a safe loader, chosen above
    schemas: dict[str, Any] = spec["components"]["schemas"]
    return schemas


def schema_errors(value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
    """The JSON Schema keywords these OpenAPI schemas use, with `format` not checked."""
    if "$ref" in schema:
        target = _schemas()[schema["$ref"].rsplit("/", 1)[1]]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    errors: list[str] = []
    for key in ("allOf", "oneOf", "anyOf"):
        branches = [schema_errors(value, branch, at) for branch in schema.get(key, [])]
        if key == "allOf":
            errors += [error for branch in branches for error in branch]
        elif branches and all(branches):
            errors.append(f"{at}: matches no branch of {key}")
    kinds: dict[str, type | tuple[type, ...]] = {
        "object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float)
    }  # fmt: skip
    expected = schema.get("type")
    if expected == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [*errors, f"{at}: expected an integer, got {value!r}"]
    elif expected in kinds and (
        not isinstance(value, kinds[expected]) or (expected == "number" and value in (True, False))
    ):
        return [*errors, f"{at}: expected {expected}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, int) and value < schema["minimum"]:
        errors.append(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [
            f"{at}: missing {key!r}" for key in schema.get("required", []) if key not in value
        ]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                errors += schema_errors(item, properties[key], f"{at}.{key}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{at}[{index}]")
    return errors


def assert_schema(value: Any, name: str) -> None:
    assert schema_errors(value, {"$ref": f"#/components/schemas/{name}"}) == []


def test_the_schema_check_can_fail() -> None:
    assert schema_errors({"name": "x"}, {"$ref": "#/components/schemas/HealthCheck"}) == [
        "$: missing 'status'"
    ]
    assert schema_errors({"sources": [{"type": "v9", "default": "no"}]}, _schemas()["Sources"]) == [
        "$.sources[0].type: 'v9' not in ['v1', 'v2', 'self']",
        "$.sources[0].default: expected boolean, got 'no'",
    ]
    bucket = {"name": "b", "retentionRules": [{"everySeconds": -1}]}
    assert schema_errors({"buckets": [bucket]}, _schemas()["Buckets"]) == [
        "$.buckets[0].retentionRules[0].everySeconds: -1 < 0"
    ]


# --- helpers -----------------------------------------------------------------------------------


async def org_of(client: AppClient, name: str = "Main Org.") -> Org:
    return await client.app[STORE].find_org(name=name)


def store_of(client: AppClient) -> Registry:
    return client.app[STORE]


async def body_of(response: ClientResponse, status: int) -> Any:
    """The JSON of a success answer, after checking the status and InfluxDB's framing."""
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"] == JSON_CT
    assert text.endswith("}\n")
    return json.loads(text)


async def assert_error(response: ClientResponse, status: int, code: str, message: str) -> None:
    text = await response.text()
    assert (response.status, json.loads(text)) == (status, {"code": code, "message": message})
    assert response.headers["Content-Type"] == JSON_CT
    assert response.headers["X-Platform-Error-Code"] == code
    assert_schema(json.loads(text), "Error")


async def create(
    client: AppClient, headers: Headers, status: int = 201, **fields: Any
) -> dict[str, Any]:
    body = {"name": "remote", "type": "v1", "url": "http://influx.example:8086", **fields}
    response = await client.post(SOURCES, json=body, headers=headers)
    created: dict[str, Any] = await body_of(response, status)
    return created


def expected_source(created: dict[str, Any], org: Org, **fields: Any) -> dict[str, Any]:
    source_id = created["id"]
    base = f"{SOURCES}/{source_id}"
    return {
        "id": source_id,
        "orgID": org.influx_id,
        "default": True,
        "name": "remote",
        "type": "v1",
        "url": "http://influx.example:8086",
        "telegraf": "",
        "defaultRP": "",
        "languages": ["influxql"],
        **fields,
        "links": {
            "buckets": f"{base}/buckets",
            "health": f"{base}/health",
            "query": f"{base}/query",
            "self": base,
        },
    }


def grafana_spec(name: str, **fields: Any) -> DataSourceSpec:
    """A record as Grafana's API writes one (the other view of the shared registry)."""
    return DataSourceSpec(**{"name": name, "type": "influxdb", "url": "http://i:8086", **fields})


# --- create ------------------------------------------------------------------------------------


class TestCreate:
    async def test_a_v1_source_answers_201_with_links_and_no_secrets(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.post(
            SOURCES,
            headers=admin_headers,
            json={
                "name": "remote",
                "type": "v1",
                "url": "http://influx.example:8086",
                "username": "reader",
                "password": PASSWORD,
                "token": TOKEN,
                "sharedSecret": SHARED,
                "defaultRP": "autogen",
                "telegraf": "telegraf",
                "metaUrl": "http://meta.example:8091",
                "insecureSkipVerify": True,
            },
        )
        raw = await response.text()
        created = await body_of(response, 201)
        assert created == expected_source(
            created,
            await org_of(client),
            insecureSkipVerify=True,
            telegraf="telegraf",
            username="reader",
            metaUrl="http://meta.example:8091",
            defaultRP="autogen",
        )
        assert list(created) == [
            "id", "orgID", "default", "name", "type", "url", "insecureSkipVerify", "telegraf",
            "username", "metaUrl", "defaultRP", "languages", "links",
        ]  # fmt: skip
        assert len(created["id"]) == 16
        assert int(created["id"], 16) > 0
        for secret in (PASSWORD, TOKEN, SHARED):
            assert secret not in raw
        assert_schema(created, "Source")

    @pytest.mark.parametrize(
        ("source_type", "languages"),
        [("v1", ["influxql"]), ("v2", ["flux"]), ("self", ["flux", "influxql"])],
    )
    async def test_languages_follow_the_type(
        self, client: AppClient, admin_headers: Headers, source_type: str, languages: list[str]
    ) -> None:
        created = await create(client, admin_headers, type=source_type)
        assert (created["type"], created["languages"]) == (source_type, languages)

    async def test_type_defaults_to_v1_and_a_self_source_needs_no_url(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        body = {"name": "plain", "url": "http://influx.example:8086"}
        plain = await body_of(await client.post(SOURCES, json=body, headers=admin_headers), 201)
        assert plain["type"] == "v1"
        body = {"name": "autogen", "type": "self"}
        own = await body_of(await client.post(SOURCES, json=body, headers=admin_headers), 201)
        assert (own["type"], own["url"]) == ("self", "")

    async def test_org_id_defaults_to_the_tokens_org(
        self, client: AppClient, make_token: MakeToken
    ) -> None:
        other = await make_token(role="editor", org="Other", scheme="Token")
        created = await create(client, other)
        assert created["orgID"] == (await org_of(client, "Other")).influx_id
        assert created["orgID"] != (await org_of(client)).influx_id

    async def test_the_tokens_own_org_id_is_accepted_in_either_case(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        org = await org_of(client)
        created = await create(client, admin_headers, orgID=org.influx_id.upper())
        assert created["orgID"] == org.influx_id

    async def test_another_orgs_id_is_forbidden(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        await make_token(org="Other")
        other_id = (await org_of(client, "Other")).influx_id
        body = {"name": "x", "url": "http://i:8086", "orgID": other_id}
        response = await client.post(SOURCES, json=body, headers=admin_headers)
        await assert_error(
            response,
            403,
            "forbidden",
            f"this token cannot write sources of organization {other_id}",
        )
        assert await store_of(client).list_sources() == []

    async def test_a_name_taken_in_the_org_is_a_conflict_whatever_its_case(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        await create(client, admin_headers, name="remote")
        body = {"name": "REMOTE", "url": "http://i:8086"}
        response = await client.post(SOURCES, json=body, headers=admin_headers)
        await assert_error(
            response,
            422,
            "conflict",
            "a source with the same name already exists in this organization",
        )
        await create(client, await make_token(org="Other"), name="remote")  # other org: fine

    async def test_without_a_name_the_registry_picks_one(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        body = {"url": "http://i:8086"}
        first = await body_of(await client.post(SOURCES, json=body, headers=admin_headers), 201)
        second = await body_of(await client.post(SOURCES, json=body, headers=admin_headers), 201)
        assert (first["name"], second["name"]) == ("influxdb", "influxdb-1")

    async def test_a_viewer_cannot_create(self, client: AppClient, make_token: MakeToken) -> None:
        viewer = await make_token(role="viewer")
        response = await client.post(SOURCES, json={"name": "x"}, headers=viewer)
        org = await org_of(client)
        await assert_error(
            response,
            403,
            "forbidden",
            f"write:orgs/{org.influx_id}/sources is forbidden for this token's role",
        )

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"", "request body: empty, expected a JSON object"),
            (b"{", "request body: not valid JSON: Expecting property name enclosed in double "
                   "quotes (line 1, column 2)"),
            (b"[]", "request body: must be a JSON object, got an array"),
            (b"null", "request body: must be a JSON object, got null"),
            (b"\xff{}", "request body: not UTF-8 text (at byte 0)"),
            (b"[" * 100_000, "request body: nested too deeply"),
            (b'{"name": "\\ud800", "url": "http://i:8086"}',
             "name: must be valid Unicode text (no lone surrogates)"),
            (b'{"name": "a\\u0000", "url": "http://i:8086"}',
             "name: must not contain control characters"),
        ],
    )  # fmt: skip
    async def test_a_body_that_is_not_a_json_object_is_invalid(
        self, client: AppClient, admin_headers: Headers, raw: bytes, message: str
    ) -> None:
        headers = {**admin_headers, "Content-Type": "application/json"}
        response = await client.post(SOURCES, data=raw, headers=headers)
        await assert_error(response, 400, "invalid", message)

    @pytest.mark.parametrize(
        ("content_type", "message"),
        [
            ("text/plain", 'Content-Type: must be application/json, got "text/plain"'),
            (None, "Content-Type: required, send application/json"),
        ],
    )
    async def test_a_wrong_or_missing_content_type_is_invalid(
        self, client: AppClient, admin_headers: Headers, content_type: str | None, message: str
    ) -> None:
        headers = dict(admin_headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        body = json.dumps({"name": "n", "url": "http://i:8086"}).encode()
        response = await client.post(
            SOURCES, data=body, headers=headers, skip_auto_headers=["Content-Type"]
        )
        await assert_error(response, 400, "invalid", message)
        assert await store_of(client).list_sources() == []

    async def test_a_body_over_the_limit_is_413(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        body = json.dumps({"name": "n", "url": "http://i:8086", "telegraf": "x" * (1 << 20)})
        response = await client.post(
            SOURCES,
            data=io.BytesIO(body.encode()),
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        await assert_error(
            response,
            413,
            "request too large",
            "request body: larger than the limit of 1048576 bytes",
        )

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"default": "yes"}, "default: must be a boolean, got a string"),
            ({"name": 5}, "name: must be a string, got a number"),
            ({"name": " "}, "name: must not be blank"),
            ({"name": "n" * 191}, "name: must be at most 190 characters, got 191"),
            ({"type": "v3"}, 'type: must be "v1", "v2" or "self", got "v3"'),
            ({"type": True}, "type: must be a string, got a boolean"),
            ({"url": 8086}, "url: must be a string, got a number"),
            ({"url": "influx:8086"}, NOT_HTTP),
            ({"url": "ftp://influx"}, NOT_HTTP),
            ({"url": "http://u:p@influx"}, URL_WITH_CREDENTIALS),
            ({"url": "http://influx:99999"}, BAD_PORT),
            ({"url": "http://influx:0/"}, BAD_PORT),
            ({"url": "http://a b.com/"}, FORBIDDEN_CHARACTERS),
            ({"url": "http://influx/\n"}, FORBIDDEN_CHARACTERS),
            ({"url": "http://i/" + "p" * 250}, "url: must be at most 255 characters"),
            ({"url": ""}, "url: required"),
            ({"url": None, "type": "v2"}, "url: required"),
            ({"metaUrl": "meta:8091"},
             "metaUrl: must be an absolute http or https URL with a host"),
            ({"insecureSkipVerify": 1}, "insecureSkipVerify: must be a boolean, got a number"),
            ({"username": {}}, "username: must be a string, got an object"),
            ({"username": "a\nb"}, "username: must not contain control characters"),
            ({"telegraf": ["db"]}, "telegraf: must be a string, got an array"),
            ({"defaultRP": 1.5}, "defaultRP: must be a string, got a number"),
            ({"password": 1}, "password: must be a string, got a number"),
            ({"token": ["t"]}, "token: must be a string, got an array"),
            ({"sharedSecret": False}, "sharedSecret: must be a string, got a boolean"),
            ({"token": "t" * 8193}, "token: must be at most 8192 characters, got 8193"),
            ({"id": 7}, "id: must be a string, got a number"),
            ({"id": "7"}, "id: must be 16 hex digits, not all zero"),
            ({"orgID": ""}, "orgID: must be 16 hex digits, not all zero"),
            ({"orgID": "0000000000000000"}, "orgID: must be 16 hex digits, not all zero"),
            ({"orgID": "0x00000000000001"}, "orgID: must be 16 hex digits, not all zero"),
            ({"orgID": "g000000000000001"}, "orgID: must be 16 hex digits, not all zero"),
            ({"NAME": "again"}, 'name: given twice (as "name" and "NAME")'),
            ({"role": "admin"}, "role: unknown field"),
            ({"default": "yes", "name": 123},
             "name: must be a string, got a number; default: must be a boolean, got a string"),
        ],
    )  # fmt: skip
    async def test_a_wrong_field_is_invalid_and_named(
        self, client: AppClient, admin_headers: Headers, fields: dict[str, Any], message: str
    ) -> None:
        body = {"name": "remote", "url": "http://influx.example:8086", **fields}
        response = await client.post(SOURCES, json=body, headers=admin_headers)
        await assert_error(response, 400, "invalid", message)
        assert await store_of(client).list_sources() == []

    async def test_keys_match_case_insensitively_and_null_means_not_sent(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        body = {
            "Name": "cased",
            "URL": "http://i:8086",
            "metaURL": "http://m:8091",
            "default": None,
        }
        created = await body_of(await client.post(SOURCES, json=body, headers=admin_headers), 201)
        assert (created["name"], created["url"], created["metaUrl"]) == (
            "cased",
            "http://i:8086",
            "http://m:8091",
        )

    async def test_read_only_keys_are_ignored(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(
            client,
            admin_headers,
            id="00000000000000ff",
            links={"self": "/elsewhere"},
            languages=["sql"],
        )
        assert created["id"] != "00000000000000ff"
        assert created["languages"] == ["influxql"]
        assert created["links"]["self"] == f"{SOURCES}/{created['id']}"

    async def test_json_is_written_like_influxdbs_go_encoder(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.post(
            SOURCES, headers=admin_headers, json={"name": "a<b>&c", "url": "http://i:8086"}
        )
        text = await response.text()
        assert '"name":"a\\u003cb\\u003e\\u0026c"' in text
        assert (await body_of(response, 201))["name"] == "a<b>&c"


# --- read --------------------------------------------------------------------------------------


class TestRead:
    async def test_the_list_holds_the_orgs_influxdb_sources_only(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        first = await create(client, admin_headers, name="one")
        second = await create(client, admin_headers, name="two", type="v2")
        await store_of(client).create_source(1, DataSourceSpec(name="prom", type="prometheus"))
        await create(client, await make_token(org="Other"), name="theirs")
        listed = await body_of(await client.get(SOURCES, headers=admin_headers), 200)
        assert listed == {"sources": [first, second], "links": {"self": SOURCES}}
        assert list(listed) == ["sources", "links"]
        assert_schema(listed, "Sources")

    async def test_an_empty_org_lists_nothing(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        listed = await body_of(await client.get(SOURCES, headers=admin_headers), 200)
        assert listed == {"sources": [], "links": {"self": SOURCES}}

    async def test_org_filter_by_name(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        await make_token(org="Other")
        own = await client.get(SOURCES, params={"org": "Main Org."}, headers=admin_headers)
        assert (await body_of(own, 200))["sources"] == [created]
        everything = await client.get(SOURCES, params={"org": ""}, headers=admin_headers)
        assert (await body_of(everything, 200))["sources"] == [created]
        for name in ("nope", "Other"):  # another org's name reads as unknown: no probing
            response = await client.get(SOURCES, params={"org": name}, headers=admin_headers)
            await assert_error(response, 404, "not found", f'organization name "{name}" not found')

    async def test_org_filter_by_id(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        other = await make_token(org="Other")
        own_id = created["orgID"]
        for text in (own_id, own_id.upper()):
            own = await client.get(SOURCES, params={"orgID": text}, headers=admin_headers)
            assert (await body_of(own, 200))["sources"] == [created]
        for text in ("zz", "", "0000000000000000", own_id + "0"):
            response = await client.get(SOURCES, params={"orgID": text}, headers=admin_headers)
            await assert_error(
                response, 400, "invalid", "orgID: must be 16 hex digits, not all zero"
            )
        theirs = await create(client, other, name="theirs")
        response = await client.get(
            SOURCES, params={"orgID": theirs["orgID"]}, headers=admin_headers
        )
        await assert_error(response, 404, "not found", "organization not found")

    async def test_get_answers_what_post_answered(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, password=PASSWORD)
        response = await client.get(f"{SOURCES}/{created['id']}", headers=admin_headers)
        raw = await response.text()
        assert await body_of(response, 200) == created
        assert PASSWORD not in raw

    async def test_an_id_in_upper_case_names_the_same_source(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        response = await client.get(f"{SOURCES}/{created['id'].upper()}", headers=admin_headers)
        assert await body_of(response, 200) == created

    async def test_viewers_can_read(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        viewer = await make_token(role="viewer")
        response = await client.get(f"{SOURCES}/{created['id']}", headers=viewer)
        assert await body_of(response, 200) == created
        assert (await body_of(await client.get(SOURCES, headers=viewer), 200))["sources"] == [
            created
        ]

    async def test_missing_or_bad_tokens_are_unauthorized(self, client: AppClient) -> None:
        for headers in ({}, {"Authorization": "Token nope"}, {"Authorization": "Basic eDp5"}):
            response = await client.get(SOURCES, headers=headers)
            await assert_error(response, 401, "unauthorized", "unauthorized access")

    async def test_zap_trace_span_is_the_request_id(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.get(
            SOURCES, headers={**admin_headers, "Zap-Trace-Span": "span-1234"}
        )
        assert response.status == 200
        assert response.headers["X-Request-Id"] == "span-1234"

    async def test_an_unknown_method_is_not_allowed(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        response = await client.put(f"{SOURCES}/{UNKNOWN_ID}", headers=admin_headers)
        assert response.status == 405
        assert (await response.json())["code"] == "method not allowed"
        assert response.headers["Allow"] == "DELETE,GET,HEAD,PATCH"


PER_SOURCE_ROUTES = [
    ("GET", ""),
    ("PATCH", ""),
    ("DELETE", ""),
    ("GET", "/buckets"),
    ("GET", "/health"),
]


class TestSourceIds:
    @pytest.mark.parametrize(("method", "suffix"), PER_SOURCE_ROUTES)
    @pytest.mark.parametrize(
        ("source_id", "message"),
        [
            ("123", "id must have a length of 16 bytes"),
            ("00000000000000001", "id must have a length of 16 bytes"),
            ("zzzzzzzzzzzzzzzz", "invalid ID"),
            ("0000000000000000", "invalid ID"),
            ("+000000000000001", "invalid ID"),
            ("-000000000000001", "invalid ID"),
            ("0x00000000000001", "invalid ID"),
        ],
    )
    async def test_a_malformed_id_is_invalid(
        self,
        client: AppClient,
        admin_headers: Headers,
        method: str,
        suffix: str,
        source_id: str,
        message: str,
    ) -> None:
        response = await client.request(
            method, f"{SOURCES}/{source_id}{suffix}", json={}, headers=admin_headers
        )
        await assert_error(response, 400, "invalid", message)

    @pytest.mark.parametrize(("method", "suffix"), PER_SOURCE_ROUTES)
    @pytest.mark.parametrize("source_id", [UNKNOWN_ID, "ffffffffffffffff", "7fffffffffffffff"])
    async def test_an_unknown_id_is_not_found(
        self,
        client: AppClient,
        admin_headers: Headers,
        method: str,
        suffix: str,
        source_id: str,
    ) -> None:
        response = await client.request(
            method, f"{SOURCES}/{source_id}{suffix}", json={}, headers=admin_headers
        )
        await assert_error(response, 404, "not found", "source not found")

    @pytest.mark.parametrize(("method", "suffix"), PER_SOURCE_ROUTES)
    async def test_another_orgs_source_is_not_found_and_untouched(
        self,
        client: AppClient,
        admin_headers: Headers,
        make_token: MakeToken,
        method: str,
        suffix: str,
    ) -> None:
        theirs = await create(client, await make_token(org="Other"), name="theirs")
        response = await client.request(
            method, f"{SOURCES}/{theirs['id']}{suffix}", json={"name": "x"}, headers=admin_headers
        )
        await assert_error(response, 404, "not found", "source not found")
        [stored] = await store_of(client).list_sources()
        assert stored.name == "theirs"

    @pytest.mark.parametrize(("method", "suffix"), PER_SOURCE_ROUTES)
    async def test_a_source_of_another_type_is_not_found_and_untouched(
        self, client: AppClient, admin_headers: Headers, method: str, suffix: str
    ) -> None:
        prom = await store_of(client).create_source(
            1, DataSourceSpec(name="prom", type="prometheus", url="http://p:9090")
        )
        response = await client.request(
            method, f"{SOURCES}/{prom.id:016x}{suffix}", json={"name": "x"}, headers=admin_headers
        )
        await assert_error(response, 404, "not found", "source not found")
        assert await store_of(client).list_sources() == [prom]


# --- patch -------------------------------------------------------------------------------------


class TestPatch:
    async def test_only_the_fields_sent_change_and_the_answer_is_shaped_like_get(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(
            client, admin_headers, username="u", defaultRP="rp", telegraf="t", password=PASSWORD
        )
        path = f"{SOURCES}/{created['id']}"
        response = await client.patch(path, json={"name": "renamed"}, headers=admin_headers)
        patched = await body_of(response, 200)
        assert patched == {**created, "name": "renamed"}
        assert patched == await body_of(await client.get(path, headers=admin_headers), 200)
        assert_schema(patched, "Source")
        stored = await store_of(client).get_source(1, id=int(created["id"], 16))
        assert stored.secure_json_data == {"password": PASSWORD}

    async def test_every_field_can_be_changed_and_cleared(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"{SOURCES}/{created['id']}"
        changes = {
            "url": "https://other.example:8086",
            "username": "u",
            "defaultRP": "week",
            "telegraf": "tg",
            "metaUrl": "http://meta:8091",
            "insecureSkipVerify": True,
            "default": False,
        }
        patched = await body_of(await client.patch(path, json=changes, headers=admin_headers), 200)
        assert patched == {**created, **changes}
        cleared: dict[str, object] = {
            "username": "",
            "defaultRP": "",
            "telegraf": "",
            "metaUrl": "",
        }
        cleared |= {"insecureSkipVerify": False}
        patched = await body_of(await client.patch(path, json=cleared, headers=admin_headers), 200)
        assert patched == {**created, "url": changes["url"], "default": False}
        stored = await store_of(client).get_source(1, id=int(created["id"], 16))
        assert stored.json_data == {"version": "InfluxQL"}
        assert stored.user == ""

    async def test_secrets_are_set_kept_and_cleared_but_never_shown(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, password=PASSWORD)
        path = f"{SOURCES}/{created['id']}"
        response = await client.patch(
            path, json={"token": TOKEN, "sharedSecret": SHARED}, headers=admin_headers
        )
        raw = await response.text()
        assert await body_of(response, 200) == created
        assert all(secret not in raw for secret in (PASSWORD, TOKEN, SHARED))
        stored = await store_of(client).get_source(1, id=int(created["id"], 16))
        assert stored.secure_json_data == {
            "password": PASSWORD,
            "token": TOKEN,
            "sharedSecret": SHARED,
        }
        await body_of(await client.patch(path, json={"token": ""}, headers=admin_headers), 200)
        stored = await store_of(client).get_source(1, id=int(created["id"], 16))
        assert stored.secure_json_data == {"password": PASSWORD, "sharedSecret": SHARED}

    async def test_the_type_moves_between_v1_v2_and_self(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"{SOURCES}/{created['id']}"
        source_id = int(created["id"], 16)
        store = store_of(client)
        for source_type, languages, json_data in [
            ("v2", ["flux"], {"version": "Flux"}),
            ("self", ["flux", "influxql"], {"version": "Flux", "influxSourceType": "self"}),
            ("v1", ["influxql"], {"version": "InfluxQL"}),
        ]:
            response = await client.patch(path, json={"type": source_type}, headers=admin_headers)
            patched = await body_of(response, 200)
            assert (patched["type"], patched["languages"]) == (source_type, languages)
            assert (await store.get_source(1, id=source_id)).json_data == json_data

    async def test_default_moves_to_the_patched_source(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        first = await create(client, admin_headers, name="first")
        second = await create(client, admin_headers, name="second")
        assert (first["default"], second["default"]) == (True, False)
        path = f"{SOURCES}/{second['id']}"
        await body_of(await client.patch(path, json={"default": True}, headers=admin_headers), 200)
        listed = await body_of(await client.get(SOURCES, headers=admin_headers), 200)
        assert [s["default"] for s in listed["sources"]] == [False, True]

    async def test_a_whole_source_sent_back_is_accepted(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"{SOURCES}/{created['id']}"
        response = await client.patch(path, json={**created, "name": "x"}, headers=admin_headers)
        assert await body_of(response, 200) == {**created, "name": "x"}

    async def test_grafana_settings_it_does_not_know_are_kept(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        store = store_of(client)
        made = await store.create_source(
            1,
            grafana_spec(
                "grafana-made",
                database="db",
                basic_auth=True,
                basic_auth_user="proxy",
                json_data={"version": "InfluxQL", "httpMode": "POST", "timeInterval": "10s"},
                secure_json_data={"basicAuthPassword": "bap", "password": "p"},
            ),
        )
        path = f"{SOURCES}/{made.id:016x}"
        await body_of(await client.patch(path, json={"name": "g"}, headers=admin_headers), 200)
        after = await store.get_source(1, id=made.id)
        assert after.spec() == dataclasses.replace(made.spec(), name="g")
        assert after.version == made.version + 1

    @pytest.mark.parametrize(
        ("fields", "status", "code", "message"),
        [
            ({"url": ""}, 400, "invalid", "url: required"),
            ({"url": "http://a b.com/"}, 400, "invalid", FORBIDDEN_CHARACTERS),
            ({"name": ""}, 400, "invalid", "name: must not be blank"),
            ({"default": "no"}, 400, "invalid", "default: must be a boolean, got a string"),
            ({"id": "0000000000000001"}, 400, "invalid",
             "id: does not match the source in the path"),
            ({"name": "taken"}, 422, "conflict",
             "a source with the same name already exists in this organization"),
        ],
    )  # fmt: skip
    async def test_a_bad_patch_changes_nothing(
        self,
        client: AppClient,
        admin_headers: Headers,
        fields: dict[str, Any],
        status: int,
        code: str,
        message: str,
    ) -> None:
        await create(client, admin_headers, name="taken")
        created = await create(client, admin_headers, name="mine")
        path = f"{SOURCES}/{created['id']}"
        response = await client.patch(path, json=fields, headers=admin_headers)
        await assert_error(response, status, code, message)
        assert await body_of(await client.get(path, headers=admin_headers), 200) == created

    async def test_malformed_json_is_invalid(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        response = await client.patch(
            f"{SOURCES}/{created['id']}",
            data=b'{"name": }',
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        await assert_error(
            response,
            400,
            "invalid",
            "request body: not valid JSON: Expecting value (line 1, column 10)",
        )

    async def test_moving_to_another_org_is_forbidden(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        await make_token(org="Other")
        other_id = (await org_of(client, "Other")).influx_id
        response = await client.patch(
            f"{SOURCES}/{created['id']}", json={"orgID": other_id}, headers=admin_headers
        )
        await assert_error(
            response,
            403,
            "forbidden",
            f"this token cannot write sources of organization {other_id}",
        )

    async def test_a_viewer_cannot_patch(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        viewer = await make_token(role="viewer")
        response = await client.patch(
            f"{SOURCES}/{created['id']}", json={"name": "x"}, headers=viewer
        )
        org = await org_of(client)
        await assert_error(
            response,
            403,
            "forbidden",
            f"write:orgs/{org.influx_id}/sources is forbidden for this token's role",
        )

    async def test_an_editor_can_patch(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        editor = await make_token(role="editor", scheme="Token")
        response = await client.patch(
            f"{SOURCES}/{created['id']}", json={"name": "x"}, headers=editor
        )
        assert (await body_of(response, 200))["name"] == "x"

    async def test_a_provisioned_source_cannot_be_patched_or_deleted(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        made = await store_of(client).create_source(1, grafana_spec("prov", read_only=True))
        path = f"{SOURCES}/{made.id:016x}"
        for response in (
            await client.patch(path, json={"name": "x"}, headers=admin_headers),
            await client.delete(path, headers=admin_headers),
        ):
            await assert_error(response, 403, "forbidden", "source is read-only (provisioned)")
        assert await store_of(client).list_sources() == [made]


# --- delete ------------------------------------------------------------------------------------


class TestDelete:
    async def test_delete_answers_204_and_the_source_is_gone(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers)
        path = f"{SOURCES}/{created['id']}"
        response = await client.delete(path, headers=admin_headers)
        assert (response.status, await response.read()) == (204, b"")
        for again in (
            await client.get(path, headers=admin_headers),
            await client.delete(path, headers=admin_headers),
        ):
            await assert_error(again, 404, "not found", "source not found")
        assert await store_of(client).list_sources() == []

    async def test_a_viewer_cannot_delete(
        self, client: AppClient, admin_headers: Headers, make_token: MakeToken
    ) -> None:
        created = await create(client, admin_headers)
        response = await client.delete(
            f"{SOURCES}/{created['id']}", headers=await make_token(role="viewer")
        )
        assert response.status == 403
        assert (await response.json())["code"] == "forbidden"
        assert len(await store_of(client).list_sources()) == 1


# --- one registry, two APIs --------------------------------------------------------------------


class TestSharedRegistry:
    async def test_a_source_made_here_is_an_influxdb_record(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        v1 = await create(
            client,
            admin_headers,
            name="v1",
            username="u",
            password=PASSWORD,
            sharedSecret=SHARED,
            defaultRP="rp",
            telegraf="tg",
            metaUrl="http://m:8091",
            insecureSkipVerify=True,
            default=True,
        )
        v2 = await create(client, admin_headers, name="v2", type="v2", token=TOKEN)
        own = await create(client, admin_headers, name="own", type="self", url="")
        store = store_of(client)
        record = await store.get_source(1, id=int(v1["id"], 16))
        assert (record.type, record.access, record.url, record.user, record.is_default) == (
            "influxdb",
            "proxy",
            "http://influx.example:8086",
            "u",
            True,
        )
        assert record.json_data == {
            "version": "InfluxQL",
            "tlsSkipVerify": True,
            "telegraf": "tg",
            "metaUrl": "http://m:8091",
            "defaultRP": "rp",
        }
        assert record.secure_json_data == {"password": PASSWORD, "sharedSecret": SHARED}
        record = await store.get_source(1, id=int(v2["id"], 16))
        assert (record.json_data, record.secure_json_data) == (
            {"version": "Flux"},
            {"token": TOKEN},
        )
        record = await store.get_source(1, id=int(own["id"], 16))
        assert record.json_data == {"influxSourceType": "self"}

    @pytest.mark.parametrize(
        ("json_data", "source_type"),
        [
            ({}, "v1"),
            ({"version": ""}, "v1"),
            ({"version": "InfluxQL"}, "v1"),
            ({"version": "influxql"}, "v1"),
            ({"version": "Flux"}, "v2"),
            ({"version": "Flux", "influxSourceType": "self"}, "self"),
        ],
    )
    async def test_a_grafana_record_is_shown_by_the_mapping(
        self,
        client: AppClient,
        admin_headers: Headers,
        json_data: dict[str, Any],
        source_type: str,
    ) -> None:
        made = await store_of(client).create_source(
            1,
            grafana_spec(
                "g",
                user="reader",
                is_default=True,
                json_data={**json_data, "defaultRP": "rp", "tlsSkipVerify": True, "telegraf": 7},
                secure_json_data={"password": PASSWORD},
            ),
        )
        response = await client.get(f"{SOURCES}/{made.id:016x}", headers=admin_headers)
        shown = await body_of(response, 200)
        assert shown["type"] == source_type
        assert (shown["username"], shown["defaultRP"], shown["insecureSkipVerify"]) == (
            "reader",
            "rp",
            True,
        )
        assert shown["telegraf"] == ""  # not a string in jsonData: shown empty, still a string
        assert (shown["default"], shown["url"], shown["name"]) == (True, "http://i:8086", "g")
        assert_schema(shown, "Source")

    @pytest.mark.parametrize("version", ["SQL", 3, "Flight"])
    async def test_a_record_this_api_cannot_express_is_hidden(
        self, client: AppClient, admin_headers: Headers, version: object
    ) -> None:
        made = await store_of(client).create_source(
            1, grafana_spec("sql", json_data={"version": version})
        )
        response = await client.get(f"{SOURCES}/{made.id:016x}", headers=admin_headers)
        await assert_error(response, 404, "not found", "source not found")
        listed = await body_of(await client.get(SOURCES, headers=admin_headers), 200)
        assert listed["sources"] == []

    async def test_both_ways_through_grafanas_http_api(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        if not any(r.canonical == "/api/datasources" for r in client.app.router.resources()):
            pytest.skip("Grafana's /api/datasources is not mounted in this build")
        created = await create(client, admin_headers, name="here", password=PASSWORD)
        response = await client.get(
            f"/api/datasources/{int(created['id'], 16)}", headers=admin_headers
        )
        assert response.status == 200
        seen = await response.json()
        assert (seen["name"], seen["type"], seen["access"], seen["url"]) == (
            "here",
            "influxdb",
            "proxy",
            "http://influx.example:8086",
        )
        assert seen["jsonData"]["version"] == "InfluxQL"
        assert seen["secureJsonFields"] == {"password": True}
        assert PASSWORD not in await response.text()
        response = await client.get("/api/datasources", headers=admin_headers)
        assert [(d["name"], d["type"]) for d in await response.json()] == [("here", "influxdb")]

        response = await client.post(
            "/api/datasources",
            headers=admin_headers,
            json={
                "name": "there",
                "type": "influxdb",
                "access": "proxy",
                "url": "http://flux.example:8086",
                "jsonData": {"version": "Flux", "organization": "acme"},
                "secureJsonData": {"token": TOKEN},
            },
        )
        assert response.status == 200, await response.text()
        grafana_id = (await response.json())["datasource"]["id"]
        response = await client.get(f"{SOURCES}/{grafana_id:016x}", headers=admin_headers)
        shown = await body_of(response, 200)
        assert (shown["name"], shown["type"], shown["url"]) == (
            "there",
            "v2",
            "http://flux.example:8086",
        )
        listed = await body_of(await client.get(SOURCES, headers=admin_headers), 200)
        assert [s["name"] for s in listed["sources"]] == ["here", "there"]


# --- buckets -----------------------------------------------------------------------------------


class TestBucketsV1:
    async def test_one_bucket_per_database_and_retention_policy(
        self, client: AppClient, admin_headers: Headers, influxdb: InfluxDB1
    ) -> None:
        db = await influxdb.create_database(
            'metrics "prod"', retention_policies={"week": "7d", "forever": "INF"}
        )
        created = await create(
            client,
            admin_headers,
            url=influxdb.url,
            username=influxdb.admin_user,
            password=influxdb.admin_password,
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        body = await body_of(response, 200)
        assert body["links"] == {"self": f"{SOURCES}/{created['id']}/buckets"}
        mine = [bucket for bucket in body["buckets"] if bucket["name"].startswith(f"{db}/")]
        assert mine == [
            {"name": f"{db}/autogen", "rp": "autogen", "retentionRules": [
                {"type": "expire", "everySeconds": 0, "shardGroupDurationSeconds": 604800}]},
            {"name": f"{db}/week", "rp": "week", "retentionRules": [
                {"type": "expire", "everySeconds": 604800, "shardGroupDurationSeconds": 86400}]},
            {"name": f"{db}/forever", "rp": "forever", "retentionRules": [
                {"type": "expire", "everySeconds": 0, "shardGroupDurationSeconds": 604800}]},
        ]  # fmt: skip
        assert_schema(body, "Buckets")

    async def test_the_sources_own_user_is_used(
        self, client: AppClient, admin_headers: Headers, influxdb: InfluxDB1
    ) -> None:
        readable = await influxdb.create_database()
        await influxdb.create_database()  # not granted: must not be listed
        user = await influxdb.create_user(f"reader_{readable}", "reader-pw")
        await influxdb.query(f'GRANT READ ON "{readable}" TO "{user}"')
        created = await create(
            client, admin_headers, url=influxdb.url, username=user, password="reader-pw"
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        names = [bucket["name"] for bucket in (await body_of(response, 200))["buckets"]]
        assert names == [f"{readable}/autogen"]

    async def test_a_shared_secret_signs_a_jwt_for_the_user(
        self, client: AppClient, admin_headers: Headers, influxdb: InfluxDB1
    ) -> None:
        db = await influxdb.create_database()
        created = await create(
            client,
            admin_headers,
            url=influxdb.url,
            username=influxdb.admin_user,
            sharedSecret=influxdb.shared_secret,
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        assert f"{db}/autogen" in [b["name"] for b in (await body_of(response, 200))["buckets"]]

    @pytest.mark.parametrize(
        "credentials",
        [
            {"username": "admin", "password": "wrong"},
            {},
            {"username": "admin", "sharedSecret": "x"},
        ],
    )
    async def test_refused_credentials_are_invalid_not_unauthorized(
        self,
        client: AppClient,
        admin_headers: Headers,
        influxdb: InfluxDB1,
        credentials: dict[str, str],
    ) -> None:
        created = await create(client, admin_headers, 201, url=influxdb.url, **credentials)
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(response, 400, "invalid", "source rejected the credentials")

    async def test_an_unreachable_source_is_unavailable(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        created = await create(client, admin_headers, url=closed_port_url())
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(
            response, 503, "unavailable", "source is unreachable: connection refused"
        )

    async def test_a_source_that_hangs_up_is_unavailable_in_words(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        """What went wrong, never a Python class name (ServerDisconnectedError)."""

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            created = await create(client, admin_headers, url=f"http://127.0.0.1:{port}")
            path = f"{SOURCES}/{created['id']}/buckets"
            response = await client.get(path, headers=admin_headers)
            await assert_error(
                response,
                503,
                "unavailable",
                "the request to the source failed: "
                "the server closed the connection without answering",
            )


def fake_influxdb1(answers: dict[str, tuple[int, Any]]) -> web.Application:
    """An InfluxDB 1.x `/query` that answers each statement as told (tests of hostile answers)."""

    async def query(request: web.Request) -> web.Response:
        statement = (await request.post())["q"]
        assert isinstance(statement, str)
        status, body = answers[statement]
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_post("/query", query)
    return app


def rp_series(*rows: list[Any]) -> dict[str, Any]:
    columns = ["name", "duration", "shardGroupDuration", "replicaN", "default"]
    return {"results": [{"statement_id": 0, "series": [{"columns": columns, "values": rows}]}]}


DATABASES = {"results": [{"statement_id": 0, "series": [
    {"name": "databases", "columns": ["name"], "values": [["a"], ["gone"]]}]}]}  # fmt: skip
GONE = {"results": [{"statement_id": 0, "error": "database not found: gone"}]}


class TestTargets:
    @pytest.mark.parametrize(
        ("url", "refusal"),
        [
            ("http://169.254.169.254/", "169.254.169.254 is in the denied network 169.254.0.0/16"),
            ("http://[fe80::1]:8086", "fe80::1 is in the denied network fe80::/10"),
        ],
    )
    async def test_a_denied_network_is_refused_on_create_and_patch(
        self, client: AppClient, admin_headers: Headers, url: str, refusal: str
    ) -> None:
        message = f'"url" is not allowed: {refusal}'
        body = {"name": "meta", "url": url}
        response = await client.post(SOURCES, json=body, headers=admin_headers)
        await assert_error(response, 400, "invalid", message)
        created = await create(client, admin_headers)
        path = f"{SOURCES}/{created['id']}"
        response = await client.patch(path, json={"url": url}, headers=admin_headers)
        await assert_error(response, 400, "invalid", message)
        assert await body_of(await client.get(path, headers=admin_headers), 200) == created

    async def test_credentials_in_a_grafana_records_url_are_used_but_not_sent_in_it(
        self, client: AppClient, admin_headers: Headers, aiohttp_server: AiohttpServer
    ) -> None:
        seen: list[tuple[str, str | None]] = []

        async def query(request: web.Request) -> web.Response:
            seen.append((str(request.url), request.headers.get("Authorization")))
            return web.json_response({"results": [{"statement_id": 0}]})

        app = web.Application()
        app.router.add_post("/query", query)
        upstream = await aiohttp_server(app)
        url = str(upstream.make_url("/").with_user("u").with_password("p"))
        made = await store_of(client).create_source(1, grafana_spec("in-url", url=url))
        response = await client.get(f"{SOURCES}/{made.id:016x}/buckets", headers=admin_headers)
        assert (await body_of(response, 200))["buckets"] == []
        assert seen == [(str(upstream.make_url("/query")), "Basic dTpw")]

    async def test_a_grafana_custom_authorization_header_is_sent(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        made = await store_of(client).create_source(
            1,
            grafana_spec(
                "custom",
                url=fake_influxdb2.url,
                json_data={"version": "Flux", "httpHeaderName1": "Authorization"},
                secure_json_data={"httpHeaderValue1": f"Bearer {fake_influxdb2.token}"},
            ),
        )
        response = await client.get(f"{SOURCES}/{made.id:016x}/buckets", headers=admin_headers)
        assert len((await body_of(response, 200))["buckets"]) == 2
        [request] = fake_influxdb2.bucket_requests()
        assert request.authorization == f"Bearer {fake_influxdb2.token}"


class TestBucketsV1Answers:
    @pytest.mark.parametrize(
        ("duration", "seconds"),
        [("0s", 0), ("0", 0), ("1h30m0s", 5400), ("1.5h", 5400), ("90m", 5400),
         ("2562047h47m16.854775807s", 9223372036), ("1500ms", 1), ("10µs", 0)],
    )  # fmt: skip
    async def test_durations_and_vanished_databases(
        self,
        client: AppClient,
        admin_headers: Headers,
        aiohttp_server: AiohttpServer,
        duration: str,
        seconds: int,
    ) -> None:
        upstream = await aiohttp_server(
            fake_influxdb1(
                {
                    "SHOW DATABASES": (200, DATABASES),
                    'SHOW RETENTION POLICIES ON "a"': (
                        200,
                        rp_series(["r", duration, "1h0m0s", 1, True]),
                    ),
                    'SHOW RETENTION POLICIES ON "gone"': (200, GONE),
                }
            )
        )
        created = await create(client, admin_headers, url=str(upstream.make_url("/")))
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        assert (await body_of(response, 200))["buckets"] == [
            {
                "name": "a/r",
                "rp": "r",
                "retentionRules": [
                    {"type": "expire", "everySeconds": seconds, "shardGroupDurationSeconds": 3600}
                ],
            }
        ]

    @pytest.mark.parametrize(
        ("databases", "policies", "status", "code", "message"),
        [
            ((200, {"results": [{"error": "boom"}]}), None, 502, "unavailable",
             "source refused SHOW DATABASES"),
            ((200, {"results": []}), None, 502, "unavailable",
             "source answered with an unexpected body"),
            ((200, {"results": [{"series": [{"columns": ["x"], "values": []}]}]}), None, 502,
             "unavailable", "source answered with an unexpected body"),
            ((200, DATABASES), (200, rp_series(["r", "7 days", "1h", 1, True])), 502,
             "unavailable", "source answered with an unreadable retention duration"),
            ((200, DATABASES), (200, rp_series(["r", 5, "1h", 1, True])), 502,
             "unavailable", "source answered with an unexpected body"),
            ((200, DATABASES), (200, rp_series(["r", "1h"])), 502,
             "unavailable", "source answered with an unexpected body"),
            ((200, DATABASES), (500, {"error": "x"}), 502,
             "unavailable", "source answered HTTP 500"),
            ((403, {"error": "forbidden"}), None, 400,
             "invalid", "source rejected the credentials"),
        ],
    )  # fmt: skip
    async def test_a_hostile_answer_is_an_error(
        self,
        client: AppClient,
        admin_headers: Headers,
        aiohttp_server: AiohttpServer,
        databases: tuple[int, Any],
        policies: tuple[int, Any] | None,
        status: int,
        code: str,
        message: str,
    ) -> None:
        answers = {"SHOW DATABASES": databases}
        if policies is not None:
            answers |= {'SHOW RETENTION POLICIES ON "a"': policies}
            answers |= {'SHOW RETENTION POLICIES ON "gone"': (200, GONE)}
        upstream = await aiohttp_server(fake_influxdb1(answers))
        created = await create(client, admin_headers, url=str(upstream.make_url("/")))
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(response, status, code, message)


class TestBucketsV2:
    async def test_buckets_come_from_the_upstream_with_the_sources_token(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        fake_influxdb2.add_bucket("telegraf", 2592000)
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        raw = await response.text()
        body = await body_of(response, 200)
        assert body == {
            "links": {"self": f"{SOURCES}/{created['id']}/buckets"},
            "buckets": [
                {
                    "id": bucket["id"],
                    "orgID": fake_influxdb2.org_id,
                    "type": bucket["type"],
                    "name": bucket["name"],
                    "retentionRules": bucket["retentionRules"],
                    "createdAt": "2024-05-17T10:00:00.123456789Z",
                    "updatedAt": "2024-05-17T10:00:00.123456789Z",
                }
                for bucket in fake_influxdb2.buckets
            ],
        }
        assert [b["name"] for b in body["buckets"]] == ["_monitoring", "_tasks", "telegraf"]
        assert_schema(body, "Buckets")
        [seen] = fake_influxdb2.bucket_requests()
        assert seen.authorization == f"Token {fake_influxdb2.token}"
        assert seen.path_qs == "/api/v2/buckets?limit=100&offset=0"
        assert fake_influxdb2.token not in raw

    async def test_every_page_is_read(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        for number in range(248):
            fake_influxdb2.add_bucket(f"b{number:03}")
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        names = [bucket["name"] for bucket in (await body_of(response, 200))["buckets"]]
        assert names == [bucket["name"] for bucket in fake_influxdb2.buckets]
        assert len(names) == 250
        assert [r.path_qs for r in fake_influxdb2.bucket_requests()] == [
            "/api/v2/buckets?limit=100&offset=0",
            "/api/v2/buckets?limit=100&offset=100",
            "/api/v2/buckets?limit=100&offset=200",
        ]

    async def test_a_grafana_flux_sources_organization_is_passed_on(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        made = await store_of(client).create_source(
            1,
            grafana_spec(
                "flux",
                url=fake_influxdb2.url + "/",
                json_data={"version": "Flux", "organization": fake_influxdb2.org},
                secure_json_data={"token": fake_influxdb2.token},
            ),
        )
        response = await client.get(f"{SOURCES}/{made.id:016x}/buckets", headers=admin_headers)
        assert len((await body_of(response, 200))["buckets"]) == 2
        [seen] = fake_influxdb2.bucket_requests()
        assert seen.path_qs == "/api/v2/buckets?limit=100&org=acme&offset=0"

    @pytest.mark.parametrize("token", ["wrong-token", None])
    async def test_a_refused_token_is_invalid_not_unauthorized(
        self,
        client: AppClient,
        admin_headers: Headers,
        fake_influxdb2: FakeInfluxDB2,
        token: str | None,
    ) -> None:
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(response, 400, "invalid", "source rejected the credentials")
        [seen] = fake_influxdb2.bucket_requests()
        assert seen.authorization == (f"Token {token}" if token else None)

    @pytest.mark.parametrize(
        ("answer", "status", "message"),
        [
            ((500, b'{"code":"internal error"}'), 502, "source answered HTTP 500"),
            ((200, b"<html>"), 502, "source answered with a body that is not JSON"),
            ((200, b'{"buckets": {}}'), 502, "source answered with an unexpected body"),
            ((200, b'{"buckets": [{"name": 1}]}'), 502, "source answered with an unexpected body"),
            ((200, b'{"buckets": [{"name": "b", "retentionRules": [{"everySeconds": -1}]}]}'),
             502, "source answered with an unexpected body"),
            ((200, b'{"buckets": [{"name": "b", "retentionRules": [{"everySeconds": true}]}]}'),
             502, "source answered with an unexpected body"),
            ((200, b"[" * 100_000), 502, "source answered with JSON nested too deeply"),
        ],
    )  # fmt: skip
    async def test_an_unexpected_answer_is_a_bad_gateway(
        self,
        client: AppClient,
        admin_headers: Headers,
        fake_influxdb2: FakeInfluxDB2,
        answer: tuple[int, bytes],
        status: int,
        message: str,
    ) -> None:
        fake_influxdb2.buckets_answer = answer
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(response, status, "unavailable", message)

    async def test_an_oversized_answer_is_a_bad_gateway(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        fake_influxdb2.buckets_answer = (200, b'{"buckets": []}' + b" " * (8 * 1024 * 1024))
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(
            response, 502, "unavailable", "source answered with more than 8388608 bytes"
        )

    async def test_garbage_in_optional_fields_is_dropped(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        fake_influxdb2.buckets_answer = (
            200,
            json.dumps(
                {"buckets": [{"name": "b", "id": 5, "type": "odd", "createdAt": "yesterday"}]}
            ).encode(),
        )
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        body = await body_of(response, 200)
        assert body["buckets"] == [{"name": "b", "retentionRules": []}]
        assert_schema(body, "Buckets")

    async def test_an_unknown_org_filter_is_not_found(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        path = f"{SOURCES}/{created['id']}/buckets"
        response = await client.get(path, params={"org": "nope"}, headers=admin_headers)
        await assert_error(response, 404, "not found", 'organization name "nope" not found')
        assert fake_influxdb2.bucket_requests() == []
        response = await client.get(path, params={"org": "Main Org."}, headers=admin_headers)
        assert len((await body_of(response, 200))["buckets"]) == 2


class TestSlowUpstream:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return dataclasses.replace(settings, proxy_response_timeout=0.3)

    async def test_a_source_that_answers_too_slowly_is_unavailable(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        fake_influxdb2.buckets_delay = 5
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/buckets", headers=admin_headers)
        await assert_error(response, 503, "unavailable", "source did not answer within 0.3 s")


class TestSelfSources:
    async def test_a_self_source_serves_the_default_sources_buckets_and_health(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        await create(
            client,
            admin_headers,
            name="main",
            type="v2",
            url=fake_influxdb2.url,
            token=fake_influxdb2.token,
            default=True,
        )
        own = await create(client, admin_headers, name="autogen", type="self", url="")
        response = await client.get(f"{SOURCES}/{own['id']}/buckets", headers=admin_headers)
        body = await body_of(response, 200)
        assert [b["name"] for b in body["buckets"]] == ["_monitoring", "_tasks"]
        assert body["links"] == {"self": f"{SOURCES}/{own['id']}/buckets"}
        response = await client.get(f"{SOURCES}/{own['id']}/health", headers=admin_headers)
        health = await body_of(response, 200)
        assert (health["name"], health["status"]) == ("main", "pass")

    async def test_without_a_default_influx_source_a_self_source_is_unavailable(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        own = await create(client, admin_headers, name="autogen", type="self", url="")
        assert own["default"]  # the org's first source: the default, but not a v1/v2 one
        await create(client, admin_headers, name="later", default=False)
        message = "a self source uses the organization's default InfluxDB source, and there is none"
        response = await client.get(f"{SOURCES}/{own['id']}/buckets", headers=admin_headers)
        await assert_error(response, 503, "unavailable", message)
        response = await client.get(f"{SOURCES}/{own['id']}/health", headers=admin_headers)
        assert await body_of(response, 503) == {
            "name": "autogen",
            "status": "fail",
            "message": message,
        }


# --- health ------------------------------------------------------------------------------------


class TestHealth:
    async def test_the_health_monitors_state_is_served(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        made = await store_of(client).create_source(
            1,
            grafana_spec(
                "watched",
                url=fake_influxdb2.url,
                json_data={"version": "Flux", "healthCheck": {"interval": 3600, "fall": 1}},
                secure_json_data={"token": fake_influxdb2.token},
            ),
        )
        monitor = client.app[MONITOR]

        def probed() -> bool:  # the first scheduled probe runs within a second of the write
            state = monitor.state(made.id)
            return state is not None and state.last_result is not None

        await wait_for(probed, timeout=4)
        state = monitor.state(made.id)
        assert state is not None
        assert state.status == "pass"
        monitor.record(made, {"name": "watched", "status": "fail", "message": "seen down"})
        response = await client.get(f"{SOURCES}/{made.id:016x}/health", headers=admin_headers)
        assert await body_of(response, 503) == {
            "name": "watched",
            "status": "fail",
            "message": "seen down",
        }  # the upstream is fine: a probe now would pass, so this is the monitor's word

    async def test_a_healthy_source_answers_200_pass(
        self, client: AppClient, admin_headers: Headers, fake_influxdb2: FakeInfluxDB2
    ) -> None:
        created = await create(
            client, admin_headers, type="v2", url=fake_influxdb2.url, token=fake_influxdb2.token
        )
        response = await client.get(f"{SOURCES}/{created['id']}/health", headers=admin_headers)
        raw = await response.text()
        health = await body_of(response, 200)
        assert (health["name"], health["status"]) == ("remote", "pass")
        assert_schema(health, "HealthCheck")
        assert fake_influxdb2.token not in raw

    async def test_a_real_influxdb_1_is_healthy(
        self, client: AppClient, admin_headers: Headers, influxdb: InfluxDB1
    ) -> None:
        created = await create(
            client,
            admin_headers,
            url=influxdb.url,
            username=influxdb.admin_user,
            password=influxdb.admin_password,
        )
        response = await client.get(f"{SOURCES}/{created['id']}/health", headers=admin_headers)
        health = await body_of(response, 200)
        assert (health["name"], health["status"]) == ("remote", "pass")
        assert_schema(health, "HealthCheck")

    async def test_a_record_without_a_usable_url_fails_cleanly(
        self, client: AppClient, admin_headers: Headers
    ) -> None:
        made = await store_of(client).create_source(1, grafana_spec("no-url", url=""))
        response = await client.get(f"{SOURCES}/{made.id:016x}/health", headers=admin_headers)
        health = await body_of(response, 503)
        assert (health["name"], health["status"]) == ("no-url", "fail")
        assert_schema(health, "HealthCheck")
        response = await client.get(f"{SOURCES}/{made.id:016x}/buckets", headers=admin_headers)
        await assert_error(response, 400, "invalid", "the source has no usable http(s) url")

    async def test_an_unreachable_source_answers_503_with_a_health_check(
        self, client: AppClient, make_token: MakeToken
    ) -> None:
        viewer = await make_token(role="viewer", org="Other")
        editor = await make_token(role="editor", org="Other")
        created = await create(client, editor, url=closed_port_url())
        response = await client.get(f"{SOURCES}/{created['id']}/health", headers=viewer)
        health = await body_of(response, 503)
        assert (health["name"], health["status"]) == ("remote", "fail")
        assert_schema(health, "HealthCheck")


async def test_a_number_with_thousands_of_digits_is_400_not_500(
    client: AppClient, admin_headers: Headers
) -> None:
    for body in (b'{"name":"x","zz":' + b"1" * 5000 + b"}", b'{"name":"x","zz":1e999}'):
        response = await client.post(
            "/api/v2/sources",
            data=body,
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert response.status == 400
        assert (await response.json())["code"] == "invalid"

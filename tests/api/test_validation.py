"""One validation for every writer: the same bad input breaks the same rule, with the same words,
through Grafana's API, InfluxDB's API (in its own field names) and a provisioning file — and a
refused write writes nothing. Real app, real SQLite; provisioning read from real files."""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import STORE
from gateway.provisioning import check_files
from gateway.registry.models import DEFAULT_ORG_ID, DataSourceSpec
from gateway.registry.validation import source_violations
from gateway.upstream.credentials import tls_skip_verify
from tests.conftest import CARRIERS, Headers
from tests.types import AppClient

GRAFANA = {"name": "src", "type": "influxdb", "access": "proxy", "url": "http://influx:8086"}
INFLUX = {"name": "src", "type": "v1", "url": "http://influx:8086"}
YAML_ENTRY = {"name": "src", "type": "influxdb", "url": "http://influx:8086"}

FORBIDDEN = "must not contain spaces, control characters or backslashes"
BAD_PORT = "port must be a number from 1 to 65535"
NOT_HTTP = "must be an absolute http or https URL with a host"
CREDENTIALS = (
    "must not contain a user or password: give credentials as the source's basic auth user "
    "and password"
)
ADDRESS_CREDENTIALS = (
    "must not contain a user or password: give them as the source's user and "
    "secureJsonData.password"
)


@dataclass(frozen=True)
class Case:
    """A bad input as each writer spells it; None where a writer has no such field."""

    grafana: dict[str, Any]
    influx: dict[str, Any] | None
    message: str  # in Grafana's field names: the Grafana API's and provisioning's words
    influx_message: str | None = None  # when InfluxDB's API names the field otherwise
    yaml: dict[str, Any] | None = field(default=None)  # default: the Grafana fields

    def yaml_fields(self) -> dict[str, Any]:
        return self.yaml if self.yaml is not None else self.grafana


CASES = {
    "url with a space": Case({"url": "http://a b.com/"}, {"url": "http://a b.com/"},
                             f"url: {FORBIDDEN}"),
    "url port 0": Case({"url": "http://influx:0/"}, {"url": "http://influx:0/"},
                       f"url: {BAD_PORT}"),
    "url port too big": Case({"url": "http://influx:65536/"}, {"url": "http://influx:65536/"},
                             f"url: {BAD_PORT}"),
    "url not http": Case({"url": "ftp://influx/"}, {"url": "ftp://influx/"}, f"url: {NOT_HTTP}"),
    "url with credentials": Case({"url": "http://u:pw@influx/"}, {"url": "http://u:pw@influx/"},
                                 f"url: {CREDENTIALS}"),
    "url missing where the type needs one": Case({"url": ""}, {"url": ""}, "url: required"),
    "name too long": Case({"name": "n" * 191}, {"name": "n" * 191},
                          "name: must be at most 190 characters, got 191"),
    "name with a control character": Case({"name": "a\tb"}, {"name": "a\tb"},
                                          "name: must not contain control characters"),
    "name blank": Case({"name": "  "}, {"name": "  "}, "name: must not be blank"),
    "user with a newline": Case({"user": "u\nX-Evil: 1"}, {"username": "u\nX-Evil: 1"},
                                "user: must not contain control characters",
                                "username: must not contain control characters"),
    "tlsSkipVerify as a string": Case(
        {"jsonData": {"tlsSkipVerify": "true"}}, {"insecureSkipVerify": "true"},
        "jsonData.tlsSkipVerify: must be a boolean, got a string",
        "insecureSkipVerify: must be a boolean, got a string"),
    "secret too long": Case(
        {"secureJsonData": {"password": "p" * 8193}}, {"password": "p" * 8193},
        "secureJsonData.password: must be at most 8192 characters, got 8193",
        "password: must be at most 8192 characters, got 8193"),
    "metaUrl not a URL": Case(
        {"jsonData": {"metaUrl": "meta:8091"}}, {"metaUrl": "meta:8091"},
        f"jsonData.metaUrl: {NOT_HTTP}", f"metaUrl: {NOT_HTTP}"),
    "access not proxy or direct": Case({"access": "bogus"}, None,
                                       'access: must be "proxy" or "direct", got "bogus"'),
    "uid outside its charset": Case({"uid": "a*"}, None,
                                    'uid: must be 1 to 40 letters, digits, "-" or "_"'),
    "replica not a URL": Case(
        {"jsonData": {"replicaUrls": ["http://b:8086/", "b:8086"]}}, None,
        f"jsonData.replicaUrls[1]: {NOT_HTTP}"),
    "prometheus without url": Case({"type": "prometheus", "url": ""}, None, "url: required"),
    "database address with a user": Case({"type": "postgres", "url": "me:pw@db:5432"}, None,
                                         f"url: {ADDRESS_CREDENTIALS}"),
    "mssql address with a password": Case({"type": "mssql", "url": "db;Password=x"}, None,
                                          f"url: {ADDRESS_CREDENTIALS}"),
    "database address with a newline": Case({"type": "mysql", "url": "db:3306\nx"}, None,
                                            "url: must not contain spaces or control characters"),
    "database address too long": Case({"type": "mysql", "url": "d" * 256}, None,
                                      "url: must be at most 255 characters"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_grafana_api_create_and_update_refuse_it_naming_the_rule(
    client: AppClient, admin_headers: Headers, case: Case
) -> None:
    existing = await client.post(
        "/api/datasources", json={**GRAFANA, "name": "existing"}, headers=admin_headers
    )
    assert existing.status == 200, await existing.text()
    source_id = (await existing.json())["id"]
    body = {**GRAFANA, **case.grafana}
    created = await client.post("/api/datasources", json=body, headers=admin_headers)
    assert (created.status, await created.json()) == (400, {"message": case.message})
    updated = await client.put(f"/api/datasources/{source_id}", json=body, headers=admin_headers)
    if case.grafana.get("url") == "":  # an empty url keeps the stored one on update
        assert updated.status == 200
        return
    assert (updated.status, await updated.json()) == (400, {"message": case.message})
    [stored] = await client.app[STORE].list_sources(DEFAULT_ORG_ID)
    assert (stored.name, stored.version) == ("existing", 1)


@pytest.mark.parametrize(
    "case", [case for case in CASES.values() if case.influx is not None],
    ids=[name for name, case in CASES.items() if case.influx is not None],
)  # fmt: skip
async def test_influxdb_api_create_and_patch_refuse_it_in_its_own_names(
    client: AppClient, admin_headers: Headers, case: Case
) -> None:
    assert case.influx is not None
    expected = {"code": "invalid", "message": case.influx_message or case.message}
    existing = await client.post(
        "/api/v2/sources", json={**INFLUX, "name": "existing"}, headers=admin_headers
    )
    assert existing.status == 201, await existing.text()
    path = f"/api/v2/sources/{(await existing.json())['id']}"
    created = await client.post(
        "/api/v2/sources", json={**INFLUX, **case.influx}, headers=admin_headers
    )
    assert (created.status, await created.json()) == (400, expected)
    patched = await client.patch(path, json=case.influx, headers=admin_headers)
    assert (patched.status, await patched.json()) == (400, expected)
    [stored] = await client.app[STORE].list_sources(DEFAULT_ORG_ID)
    assert (stored.name, stored.version) == ("existing", 1)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_provisioning_file_reports_it_on_its_line(tmp_path: Path, case: Case) -> None:
    entry = {**YAML_ENTRY, **case.yaml_fields()}
    # JSON is YAML: every value keeps its type, and the entry is on line 3.
    (tmp_path / "ds.yaml").write_text(
        textwrap.dedent(f"""\
        apiVersion: 1
        datasources:
          - {json.dumps(entry)}
        """)
    )
    assert check_files(tmp_path, {}) == [f"{tmp_path}/ds.yaml:3: {case.message}"]


def test_several_problems_are_all_reported_joined_in_field_order() -> None:
    spec = DataSourceSpec(name="a\x00", type="prometheus", access="server", uid="*")
    messages = [violation.message() for violation in source_violations(spec)]
    assert messages == [
        "name: must not contain control characters",
        'access: must be "proxy" or "direct", got "server"',
        'uid: must be 1 to 40 letters, digits, "-" or "_"',
        "url: required",
    ]


async def test_grafana_reports_every_type_problem_at_once(
    client: AppClient, admin_headers: Headers
) -> None:
    body = {**GRAFANA, "isDefault": "yes", "name": 123, "basicAuth": None, "bogus": 1}
    response = await client.post("/api/datasources", json=body, headers=admin_headers)
    assert (response.status, await response.json()) == (
        400,
        {
            "message": "name: must be a string, got a number; "
            "isDefault: must be a boolean, got a string; bogus: unknown field"
        },
    )


@pytest.mark.parametrize(
    ("json_data", "skips"),
    [({"tlsSkipVerify": True}, True), ({"tlsSkipVerify": "true"}, False), ({}, False)],
)
async def test_tls_skip_verify_has_one_reading(
    client: AppClient, admin_headers: Headers, json_data: dict[str, Any], skips: bool
) -> None:
    """Only a JSON true turns verification off, for the proxy, the probes and the bucket
    listings alike (one function); a string stored before the rule keeps it on."""
    store = client.app[STORE]
    source = await store.create_source(
        DEFAULT_ORG_ID,
        DataSourceSpec(name="s", type="influxdb", url="https://i:8086", json_data=json_data),
    )
    assert tls_skip_verify(source) is skips


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize(
    "text", ["0x00000000000001", "+000000000000001", "0_00000000000001", "-000000000000001"]
)
async def test_the_source_query_id_is_16_hex_digits_or_400(
    client: AppClient, admin_headers: Headers, text: str
) -> None:
    """A malformed 16-character id is refused by `…/query` exactly as by the source's other
    routes (the proxy reads it with the API's parser), not taken as `int(text, 16)`."""
    created = await client.post("/api/v2/sources", json=INFLUX, headers=admin_headers)
    assert (await created.json())["id"] == "0000000000000001"  # what int(text, 16) would find
    invalid_id = (400, {"code": "invalid", "message": "invalid ID"})
    response = await client.post(
        f"/api/v2/sources/{text}/query", json={"query": "SHOW DATABASES"}, headers=admin_headers
    )
    assert (response.status, await response.json()) == invalid_id
    for path in (f"/api/v2/sources/{text}", f"/api/v2/sources/{text}/buckets"):
        other = await client.get(path, headers=admin_headers)
        assert (other.status, await other.json()) == invalid_id, path


async def test_the_readmes_examples_are_true(client: AppClient, admin_headers: Headers) -> None:
    """README, "Validation: one set of rules for every writer"."""
    grafana = await client.post(
        "/api/datasources",
        data=b'{"name":"p","type":"prometheus","access":"bogus"}',
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert (grafana.status, await grafana.text()) == (
        400,
        '{"message": "access: must be \\"proxy\\" or \\"direct\\", got \\"bogus\\"; '
        'url: required"}',
    )
    influx = await client.post(
        "/api/v2/sources",
        data=b'{"name":"i","url":"http://i:8086","default":"yes"}',
        headers={**admin_headers, "Content-Type": "application/json"},
    )
    assert (influx.status, await influx.text()) == (
        400,
        '{"code": "invalid", "message": "default: must be a boolean, got a string"}',
    )
    assert await client.app[STORE].list_sources(DEFAULT_ORG_ID) == []


# Grafana's SQL types store a database address, as Grafana's own docs and UI write it.
DATABASE_ADDRESSES = {
    "postgres": "localhost:5432",
    "grafana-postgresql-datasource": "db.example:5432",
    "mysql": "db:3306",
    "mssql": "sqlserver://db:1433",
}


@pytest.mark.parametrize(("type_", "address"), DATABASE_ADDRESSES.items())
async def test_a_database_address_is_kept_as_grafana_keeps_it(
    client: AppClient, admin_headers: Headers, tmp_path: Path, type_: str, address: str
) -> None:
    body = {"name": "sql", "type": type_, "access": "proxy", "url": address}
    created = await client.post("/api/datasources", json=body, headers=admin_headers)
    assert created.status == 200, await created.text()
    source_id = (await created.json())["id"]
    updated = await client.put(
        f"/api/datasources/{source_id}",
        json={**body, "url": f"{address};x=1"},
        headers=admin_headers,
    )
    assert updated.status == 200, await updated.text()
    [stored] = await client.app[STORE].list_sources(DEFAULT_ORG_ID)
    assert stored.url == f"{address};x=1"
    (tmp_path / "ds.yaml").write_text(f"apiVersion: 1\ndatasources:\n  - {json.dumps(body)}\n")
    assert check_files(tmp_path, {}) == []
    # Only those types: the same text is no URL for a type the gateway proxies.
    prometheus = {**body, "name": "prom", "type": "prometheus"}
    refused = await client.post("/api/datasources", json=prometheus, headers=admin_headers)
    assert (refused.status, await refused.json()) == (400, {"message": f"url: {NOT_HTTP}"})


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_the_proxy_refuses_a_database_address_cleanly(
    client: AppClient, admin_headers: Headers
) -> None:
    body = {"name": "sql", "type": "postgres", "access": "proxy", "url": "localhost:5432"}
    created = await client.post("/api/datasources", json=body, headers=admin_headers)
    uid = (await created.json())["datasource"]["uid"]
    proxied = await client.get(f"/api/datasources/proxy/uid/{uid}/x", headers=admin_headers)
    assert (proxied.status, await proxied.json()) == (
        400,
        {"message": "Invalid data source URL"},
    )


def many_unknown_keys(count: int) -> dict[str, int]:
    return {f"k{index}": 1 for index in range(count)}


def listed_then_more(count: int) -> str:
    listed = "; ".join(f"k{index}: unknown field" for index in range(20))
    return f"{listed}; and {count - 20} more"


async def test_an_error_body_lists_20_problems_then_counts_the_rest(
    client: AppClient, admin_headers: Headers
) -> None:
    """20,000 unknown keys got a 448,903-byte answer listing every one."""
    keys = many_unknown_keys(20_000)
    grafana = await client.post("/api/datasources", json={**GRAFANA, **keys}, headers=admin_headers)
    assert (grafana.status, await grafana.json()) == (400, {"message": listed_then_more(20_000)})
    influx = await client.post("/api/v2/sources", json={**INFLUX, **keys}, headers=admin_headers)
    assert (influx.status, await influx.json()) == (
        400,
        {"code": "invalid", "message": listed_then_more(20_000)},
    )
    exactly_20 = await client.post(
        "/api/datasources", json={**GRAFANA, **many_unknown_keys(20)}, headers=admin_headers
    )
    assert (await exactly_20.json())["message"].endswith("k19: unknown field")


async def test_the_ssrf_policy_reads_a_database_address_as_provisioning_does(
    client: AppClient, admin_headers: Headers
) -> None:
    """tests/test_provisioning.py holds a file to the same reading: only the `scheme://host`
    form of a database address names a host the policy can judge."""
    for address, status in (
        ("sqlserver://169.254.169.254:1433", 400),
        ("169.254.169.254:5432", 200),
    ):
        body = {"name": address, "type": "mssql", "access": "proxy", "url": address}
        response = await client.post("/api/datasources", json=body, headers=admin_headers)
        assert response.status == status, await response.text()

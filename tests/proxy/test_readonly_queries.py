"""A token below the editor role may only read through InfluxDB's query routes (`/query`,
`/api/v2/query`, `/api/v2/sources/{id}/query`), against Debian's real influxd 1.x with a source
that holds influxd's *admin* credentials: what a refused statement would have done is checked on
influxd itself. Flux goes to the aiohttp upstream that answers like InfluxDB 2.x
(tests/proxy/test_proxy_influx.py), which records what reached it.

The rules themselves, statement by statement: tests/security/test_readonly.py.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.rest import ApiException
from pytest_aiohttp import AiohttpServer

from gateway.security.influxql import influxql_refusal, split_statements
from tests.conftest import ADMIN_TOKEN, Headers, MakeToken
from tests.proxy.test_proxy_influx import (
    Influx2Upstream,
    add_source,
    assert_influx_error,
    influx2,  # noqa: F401 (a fixture)
    influx_source_id,
)
from tests.services.influxdb import InfluxDB1, quote_ident
from tests.types import AppClient

FORM = "application/x-www-form-urlencoded"
READ_FLUX = 'from(bucket: "metrics") |> range(start: -1h)'
WRITE_FLUX = READ_FLUX + ' |> to(bucket: "copy")'


def refusal(action: str) -> str:
    return f"{action} needs the editor role; this token's role is viewer"


@pytest.fixture
async def admin_source(client: AppClient, admin_headers: Headers, influxdb: InfluxDB1) -> str:
    """An InfluxQL source with influxd's admin credentials, and a database with points in it;
    returns the database's name."""
    db = await influxdb.create_database()
    await influxdb.query(
        f"CREATE RETENTION POLICY keep ON {quote_ident(db)} DURATION 1d REPLICATION 1"
    )
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=influxdb.admin_user,
        password=influxdb.admin_password,
        isDefault=True,
    )
    written = await client.post(
        f"/write?db={db}", data=b"cpu,host=a value=1.5\n", headers=admin_headers
    )
    assert written.status == 204
    return db


@pytest.fixture
async def viewer(make_token: MakeToken) -> Headers:
    return await make_token(role="viewer", scheme="Token")


async def databases(influxdb: InfluxDB1) -> set[str]:
    answer = await influxdb.query("SHOW DATABASES")
    return {row[0] for row in answer["results"][0]["series"][0]["values"]}


async def measurements(influxdb: InfluxDB1, db: str) -> set[str]:
    answer = await influxdb.query(f"SHOW MEASUREMENTS ON {quote_ident(db)}")
    series = answer["results"][0].get("series", [])
    return {row[0] for row in series[0]["values"]} if series else set()


async def test_a_viewers_writing_influxql_is_refused_and_influxd_is_untouched(
    client: AppClient, admin_source: str, viewer: Headers, influxdb: InfluxDB1
) -> None:
    db = quote_ident(admin_source)
    drop = f"DROP DATABASE {db}"
    attempts: list[tuple[str, str, dict[str, str], Any, str]] = [
        # (method, what, URL params, form body, the statement the refusal names)
        ("GET", "q in the URL", {"q": drop}, None, "DROP DATABASE"),
        (
            "GET",
            "a hidden second statement",
            {"q": f"SHOW DATABASES; {drop}"},
            None,
            "DROP DATABASE",
        ),
        (
            "GET",
            "SELECT INTO",
            {"q": f"SELECT * INTO {db}..cpu2 FROM {db}..cpu"},
            None,
            "SELECT … INTO",
        ),
        (
            "GET",
            "a DROP after a quoted ;",
            {"q": f"SELECT * FROM cpu WHERE h = ';'; {drop}"},
            None,
            "DROP DATABASE",
        ),
        ("POST", "q in a form body", {"db": admin_source}, {"q": drop}, "DROP DATABASE"),
        (
            "POST",
            "a read in the URL, a DROP in the body",
            {"q": "SHOW DATABASES"},
            {"q": drop},
            "DROP DATABASE",
        ),
        (
            "POST",
            "a DROP in the URL, a read in the body",
            {"q": drop},
            {"q": "SHOW DATABASES"},
            "DROP DATABASE",
        ),
        (
            "POST",
            "a retention policy",
            {},
            {"q": f"DROP RETENTION POLICY keep ON {db}"},
            "DROP RETENTION POLICY",
        ),
        (
            "POST",
            "a grant",
            {},
            {"q": "CREATE USER intruder WITH PASSWORD 'x' WITH ALL PRIVILEGES"},
            "CREATE USER",
        ),
    ]
    for method, what, params, form, named in attempts:
        response = await client.request(method, "/query", params=params, data=form, headers=viewer)
        message = await assert_influx_error(response, 403, "forbidden")
        assert message == refusal(named), what
    assert admin_source in await databases(influxdb)
    assert await measurements(influxdb, admin_source) == {"cpu"}  # no cpu2 from the SELECT INTO
    answer = await influxdb.query("SHOW RETENTION POLICIES ON " + db)
    assert "keep" in {row[0] for row in answer["results"][0]["series"][0]["values"]}
    users = (await influxdb.query("SHOW USERS"))["results"][0]["series"][0]["values"]
    assert "intruder" not in {row[0] for row in users}


async def test_a_query_influxd_would_read_from_an_uploaded_file_is_refused(
    client: AppClient, admin_source: str, viewer: Headers, influxdb: InfluxDB1
) -> None:
    # `curl -F q=@file`: influxd reads q from a multipart upload, which is not read here.
    form = aiohttp.FormData()
    form.add_field("q", f"DROP DATABASE {quote_ident(admin_source)}".encode(), filename="q.txt")
    response = await client.post("/query", data=form, headers=viewer)
    message = await assert_influx_error(response, 403, "forbidden")
    assert message == refusal(
        "a query that could not be classified as read-only "
        "(a multipart/form-data body, whose q may be an uploaded file)"
    )
    assert admin_source in await databases(influxdb)


async def test_a_viewers_reads_pass_by_get_and_post(
    client: AppClient, admin_source: str, viewer: Headers
) -> None:
    select = "SELECT value FROM cpu; SHOW MEASUREMENTS"
    # GET, as Grafana's default; POST with a form, as its `httpMode: POST`; POST with q in the
    # URL and a body influxd does not read.
    answers = [
        await client.get("/query", params={"db": admin_source, "q": select}, headers=viewer),
        await client.post(
            "/query", params={"db": admin_source}, data={"q": select}, headers=viewer
        ),
        await client.post(
            "/query",
            params={"db": admin_source, "q": select},
            data=b"ignored",
            headers={**viewer, "Content-Type": "text/plain"},
        ),
    ]
    for response in answers:
        assert response.status == 200, await response.text()
        first, second = (await response.json())["results"]
        assert first["series"][0]["values"][0][1] == 1.5
        assert second["series"][0]["values"] == [["cpu"]]


async def test_an_editors_drop_goes_through(
    client: AppClient, admin_source: str, make_token: MakeToken, influxdb: InfluxDB1
) -> None:
    editor = await make_token(role="editor", scheme="Token")
    response = await client.post(
        "/query", data={"q": f"DROP DATABASE {quote_ident(admin_source)}"}, headers=editor
    )
    assert response.status == 200, await response.text()
    assert admin_source not in await databases(influxdb)


async def test_a_viewers_query_body_is_read_up_to_a_limit(
    client: AppClient, admin_source: str, viewer: Headers
) -> None:
    body = urlencode({"q": "SHOW DATABASES", "pad": "x" * (1024 * 1024)}).encode()
    response = await client.post(
        "/query", data=io.BytesIO(body), headers={**viewer, "Content-Type": FORM}
    )
    message = await assert_influx_error(response, 413, "request too large")
    assert message == (
        "a query body is read whole to check that it only reads, for a token below the editor "
        "role; it must not exceed 1048576 bytes"
    )


async def test_the_source_query_link_refuses_a_viewers_influxql_write(
    client: AppClient,
    admin_source: str,
    viewer: Headers,
    admin_headers: Headers,
    influxdb: InfluxDB1,
) -> None:
    link = f"/api/v2/sources/{await influx_source_id(client, admin_headers, 'influx')}/query"
    drop = {"query": f"SHOW DATABASES; DROP DATABASE {quote_ident(admin_source)}"}
    message = await assert_influx_error(
        await client.post(link, json=drop, headers=viewer), 403, "forbidden"
    )
    assert message == refusal("DROP DATABASE")
    assert admin_source in await databases(influxdb)
    read = await client.post(
        link, json={"query": "SELECT value FROM cpu", "db": admin_source}, headers=viewer
    )
    assert read.status == 200, await read.text()
    assert (await read.json())["results"][0]["series"][0]["values"][0][1] == 1.5


# --- Flux -------------------------------------------------------------------------------------


async def flux_source(client: AppClient, admin_headers: Headers, upstream: Influx2Upstream) -> str:
    """A Flux source on the fake InfluxDB 2; returns its id in InfluxDB's form."""
    body = {
        "name": "influx2",
        "type": "influxdb",
        "access": "proxy",
        "url": upstream.url,
        "isDefault": True,
        "jsonData": {"version": "Flux", "organization": "acme", "defaultBucket": "metrics"},
        "secureJsonData": {"token": "upstream-token"},
    }
    response = await client.post("/api/datasources", json=body, headers=admin_headers)
    assert response.status == 200, await response.text()
    return await influx_source_id(client, admin_headers, "influx2")


async def test_a_viewers_flux_that_writes_is_refused_before_it_is_sent(
    client: AppClient,
    admin_headers: Headers,
    viewer: Headers,
    make_token: MakeToken,
    influx2: Influx2Upstream,  # noqa: F811 (the fixture imported above)
) -> None:
    source_id = await flux_source(client, admin_headers, influx2)
    link = f"/api/v2/sources/{source_id}/query"
    flux = {"Content-Type": "application/vnd.flux"}
    refused = [
        await client.post("/api/v2/query?org=acme", json={"query": WRITE_FLUX}, headers=viewer),
        await client.post("/api/v2/query?org=acme", data=WRITE_FLUX, headers={**viewer, **flux}),
        await client.post(link, json={"query": WRITE_FLUX, "type": "flux"}, headers=viewer),
    ]
    for response in refused:
        assert await assert_influx_error(response, 403, "forbidden") == refusal("Flux's to()")
    http = 'import "http"\nhttp.post(url: "http://example.com")'
    response = await client.post("/api/v2/query?org=acme", json={"query": http}, headers=viewer)
    message = await assert_influx_error(response, 403, "forbidden")
    assert message == refusal('the Flux package "http"')
    assert influx2.seen == []

    # What reads passes, as it came: JSON, raw Flux, and through the sources' query link.
    read = {"query": READ_FLUX, "type": "flux"}
    passed = [
        await client.post("/api/v2/query?org=acme", json=read, headers=viewer),
        await client.post("/api/v2/query?org=acme", data=READ_FLUX, headers={**viewer, **flux}),
        await client.post(link, json=read, headers=viewer),
    ]
    for response in passed:
        assert response.status == 200, await response.text()
    assert [json.loads(seen.body) for seen in (influx2.seen[0], influx2.seen[2])] == [read, read]
    assert influx2.seen[1].body == READ_FLUX.encode()
    assert {seen.authorization for seen in influx2.seen} == {"Token upstream-token"}

    # An editor's Flux is not looked at.
    editor = await make_token(role="editor", scheme="Token")
    written = await client.post(
        "/api/v2/query?org=acme", json={"query": WRITE_FLUX}, headers=editor
    )
    assert written.status == 200
    assert json.loads(influx2.seen[-1].body) == {"query": WRITE_FLUX}


async def test_the_influxdb_client_may_read_but_not_write_with_a_viewers_token(
    client: AppClient,
    admin_headers: Headers,
    make_token: MakeToken,
    influx2: Influx2Upstream,  # noqa: F811 (the fixture imported above)
) -> None:
    await flux_source(client, admin_headers, influx2)
    viewer = await make_token(role="viewer", scheme="Token")
    token = viewer["Authorization"].removeprefix("Token ")
    gateway = str(client.make_url("")).rstrip("/")
    influx = InfluxDBClient(url=gateway, token=token, org="acme")
    try:
        query_api = influx.query_api()
        tables = await asyncio.to_thread(query_api.query, READ_FLUX)
        with pytest.raises(ApiException) as caught:
            await asyncio.to_thread(query_api.query, WRITE_FLUX)
    finally:
        await asyncio.to_thread(influx.close)
    assert [record.get_value() for table in tables for record in table.records] == [1.5, 2.5]
    assert caught.value.status == 403
    assert json.loads(caught.value.body)["message"] == refusal("Flux's to()")
    assert len(influx2.seen) == 1  # only the read
    assert ADMIN_TOKEN not in str(influx2.seen)


@pytest.mark.parametrize(
    "query",
    [
        # influxd reads these regexes where the classifier does (a `;` or `'` inside them is no
        # statement's end, no string's start)…
        "SELECT value FROM cpu WHERE host =~ /a;b'c/",
        'SELECT value FROM "autogen"./c;p\'u/',
        "SELECT /v;a'l/ FROM cpu GROUP BY /h;o'st/",
        "SHOW TAG VALUES WITH KEY =~ /h;o'st/",
        # … and divides where it does: `.` then `/` in an expression is a division.
        "SELECT value./2 FROM cpu",
        "SELECT value / 2 FROM cpu WHERE host = 'a;b' -- ;DROP DATABASE x",
    ],
)
async def test_influxd_parses_these_queries_the_way_they_are_classified(
    client: AppClient, admin_source: str, viewer: Headers, query: str
) -> None:
    """Each query is one read-only statement here, and influxd runs it as one, without error."""
    assert influxql_refusal(query) is None
    assert len(split_statements(query)) == 1
    response = await client.get("/query", params={"db": admin_source, "q": query}, headers=viewer)
    assert response.status == 200, await response.text()
    (result,) = (await response.json())["results"]
    assert "error" not in result, result


async def test_an_editors_query_is_not_read_before_it_is_sent(
    client: AppClient,
    admin_headers: Headers,
    make_token: MakeToken,
    aiohttp_server: AiohttpServer,
) -> None:
    # Past the viewer's limit, and written in chunks of unknown total length: an editor's body
    # streams upstream as it comes, never held for a check.
    received: list[int] = []

    async def query(request: web.Request) -> web.Response:
        size = 0
        async for data in request.content.iter_any():
            size += len(data)
        received.append(size)
        return web.Response(text="", content_type="text/csv")

    upstream = web.Application()
    upstream.router.add_post("/api/v2/query", query)
    server = await aiohttp_server(upstream)
    url = str(server.make_url("")).rstrip("/")
    await flux_source(client, admin_headers, Influx2Upstream(url, []))
    editor = await make_token(role="editor", scheme="Token")
    chunk = b"// " + b"x" * (64 * 1024 - 4) + b"\n"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield chunk
        yield WRITE_FLUX.encode()

    response = await client.post(
        "/api/v2/query?org=acme",
        data=chunks(),
        headers={**editor, "Content-Type": "application/vnd.flux"},
    )
    assert response.status == 200, await response.text()
    assert received == [32 * len(chunk) + len(WRITE_FLUX)]

"""InfluxDB passthrough (`/write`, `/query`, `/api/v2/write`, `/api/v2/query`) and the sources'
`query` link, against Debian's real influxd 1.x with authentication on.

Clients authenticate to the gateway with its own token (`Authorization: Token <t>`); what
authenticates at influxd is the source's `user` + `secureJsonData.password`. Each test makes its
own database and influxd users (the influxd process is shared by the tests of one xdist worker).

The real `influxdb-client` only speaks InfluxDB's v2 API (`/api/v2/write`, `/api/v2/query`, Flux),
which InfluxDB 1.6 does not have (it came in 1.8): through the gateway it gets influxd's own 404,
which is what the last test here pins. Its v2 calls are exercised against a v2 source instead,
an aiohttp upstream that answers like InfluxDB 2.x's write and query endpoints.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from pytest_aiohttp import AiohttpServer

from gateway.keys import STORE
from tests.conftest import ADMIN_TOKEN, Headers, MakeToken
from tests.services.influxdb import InfluxDB1, quote_ident
from tests.types import AppClient

INFLUX_JSON = "application/json; charset=utf-8"
AUTH_FAILED = "Authentication to data source failed"
LINES = b"cpu,host=a value=1.5 1700000000\ncpu,host=b value=2.5 1700000060\n"


@pytest.fixture
def token_headers() -> Headers:
    """The gateway's admin token, the way InfluxDB clients send a token."""
    return {"Authorization": f"Token {ADMIN_TOKEN}"}


@dataclass
class InfluxUsers:
    """A fresh database on the shared influxd, with a user who may write it and one who may
    only read it."""

    db: str
    writer: str
    reader: str
    password: str = field(default_factory=lambda: secrets.token_hex(8))


@pytest.fixture
async def influx_users(influxdb: InfluxDB1) -> InfluxUsers:
    db = await influxdb.create_database()
    suffix = secrets.token_hex(3)
    users = InfluxUsers(db=db, writer=f"writer_{suffix}", reader=f"reader_{suffix}")
    await influxdb.create_user(users.writer, users.password)
    await influxdb.create_user(users.reader, users.password)
    await influxdb.query(
        f"GRANT ALL ON {quote_ident(db)} TO {quote_ident(users.writer)}; "
        f"GRANT READ ON {quote_ident(db)} TO {quote_ident(users.reader)}"
    )
    return users


async def add_source(
    client: AppClient,
    headers: Headers,
    url: str,
    *,
    name: str,
    user: str = "",
    password: str = "",
    **fields: Any,
) -> dict[str, Any]:
    """An InfluxQL `influxdb` source registered through the Grafana API; returns its DTO."""
    body: dict[str, Any] = {
        "name": name,
        "type": "influxdb",
        "access": "proxy",
        "url": url,
        "jsonData": {"version": "InfluxQL"},
        **fields,
    }
    if user:
        body["user"] = user
        body["secureJsonData"] = {"password": password}
    response = await client.post("/api/datasources", json=body, headers=headers)
    assert response.status == 200, await response.text()
    source: dict[str, Any] = (await response.json())["datasource"]
    return source


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def influx_source_id(client: AppClient, headers: Headers, name: str) -> str:
    """The source's id in InfluxDB's form (16 hex digits), from /api/v2/sources."""
    response = await client.get("/api/v2/sources", headers=headers)
    assert response.status == 200
    (source,) = [s for s in (await response.json())["sources"] if s["name"] == name]
    source_id: str = source["id"]
    return source_id


def cpu_rows(answer: dict[str, Any]) -> list[list[Any]]:
    """The rows of a single-series `SELECT host, value FROM cpu` answer."""
    (result,) = answer["results"]
    assert "error" not in result, result
    (series,) = result["series"]
    assert series["name"] == "cpu"
    rows: list[list[Any]] = series["values"]
    return rows


async def assert_influx_error(response: Any, status: int, code: str) -> str:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"] == INFLUX_JSON
    assert response.headers["X-Platform-Error-Code"] == code
    body = await response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    message: str = body["message"]
    return message


# --- write, then query back ---------------------------------------------------------------------


async def test_write_then_query_back_through_the_gateway(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    users = influx_users
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    write = await client.post(
        f"/write?db={users.db}&precision=s", data=LINES, headers=token_headers
    )
    assert write.status == 204, await write.text()
    select = "SELECT host, value FROM cpu"
    # GET /query, as InfluxDB 1.x clients read.
    got = await client.get(
        "/query", params={"db": users.db, "q": select, "epoch": "s"}, headers=token_headers
    )
    assert got.status == 200, await got.text()
    assert got.headers["Content-Type"] == "application/json"
    assert "X-Influxdb-Version" in got.headers  # influxd's own headers pass
    assert cpu_rows(await got.json()) == [[1700000000, "a", 1.5], [1700000060, "b", 2.5]]
    # POST /query with a form, and the Bearer scheme: the same answer.
    posted = await client.post(
        f"/query?db={users.db}&epoch=s", data={"q": select}, headers=admin_headers
    )
    assert posted.status == 200
    assert cpu_rows(await posted.json()) == [[1700000000, "a", 1.5], [1700000060, "b", 2.5]]
    # And influxd itself holds the points (asked directly, as admin).
    direct = await influxdb.query(f"SELECT count(value) FROM {quote_ident(users.db)}..cpu")
    assert direct["results"][0]["series"][0]["values"][0][1] == 2


async def test_a_chunked_query_streams_influxd_answer_as_it_comes(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    users = influx_users
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    write = await client.post(
        f"/write?db={users.db}&precision=s", data=LINES, headers=token_headers
    )
    assert write.status == 204
    # influxd's chunked mode: one JSON document per chunk of `chunk_size` points.
    params = {
        "db": users.db,
        "q": "SELECT host, value FROM cpu",
        "epoch": "s",
        "chunked": "true",
        "chunk_size": "1",
    }
    response = await client.get("/query", params=params, headers=token_headers)
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    documents = [json.loads(line) for line in (await response.text()).splitlines()]
    assert [cpu_rows(document) for document in documents] == [
        [[1700000000, "a", 1.5]],
        [[1700000060, "b", 2.5]],
    ]


async def test_a_gzip_write_reaches_influxd(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    users = influx_users
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    write = await client.post(
        f"/write?db={users.db}&precision=s",
        data=gzip.compress(LINES),
        headers={**token_headers, "Content-Encoding": "gzip"},
    )
    assert write.status == 204, await write.text()
    got = await client.get(
        "/query",
        params={"db": users.db, "q": "SELECT host, value FROM cpu", "epoch": "s"},
        headers=token_headers,
    )
    assert cpu_rows(await got.json()) == [[1700000000, "a", 1.5], [1700000060, "b", 2.5]]


async def test_the_source_credentials_authenticate_never_the_client(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    users = influx_users
    reader = await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="reader",
        user=users.reader,
        password=users.password,
    )
    # The reader's credentials reach influxd, whatever the client sends: the write is refused
    # by influxd's authorization (403, its own body), not its authentication.
    refused = await client.post(f"/write?db={users.db}", data=LINES, headers=token_headers)
    assert refused.status == 403
    assert f'"{users.reader}" user is not authorized to write' in (await refused.json())["error"]
    # InfluxDB 1.x's own u/p query parameters are the client's, never forwarded: admin
    # credentials there change nothing.
    with_admin_params = await client.post(
        "/write",
        params={"db": users.db, "u": influxdb.admin_user, "p": influxdb.admin_password},
        data=LINES,
        headers=token_headers,
    )
    assert with_admin_params.status == 403
    # Reading is what the reader may do.
    read = await client.get(
        "/query", params={"db": users.db, "q": "SHOW MEASUREMENTS"}, headers=token_headers
    )
    assert read.status == 200
    assert "error" not in (await read.json())["results"][0]
    # A source with no credentials: influxd's 401 becomes 400 in InfluxDB's error shape,
    # even when the client offers admin credentials as u/p.
    deleted = await client.delete(f"/api/datasources/uid/{reader['uid']}", headers=admin_headers)
    assert deleted.status == 200
    await add_source(client, admin_headers, influxdb.url, name="anonymous")
    for params in ({"db": users.db}, {"db": users.db, "u": "admin", "p": influxdb.admin_password}):
        anonymous = await client.post("/write", params=params, data=LINES, headers=token_headers)
        assert await assert_influx_error(anonymous, 400, "invalid") == AUTH_FAILED
        assert "WWW-Authenticate" not in anonymous.headers


async def test_a_1x_client_with_the_gateway_token_as_password_writes_and_reads(
    client: AppClient,
    admin_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    # InfluxDB 1.x clients send u/p (or Basic auth) with the gateway token as the password.
    # influxd takes u/p from the URL before any Authorization header, so were they forwarded,
    # influxd would refuse the gateway token: a 204 proves they are not.
    users = influx_users
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    as_params = await client.post(
        "/write",
        params={"db": users.db, "precision": "s", "u": "telegraf", "p": ADMIN_TOKEN},
        data=LINES,
    )
    assert as_params.status == 204, await as_params.text()
    as_basic = await client.get(
        "/query",
        params={"db": users.db, "q": "SELECT host, value FROM cpu", "epoch": "s"},
        headers={"Authorization": basic("telegraf", ADMIN_TOKEN)},
    )
    assert as_basic.status == 200, await as_basic.text()
    assert cpu_rows(await as_basic.json()) == [[1700000000, "a", 1.5], [1700000060, "b", 2.5]]
    # A wrong token is the gateway's own 401, in InfluxDB's shape.
    wrong = await client.post(
        "/write", params={"db": users.db, "u": "telegraf", "p": "dsg_wrong"}, data=LINES
    )
    await assert_influx_error(wrong, 401, "unauthorized")


async def test_a_wrong_source_password_is_400_in_influx_shape(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=influx_users.writer,
        password="not-" + influx_users.password,
    )
    for method, path in (("POST", "/write"), ("GET", "/query"), ("POST", "/query")):
        response = await client.request(
            method,
            path,
            params={"db": influx_users.db, "q": "SHOW MEASUREMENTS"},
            data=LINES if path == "/write" else None,
            headers=token_headers,
        )
        assert await assert_influx_error(response, 400, "invalid") == AUTH_FAILED, path


# --- choosing the source --------------------------------------------------------------------------


async def test_source_is_chosen_by_parameter_header_or_default(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    users = influx_users
    write_url = f"/write?db={users.db}&precision=s"
    # The org's first source becomes its default (as in Grafana): let it be a Prometheus one.
    await client.post(
        "/api/datasources",
        json={"name": "prom", "type": "prometheus", "access": "proxy", "url": influxdb.url},
        headers=admin_headers,
    )
    writer = await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="Writer",
        user=users.writer,
        password=users.password,
    )
    reader = await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="Reader",
        user=users.reader,
        password=users.password,
    )
    assert not writer["isDefault"]
    assert not reader["isDefault"]
    # Two sources and no default: the gateway will not guess.
    ambiguous = await client.post(write_url, data=LINES, headers=token_headers)
    message = await assert_influx_error(ambiguous, 404, "not found")
    assert "no default InfluxDB source" in message
    # By name (case-insensitive) or uid, in the query string or the header.
    for how in (
        {"params": {"source": "writer"}},
        {"params": {"source": writer["uid"]}},
        {"headers": {"X-Gateway-Source": "Writer"}},
    ):
        chosen = await client.post(
            write_url,
            data=LINES,
            params=how.get("params"),
            headers={**token_headers, **how.get("headers", {})},
        )
        assert chosen.status == 204, how
    for how in ({"params": {"source": "Reader"}}, {"headers": {"X-Gateway-Source": reader["uid"]}}):
        chosen = await client.post(
            write_url,
            data=LINES,
            params=how.get("params"),
            headers={**token_headers, **how.get("headers", {})},
        )
        assert chosen.status == 403, how  # the reader's credentials went to influxd
    unknown = await client.post(
        write_url, data=LINES, params={"source": "nope"}, headers=token_headers
    )
    assert await assert_influx_error(unknown, 404, "not found") == (
        'no InfluxDB source "nope" in this organization'
    )
    # Once one is the default, it is used when none is named.
    update = {
        "name": "Reader",
        "type": "influxdb",
        "access": "proxy",
        "url": influxdb.url,
        "user": users.reader,
        "isDefault": True,
        "jsonData": {"version": "InfluxQL"},
    }
    updated = await client.put(
        f"/api/datasources/uid/{reader['uid']}", json=update, headers=admin_headers
    )
    assert updated.status == 200, await updated.text()
    defaulted = await client.post(write_url, data=LINES, headers=token_headers)
    assert defaulted.status == 403  # Reader (the default) was used
    named = await client.post(
        write_url, data=LINES, params={"source": "Writer"}, headers=token_headers
    )
    assert named.status == 204  # naming one still wins over the default


async def test_without_an_influxdb_source_every_route_is_404_in_influx_shape(
    client: AppClient,
    admin_headers: Headers,
    make_token: MakeToken,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    # Main org has an InfluxDB source; the other org only a Prometheus one.
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=influx_users.writer,
        password=influx_users.password,
    )
    other = await make_token(org="Other", scheme="Token")
    # Never contacted: the passthrough looks for an `influxdb` source only.
    prometheus = {"name": "prom", "type": "prometheus", "access": "proxy", "url": influxdb.url}
    created = await client.post("/api/datasources", json=prometheus, headers=other)
    assert created.status == 200
    for method, path in (
        ("POST", "/write"),
        ("GET", "/query"),
        ("POST", "/query"),
        ("POST", "/api/v2/write"),
        ("POST", "/api/v2/query"),
    ):
        response = await client.request(
            method, path, params={"db": influx_users.db, "q": "SHOW DATABASES"}, headers=other
        )
        message = await assert_influx_error(response, 404, "not found")
        assert "no default InfluxDB source" in message, path
    named = await client.get(
        "/query", params={"q": "SHOW DATABASES", "source": "influx"}, headers=other
    )
    assert "in this organization" in await assert_influx_error(named, 404, "not found")


# --- POST /api/v2/sources/{id}/query ------------------------------------------------------------


async def post_json(
    client: AppClient, path: str, body: Any, headers: Headers, *, content_type: bool
) -> Any:
    """POST `body` as JSON, with `Content-Type: application/json` or with no Content-Type."""
    if content_type:
        return await client.post(path, json=body, headers=headers)
    return await client.post(
        path, data=json.dumps(body).encode(), headers=headers, skip_auto_headers=["Content-Type"]
    )


async def source_with_points(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    users: InfluxUsers,
    influxdb: InfluxDB1,
) -> str:
    """Register the writer's source, write LINES through it; returns its `query` link."""
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    write = await client.post(
        f"/write?db={users.db}&precision=s", data=LINES, headers=token_headers
    )
    assert write.status == 204
    return f"/api/v2/sources/{await influx_source_id(client, token_headers, 'influx')}/query"


async def test_source_query_link_runs_influxql_on_the_real_influxd(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    link = await source_with_points(client, admin_headers, token_headers, influx_users, influxdb)
    query = {"query": "SELECT host, value FROM cpu", "type": "influxql", "db": influx_users.db}
    response = await post_json(client, link, query, token_headers, content_type=True)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/json"
    rows = cpu_rows(await response.json())
    assert rows == [["2023-11-14T22:13:20Z", "a", 1.5], ["2023-11-14T22:14:20Z", "b", 2.5]]
    # `rp` is passed on: influxd resolves it by name.
    with_rp = await post_json(
        client, link, {**query, "rp": "autogen"}, token_headers, content_type=True
    )
    assert cpu_rows(await with_rp.json()) == rows
    missing_rp = await post_json(
        client, link, {**query, "rp": "nope"}, token_headers, content_type=True
    )
    assert "retention policy not found" in (await missing_rp.json())["results"][0]["error"]
    # The client's Accept reaches influxd, which then answers CSV.
    csv = await post_json(
        client, link, query, {**token_headers, "Accept": "application/csv"}, content_type=True
    )
    assert csv.status == 200
    assert csv.headers["Content-Type"] == "text/csv"
    assert (await csv.text()).splitlines()[0] == "name,tags,time,host,value"
    # "type" defaults to influxql; influxd's own error for bad InfluxQL passes through.
    bad = await post_json(
        client, link, {"query": "SELEC nothing"}, token_headers, content_type=True
    )
    assert bad.status == 400
    assert "error parsing query" in (await bad.json())["error"]


async def test_source_query_link_needs_a_json_content_type(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    """As every other JSON body of the InfluxDB API (tests/proxy/test_source_query_body.py)."""
    link = await source_with_points(client, admin_headers, token_headers, influx_users, influxdb)
    query = {"query": "SELECT host, value FROM cpu", "type": "influxql", "db": influx_users.db}
    response = await post_json(client, link, query, token_headers, content_type=False)
    message = await assert_influx_error(response, 400, "invalid")
    assert message == "Content-Type: required, send application/json"


async def test_source_query_link_refuses_what_a_v1_source_cannot_run(
    client: AppClient,
    admin_headers: Headers,
    token_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    users = influx_users
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    link = f"/api/v2/sources/{await influx_source_id(client, token_headers, 'influx')}/query"
    flux = {"query": 'from(bucket: "x") |> range(start: -1h)', "type": "flux"}
    message = await assert_influx_error(
        await client.post(link, json=flux, headers=token_headers), 400, "invalid"
    )
    assert message == 'type: must be "influxql" for a v1 (InfluxQL) source, got "flux"'
    # Every other refusal, by its exact body: tests/proxy/test_source_query_body.py.


# --- the real influxdb-client -------------------------------------------------------------------


@dataclass
class SeenV2:
    path_qs: str
    authorization: str | None
    content_encoding: str | None
    body: bytes  # as it came over the wire: the upstream does not decompress


@dataclass
class Influx2Upstream:
    url: str
    seen: list[SeenV2]


@pytest.fixture
async def influx2(aiohttp_server: AiohttpServer) -> Influx2Upstream:
    """An upstream answering like InfluxDB 2.x's /api/v2/write (204) and /api/v2/query
    (annotated CSV), recording what it receives."""
    seen: list[SeenV2] = []

    async def record(request: web.Request) -> None:
        headers = request.headers
        body = await request.read()
        seen.append(
            SeenV2(
                request.path_qs,
                headers.get("Authorization"),
                headers.get("Content-Encoding"),
                body,
            )
        )

    async def write(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(status=204)

    async def query(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(text=FLUX_CSV, content_type="text/csv")

    # auto_decompress off: a gzip body is recorded as the gzip bytes that arrived.
    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_post("/api/v2/write", write)
    app.router.add_post("/api/v2/query", query)
    server = await aiohttp_server(app)
    return Influx2Upstream(str(server.make_url("")).rstrip("/"), seen)


FLUX_CSV = (
    "#datatype,string,long,dateTime:RFC3339,double,string\r\n"
    "#group,false,false,false,false,true\r\n"
    "#default,_result,,,,\r\n"
    ",result,table,_time,_value,_field\r\n"
    ",,0,2023-11-14T22:13:20Z,1.5,value\r\n"
    ",,0,2023-11-14T22:14:20Z,2.5,value\r\n"
    "\r\n"
)


async def write_and_query_with_influxdb_client(
    client: AppClient, admin_headers: Headers, upstream: Influx2Upstream, *, gzip_body: bool
) -> list[float]:
    """Register a Flux source on `upstream`; write LINES and run a Flux query through the
    gateway with the real client; returns the values the client parsed."""
    body = {
        "name": "influx2",
        "type": "influxdb",
        "access": "proxy",
        "url": upstream.url,
        "jsonData": {"version": "Flux", "organization": "acme", "defaultBucket": "metrics"},
        "secureJsonData": {"token": "v2-upstream-token"},
    }
    assert (await client.post("/api/datasources", json=body, headers=admin_headers)).status == 200
    gateway = str(client.make_url("")).rstrip("/")
    influx = InfluxDBClient(url=gateway, token=ADMIN_TOKEN, org="acme", enable_gzip=gzip_body)
    try:
        write_api = influx.write_api(write_options=SYNCHRONOUS)
        await asyncio.to_thread(write_api.write, bucket="metrics", record=LINES.decode())
        tables = await asyncio.to_thread(
            influx.query_api().query, 'from(bucket: "metrics") |> range(start: 0)'
        )
    finally:
        await asyncio.to_thread(influx.close)
    return [record.get_value() for table in tables for record in table.records]


async def test_influxdb_client_writes_and_queries_a_v2_source_through_the_gateway(
    client: AppClient, admin_headers: Headers, influx2: Influx2Upstream
) -> None:
    values = await write_and_query_with_influxdb_client(
        client, admin_headers, influx2, gzip_body=False
    )
    assert values == [1.5, 2.5]
    # By path, not by order: on a loaded machine a probe timing out may have the write spooled
    # (answered 204 at once) and replayed after the query.
    (written,) = [seen for seen in influx2.seen if seen.path_qs.startswith("/api/v2/write?")]
    (queried,) = [seen for seen in influx2.seen if seen.path_qs.startswith("/api/v2/query?")]
    assert "bucket=metrics" in written.path_qs
    assert "org=acme" in written.path_qs
    assert written.body == LINES
    assert b"range(start: 0)" in queried.body
    # The source's token, never the gateway's.
    for request in (written, queried):
        assert request.authorization == "Token v2-upstream-token"
        assert ADMIN_TOKEN not in request.path_qs


async def test_influxdb_client_gzip_write_reaches_the_upstream_untouched(
    client: AppClient, admin_headers: Headers, influx2: Influx2Upstream
) -> None:
    # influxdb-client's enable_gzip=True: what Telegraf-style writers commonly do.
    values = await write_and_query_with_influxdb_client(
        client, admin_headers, influx2, gzip_body=True
    )
    assert values == [1.5, 2.5]
    (written,) = [seen for seen in influx2.seen if seen.path_qs.startswith("/api/v2/write?")]
    assert written.content_encoding == "gzip"
    assert gzip.decompress(written.body) == LINES


async def test_influxdb_client_v2_write_to_influxd_1_6_gets_influxd_own_404(
    client: AppClient,
    admin_headers: Headers,
    influx_users: InfluxUsers,
    influxdb: InfluxDB1,
) -> None:
    # InfluxDB 1.6 has no /api/v2/write (1.8 added it): the gateway forwards the client's write
    # with the source's credentials and passes influxd's answer back unchanged.
    users = influx_users
    await add_source(
        client,
        admin_headers,
        influxdb.url,
        name="influx",
        user=users.writer,
        password=users.password,
    )
    gateway = str(client.make_url("")).rstrip("/")
    influx = InfluxDBClient(url=gateway, token=ADMIN_TOKEN, org="-")
    try:
        write_api = influx.write_api(write_options=SYNCHRONOUS)
        with pytest.raises(ApiException) as caught:
            await asyncio.to_thread(write_api.write, bucket=f"{users.db}/autogen", record="m v=1")
    finally:
        await asyncio.to_thread(influx.close)
    assert caught.value.status == 404
    assert caught.value.body.strip() == "404 page not found"


# --- roles ----------------------------------------------------------------------------------


async def test_a_viewer_may_query_but_not_write_through_influxdbs_paths(
    client: AppClient, admin_headers: Headers, make_token: MakeToken, influx2: Influx2Upstream
) -> None:
    body = {
        "name": "influx2",
        "type": "influxdb",
        "access": "proxy",
        "url": influx2.url,
        "jsonData": {"version": "Flux", "organization": "acme", "defaultBucket": "metrics"},
    }
    response = await client.post("/api/datasources", json=body, headers=admin_headers)
    assert response.status == 200
    uid = (await response.json())["datasource"]["uid"]
    viewer = await make_token(role="viewer", scheme="Token")
    org_id = (await client.app[STORE].find_org(name="Main Org.")).influx_id

    for path in ("/write?db=x", "/api/v2/write?org=acme&bucket=metrics"):
        refused = await client.post(path, data=LINES, headers=viewer)
        message = await assert_influx_error(refused, 403, "forbidden")
        assert message == (
            f"write:orgs/{org_id}/buckets needs the editor role; this token's role is viewer"
        )
    assert influx2.seen == []  # neither sent nor spooled

    query = await client.post(
        "/api/v2/query?org=acme",
        data='from(bucket: "metrics")',
        headers={**viewer, "Content-Type": "application/vnd.flux"},
    )
    assert query.status == 200
    editor = await make_token(role="editor", scheme="Token")
    written = await client.post("/api/v2/write?org=acme&bucket=metrics", data=LINES, headers=editor)
    assert written.status == 204
    # Grafana's data source proxy keeps Grafana's rule: a viewer may use it, writes included.
    proxied = await client.post(
        f"/api/datasources/proxy/uid/{uid}/api/v2/write?org=acme&bucket=metrics",
        data=LINES,
        headers={"Authorization": viewer["Authorization"].replace("Token", "Bearer", 1)},
    )
    assert proxied.status == 204

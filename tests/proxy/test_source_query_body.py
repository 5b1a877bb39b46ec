"""POST /api/v2/sources/{id}/query: its body is read like every other JSON body of the InfluxDB
API (gateway/api/json_body.py), and its id and `self` sources like the source's other routes.
Every refusal is checked by its exact body, and nothing refused reaches the upstream."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from gateway.errors import Dialect, PayloadTooLarge, error_parts
from gateway.proxy.resolve import QUERY_BODY_LIMIT
from gateway.upstream.influx import SELF_WITHOUT_DEFAULT
from tests.conftest import Headers
from tests.types import AppClient

SOURCES = "/api/v2/sources"
ANSWER = {"results": [{"statement_id": 0}]}


class Recorder:
    """An InfluxDB 1.x `/query` that answers ANSWER and records the forms it got."""

    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.url = ""

    async def query(self, request: web.Request) -> web.Response:
        self.forms.append({key: str(value) for key, value in (await request.post()).items()})
        return web.json_response(ANSWER)


@pytest.fixture
async def influx1(aiohttp_server: AiohttpServer) -> Recorder:
    recorder = Recorder()
    app = web.Application()
    app.router.add_post("/query", recorder.query)
    server = await aiohttp_server(app)
    recorder.url = str(server.make_url("/"))
    return recorder


async def create(client: AppClient, headers: Headers, **fields: Any) -> str:
    response = await client.post(SOURCES, json=fields, headers=headers)
    assert response.status == 201, await response.text()
    source_id: str = (await response.json())["id"]
    return source_id


async def v1_link(client: AppClient, headers: Headers, recorder: Recorder) -> str:
    source_id = await create(client, headers, name="v1", type="v1", url=recorder.url)
    return f"{SOURCES}/{source_id}/query"


async def answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


def invalid(message: str) -> tuple[int, dict[str, str]]:
    return 400, {"code": "invalid", "message": message}


async def post_raw(
    client: AppClient, link: str, data: bytes, headers: Headers, content_type: str | None
) -> Any:
    if content_type is None:
        return await client.post(
            link, data=data, headers=headers, skip_auto_headers=["Content-Type"]
        )
    return await client.post(link, data=data, headers={**headers, "Content-Type": content_type})


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "body", [DEEP, '{"query": "SHOW DATABASES", "db": ' + DEEP + "}"], ids=["alone", "in-a-field"]
)
async def test_a_deeply_nested_body_is_400_not_500(
    client: AppClient, admin_headers: Headers, influx1: Recorder, body: str
) -> None:
    link = await v1_link(client, admin_headers, influx1)
    response = await post_raw(client, link, body.encode(), admin_headers, "application/json")
    assert await answer(response) == invalid("request body: nested too deeply")
    assert influx1.forms == []


async def test_a_body_over_the_limit_is_413_with_the_limit(
    client: AppClient, admin_headers: Headers, influx1: Recorder
) -> None:
    link = await v1_link(client, admin_headers, influx1)
    body = json.dumps({"query": "SHOW DATABASES", "pad": "x" * (5 << 20)}).encode()
    response = await client.post(
        link, data=io.BytesIO(body), headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert await answer(response) == (
        413,
        {
            "code": "request too large",
            "message": f"request body: larger than the limit of {QUERY_BODY_LIMIT} bytes",
        },
    )
    assert influx1.forms == []


def test_payload_too_large_has_an_influx_message_of_its_own() -> None:
    _, _, body = error_parts(PayloadTooLarge(), Dialect.INFLUX)
    assert json.loads(body) == {"code": "request too large", "message": "request body too large"}


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (None, "Content-Type: required, send application/json"),
        ("text/plain", 'Content-Type: must be application/json, got "text/plain"'),
        (
            "application/x-www-form-urlencoded",
            'Content-Type: must be application/json, got "application/x-www-form-urlencoded"',
        ),
    ],
)
@pytest.mark.parametrize("kind", ["v1", "v2"])
async def test_the_body_must_be_sent_as_json(
    client: AppClient,
    admin_headers: Headers,
    influx1: Recorder,
    kind: str,
    content_type: str | None,
    message: str,
) -> None:
    fields = {"token": "t"} if kind == "v2" else {}
    source_id = await create(client, admin_headers, name=kind, type=kind, url=influx1.url, **fields)
    body = json.dumps({"query": "SHOW DATABASES"}).encode()
    response = await post_raw(
        client, f"{SOURCES}/{source_id}/query", body, admin_headers, content_type
    )
    assert await answer(response) == invalid(message)
    assert influx1.forms == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"SHOW DATABASES", "request body: not valid JSON: Expecting value (line 1, column 1)"),
        (b"", "request body: empty, expected a JSON object"),
        (b'["SHOW DATABASES"]', "request body: must be a JSON object, got an array"),
        (b'{"query": "SHOW DATABASES", "bogus": 1}', "bogus: unknown field"),
        (b'{"type": "influxql"}', "query: required"),
        (b'{"query": "  "}', "query: must not be blank"),
        (b'{"query": 7}', "query: must be a string, got a number"),
        (b'{"query": "SHOW DATABASES", "db": 7}', "db: must be a string, got a number"),
        (b'{"query": "SHOW DATABASES", "rp": []}', "rp: must be a string, got an array"),
        (
            b'{"query": "from(bucket: \\"x\\")", "type": "flux"}',
            'type: must be "influxql" for a v1 (InfluxQL) source, got "flux"',
        ),
        (
            b'{"query": "", "type": 1, "x": 2}',
            'x: unknown field; query: must not be blank; type: must be "influxql" for a v1 '
            "(InfluxQL) source, got a number",
        ),
    ],
)
async def test_a_bad_body_is_refused_field_by_field(
    client: AppClient, admin_headers: Headers, influx1: Recorder, body: bytes, message: str
) -> None:
    link = await v1_link(client, admin_headers, influx1)
    response = await post_raw(client, link, body, admin_headers, "application/json")
    assert await answer(response) == invalid(message)
    assert influx1.forms == []


async def test_a_valid_body_becomes_influxql_form(
    client: AppClient, admin_headers: Headers, influx1: Recorder
) -> None:
    link = await v1_link(client, admin_headers, influx1)
    body = {"query": "SHOW DATABASES", "type": "influxql", "db": "d", "rp": "r"}
    response = await client.post(link, json=body, headers=admin_headers)
    assert await answer(response) == (200, ANSWER)
    only_query = await client.post(link, json={"query": "SHOW USERS"}, headers=admin_headers)
    assert only_query.status == 200
    assert influx1.forms == [{"q": "SHOW DATABASES", "db": "d", "rp": "r"}, {"q": "SHOW USERS"}]


async def test_a_self_source_without_a_default_answers_as_its_buckets_do(
    client: AppClient, admin_headers: Headers, influx1: Recorder
) -> None:
    source_id = await create(client, admin_headers, name="me", type="self")
    query = await client.post(
        f"{SOURCES}/{source_id}/query", json={"query": "SHOW DATABASES"}, headers=admin_headers
    )
    buckets = await client.get(f"{SOURCES}/{source_id}/buckets", headers=admin_headers)
    unavailable = (503, {"code": "unavailable", "message": SELF_WITHOUT_DEFAULT})
    assert await answer(query) == unavailable
    assert await answer(buckets) == unavailable
    # With a default v1 source, the self source's query goes there, as its buckets do.
    await create(client, admin_headers, name="v1", type="v1", url=influx1.url, default=True)
    query = await client.post(
        f"{SOURCES}/{source_id}/query", json={"query": "SHOW DATABASES"}, headers=admin_headers
    )
    assert await answer(query) == (200, ANSWER)
    assert influx1.forms == [{"q": "SHOW DATABASES"}]


async def test_the_readmes_example_is_true(
    client: AppClient, admin_headers: Headers, influx1: Recorder
) -> None:
    """README, "The body of `POST /api/v2/sources/{id}/query`"."""
    link = await v1_link(client, admin_headers, influx1)
    response = await post_raw(
        client,
        link,
        b'{"query":"SHOW DATABASES","type":"flux","x":1}',
        admin_headers,
        "application/json",
    )
    assert (response.status, await response.text()) == (
        400,
        '{"code": "invalid", "message": "x: unknown field; type: must be \\"influxql\\" for a v1 '
        '(InfluxQL) source, got \\"flux\\""}',
    )

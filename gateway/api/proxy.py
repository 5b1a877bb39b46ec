"""Proxy routes: Grafana's data source proxy, InfluxDB passthrough, and the sources `query` link.

Thin handlers: resolve the source from the in-memory cache (org-scoped; another org's source is
"not found"), apply the policy (path safety, allow-lists), and hand over to the Forwarder.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from urllib.parse import urlencode

from aiohttp import web

from gateway.api.grafana import request_org_id
from gateway.errors import BadRequest, Dialect, NotFound, PayloadTooLarge
from gateway.front.protocol import BodyTooLarge, read_limited
from gateway.keys import FORWARDER, PRINCIPAL, REQUEST_ID, RESPONSE_STATUS, SOURCES
from gateway.proxy.forward import CLIENT_CLOSED_REQUEST, ClientExchange, Forwarder
from gateway.proxy.policy import (
    AUTH_QUERY_PARAMS,
    ProxyPath,
    check_route,
    join_upstream_path,
    strip_query_params,
)
from gateway.registry.cache import Snapshot
from gateway.registry.models import UID_PATTERN, DataSource, Role
from gateway.upstream.credentials import InfluxQueryLanguage, influx_query_language

routes = web.RouteTableDef()

PROXY_PREFIX = "/api/datasources/proxy"
SOURCE_HEADER = "X-Gateway-Source"
# Query parameters consumed by the gateway on Influx passthrough: never forwarded.
# u/p are InfluxDB 1.x's credentials (here: the gateway token); `source` picks the source.
PASSTHROUGH_PARAMS = AUTH_QUERY_PARAMS | {"source", "u", "p"}
_INT64 = re.compile(r"[0-9]{1,18}")
# The JSON body of a sources `query` request: a query, not data.
QUERY_BODY_LIMIT = 1024 * 1024


class DataSourceNotReachable(NotFound):
    message = "Unable to find datasource"


# --- What each route sends where: shared by aiohttp's handlers below and the front server's
# fast path (gateway/api/fast_proxy.py), so that both serve exactly the same proxy.


def grafana_target(
    source: DataSource | None, method: str, raw_path: str, raw_query: str, role: Role, *,
    raw_segments_after: int,
) -> tuple[DataSource, str]:  # fmt: skip
    """The source and the upstream target of `/api/datasources/proxy/{id|uid/uid}/{path}`."""
    if source is None:
        raise DataSourceNotReachable()
    # The remainder as the client encoded it: routes match on the decoded path.
    remainder = raw_path.split("/", raw_segments_after)[raw_segments_after:]
    path = _checked_path(source.type, method, remainder[0] if remainder else "", role)
    return source, with_query(join_upstream_path(source.url, path), raw_query)


@functools.lru_cache(maxsize=1024)  # at most ~8 MiB of keys: targets are <= 8 KiB
def _checked_path(source_type: str, method: str, raw_remainder: str, role: Role) -> ProxyPath:
    """The parsed path, once it passed the path and route policies: a pure function of its
    arguments, and clients ask for few distinct paths (query strings vary, paths do not), so
    it is cached. Refusals raise and are not cached."""
    path = ProxyPath.parse(raw_remainder)
    check_route(source_type, method, path.clean, role)
    return path


def check_uid(uid: str) -> None:
    if not UID_PATTERN.fullmatch(uid):
        raise BadRequest("UID is invalid")


def parse_source_id(raw_id: str) -> int:
    if not _INT64.fullmatch(raw_id):
        raise BadRequest("id is invalid")
    return int(raw_id)


def passthrough_target(source: DataSource, raw_path: str, raw_query: str) -> str:
    """Influx passthrough: the same path under the source's URL, minus the gateway's params."""
    return with_query(
        join_upstream_path(source.url, ProxyPath.parse(raw_path)), raw_query, PASSTHROUGH_PARAMS
    )


def influx_source(snapshot: Snapshot, org_id: int, wanted: str) -> DataSource:
    """`wanted` (uid or name, from `?source=` / X-Gateway-Source), else the org's default
    InfluxDB source, else its only one."""
    candidates = [s for s in snapshot.by_org.get(org_id, ()) if s.type == "influxdb"]
    if wanted:
        chosen = next((s for s in candidates if s.uid == wanted), None) or next(
            (s for s in candidates if s.name.lower() == wanted.lower()), None
        )
        if chosen is None:
            raise NotFound(influx_message=f'no InfluxDB source "{wanted}" in this organization')
        return chosen
    defaults = [s for s in candidates if s.is_default]
    if defaults:
        return defaults[0]
    if len(candidates) == 1:
        return candidates[0]
    raise NotFound(
        influx_message=(
            "no default InfluxDB source in this organization; "
            f"name one with ?source= or {SOURCE_HEADER}"
        )
    )


def source_by_influx_id(snapshot: Snapshot, org_id: int, text: str) -> DataSource:
    if len(text) != 16:
        raise BadRequest(influx_message="id must have a length of 16 bytes")
    try:
        source_id = int(text, 16)
    except ValueError:
        raise BadRequest(influx_message="invalid ID") from None
    if source_id == 0:
        raise BadRequest(influx_message="invalid ID")
    source = snapshot.get(org_id, id=source_id)
    if source is None or source.type != "influxdb":
        raise NotFound(influx_message="source not found")
    return source


async def query_source(
    forwarder: Forwarder, client: ClientExchange, source: DataSource, request_id: str
) -> int:
    """POST /api/v2/sources/{id}/query: Flux to a v2 source as is, InfluxQL JSON to a v1 one."""
    language = influx_query_language(source)
    if language is InfluxQueryLanguage.FLUX:
        target = join_upstream_path(source.url, ProxyPath.parse("api/v2/query"))
        return await forwarder.forward(
            client, source, target, request_id=request_id, dialect=Dialect.INFLUX
        )
    if language is not InfluxQueryLanguage.INFLUXQL:
        raise BadRequest(influx_message=f"querying a {source.type} source is not supported here")
    body = await _json_object(client)
    kind = body.get("type", "influxql")
    if kind != "influxql":
        raise BadRequest(
            influx_message=f'"type" {kind!r} cannot be sent to a v1 (InfluxQL) source; '
            'send {"query": "<InfluxQL>", "type": "influxql", "db": ..., "rp": ...}'
        )
    form = {"q": _string(body, "query", required=True)}
    for key in ("db", "rp"):
        if value := _string(body, key):
            form[key] = value
    target = join_upstream_path(source.url, ProxyPath.parse("query"))
    return await forwarder.forward(
        client,
        source,
        target,
        request_id=request_id,
        dialect=Dialect.INFLUX,
        method="POST",
        body_override=urlencode(form).encode(),
        extra_headers=((b"Content-Type", b"application/x-www-form-urlencoded"),),
    )


async def _json_object(client: ClientExchange) -> dict[str, object]:
    try:
        raw = await client.read_body(QUERY_BODY_LIMIT)
    except BodyTooLarge:
        raise PayloadTooLarge() from None
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(influx_message="the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest(influx_message="the body must be a JSON object")
    return body


def _string(body: dict[str, object], key: str, *, required: bool = False) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(influx_message=f'"{key}" must be a non-empty string')
    return value


def with_query(path: str, raw_query: str, drop: frozenset[str] = AUTH_QUERY_PARAMS) -> str:
    query = strip_query_params(raw_query, drop)
    return f"{path}?{query}" if query else path


# --- aiohttp's handlers: for connections that aiohttp serves (one that carried an API request
# first, see gateway/front/protocol.py); the front server serves the rest itself.


@routes.route("*", PROXY_PREFIX + "/uid/{uid}")
@routes.route("*", PROXY_PREFIX + "/uid/{uid}/{path:.*}")
async def proxy_by_uid(request: web.Request) -> web.StreamResponse:
    org_id = request_org_id(request)
    uid = request.match_info["uid"]
    check_uid(uid)
    source = (await request.app[SOURCES].snapshot()).get(org_id, uid=uid)
    return await _proxy(request, source, raw_segments_after=6)


@routes.route("*", PROXY_PREFIX + "/{id}")
@routes.route("*", PROXY_PREFIX + "/{id}/{path:.*}")
async def proxy_by_id(request: web.Request) -> web.StreamResponse:
    org_id = request_org_id(request)
    source_id = parse_source_id(request.match_info["id"])
    source = (await request.app[SOURCES].snapshot()).get(org_id, id=source_id)
    return await _proxy(request, source, raw_segments_after=5)


async def _proxy(
    request: web.Request, source: DataSource | None, *, raw_segments_after: int
) -> web.StreamResponse:
    source, target = grafana_target(
        source,
        request.method,
        request.rel_url.raw_path,
        request.rel_url.raw_query_string,
        request[PRINCIPAL].role,
        raw_segments_after=raw_segments_after,
    )
    forwarder = request.app[FORWARDER]
    return await _serve(
        request,
        lambda client: forwarder.forward(client, source, target, request_id=request[REQUEST_ID]),
    )


@routes.post("/api/v2/write")
@routes.post("/api/v2/query")
@routes.get("/query")
@routes.post("/query")
@routes.post("/write")
async def influx_passthrough(request: web.Request) -> web.StreamResponse:
    wanted = request.query.get("source") or request.headers.get(SOURCE_HEADER) or ""
    snapshot = await request.app[SOURCES].snapshot()
    source = influx_source(snapshot, request[PRINCIPAL].org.id, wanted)
    target = passthrough_target(source, request.rel_url.raw_path, request.rel_url.raw_query_string)
    forwarder = request.app[FORWARDER]
    return await _serve(
        request,
        lambda client: forwarder.forward(
            client, source, target, request_id=request[REQUEST_ID], dialect=Dialect.INFLUX
        ),
    )


@routes.post("/api/v2/sources/{source_id}/query")
async def source_query(request: web.Request) -> web.StreamResponse:
    snapshot = await request.app[SOURCES].snapshot()
    source = source_by_influx_id(
        snapshot, request[PRINCIPAL].org.id, request.match_info["source_id"]
    )
    forwarder = request.app[FORWARDER]
    return await _serve(
        request, lambda client: query_source(forwarder, client, source, request[REQUEST_ID])
    )


async def _serve(
    request: web.Request, run: Callable[[AiohttpExchange], Awaitable[int]]
) -> web.StreamResponse:
    client = AiohttpExchange(request)
    try:
        status = await run(client)
    except asyncio.CancelledError:  # aiohttp cancels the handler of a client that went away
        request[RESPONSE_STATUS] = CLIENT_CLOSED_REQUEST
        raise
    return await client.complete(status)


class AiohttpExchange:
    """`ClientExchange` over an aiohttp request: what the Forwarder needs, nothing more."""

    __slots__ = ("_finished", "_request", "_response", "response_started")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self._response: web.StreamResponse | None = None
        self._finished = False
        self.response_started = False

    @property
    def method(self) -> str:
        return self._request.method

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._request.raw_headers

    @property
    def remote(self) -> str | None:
        return self._request.remote

    @property
    def has_body(self) -> bool:
        return self._request.body_exists

    @property
    def content_length(self) -> int | None:
        return self._request.content_length

    async def body(self) -> AsyncIterator[bytes]:
        async for chunk in self._request.content.iter_any():
            yield chunk

    async def read_body(self, limit: int) -> bytes:
        return await read_limited(self.body(), limit)  # to the end: content.read(n) stops early

    def start_response(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        response = web.StreamResponse(status=status, reason=reason)
        for name, value in headers:
            response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        self._response = response
        self.response_started = True

    async def write(self, data: bytes) -> None:
        response = self._response
        assert response is not None, "start_response first"
        if not response.prepared:
            await response.prepare(self._request)
        await response.write(data)

    def finish(self) -> None:
        self._finished = True

    def abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None:
        response = web.Response(status=status, reason=reason, body=body)
        for name, value in headers:
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        self._response = response
        self.response_started = self._finished = True

    async def complete(self, status: int) -> web.StreamResponse:
        """The response for aiohttp to finish; the status goes to the request log line."""
        self._request[RESPONSE_STATUS] = status
        response = self._response
        if response is None:  # the client went away before anything was answered
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        if type(response) is web.StreamResponse and self._finished:
            if not response.prepared:
                await response.prepare(self._request)
            await response.write_eof()
        return response

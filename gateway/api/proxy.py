"""Proxy routes: Grafana's data source proxy, InfluxDB passthrough, and the sources `query` link.

Thin handlers: resolve the source from the in-memory cache (org-scoped; another org's source is
"not found"), apply the policy (path safety, allow-lists), and hand over to the Forwarder.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

from aiohttp import web

from gateway.api.grafana import request_org_id
from gateway.errors import BadRequest, Dialect, NotFound
from gateway.health.credentials import InfluxQueryLanguage, influx_query_language
from gateway.keys import FORWARDER, PRINCIPAL, SOURCES
from gateway.proxy.policy import (
    AUTH_QUERY_PARAMS,
    ProxyPath,
    check_route,
    join_upstream_path,
    strip_query_params,
)
from gateway.registry.models import UID_PATTERN, DataSource

routes = web.RouteTableDef()

PROXY_PREFIX = "/api/datasources/proxy"
SOURCE_HEADER = "X-Gateway-Source"
# Query parameters consumed by the gateway on Influx passthrough: never forwarded.
# u/p are InfluxDB 1.x's credentials (here: the gateway token); `source` picks the source.
PASSTHROUGH_PARAMS = AUTH_QUERY_PARAMS | {"source", "u", "p"}
_INT64 = re.compile(r"[0-9]{1,18}")


class DataSourceNotReachable(NotFound):
    message = "Unable to find datasource"


# --- Grafana: /api/datasources/proxy/{id|uid/uid}/{path} -------------------------------------


@routes.route("*", PROXY_PREFIX + "/uid/{uid}")
@routes.route("*", PROXY_PREFIX + "/uid/{uid}/{path:.*}")
async def proxy_by_uid(request: web.Request) -> web.StreamResponse:
    org_id = request_org_id(request)
    uid = request.match_info["uid"]
    if not UID_PATTERN.fullmatch(uid):
        raise BadRequest("UID is invalid")
    source = (await request.app[SOURCES].snapshot()).get(org_id, uid=uid)
    return await _proxy(request, source, raw_segments_after=6)


@routes.route("*", PROXY_PREFIX + "/{id}")
@routes.route("*", PROXY_PREFIX + "/{id}/{path:.*}")
async def proxy_by_id(request: web.Request) -> web.StreamResponse:
    org_id = request_org_id(request)
    raw_id = request.match_info["id"]
    if not _INT64.fullmatch(raw_id):
        raise BadRequest("id is invalid")
    source = (await request.app[SOURCES].snapshot()).get(org_id, id=int(raw_id))
    return await _proxy(request, source, raw_segments_after=5)


async def _proxy(
    request: web.Request, source: DataSource | None, *, raw_segments_after: int
) -> web.StreamResponse:
    if source is None:
        raise DataSourceNotReachable()
    # The remainder as the client encoded it: the routes above matched on the decoded path.
    segments = request.rel_url.raw_path.split("/")
    path = ProxyPath.parse("/".join(segments[raw_segments_after:]))
    check_route(source.type, request.method, path.clean, request[PRINCIPAL].role)
    target = _with_query(join_upstream_path(source.url, path), request.rel_url.raw_query_string)
    return await request.app[FORWARDER].forward(request, source, target)


# --- InfluxDB passthrough: the gateway as an InfluxDB URL -------------------------------------


@routes.post("/api/v2/write")
@routes.post("/api/v2/query")
@routes.get("/query")
@routes.post("/query")
@routes.post("/write")
async def influx_passthrough(request: web.Request) -> web.StreamResponse:
    source = await _influx_source(request)
    path = ProxyPath.parse(request.rel_url.raw_path)
    target = _with_query(
        join_upstream_path(source.url, path), request.rel_url.raw_query_string, PASSTHROUGH_PARAMS
    )
    return await request.app[FORWARDER].forward(request, source, target, dialect=Dialect.INFLUX)


async def _influx_source(request: web.Request) -> DataSource:
    """`?source=` / X-Gateway-Source (uid or name), else the org's default InfluxDB source."""
    org_id = request[PRINCIPAL].org.id
    snapshot = await request.app[SOURCES].snapshot()
    candidates = [s for s in snapshot.by_org.get(org_id, ()) if s.type == "influxdb"]
    wanted = request.query.get("source") or request.headers.get(SOURCE_HEADER, "")
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


# --- POST /api/v2/sources/{id}/query: the `query` link of every Influx source -----------------


@routes.post("/api/v2/sources/{source_id}/query")
async def source_query(request: web.Request) -> web.StreamResponse:
    source = await _source_by_influx_id(request)
    language = influx_query_language(source)
    forwarder = request.app[FORWARDER]
    if language is InfluxQueryLanguage.FLUX:
        target = join_upstream_path(source.url, ProxyPath.parse("api/v2/query"))
        return await forwarder.forward(request, source, target, dialect=Dialect.INFLUX)
    if language is not InfluxQueryLanguage.INFLUXQL:
        raise BadRequest(influx_message=f"querying a {source.type} source is not supported here")
    body = await _json_object(request)
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
        request,
        source,
        target,
        dialect=Dialect.INFLUX,
        method="POST",
        body_override=urlencode(form).encode(),
        extra_headers=((b"Content-Type", b"application/x-www-form-urlencoded"),),
    )


async def _source_by_influx_id(request: web.Request) -> DataSource:
    text = request.match_info["source_id"]
    if len(text) != 16:
        raise BadRequest(influx_message="id must have a length of 16 bytes")
    try:
        source_id = int(text, 16)
    except ValueError:
        raise BadRequest(influx_message="invalid ID") from None
    if source_id == 0:
        raise BadRequest(influx_message="invalid ID")
    org_id = request[PRINCIPAL].org.id
    source = (await request.app[SOURCES].snapshot()).get(org_id, id=source_id)
    if source is None or source.type != "influxdb":
        raise NotFound(influx_message="source not found")
    return source


async def _json_object(request: web.Request) -> dict[str, object]:
    try:
        body = json.loads(await request.read())
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


def _with_query(path: str, raw_query: str, drop: frozenset[str] = AUTH_QUERY_PARAMS) -> str:
    query = strip_query_params(raw_query, drop)
    return f"{path}?{query}" if query else path

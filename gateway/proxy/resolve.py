"""Which source a proxied request goes to, and at which upstream target: one resolver per kind
of route (gateway/proxy/routes.py names which route uses which), whichever server carries it.

A resolver finds the source in the in-memory cache, inside the caller's org (another org's
source is "not found"), applies the path and route policies, and returns the source and the
upstream path and query (joined under each target's base path), plus, for a route that sends a
request of its own instead of the client's (the sources `query` link), the `Rewrite` to send.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlencode

from gateway.bodies import BodyTooLarge
from gateway.errors import BadRequest, NotFound, PayloadTooLarge
from gateway.proxy.policy import (
    AUTH_QUERY_PARAMS,
    ProxyPath,
    UpstreamPath,
    check_route,
    strip_query_params,
)
from gateway.registry.cache import Snapshot, SourceCache
from gateway.registry.models import UID_PATTERN, DataSource, Principal, Role
from gateway.registry.validation import parse_hex16
from gateway.requests import query_param
from gateway.security.org import ORG_HEADER, acting_org_id
from gateway.upstream.credentials import InfluxQueryLanguage, influx_query_language

if TYPE_CHECKING:
    from gateway.proxy.pipeline import ProxyRequest

SOURCE_HEADER = "X-Gateway-Source"
# The request headers the resolvers read (lower-case, as the pipeline collects them).
ORG_HEADER_KEY = ORG_HEADER.lower().encode()
SOURCE_HEADER_KEY = SOURCE_HEADER.lower().encode()
RESOLVER_HEADERS = frozenset({ORG_HEADER_KEY, SOURCE_HEADER_KEY})
# Query parameters consumed by the gateway on Influx passthrough: never forwarded.
# u/p are InfluxDB 1.x's credentials (here: the gateway token); `source` picks the source.
PASSTHROUGH_PARAMS = AUTH_QUERY_PARAMS | {"source", "u", "p"}
_INT64 = re.compile(r"[0-9]{1,18}")
# The JSON body of a sources `query` request: a query, not data.
QUERY_BODY_LIMIT = 1024 * 1024
_FORM_HEADERS = ((b"Content-Type", b"application/x-www-form-urlencoded"),)


class Rewrite(NamedTuple):
    """A request of the gateway's own to send instead of the client's."""

    method: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]


# The source, the upstream path (under each target's base path), and what to send instead of
# the client's request, if any.
Resolution = tuple[DataSource, UpstreamPath, Rewrite | None]


UID_SEGMENT = "uid"


class DataSourceNotReachable(NotFound):
    message = "Unable to find datasource"


# --- the resolvers: what each route sends where ----------------------------------------------


async def by_uid(request: ProxyRequest, principal: Principal, sources: SourceCache) -> Resolution:
    """`/api/datasources/proxy/uid/{uid}/{path}`: Grafana's data source proxy by uid."""
    org_id = acting_org_id(principal, request.headers.get(ORG_HEADER_KEY))
    uid = request.key
    check_uid(uid)
    source = (await sources.snapshot()).get(org_id, uid=uid)
    return _grafana_target(request, principal, source)


async def by_id(request: ProxyRequest, principal: Principal, sources: SourceCache) -> Resolution:
    """`/api/datasources/proxy/{id}/{path}`: Grafana's data source proxy by (numeric) id."""
    org_id = acting_org_id(principal, request.headers.get(ORG_HEADER_KEY))
    if request.key == UID_SEGMENT:
        # `…/proxy/uid//x` or `…/proxy/uid`: the uid route with no uid, which only this
        # route's pattern matches; the client meant a uid.
        check_uid("")
    source_id = parse_source_id(request.key)
    source = (await sources.snapshot()).get(org_id, id=source_id)
    return _grafana_target(request, principal, source)


async def influx_passthrough(
    request: ProxyRequest, principal: Principal, sources: SourceCache
) -> Resolution:
    """InfluxDB's own paths, sent to the source named by `?source=` / X-Gateway-Source, else
    to the org's default InfluxDB source."""
    exchange = request.exchange
    wanted = query_param(exchange.query_string, "source") or request.headers.get(SOURCE_HEADER_KEY)
    source = influx_source(await sources.snapshot(), principal.org.id, wanted or "")
    return source, passthrough_target(exchange.path, exchange.query_string), None


async def source_query(
    request: ProxyRequest, principal: Principal, sources: SourceCache
) -> Resolution:
    """POST /api/v2/sources/{id}/query: Flux to a v2 source as is, InfluxQL JSON to a v1 one."""
    source = source_by_influx_id(await sources.snapshot(), principal.org.id, request.key)
    language = influx_query_language(source)
    if language is InfluxQueryLanguage.FLUX:
        return source, UpstreamPath(ProxyPath.parse("api/v2/query")), None
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
    target = UpstreamPath(ProxyPath.parse("query"))
    return source, target, Rewrite("POST", urlencode(form).encode(), _FORM_HEADERS)


# --- the rules they apply ----------------------------------------------------------------------


def _grafana_target(
    request: ProxyRequest, principal: Principal, source: DataSource | None
) -> Resolution:
    if source is None:
        raise DataSourceNotReachable()
    exchange = request.exchange
    # The remainder as the client encoded it: routes match on the decoded path.
    after = request.route.segments
    remainder = exchange.path.split("/", after)[after:]
    path = _checked_path(
        source.type, exchange.method, remainder[0] if remainder else "", principal.role
    )
    return source, UpstreamPath(path, strip_query_params(exchange.query_string)), None


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


def passthrough_target(raw_path: str, raw_query: str) -> UpstreamPath:
    """Influx passthrough: the same path under the source's URL, minus the gateway's params."""
    return UpstreamPath(
        ProxyPath.parse(raw_path), strip_query_params(raw_query, PASSTHROUGH_PARAMS)
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
    """The path's source: exactly 16 hex digits, as every other id parser reads them (`int(text,
    16)` alone would also take `0x…`, `_` and a sign); any other 16 characters name no source."""
    if len(text) != 16:
        raise BadRequest(influx_message="id must have a length of 16 bytes")
    source_id = parse_hex16(text)
    source = snapshot.get(org_id, id=source_id) if source_id else None
    if source is None or source.type != "influxdb":
        raise NotFound(influx_message="source not found")
    return source


async def _json_object(request: ProxyRequest) -> dict[str, object]:
    try:
        raw = await request.exchange.read_body(QUERY_BODY_LIMIT)
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

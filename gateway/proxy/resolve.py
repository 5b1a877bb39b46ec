"""Which source a proxied request goes to, and at which upstream target: one resolver per kind
of route (gateway/proxy/routes.py names which route uses which), whichever server carries it.

A resolver finds the source in the in-memory cache, inside the caller's org (another org's
source is "not found"), applies the path and route policies, and returns the source and the
upstream path and query (joined under each target's base path), plus, for a route that sends a
request of its own instead of the client's (the sources `query` link), the `Rewrite` to send.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlencode

from gateway.bodies import BodyTooLarge
from gateway.errors import BadRequest, DataSourceNotFound, InvalidId, NotFound, Unavailable
from gateway.json_document import check_content_type_header, decode_json_object, too_large
from gateway.proxy.policy import (
    AUTH_QUERY_PARAMS,
    ProxyPath,
    UpstreamPath,
    check_route,
    strip_query_params,
)
from gateway.registry.cache import Snapshot, SourceCache
from gateway.registry.models import UID_PATTERN, DataSource, Principal, Role
from gateway.registry.validation import (
    Violation,
    json_type,
    parse_hex16,
    raise_violations,
    shown,
    unknown_field,
)
from gateway.requests import query_param
from gateway.security.org import ORG_HEADER, acting_org_id
from gateway.upstream.credentials import InfluxQueryLanguage, influx_query_language
from gateway.upstream.influx import SELF_WITHOUT_DEFAULT

if TYPE_CHECKING:
    from gateway.proxy.pipeline import ProxyRequest

SOURCE_HEADER = "X-Gateway-Source"
# The request headers the resolvers read (lower-case, as the pipeline collects them).
ORG_HEADER_KEY = ORG_HEADER.lower().encode()
SOURCE_HEADER_KEY = SOURCE_HEADER.lower().encode()
CONTENT_TYPE_KEY = b"content-type"
RESOLVER_HEADERS = frozenset({ORG_HEADER_KEY, SOURCE_HEADER_KEY, CONTENT_TYPE_KEY})
# Query parameters consumed by the gateway on Influx passthrough: never forwarded.
# u/p are InfluxDB 1.x's credentials (here: the gateway token); `source` picks the source.
PASSTHROUGH_PARAMS = AUTH_QUERY_PARAMS | {"source", "u", "p"}
_INT64 = re.compile(r"[0-9]{1,18}")
# The JSON body of a sources `query` request: a query, not data.
QUERY_BODY_LIMIT = 1024 * 1024
# Its fields for a v1 (InfluxQL) source; "query" is required, "type" defaults to "influxql".
_INFLUXQL_QUERY_FIELDS = ("query", "type", "db", "rp")
_FORM_HEADERS = ((b"Content-Type", b"application/x-www-form-urlencoded"),)


class Rewrite(NamedTuple):
    """A request of the gateway's own to send instead of the client's."""

    method: str
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]


# The source, the upstream path (under each target's base path), and what to send instead of
# the client's request, if any.
Resolution = tuple[DataSource, UpstreamPath, Rewrite | None]
# How a route finds them: from the registry's cache (waiting for a reload if need be), or,
# for the routes that need nothing else, from a current snapshot of it, synchronously.
Resolve = Callable[["ProxyRequest", Principal, SourceCache], Awaitable[Resolution]]
ResolveNow = Callable[["ProxyRequest", Principal, Snapshot], Resolution]


UID_SEGMENT = "uid"


class DataSourceNotReachable(NotFound):
    message = "Unable to find datasource"


# --- the resolvers: what each route sends where ----------------------------------------------


def uid_target(request: ProxyRequest, principal: Principal, snapshot: Snapshot) -> Resolution:
    """`/api/datasources/proxy/uid/{uid}/{path}`: Grafana's data source proxy by uid."""
    org_id = acting_org_id(principal, request.headers.get(ORG_HEADER_KEY))
    uid = request.key
    source = snapshot.get(org_id, uid=uid)
    if source is None:  # the registry holds valid uids only: a uid found needs no check
        check_uid(uid)
    return _grafana_target(request, principal, source)


def id_target(request: ProxyRequest, principal: Principal, snapshot: Snapshot) -> Resolution:
    """`/api/datasources/proxy/{id}/{path}`: Grafana's data source proxy by (numeric) id."""
    org_id = acting_org_id(principal, request.headers.get(ORG_HEADER_KEY))
    if request.key == UID_SEGMENT:
        # `…/proxy/uid//x` or `…/proxy/uid`: the uid route with no uid, which only this
        # route's pattern matches; the client meant a uid.
        check_uid("")
    source_id = parse_source_id(request.key)
    return _grafana_target(request, principal, snapshot.get(org_id, id=source_id))


def influx_target(request: ProxyRequest, principal: Principal, snapshot: Snapshot) -> Resolution:
    """InfluxDB's own paths, sent to the source named by `?source=` / X-Gateway-Source, else
    to the org's default InfluxDB source."""
    exchange = request.exchange
    wanted = query_param(exchange.query_string, "source") or request.headers.get(SOURCE_HEADER_KEY)
    source = influx_source(snapshot, principal.org.id, wanted or "")
    return source, passthrough_target(exchange.path, exchange.query_string), None


def from_snapshot(resolve_now: ResolveNow) -> Resolve:
    """A resolver that needs only the registry's snapshot, as a `Resolve` (it waits for a
    reload when the snapshot is stale). The pipeline calls `resolve_now` itself while the
    snapshot is current: no coroutine on the hot path."""

    async def resolve(
        request: ProxyRequest, principal: Principal, sources: SourceCache
    ) -> Resolution:
        return resolve_now(request, principal, await sources.snapshot())

    return resolve


by_uid = from_snapshot(uid_target)
by_id = from_snapshot(id_target)
influx_passthrough = from_snapshot(influx_target)


async def source_query(
    request: ProxyRequest, principal: Principal, sources: SourceCache
) -> Resolution:
    """POST /api/v2/sources/{id}/query: Flux to a v2 source as is, InfluxQL JSON to a v1 one; a
    `self` source queries the org's default InfluxDB source, as its buckets and health do.
    The body is JSON (`Content-Type: application/json`, as every InfluxDB API write here)."""
    snapshot = await sources.snapshot()
    source = source_by_influx_id(snapshot, principal.org.id, request.key)
    check_content_type_header(request.headers.get(CONTENT_TYPE_KEY))
    language = influx_query_language(source)
    if language is InfluxQueryLanguage.FLUX:
        return source, UpstreamPath(ProxyPath.parse("api/v2/query")), None
    if language is not InfluxQueryLanguage.INFLUXQL:
        raise BadRequest(influx_message=f"querying a {source.type} source is not supported here")
    form = _influxql_form(decode_json_object(await _body(request)))
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
    """The path's source, read and refused as every other /api/v2/sources/{id} route does
    (gateway/api/influx_dto.py `parse_id`: 400 "invalid ID" for a malformed id, 404 for an
    `influxdb` source it does not name); for a `self` source, the org's default InfluxDB source,
    or the 503 its buckets answer when there is none."""
    if len(text) != 16:
        raise BadRequest(influx_message="id must have a length of 16 bytes")
    source_id = parse_hex16(text)
    if source_id is None:
        raise InvalidId()
    source = snapshot.get(org_id, id=source_id)
    if source is None or source.type != "influxdb":
        raise DataSourceNotFound()
    if not _is_self(source):
        return source
    for candidate in snapshot.by_org.get(org_id, ()):
        if candidate.is_default and not _is_self(candidate) and _queryable(candidate):
            return candidate
    raise Unavailable(influx_message=SELF_WITHOUT_DEFAULT)


def _queryable(source: DataSource) -> bool:
    return influx_query_language(source) in (InfluxQueryLanguage.INFLUXQL, InfluxQueryLanguage.FLUX)


def _is_self(source: DataSource) -> bool:
    """An InfluxDB API `self` source: it stands for the org's default InfluxDB source."""
    return source.json_data.get("influxSourceType") == "self"


async def _body(request: ProxyRequest) -> bytes:
    try:
        return await request.exchange.read_body(QUERY_BODY_LIMIT)
    except BodyTooLarge:
        raise too_large(QUERY_BODY_LIMIT) from None


def _influxql_form(body: dict[str, object]) -> dict[str, str]:
    """The form influxd's /query takes, from a valid body; else 400 naming every problem."""
    problems = [unknown_field(key) for key in body if key not in _INFLUXQL_QUERY_FIELDS]
    form: dict[str, str] = {}
    for key, form_key in (("query", "q"), ("db", "db"), ("rp", "rp")):
        value = body.get(key)
        if value is None and key != "query":
            continue
        if not isinstance(value, str):
            got = json_type(value) if key in body else ""
            problems.append(Violation(key, "required" if not got else "must be a string", got))
        elif key == "query" and not value.strip():
            problems.append(Violation(key, "must not be blank"))
        elif value:
            form[form_key] = value
    kind = body.get("type", "influxql")
    if kind != "influxql":
        problems.append(
            Violation(
                "type",
                'must be "influxql" for a v1 (InfluxQL) source',
                shown(kind) if isinstance(kind, str) else json_type(kind),
            )
        )
    raise_violations(problems)
    return form

"""The proxied routes, each declared once: the one table both servers are driven from.

The front server's router is derived from it (gateway/proxy/front_carrier.py), and aiohttp's
routes are registered from it (gateway/proxy/aiohttp_carrier.py), so a proxied request gets the
same route name (the log line's `path`, the metrics' `route` label), the same error dialect and
the same resolution whichever server carries it. Both run it through the one pipeline
(gateway/proxy/pipeline.py).

A route's name is its path as aiohttp's `resource.canonical` spells it. At most one `{key}`
segment names the source; a trailing `/{path}` is the remainder that goes upstream.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from gateway.bodies import BodyTooLarge
from gateway.errors import Dialect, PayloadTooLarge
from gateway.proxy.resolve import (
    CONTENT_TYPE_KEY,
    Resolution,
    Resolve,
    ResolveNow,
    Rewrite,
    by_id,
    by_uid,
    id_target,
    influx_passthrough,
    influx_target,
    source_query,
    uid_target,
)
from gateway.registry.cache import Snapshot, SourceCache
from gateway.registry.models import Principal, Role
from gateway.security.readonly import QUERY_BODY_LIMIT, body_needed, query_refusal
from gateway.security.roles import RoleRequired, has_role, require_role

if TYPE_CHECKING:
    from gateway.proxy.pipeline import ProxyRequest

PROXY_PREFIX = "/api/datasources/proxy"
REMAINDER = "/{path}"


def _writing(resolve: Resolve) -> Resolve:
    """`resolve`, for a route that writes data: refused (403) below the editor role before
    anything is resolved, spooled or sent."""

    async def resolve_write(
        request: ProxyRequest, principal: Principal, sources: SourceCache
    ) -> Resolution:
        require_role(principal, Role.EDITOR, f"write:orgs/{principal.org.influx_id}/buckets")
        return await resolve(request, principal, sources)

    return resolve_write


def _querying(resolve: Resolve) -> Resolve:
    """`resolve`, for a route that runs queries: below the editor role, only a query that reads
    passes (gateway/security/readonly.py); anything else is refused (403) before it is sent.
    Editors and admins pay nothing: their request streams as it came."""

    async def resolve_query(
        request: ProxyRequest, principal: Principal, sources: SourceCache
    ) -> Resolution:
        resolution = await resolve(request, principal, sources)
        if has_role(principal, Role.EDITOR):
            return resolution
        return await _read_only(request, principal, resolution)

    return resolve_query


async def _read_only(
    request: ProxyRequest, principal: Principal, resolution: Resolution
) -> Resolution:
    """`resolution` when the request it sends upstream only reads, else RoleRequired. What is
    classified is what goes upstream: the gateway's own request when the resolver made one (a
    v1 source's query link), else the client's, whose body, when InfluxDB reads the query from
    it, is read whole (bounded) and then sent as read."""
    source, target, rewrite = resolution
    exchange = request.exchange
    if rewrite is not None:
        method, body, headers = rewrite.method, rewrite.body, rewrite.headers
        content_type = _header(headers, b"content-type")
        content_encoding = _header(headers, b"content-encoding")
    else:
        method = exchange.method
        content_type = request.headers.get(CONTENT_TYPE_KEY)
        content_encoding = _header(exchange.headers, b"content-encoding")
        body = None
        if body_needed(method, target.path.clean, content_type):
            body = await _query_body(request)
            # The body is consumed: it goes upstream as read, described as the client did.
            described = tuple(
                (name, value.encode("latin-1"))
                for name, value in (
                    (b"Content-Type", content_type),
                    (b"Content-Encoding", content_encoding),
                )
                if value is not None
            )
            rewrite = Rewrite(method, body, described)
    refusal = query_refusal(
        method, target.path.clean, target.query, content_type, content_encoding, body
    )
    if refusal is not None:
        raise RoleRequired(refusal, Role.EDITOR, principal.role)
    return source, target, rewrite


async def _query_body(request: ProxyRequest) -> bytes:
    exchange = request.exchange
    if not exchange.has_body:
        return b""
    try:
        return await exchange.read_body(QUERY_BODY_LIMIT)
    except BodyTooLarge as exc:
        raise PayloadTooLarge(
            f"a query body is read whole to check that it only reads, for a token below the "
            f"editor role; it must not exceed {QUERY_BODY_LIMIT} bytes"
        ) from exc


def _header(headers: Iterable[tuple[bytes, bytes]], lower_name: bytes) -> str | None:
    """The first value of a header, or None."""
    for name, value in headers:
        if name.lower() == lower_name:
            return value.decode("latin-1")
    return None


def _writing_now(resolve_now: ResolveNow) -> ResolveNow:
    """`_writing`, for the synchronous resolver of a route that writes data."""

    def resolve_write(
        request: ProxyRequest, principal: Principal, snapshot: Snapshot
    ) -> Resolution:
        require_role(principal, Role.EDITOR, f"write:orgs/{principal.org.influx_id}/buckets")
        return resolve_now(request, principal, snapshot)

    return resolve_write


class ProxyRoute:
    """One proxied route: its name, the methods it takes (None: any), the dialect of its
    errors, how it resolves the source and upstream target, and whether it writes data (the
    editor role is then needed) or runs queries (below the editor role, only queries that
    read). The rest is derived from the name once, for the routers."""

    __slots__ = (
        "dialect",
        "key",
        "methods",
        "name",
        "prefix",
        "queries",
        "resolve",
        "resolve_now",
        "segments",
        "tail",
        "writes",
    )

    def __init__(
        self,
        name: str,
        methods: Collection[str] | None,
        dialect: Dialect,
        resolve: Resolve,
        *,
        now: ResolveNow | None = None,
        writes: bool = False,
        queries: bool = False,
    ) -> None:
        """`now`: the route's resolver from a current snapshot, when it needs nothing else
        (`resolve` must be the same rules, `from_snapshot(now)`); the pipeline then calls it
        without a coroutine. A query route has none: a viewer's query body is read first."""
        self.name = name
        self.methods = frozenset(methods) if methods is not None else None
        self.dialect = dialect
        self.writes = writes
        self.queries = queries
        if writes:
            resolve = _writing(resolve)
            now = _writing_now(now) if now is not None else None
        elif queries:
            resolve = _querying(resolve)
            now = None
        self.resolve = resolve
        self.resolve_now = now
        prefix, brace, rest = name.partition("{")
        key, _, tail = rest.partition("}")
        # The literal text before the key (the whole path when there is none), the key's name,
        # and what follows the key: "", REMAINDER, or a literal such as "/query".
        self.prefix = prefix
        self.key = key if brace else None
        self.tail = tail
        # How many "/"-separated parts of the path come before the remainder sent upstream.
        self.segments = prefix.count("/") + 1

    @property
    def aiohttp_path(self) -> str:
        """The name as an aiohttp route pattern: the remainder may hold slashes."""
        return self.name.removesuffix(REMAINDER) + "/{path:.*}" if self.has_remainder else self.name

    @property
    def has_remainder(self) -> bool:
        return self.tail == REMAINDER

    def __repr__(self) -> str:
        return f"<ProxyRoute {self.name}>"


_INFLUX = Dialect.INFLUX
_GRAFANA = Dialect.GRAFANA
_BY_UID = PROXY_PREFIX + "/uid/{uid}"
_BY_ID = PROXY_PREFIX + "/{id}"

# The Grafana data source proxy routes keep Grafana's rule: any role that may query a source
# may use them (Grafana checks `datasources:query` only), whatever the method; a source type's
# own route roles apply there (gateway/proxy/policy.py). InfluxDB's write routes need an editor;
# on its query routes a token below the editor role may send only queries that read.
#
# In matching order: aiohttp tries them in this order, and `…/proxy/uid/…` must come before
# `…/proxy/{id}/…`.
ROUTES: tuple[ProxyRoute, ...] = (
    ProxyRoute(_BY_UID, None, _GRAFANA, by_uid, now=uid_target),
    ProxyRoute(_BY_UID + REMAINDER, None, _GRAFANA, by_uid, now=uid_target),
    ProxyRoute(_BY_ID, None, _GRAFANA, by_id, now=id_target),
    ProxyRoute(_BY_ID + REMAINDER, None, _GRAFANA, by_id, now=id_target),
    ProxyRoute(
        "/api/v2/write", ("POST",), _INFLUX, influx_passthrough, now=influx_target, writes=True
    ),
    ProxyRoute("/api/v2/query", ("POST",), _INFLUX, influx_passthrough, queries=True),
    # HEAD as aiohttp's `add_get` takes it: clients probe `/query` with it.
    ProxyRoute("/query", ("GET", "HEAD", "POST"), _INFLUX, influx_passthrough, queries=True),
    ProxyRoute("/write", ("POST",), _INFLUX, influx_passthrough, now=influx_target, writes=True),
    ProxyRoute("/api/v2/sources/{source_id}/query", ("POST",), _INFLUX, source_query, queries=True),
)

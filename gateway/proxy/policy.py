"""What a proxied request may do: path safety, per-type method allow-lists.

Pure functions, no I/O. The forwarding layer calls them before anything leaves the gateway.

Paths. The client's remainder (after `/api/datasources/proxy/{id}/`) is forwarded with its
encoding untouched, joined under the source URL's path. It is refused (400) if any segment
decodes — once, twice or three times, since some upstreams decode again — to `.` or `..`, or
to something holding `/`, `\\` or NUL: encoded slashes, traversal and their double-encoded
forms can then never move the request out of the source's base path. Grafana forwards such
paths raw; we are deliberately stricter.

Allow-lists. As Grafana (`pkg/api/pluginproxy/ds_proxy.go` and the plugins' `plugin.json`
routes): a route matches on method and on the cleaned path starting with the route's path, here
segment-wise (`api/v1/query` does not match `api/v1/queryx`). A matched route may require a
role. For Prometheus-like and Loki sources an unmatched DELETE, PUT or POST is refused;
Elasticsearch allows no DELETE or PUT and POST only to `_msearch`. GET is never restricted by
the deny rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from gateway.errors import BadRequest, Forbidden
from gateway.registry.models import Role

# Query parameters that carry the gateway's (or Grafana's) own credentials: never forwarded.
AUTH_QUERY_PARAMS = frozenset({"auth_token", "token"})
_DECODE_ROUNDS = 3
_ROLE_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # cleaned: no leading or trailing slash
    role: Role


def _routes(*rows: tuple[str, str, Role]) -> tuple[Route, ...]:
    return tuple(Route(method, path.strip("/"), role) for method, path, role in rows)


V, E, A = Role.VIEWER, Role.EDITOR, Role.ADMIN
PROMETHEUS_ROUTES = _routes(
    ("GET", "api/v1/status/flags", A),
    ("POST", "api/v1/query", V),
    ("POST", "api/v1/query_range", V),
    ("POST", "api/v1/series", V),
    ("POST", "api/v1/labels", V),
    ("POST", "api/v1/query_exemplars", V),
    ("GET", "rules", V),
    ("POST", "rules", E),
    ("DELETE", "rules", E),
)
LOKI_ROUTES = _routes(
    ("GET", "api/v1/query", V),
    ("GET", "api/v1/query_range", V),
    ("POST", "api/v1/query_range", V),
    ("GET", "api/v1/labels", V),
    ("GET", "api/v1/label", V),
    ("GET", "api/v1/series", V),
    ("POST", "api/v1/series", V),
    ("GET", "api/v1/index/stats", V),
    ("GET", "api/v1/index/volume", V),
    ("GET", "api/v1/index/volume_range", V),
    ("GET", "api/v1/patterns", V),
    ("GET", "api/v1/tail", V),
    ("GET", "api/v1/status/buildinfo", V),
    ("GET", "api/v1/format_query", V),
    ("POST", "api/v1/format_query", V),
    ("GET", "api/v1/rules", V),
    ("POST", "api/v1/rules", E),
    ("DELETE", "api/v1/rules", E),
    ("GET", "loki/api/v1/rules", V),
    ("POST", "loki/api/v1/rules", E),
    ("DELETE", "loki/api/v1/rules", E),
    ("GET", "rules", V),
    ("POST", "rules", E),
    ("DELETE", "rules", E),
    ("GET", "api/prom/rules", V),
    ("POST", "api/prom/rules", E),
    ("DELETE", "api/prom/rules", E),
)
ROUTES_BY_TYPE: dict[str, tuple[Route, ...]] = {
    "prometheus": PROMETHEUS_ROUTES,
    "grafana-amazonprometheus-datasource": PROMETHEUS_ROUTES,
    "grafana-azureprometheus-datasource": PROMETHEUS_ROUTES,
    "loki": LOKI_ROUTES,
}
_DENY_UNLISTED_METHODS = frozenset({"DELETE", "PUT", "POST"})


class UnsafePath(BadRequest):
    """The proxy path could leave the source's base path; the request is refused."""


@dataclass(frozen=True, slots=True)
class ProxyPath:
    raw: str  # as the client encoded it, without leading slash: what is forwarded
    clean: str  # decoded, without empty segments: what allow-lists match

    @classmethod
    def parse(cls, raw_remainder: str) -> ProxyPath:
        raw = raw_remainder.lstrip("/")
        segments = raw.split("/")
        for segment in segments:
            _check_segment(segment)
        clean = "/".join(unquote(segment) for segment in segments if segment)
        return cls(raw=raw, clean=clean)


def _check_segment(segment: str) -> None:
    # Java servers (Tomcat, Jetty) read `..;x` as `..` with a path parameter.
    decoded = segment.split(";", 1)[0]
    for _ in range(_DECODE_ROUNDS):
        if decoded in (".", "..") or any(ch in decoded for ch in ("/", "\\", "\x00")):
            raise UnsafePath(f"invalid proxy path: segment {segment!r} is not allowed")
        again = unquote(decoded).split(";", 1)[0]
        if again == decoded:
            return
        decoded = again
    if decoded in (".", "..") or any(ch in decoded for ch in ("/", "\\", "\x00")):
        raise UnsafePath(f"invalid proxy path: segment {segment!r} is not allowed")


class UpstreamPath(NamedTuple):
    """Where a request goes under a source's URL: the checked remainder and the query string to
    send ("" for none). Each target of the source (its `url`, each replica) joins it under its
    own base path, the path of its URL."""

    path: ProxyPath
    query: str = ""

    def under(self, base: str) -> str:
        """The encoded target (path + query) under `base` (see `base_path`)."""
        raw = self.path.raw
        joined = f"{base}/{raw}" if raw else (base or "/")
        return f"{joined}?{self.query}" if self.query else joined


def base_path(url: str) -> str:
    """A source URL's path, without trailing slash: what the remainder is joined under."""
    return urlsplit(url).path.rstrip("/")


def join_upstream_path(source_url: str, path: ProxyPath) -> str:
    """The source URL's path with the remainder after exactly one `/` (Grafana's join)."""
    return UpstreamPath(path).under(base_path(source_url))


def strip_query_params(raw_query: str, names: frozenset[str] = AUTH_QUERY_PARAMS) -> str:
    """The query string minus parameters named in `names` (by default the gateway's auth
    parameters); everything else is kept byte for byte."""
    if not raw_query:
        return ""
    kept = [
        pair
        for pair in raw_query.split("&")
        if unquote(pair.split("=", 1)[0].replace("+", " ")) not in names
    ]
    return "&".join(kept)


def check_route(source_type: str, method: str, clean_path: str, role: Role) -> None:
    """Raise Forbidden (with Grafana's message) when this request may not reach the source."""
    method = method.upper()
    if source_type == "elasticsearch":
        _check_elasticsearch(method, clean_path)
        return
    routes = ROUTES_BY_TYPE.get(source_type)
    if routes is None:
        return
    for route in routes:
        if route.method != method or not _has_prefix(clean_path, route.path):
            continue
        if _ROLE_RANK[role] < _ROLE_RANK[route.role]:
            raise Forbidden("plugin proxy route access denied")
        return
    if method in _DENY_UNLISTED_METHODS:
        raise Forbidden(
            f"non allow-listed {method}s not allowed on proxied {source_type} datasource"
        )


def _check_elasticsearch(method: str, clean_path: str) -> None:
    if method == "DELETE":
        raise Forbidden("deletes not allowed on proxied Elasticsearch datasource")
    if method == "PUT":
        raise Forbidden("puts not allowed on proxied Elasticsearch datasource")
    if method == "POST" and clean_path != "_msearch":
        raise Forbidden("posts not allowed on proxied Elasticsearch datasource except on /_msearch")


def _has_prefix(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or not prefix

"""The front server's router for the proxied routes, derived from the route table.

It matches the raw path (as the client encoded it) and claims only the forms it can answer
exactly as aiohttp would: a source id or uid segment holding a `%` (aiohttp matches on the
decoded path), a key segment that is another route's literal (`/api/datasources/proxy/uid`
without a uid), an empty key, and a method the route does not take are all left to aiohttp (the
front server hands the connection over), which answers them as before: 400, 404 or 405 with
`Allow`.

Everything a route needs is prepared here once; per request the router costs a few
`startswith` calls or one dict lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence

from gateway.front.exchange import Exchange, FastHandler, Router
from gateway.proxy.pipeline import ProxyPipeline
from gateway.proxy.routes import REMAINDER, ROUTES, ProxyRoute

# A route's handlers: one for any method (None if the route names its methods), else by method.
_Handlers = tuple[FastHandler | None, Mapping[str, FastHandler]]


def front_router(pipeline: ProxyPipeline, routes: Sequence[ProxyRoute] = ROUTES) -> Router:
    """The front server's router: the handler of a proxied request, or None for aiohttp."""
    exact: dict[str, _Handlers] = {}
    families: dict[str, _Family] = {}
    for route in routes:
        handlers = _handlers(pipeline, route)
        if route.key is None:
            exact[route.name] = handlers
        else:
            families.setdefault(route.prefix, _Family(route.prefix)).add(route.tail, handlers)
    # Longest prefix first: `…/proxy/uid/` decides before `…/proxy/`.
    ordered = sorted(families.values(), key=lambda family: -len(family.prefix))
    for family in ordered:
        family.reserve([other.prefix for other in ordered])
    matchers = tuple((family.prefix, family.match) for family in ordered)

    def router(method: str, path: str) -> FastHandler | None:
        for prefix, match in matchers:
            if path.startswith(prefix):
                return match(method, path)
        handlers = exact.get(path)
        if handlers is None:
            return None
        any_method, by_method = handlers
        return any_method or by_method.get(method)

    return router


class _Family:
    """The routes that share a prefix and a `{key}` segment after it."""

    __slots__ = ("bare", "literal", "prefix", "remainder", "reserved", "start")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.start = len(prefix)
        self.bare: _Handlers | None = None  # the key ends the path
        self.remainder: _Handlers | None = None  # `/{path}` follows the key
        self.literal: dict[str, _Handlers] = {}  # a fixed tail follows the key ("query")
        self.reserved: frozenset[str] = frozenset()

    def add(self, tail: str, handlers: _Handlers) -> None:
        if not tail:
            self.bare = handlers
        elif tail == REMAINDER:
            self.remainder = handlers
        else:
            self.literal[tail.removeprefix("/")] = handlers

    def reserve(self, prefixes: Iterable[str]) -> None:
        """Keys that are the literal segment of a longer prefix are that route's, not ours."""
        self.reserved = frozenset(
            prefix[self.start :].partition("/")[0]
            for prefix in prefixes
            if prefix != self.prefix and prefix.startswith(self.prefix)
        )

    def match(self, method: str, path: str) -> FastHandler | None:
        key, slash, rest = path[self.start :].partition("/")
        if not key or "%" in key or key in self.reserved:
            return None
        if not slash:
            handlers = self.bare
        elif self.remainder is not None:
            handlers = self.remainder
        else:
            handlers = self.literal.get(rest)
        if handlers is None:
            return None
        any_method, by_method = handlers
        return any_method or by_method.get(method)


def _handlers(pipeline: ProxyPipeline, route: ProxyRoute) -> _Handlers:
    serve = pipeline.serve
    # Plain functions that return the pipeline's coroutine: one frame less to enter, suspend
    # and resume on every request.
    if route.key is None:

        def handler(exchange: Exchange) -> Awaitable[int]:
            return serve(exchange, route, "")

    else:
        start = len(route.prefix)

        def handler(exchange: Exchange) -> Awaitable[int]:
            return serve(exchange, route, exchange.path[start:].partition("/")[0])

    if route.methods is None:
        return handler, {}
    return None, dict.fromkeys(route.methods, handler)

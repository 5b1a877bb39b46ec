"""What a query needs from its upstream, and what it makes of the answers.

A `QueryPlan` is pure data plus a pure function: the HTTP requests to send (relative to the
source's URL; the route adds the URL, credentials and policy through the proxy's Forwarder),
and `convert`, which turns the upstream answers, in the same order, into a `QueryResult`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlencode

from gateway.query.results import QueryResult

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


class BodyFeed(Protocol):
    """Reads an upstream answer's body chunk by chunk while it arrives (a large answer's
    conversion then keeps pace with the upstream writing it); the plan's `convert` gets it back
    in `UpstreamResponse.feed`."""

    def feed(self, chunk: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    path: str  # joined to the source's URL path, as Grafana's clients do with path.Join
    params: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # A new feed for the answer's body, for requests whose answers may be large.
    feed: Callable[[], BodyFeed] | None = field(default=None, compare=False)

    @property
    def query_string(self) -> str:
        return urlencode(self.params)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    feed: BodyFeed | None = None  # the request's feed, having read `body`


@dataclass(frozen=True, slots=True)
class QueryPlan:
    requests: tuple[UpstreamRequest, ...]
    convert: Callable[[Sequence[UpstreamResponse]], QueryResult]


def form_request(method: str, path: str, params: Sequence[tuple[str, str]]) -> UpstreamRequest:
    """GET with the parameters in the URL, or POST with them as a form body (Grafana's
    Prometheus and InfluxQL clients do one or the other by the source's httpMethod). Sorted
    by key, as Go's url.Values.Encode writes them."""
    params = sorted(params)
    if method.upper() == "POST":
        return UpstreamRequest(
            method="POST",
            path=path,
            body=urlencode(params).encode(),
            headers=(("Content-Type", FORM_CONTENT_TYPE),),
        )
    return UpstreamRequest(method="GET", path=path, params=tuple(params))

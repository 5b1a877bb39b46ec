"""Grafana's query API, `POST /api/ds/query`: the route around gateway/query/.

The handler is thin: parse the body (gateway/query/request.py; a body Grafana cannot use is a
400 of its own), find each query's source in the caller's org, plan it (gateway/query/plan.py),
send the planned requests, convert the answers and stream `{"results": {refId: ...}}` back with
Grafana's status rule (200, or 400 as soon as any query failed: gateway/query/results.py).

Sources, as Grafana's `getDataSourceFromQuery` (pkg/services/query/query.go) finds them:
`datasource.uid` first, then the older `datasourceId`; and, as the issue asks (Grafana's own
frontend does it, its backend does not), `datasource.type` alone names the org's default source
when it is of that type, else the first (lowest id) of that type. A source that is not found
fails its query with Grafana's message ("Data source not found", status 404) instead of the
whole request as Grafana does: one query naming a deleted source must not hide the others'
answers.

Every planned request goes out through the proxy's Forwarder (gateway/proxy/forward.py), as a
proxied request would: the source's credentials and custom headers, the SSRF policy at connect
time, its timeouts and retry policy, the per-source and per-target metrics, passive health and
replica failover. `CollectingExchange` is the client side the Forwarder answers into: it keeps
the status and the body in memory, up to `MAX_ANSWER_BYTES`.

The proxy's method and path allow-lists (gateway/proxy/policy.py `check_route`) are not applied:
they guard the paths a client picks, while these paths are fixed by the planner (the types'
read-only query endpoints: Prometheus' `api/v1/query[_range]`, Loki's `loki/api/v1/query[_range]`,
InfluxDB's `query` and `api/v2/query`), as Grafana's backend plugins send their own requests
without its data proxy's route table. What a query may do upstream is, as in Grafana, what the
source's credentials allow.

Queries of one request run concurrently, at most `CONCURRENCY` upstream requests at a time per
request. A planned request may carry a body feed (a Prometheus range query's matrix reader):
the exchange hands it each chunk as it arrives, so a large answer's series are converted while
the upstream is still writing the rest (a series' worth of work at a time on the event loop).
What is left to convert after the last byte, for a large answer, runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web

from gateway import __version__
from gateway.api.grafana import request_org_id
from gateway.api.json_body import decode_json_object
from gateway.bodies import BodyTooLarge, read_limited
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.keys import FORWARDER, REQUEST_ID, SOURCES
from gateway.proxy.forward import Forwarder
from gateway.proxy.policy import ProxyPath, UpstreamPath
from gateway.query.exchange import BodyFeed, QueryPlan, UpstreamRequest, UpstreamResponse
from gateway.query.plan import plan_query
from gateway.query.request import DataSourceRef, ParsedQuery, parse_query_request
from gateway.query.results import (
    ErrorSource,
    QueryResult,
    iter_results_json,
    query_failed,
    response_status,
)
from gateway.query.timerange import TimeRange
from gateway.registry.cache import Snapshot
from gateway.registry.models import DataSource

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

# A request of many queries is a few KiB; a dashboard's worth well under this.
MAX_QUERY_BODY_BYTES = 4 * 1024 * 1024
CONCURRENCY = 8  # upstream requests in flight at once, per /api/ds/query request
# One upstream answer held in memory at most (a 10,000-point x 100-series Prometheus range
# answer is about 40 MB); a larger one fails its query.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
# Answers larger than this are converted in a worker thread.
THREAD_CONVERSION_BYTES = 1024 * 1024
# The answer is written in pieces of about this size (each frame's JSON is made at once).
WRITE_BYTES = 256 * 1024
SOURCE_NOT_FOUND = "Data source not found"
# Grafana's built-in pseudo sources: server-side expressions, "-- Grafana --", "-- Mixed --".
_PSEUDO_SOURCES = {
    "__expr__": "server-side expressions",
    "grafana": "the built-in Grafana data source",
    "-- Grafana --": "the built-in Grafana data source",
    "-- Mixed --": "the mixed data source (name each query's own source instead)",
}
_USER_AGENT = f"datasource-gateway/{__version__}".encode()


@routes.post("/api/ds/query")
async def query(request: web.Request) -> web.StreamResponse:
    org_id = request_org_id(request)
    body = await _json_body(request)
    parsed = parse_query_request(body, datetime.now(UTC))
    snapshot = await request.app[SOURCES].snapshot()
    runner = _Runner(request.app[FORWARDER], request[REQUEST_ID], parsed.time_range)
    async with asyncio.TaskGroup() as group:
        tasks = {
            query.ref_id: group.create_task(runner.run(query, find_source(snapshot, org_id, query)))
            for query in parsed.queries
        }
    results = {ref_id: task.result() for ref_id, task in tasks.items()}
    return await _stream_answer(request, results)


async def _json_body(request: web.Request) -> object:
    """The body as a JSON object, each way it can be unreadable with its own message (as the
    registry APIs say it, gateway/api/json_body.py). The Content-Type is not insisted on:
    Grafana's query API reads the body whatever it is labelled."""
    if request.content_length is not None and request.content_length > MAX_QUERY_BODY_BYTES:
        raise PayloadTooLarge(
            f"request body: larger than the limit of {MAX_QUERY_BODY_BYTES} bytes"
        )
    try:
        raw = await read_limited(request.content.iter_any(), MAX_QUERY_BODY_BYTES)
    except BodyTooLarge:
        raise PayloadTooLarge(
            f"request body: larger than the limit of {MAX_QUERY_BODY_BYTES} bytes"
        ) from None
    return decode_json_object(raw)


def find_source(snapshot: Snapshot, org_id: int, query: ParsedQuery) -> DataSource | QueryResult:
    """The query's source in the caller's org, or the failed result saying why there is none."""
    reference: DataSourceRef = query.datasource
    if reference.uid:
        pseudo = _PSEUDO_SOURCES.get(reference.uid)
        if pseudo is not None:
            return query_failed(f"{pseudo} is not supported by the gateway's /api/ds/query")
        found = snapshot.get(org_id, uid=reference.uid)
    elif reference.id is not None:
        found = snapshot.get(org_id, id=reference.id)
    else:
        found = source_of_type(snapshot, org_id, reference.type)
        if found is None:
            return query_failed(
                f"{SOURCE_NOT_FOUND}: no {reference.type!r} data source in this organization",
                status=404,
            )
    if found is None:
        return query_failed(SOURCE_NOT_FOUND, status=404)
    return found


def source_of_type(snapshot: Snapshot, org_id: int, source_type: str) -> DataSource | None:
    """The org's default source if it is of `source_type`, else its first (lowest id) one."""
    candidates = [s for s in snapshot.by_org.get(org_id, ()) if s.type == source_type]
    default = next((s for s in candidates if s.is_default), None)
    return default or min(candidates, key=lambda s: s.id, default=None)


class _Runner:
    """The queries of one request: each planned, sent and converted; at most CONCURRENCY
    upstream requests in flight at once."""

    def __init__(self, forwarder: Forwarder, request_id: str, time_range: TimeRange) -> None:
        self._forwarder = forwarder
        self._request_id = request_id
        self._time_range = time_range
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def run(self, query: ParsedQuery, source: DataSource | QueryResult) -> QueryResult:
        if isinstance(source, QueryResult):
            return source
        try:
            plan = plan_query(query, self._time_range, source)
            if isinstance(plan, QueryResult):
                return plan
            return await self._execute(plan, source)
        except Exception:  # one query's bug must not fail the others
            log.exception("ds_query_failed", ref_id=query.ref_id, source_uid=source.uid)
            return query_failed("internal error while running the query", status=500)

    async def _execute(self, plan: QueryPlan, source: DataSource) -> QueryResult:
        answers = await asyncio.gather(*(self._send(source, r) for r in plan.requests))
        responses: list[UpstreamResponse] = []
        for answer in answers:
            if isinstance(answer, QueryResult):  # the request itself failed
                return answer
            responses.append(answer)
        if sum(len(r.body) for r in responses) > THREAD_CONVERSION_BYTES:
            return await asyncio.to_thread(plan.convert, responses)
        return plan.convert(responses)

    async def _send(
        self, source: DataSource, planned: UpstreamRequest
    ) -> UpstreamResponse | QueryResult:
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in planned.headers]
        feed = planned.feed() if planned.feed is not None else None
        exchange = CollectingExchange(planned.method, _base_headers(headers) + headers, feed=feed)
        target = UpstreamPath(ProxyPath.parse(planned.path), planned.query_string)
        async with self._slots:
            try:
                await self._forwarder.forward(
                    exchange,
                    source,
                    target,
                    request_id=self._request_id,
                    method=planned.method,
                    body_override=planned.body or None,
                    extra_headers=tuple(headers) if planned.body else (),
                )
            except GatewayError as error:
                # Refused by the SSRF policy, unreachable, timed out: the Forwarder's message.
                return query_failed(
                    f"{error.message} ({planned.method} {planned.path})",
                    status=error.status,
                    source=ErrorSource.DOWNSTREAM,
                )
            except AnswerTooLarge as error:
                return query_failed(str(error), status=502, source=ErrorSource.DOWNSTREAM)
        if exchange.aborted:
            return query_failed(
                f"the upstream answer broke off ({planned.method} {planned.path})",
                status=502,
                source=ErrorSource.DOWNSTREAM,
            )
        if exchange.replaced:
            # The Forwarder answered for the upstream (its 401 becomes Grafana's 400).
            return query_failed(
                _message(exchange.body_bytes()),
                status=exchange.status,
                source=ErrorSource.DOWNSTREAM,
            )
        return UpstreamResponse(exchange.status, exchange.body_bytes(), feed=exchange.feed)


def _base_headers(planned: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    base = [(b"User-Agent", _USER_AGENT)]
    if not any(name.lower() == b"accept" for name, _ in planned):
        base.append((b"Accept", b"application/json"))
    return base


def _message(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")
    message = document.get("message") if isinstance(document, dict) else None
    return message if isinstance(message, str) else body.decode(errors="replace")


async def _stream_answer(
    request: web.Request, results: dict[str, QueryResult]
) -> web.StreamResponse:
    """The answer as Grafana writes it, streamed: one frame's JSON at a time is held."""
    response = web.StreamResponse(status=response_status(results))
    response.content_type = "application/json"
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    await response.prepare(request)
    pending: list[bytes] = []
    size = 0
    for chunk in iter_results_json(results):
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_BYTES:
            await response.write(b"".join(pending))
            pending.clear()
            size = 0
    await response.write(b"".join(pending))
    await response.write_eof()
    return response


class AnswerTooLarge(Exception):
    """An upstream answer longer than the exchange's limit."""


class CollectingExchange:
    """The Forwarder's client side for a request the gateway makes itself: no client body (the
    planned body is the Forwarder's `body_override`), and the answer kept in memory, at most
    `limit` bytes (`AnswerTooLarge` past that: the Forwarder then drops the upstream
    connection)."""

    __slots__ = (
        "_chunks",
        "_headers",
        "_limit",
        "_method",
        "_size",
        "aborted",
        "feed",
        "finished",
        "replaced",
        "response_headers",
        "status",
    )

    def __init__(
        self,
        method: str,
        headers: Sequence[tuple[bytes, bytes]],
        limit: int = MAX_ANSWER_BYTES,
        *,
        feed: BodyFeed | None = None,
    ) -> None:
        self._method = method
        self.feed = feed
        self._headers = headers
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.finished = False
        self.aborted = False
        self.replaced = False  # the Forwarder answered itself (`respond`)

    @property
    def method(self) -> str:
        return self._method

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        return self._headers

    @property
    def remote(self) -> str | None:
        return None  # the gateway itself: no X-Forwarded-For to add

    @property
    def has_body(self) -> bool:
        return False

    @property
    def content_length(self) -> int | None:
        return None

    async def body(self) -> AsyncIterator[bytes]:
        return
        yield  # an async generator with nothing in it

    async def read_body(self, limit: int) -> bytes:
        return b""

    def start_response(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> None:
        self.status = status
        self.response_headers = list(headers)

    async def write(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise AnswerTooLarge(f"the upstream answer is larger than {self._limit} bytes")
        self._chunks.append(data)
        if self.feed is not None:
            try:
                self.feed.feed(data)
            except Exception:  # the feed is an optimisation: the whole body is still read
                log.exception("ds_query_feed_failed")
                self.feed = None

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def respond(
        self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.feed = None  # the Forwarder's own answer, not the upstream's
        self.start_response(status, reason, headers)
        self._chunks = [body]
        self._size = len(body)
        self.finished = self.replaced = True

    def body_bytes(self) -> bytes:
        return b"".join(self._chunks)

"""Faithful stand-ins for the upstreams we do not run for real: real aiohttp servers that answer
the probe paths with the status codes, headers and bodies the real products send.

Each factory takes an optional `demand`: (header name, exact value) the upstream insists on. A
request without it gets the product's own 401 (a body shaped as that product shapes it), so the
credential injection is tested end to end.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection
from typing import Any

from aiohttp import web

Demand = tuple[str, str] | None
Rejection = Callable[[], web.Response]
AppFactory = Callable[[Demand], web.Application]


def _guard(demand: Demand, rejection: Rejection, paths: Collection[str] | None = None) -> Any:
    """Middleware answering `rejection()` unless `demand` is met (on `paths`, or everywhere)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        guarded = paths is None or request.path in paths
        if demand is not None and guarded and request.headers.get(demand[0]) != demand[1]:
            return rejection()
        response: web.StreamResponse = await handler(request)
        return response

    return middleware


def _app(
    demand: Demand, rejection: Rejection, paths: Collection[str] | None = None
) -> web.Application:
    return web.Application(middlewares=[_guard(demand, rejection, paths)])


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


# -- Prometheus 2.x (web/web.go, web/api/v1/api.go); a web config with basic_auth_users guards all


def _prometheus_rejection() -> web.Response:
    return _text(401, "Unauthorized\n", **{"WWW-Authenticate": "Basic"})


def prometheus_app(demand: Demand = None) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        return _text(200, "Prometheus Server is Ready.\n")

    async def buildinfo(request: web.Request) -> web.Response:
        data = {"version": "2.53.1", "revision": "14cfec3f6048b735e08c1e9c64c8d4211d32bab4"}
        return web.json_response({"status": "success", "data": data})

    async def query(request: web.Request) -> web.Response:
        if request.query.get("query") != "1+1":
            error = {"status": "error", "errorType": "bad_data", "error": "unexpected query"}
            return web.json_response(error, status=400)
        result = {"resultType": "scalar", "result": [time.time(), "2"]}
        return web.json_response({"status": "success", "data": result})

    app = _app(demand, _prometheus_rejection)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/api/v1/status/buildinfo", buildinfo)
    app.router.add_get("/api/v1/query", query)
    return app


# -- InfluxDB 1.x (services/httpd/handler.go): /ping needs no auth, /query does


def _influxql_rejection() -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="InfluxDB"', "X-Influxdb-Version": "1.8.10"}
    return web.json_response({"error": "authorization failed"}, status=401, headers=headers)


def influxql_app(demand: Demand = None) -> web.Application:
    versions = {"X-Influxdb-Build": "OSS", "X-Influxdb-Version": "1.8.10"}

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=204, headers=versions)

    async def query(request: web.Request) -> web.Response:
        if request.query.get("q", "").upper() != "SHOW DATABASES":
            return web.json_response({"error": "unexpected statement"}, status=400)
        series = {"name": "databases", "columns": ["name"], "values": [["_internal"], ["telegraf"]]}
        body = {"results": [{"statement_id": 0, "series": [series]}]}
        return web.json_response(body, headers=versions)

    app = _app(demand, _influxql_rejection, paths={"/query"})
    app.router.add_get("/ping", ping)
    app.router.add_get("/query", query)
    return app


# -- InfluxDB 2.x (http/health.go, http/bucket_service.go): /health needs no auth, the API does

# Byte for byte what released 2.x writes: a static string with these exact spaces.
INFLUXDB2_HEALTH = (
    '{"name":"influxdb", "message":"ready for queries and writes", "status":"pass", '
    '"checks":[], "version": "v2.7.12", "commit": "ec9dcde5d6"}\n'
)
# What unreleased main-2.x answers when a dependency fails (http/check_handler.go).
INFLUXDB2_FAILING_HEALTH = {
    "name": "influxdb",
    "status": "fail",
    "message": "bolt: database not open",
    "checks": [{"name": "bolt", "status": "fail", "message": "database not open"}],
    "version": "v2.8.0",
    "commit": "0123456789",
}


def _flux_rejection() -> web.Response:
    body = {"code": "unauthorized", "message": "unauthorized access"}
    return web.json_response(body, status=401, headers={"X-Platform-Error-Code": "unauthorized"})


def flux_app(demand: Demand = None, *, healthy: bool = True) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        if healthy:
            return web.Response(text=INFLUXDB2_HEALTH, content_type="application/json")
        return web.json_response(INFLUXDB2_FAILING_HEALTH, status=503)

    async def buckets(request: web.Request) -> web.Response:
        bucket = {"id": "0123456789abcdef", "name": "telegraf", "type": "user"}
        return web.json_response(
            {"links": {"self": "/api/v2/buckets?limit=1"}, "buckets": [bucket]}
        )

    app = _app(demand, _flux_rejection, paths={"/api/v2/buckets"})
    app.router.add_get("/health", health)
    app.router.add_get("/api/v2/buckets", buckets)
    return app


# -- Loki (pkg/loki/loki.go readyHandler), behind an authenticating proxy when a demand is given


def _proxy_rejection() -> web.Response:
    return _text(401, "401 Unauthorized\n")


def loki_app(demand: Demand = None, *, ready: bool = True) -> web.Application:
    async def ready_handler(request: web.Request) -> web.Response:
        if ready:
            return _text(200, "ready\n")
        return _text(503, "Ingester not ready: waiting for 15s after being ready\n")

    app = _app(demand, _proxy_rejection)
    app.router.add_get("/ready", ready_handler)
    return app


# -- Elasticsearch (cluster health API; security on when a demand is given)


def _elasticsearch_rejection() -> web.Response:
    reason = "missing authentication credentials for REST request [/_cluster/health]"
    error = {"root_cause": [{"type": "security_exception", "reason": reason}], "reason": reason}
    headers = {"WWW-Authenticate": 'Basic realm="security" charset="UTF-8"'}
    return web.json_response({"error": error, "status": 401}, status=401, headers=headers)


def elasticsearch_app(demand: Demand = None, *, status: str = "green") -> web.Application:
    async def cluster_health(request: web.Request) -> web.Response:
        body = {
            "cluster_name": "docker-cluster",
            "status": status,
            "timed_out": False,
            "number_of_nodes": 1,
            "active_shards": 5,
            "unassigned_shards": 0 if status == "green" else 3,
        }
        return web.json_response(body)

    app = _app(demand, _elasticsearch_rejection)
    app.router.add_get("/_cluster/health", cluster_health)
    return app


# -- Graphite-web (render API), behind an authenticating proxy when a demand is given


def graphite_app(demand: Demand = None) -> web.Application:
    async def render(request: web.Request) -> web.Response:
        query = request.query
        if query.get("target") != "constantLine(1)" or query.get("format") != "json":
            return _text(400, "Bad Request\n")
        now = int(time.time())
        points = [[1.0, now - 60], [1.0, now - 30], [1.0, now]]
        series = [{"target": "1", "tags": {"name": "1"}, "datapoints": points}]
        return web.Response(text=json.dumps(series), content_type="application/json")

    app = _app(demand, _proxy_rejection)
    app.router.add_get("/render", render)
    return app


# -- Anything else: a web app whose base URL answers `status`


def generic_app(demand: Demand = None, *, status: int = 200) -> web.Application:
    async def home(request: web.Request) -> web.Response:
        return _text(status, "home\n")

    app = _app(demand, _proxy_rejection)
    app.router.add_get("/", home)
    return app


# -- Failure modes shared by every kind


def failing_app(status: int = 503) -> web.Application:
    """Every path answers `status`, as a broken upstream or its load balancer does."""

    async def fail(request: web.Request) -> web.Response:
        return _text(status, "upstream connect error or disconnect/reset before headers\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    return app


def slow_app(delay: float) -> web.Application:
    """Every path answers 200 after `delay` seconds (the test server cancels it if we hang up)."""

    async def slowly(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return _text(200, "finally\n")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slowly)
    return app


def echoing_app(status: int = 503) -> web.Application:
    """A careless upstream that quotes the request's credentials back in its error messages."""

    async def echo(request: web.Request) -> web.Response:
        quoted = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
        body = {"name": "influxdb", "status": "fail", "message": f"rejected {quoted}"}
        return web.json_response({**body, "error": body["message"]}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app

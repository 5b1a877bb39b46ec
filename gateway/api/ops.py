"""Operations endpoints, no token needed: /health, /ready, /ping."""

from __future__ import annotations

import hmac
import time
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway import __version__
from gateway.errors import INFLUX_CONTENT_TYPE, Unauthorized
from gateway.health.probes import HealthCheck
from gateway.health.state import SourceState
from gateway.keys import LIFECYCLE, METRICS, MONITOR, PRINCIPAL, PRINCIPALS, SETTINGS, STORE
from gateway.security.auth import token_from_header
from gateway.version import commit

routes = web.RouteTableDef()


@routes.get("/ping")
async def ping(request: web.Request) -> web.Response:
    return web.Response(
        status=204, headers={"X-Influxdb-Version": __version__, "X-Influxdb-Build": "OSS"}
    )


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not lifecycle.ready:
        return web.json_response({"status": "starting"}, status=503)
    # A short loss of the registry's database is ridden out (proxying goes on from memory);
    # only a long one takes the gateway out of its balancer.
    lost_for = request.app[STORE].unavailable_for()
    if lost_for is not None and lost_for >= request.app[SETTINGS].database_outage_grace_period:
        message = f"the registry database has been unreachable for {lost_for:.0f} s"
        return web.json_response({"status": "database unavailable", "message": message}, status=503)
    return web.json_response({"status": "ready", "started": lifecycle.started.isoformat()})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition; needs `Bearer <metrics.token>` only when that setting is set."""
    expected = request.app[SETTINGS].metrics_token
    if expected is not None:
        given = token_from_header(request.headers.get("Authorization")) or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Unauthorized()
    registry = request.app[METRICS].served
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(registry), headers={"Content-Type": content_type})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """InfluxDB's HealthCheck for the gateway itself: 200 pass, 503 fail."""
    store_check = await _store_check(request)
    # The top-level status is the gateway's own (its store); sources are listed for operators.
    failed = [store_check] if store_check["status"] == "fail" else []
    source_checks = await _source_checks(request)
    checks = [store_check, *source_checks]
    message = "ready for queries and writes"
    if any(check["status"] == "fail" for check in source_checks):
        # Said in the body too: a `pass` above a failing source looks like a contradiction.
        message += "; this status is the gateway's own, and data sources are failing: see checks"
    body = {
        "name": "datasource-gateway",
        "status": "fail" if failed else "pass",
        "message": failed[0]["message"] if failed else message,
        "version": __version__,
        "commit": commit(),
        "checks": checks,
    }
    return web.json_response(
        body, status=503 if failed else 200, content_type=INFLUX_CONTENT_TYPE.split(";")[0]
    )


async def _source_checks(request: web.Request) -> list[dict[str, Any]]:
    """One entry per monitored source with a result, named by the source's name — for a caller
    with a token, its own org's sources only. /health needs no token, and source names and
    probe messages must not leak across orgs, so an anonymous caller gets one summary entry."""
    token = token_from_header(request.headers.get("Authorization"))
    principal = await request.app[PRINCIPALS].resolve(token) if token else None
    if principal is not None:  # /health is public: no middleware resolved it for the log line
        request[PRINCIPAL] = principal
    states = [
        state
        for state in request.app[MONITOR].states()
        if principal is None or state.source.org_id == principal.org.id
    ]
    results = [(state, result) for state in states if (result := state.health_check()) is not None]
    if principal is None:
        return [_anonymous_summary(results)] if results else []
    entries = [
        {"name": state.source.name, "status": result["status"], "message": result["message"]}
        for state, result in results
    ]
    return sorted(entries, key=lambda entry: entry["name"].lower())


def _anonymous_summary(results: list[tuple[SourceState, HealthCheck]]) -> dict[str, Any]:
    """How many sources pass and fail, without a name. A source with nothing to probe (no URL,
    a SQL source's database address) passes its own check only to say so: it is counted apart,
    never among the monitored sources that pass."""
    monitored = [result for state, result in results if state.unprobed is None]
    failing = sum(1 for result in monitored if result["status"] == "fail")
    passing = len(monitored) - failing
    not_probed = len(results) - len(monitored)
    message = f"{passing} of {len(monitored)} monitored sources pass"
    if not_probed:
        message += f", {not_probed} not probed (nothing to probe)"
    return {
        "name": "sources",
        "status": "fail" if failing else "pass",
        "message": f"{message}; send a token to see your org's sources",
        "passing": passing,
        "failing": failing,
        "notProbed": not_probed,
    }


async def _store_check(request: web.Request) -> dict[str, str]:
    registry = request.app[STORE]
    started = time.perf_counter()
    try:
        await registry.ping()
    except Exception as exc:  # any failure of the database is a failed check, not a 500
        return {"name": "store", "status": "fail", "message": f"database error: {exc}"}
    elapsed = (time.perf_counter() - started) * 1000
    return {
        "name": "store",
        "status": "pass",
        "message": f"{registry.engine} answered in {elapsed:.1f} ms",
    }

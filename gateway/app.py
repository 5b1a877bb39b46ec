"""create_app(settings): the composition root. The only module that knows every key,
every resource and every middleware."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Final, TypedDict

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.api import ds_query, grafana, influx, openapi, ops
from gateway.bootstrap import ensure_admin_token, open_registry
from gateway.cluster import open_shared_probing
from gateway.config import Settings
from gateway.health.monitor import HealthMonitor, Prober, SourceState
from gateway.health.probes import HealthCheck, probe_source
from gateway.keys import (
    FORWARDER,
    HTTP,
    LIFECYCLE,
    METRICS,
    MONITOR,
    PIPELINE,
    PRINCIPALS,
    PROBER,
    SETTINGS,
    SHIPPERS,
    SOURCES,
    SPOOL,
    SPOOL_COLLECTOR,
    SSRF,
    STORE,
    Lifecycle,
)
from gateway.metrics import (
    GatewayMetrics,
    SourceStateCollector,
    exposition_registry,
    new_registry,
)
from gateway.middlewares import authenticate, errors, request_context
from gateway.provisioning import provisioning_ctx
from gateway.proxy.aiohttp_carrier import add_proxy_routes
from gateway.proxy.forward import Forwarder
from gateway.proxy.http1 import Timeouts
from gateway.proxy.pipeline import ProxyPipeline
from gateway.proxy.ssrf import PolicyResolver, SsrfPolicy
from gateway.proxy.upstream import UpstreamPool
from gateway.registry.cache import SourceCache
from gateway.registry.models import DataSource
from gateway.security.auth import PrincipalCache
from gateway.spool import SpoolStore, TargetKey, TargetStatus, spool_path
from gateway.spool.metrics import SpoolCollector, SpoolMetrics
from gateway.spool.service import WriteSpool
from gateway.spool.shipper import Shippers
from gateway.supervisor import WORKER_INDEX_ENV

log = structlog.get_logger(__name__)

# Paths that answer without a token: probes, and what Grafana serves before sign-in.
# /metrics checks its own optional token (metrics.token), not an API token.
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/ready",
        "/ping",
        "/metrics",
        "/api/health",
        "/api/frontend/settings",
        openapi.PATH,
    }
)
CLIENT_MAX_SIZE = 16 * 1024 * 1024


# Options of the HTTP server that serves the app (aiohttp's runner, not the app, holds them):
# - handler_cancellation: a client that disconnects cancels its handler, so a proxied request
#   releases its upstream connection at once instead of when the upstream next writes;
# - auto_decompress off: a proxied `Content-Encoding: gzip` body must reach the upstream as the
#   client sent it (decompressing it but forwarding the header breaks every gzip writer).
class ServerOptions(TypedDict):
    handler_cancellation: bool
    auto_decompress: bool


SERVER_OPTIONS: Final[ServerOptions] = {"handler_cancellation": True, "auto_decompress": False}


def create_app(
    settings: Settings, *, metrics_registry: CollectorRegistry | None = None
) -> web.Application:
    """The gateway. `metrics_registry` lets tests (and embedders) read metrics in isolation."""
    app = web.Application(
        middlewares=[request_context, errors, authenticate(PUBLIC_PATHS)],
        client_max_size=CLIENT_MAX_SIZE,
    )
    app[SETTINGS] = settings
    app[LIFECYCLE] = Lifecycle()
    app[METRICS] = GatewayMetrics(metrics_registry or new_registry())
    app[SSRF] = SsrfPolicy.from_rules(settings.proxy_allowed_hosts, settings.proxy_denied_networks)
    # Order = dependency order; cleanup runs in reverse.
    app.cleanup_ctx.extend(
        [
            _store_ctx,
            _http_ctx,
            _spool_ctx,
            provisioning_ctx,
            _monitor_ctx,
            _proxy_ctx,
            _shippers_ctx,
            _ready_ctx,
        ]
    )
    app.add_routes(ops.routes)
    app.add_routes(openapi.routes)
    app.add_routes(grafana.routes)
    app.add_routes(ds_query.routes)
    app.add_routes(influx.routes)
    add_proxy_routes(app)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_registry(app[SETTINGS]) as registry:
        app[STORE] = registry
        app[PRINCIPALS] = PrincipalCache(registry)
        app[SOURCES] = SourceCache(registry)
        await ensure_admin_token(registry, app[SETTINGS])
        yield


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one shared ClientSession for outbound calls other than proxied requests (probes,
    bucket listings). Its resolver applies the SSRF policy to every address it connects to."""
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(app[SSRF]))
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": f"datasource-gateway/{__version__}"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
    ) as session:
        app[HTTP] = session
        app[PROBER] = prober(session, app[SSRF])
        yield


def prober(session: aiohttp.ClientSession, policy: SsrfPolicy) -> Prober:
    """Probe with the shared session: what the monitor and on-demand checks both call."""

    async def probe(source: DataSource, seconds: float) -> HealthCheck:
        refusal = policy.literal_refusal(source.url)
        if refusal is not None:
            message = f"not probed: {refusal}"
            check = {"name": "reachable", "status": "fail", "message": message}
            return {"name": source.name, "status": "fail", "message": message, "checks": [check]}
        return await probe_source(session, source, seconds)

    return probe


async def _spool_ctx(app: web.Application) -> AsyncIterator[None]:
    """The write spool's file (its own, beside the registry's), its metrics, and its state in
    the health checks of the sources it holds writes for."""
    settings, metrics = app[SETTINGS], app[METRICS]
    path = spool_path(settings.data_dir)
    async with SpoolStore.open(
        path, max_bytes=settings.spool_max_bytes, min_free_bytes=settings.spool_min_free_bytes
    ) as store:
        spool = app[SPOOL] = WriteSpool(
            store,
            SpoolMetrics(metrics.registry),
            default_max_bytes=settings.spool_max_bytes,
            default_max_age=settings.spool_max_age,
            max_body_bytes=settings.spool_max_body_bytes,
            default_forward_timeout=settings.spool_forward_timeout,
        )
        collector = app[SPOOL_COLLECTOR] = SpoolCollector(
            lambda: spool.snapshot, spool.source_labels
        )
        metrics.registry.register(collector)
        app[PROBER] = with_spool_check(app[PROBER], spool)
        yield
        metrics.registry.unregister(collector)


def with_spool_check(probe: Prober, spool: WriteSpool) -> Prober:
    """A probe that also says what the spool holds for the target: a `warn` check (not a
    failure) while writes are queued, from the status the shippers' scan keeps."""

    async def probe_with_spool(source: DataSource, seconds: float) -> HealthCheck:
        result = await probe(source, seconds)
        status = spool.snapshot.of(TargetKey(source.id, source.url))
        if status is not None and (status.queued_entries or status.dead_letters):
            result.setdefault("checks", []).append(spool_check(status))
        return result

    return probe_with_spool


def spool_check(status: TargetStatus) -> HealthCheck:
    oldest = status.oldest_enqueued_at
    age = f", oldest {max(0.0, time.time() - oldest):.0f} s old" if oldest is not None else ""
    message = f"{status.queued_entries} writes ({status.queued_bytes} bytes) queued{age}"
    if status.dead_letters:
        message += f"; {status.dead_letters} dead letters (gateway spool dead-letters)"
    return {"name": "write spool", "status": "warn", "message": message}


async def _monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, metrics = app[SETTINGS], app[METRICS]

    def count_probe(source: DataSource, result: HealthCheck, seconds: float) -> None:
        labels = metrics.source_labels(source.org_id, source.uid, source.type)
        metrics.probe_duration.labels(*labels).observe(seconds)
        metrics.probes.labels(*labels, result.get("status", "fail")).inc()

    def count_transition(state: SourceState, event: str) -> None:
        source = state.source
        labels = metrics.source_labels(source.org_id, source.uid, source.type)
        metrics.transitions.labels(*labels, "down" if event == "source_unhealthy" else "up").inc()

    async with open_shared_probing(settings) as shared:
        # With several workers each one probes, but only worker 0 counts and logs what it sees:
        # the shared counters would otherwise multiply every probe and state change by N. In a
        # cluster (PostgreSQL) each worker is a member probing only its share: each reports.
        reporting = shared is not None or os.environ.get(WORKER_INDEX_ENV, "0") == "0"
        monitor = HealthMonitor(
            app[SOURCES],
            app[PROBER],
            interval=settings.health_interval,
            timeout=settings.health_timeout,
            on_probe=count_probe if reporting else None,
            on_transition=count_transition if reporting else None,
            on_target_transition=metrics.count_target_transition if reporting else None,
            log_transitions=reporting,
            owns=shared.owns if shared is not None else None,
            on_result=shared.stored_changed if shared is not None else None,
        )
        app[MONITOR] = monitor
        collector = SourceStateCollector(monitor.states)
        metrics.registry.register(collector)
        metrics.served = exposition_registry(metrics, collector, app[SPOOL_COLLECTOR])
        tasks = [asyncio.create_task(monitor.run(), name="health-monitor")]
        if shared is not None:
            tasks.append(asyncio.create_task(shared.run(monitor), name="shared-probing"))
        yield
        metrics.registry.unregister(collector)
        for task in reversed(tasks):  # ownership stays put while the monitor stops
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    """The keep-alive pool for proxied requests (not the shared session: see proxy/upstream.py),
    and the pipeline both servers run them through (see proxy/pipeline.py).

    Its address filter re-applies the SSRF policy to the addresses it actually connects to.
    """
    settings = app[SETTINGS]
    pool = UpstreamPool(
        timeouts=Timeouts(
            connect=settings.proxy_connect_timeout,
            headers=settings.proxy_response_timeout,
            body=settings.proxy_idle_timeout,
        ),
        max_idle_per_origin=settings.proxy_max_idle_connections,
        address_filter=app[SSRF].permitted,
    )
    # The monitor is the forwarder's active health (which targets pass their probes) and hears
    # of failed tries (passive health).
    forwarder = app[FORWARDER] = Forwarder(
        pool, settings, app[METRICS], health=app[MONITOR], spool=app[SPOOL]
    )
    app[PIPELINE] = ProxyPipeline(app[PRINCIPALS], app[SOURCES], forwarder, app[METRICS])
    changed = asyncio.Event()
    app[SOURCES].subscribe(changed.set)
    forgetting = asyncio.create_task(_forget_removed(app[SOURCES], forwarder, changed))
    try:
        yield
    finally:
        forgetting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forgetting
        await pool.close()


async def _shippers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shippers of the spool's queues: one task that scans, one per target with a backlog;
    cancelled and awaited before the pool and the spool close."""
    sources = app[SOURCES]

    async def registered() -> dict[int, DataSource]:
        return (await sources.snapshot()).by_id

    # The lease owner: this host and worker slot, so that a restarted worker (or gateway)
    # takes back its own queues at once; see gateway/spool/shipper.py.
    worker = os.environ.get(WORKER_INDEX_ENV, "0")
    shippers = app[SHIPPERS] = Shippers(
        app[SPOOL],
        registered,
        app[FORWARDER].deliver,
        app[MONITOR],
        owner=f"{socket.gethostname()}/worker-{worker}",
    )
    app[MONITOR].add_target_listener(shippers.target_changed)
    task = asyncio.create_task(shippers.run(), name="spool-shippers")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _forget_removed(
    sources: SourceCache, forwarder: Forwarder, changed: asyncio.Event
) -> None:
    """After each registry change, drop what the forwarder prepared for deleted or changed
    sources (their targets' outlier state with it)."""
    while True:
        await changed.wait()
        changed.clear()
        try:
            snapshot = await sources.snapshot()
        except Exception:  # the registry failed: the next change tries again
            log.exception("forget_removed_sources_failed")
            continue
        forwarder.forget(snapshot.by_id)


async def _ready_ctx(app: web.Application) -> AsyncIterator[None]:
    app[LIFECYCLE].ready = True
    log.info("gateway_ready", version=__version__)
    yield
    app[LIFECYCLE].ready = False

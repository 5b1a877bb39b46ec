"""Every typed key for application and request state, in one place.

The keys' value types are imported for the type checker only: every layer reads its state
through these keys, so importing this module must not import any other gateway module (the
proxy would otherwise depend on the health monitor through it, say).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from gateway.config import Settings
    from gateway.health.monitor import HealthMonitor, Prober
    from gateway.metrics import GatewayMetrics
    from gateway.proxy.forward import Forwarder
    from gateway.proxy.pipeline import ProxyPipeline
    from gateway.proxy.ssrf import SsrfPolicy
    from gateway.registry.cache import SourceCache
    from gateway.registry.interface import Registry
    from gateway.registry.models import Principal
    from gateway.security.auth import PrincipalCache
    from gateway.spool.metrics import SpoolCollector
    from gateway.spool.service import WriteSpool
    from gateway.spool.shipper import Shippers


@dataclass(slots=True)
class Lifecycle:
    """Readiness as /ready reports it: ready once migrations ran, not while draining."""

    ready: bool = False
    draining: bool = False
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
STORE: web.AppKey[Registry] = web.AppKey("store")  # the registry, whichever backend holds it
PRINCIPALS: web.AppKey[PrincipalCache] = web.AppKey("principals")
SOURCES: web.AppKey[SourceCache] = web.AppKey("sources")
MONITOR: web.AppKey[HealthMonitor] = web.AppKey("monitor")
METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics")
SSRF: web.AppKey[SsrfPolicy] = web.AppKey("ssrf")
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
PIPELINE: web.AppKey[ProxyPipeline] = web.AppKey("pipeline")  # the proxied requests' pipeline
# One probe of one source with the shared session: what the monitor and on-demand checks call.
PROBER: web.AppKey[Prober] = web.AppKey("prober")
HTTP: web.AppKey[aiohttp.ClientSession] = web.AppKey("http")
# The write spool (gateway/spool/): the store as the proxy uses it, its shippers and its gauges.
SPOOL: web.AppKey[WriteSpool] = web.AppKey("spool")
SHIPPERS: web.AppKey[Shippers] = web.AppKey("shippers")
SPOOL_COLLECTOR: web.AppKey[SpoolCollector] = web.AppKey("spool_collector")
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
REQUEST_ID = web.RequestKey("request_id", str)

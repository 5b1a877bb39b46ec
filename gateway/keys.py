"""Every typed key for application and request state, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from gateway.config import Settings
from gateway.health.monitor import HealthMonitor, Prober
from gateway.metrics import GatewayMetrics
from gateway.proxy.ssrf import SsrfPolicy
from gateway.registry.cache import SourceCache
from gateway.registry.interface import Registry
from gateway.registry.models import Principal
from gateway.security.auth import PrincipalCache

if TYPE_CHECKING:
    from gateway.proxy.forward import Forwarder
    from gateway.proxy.pipeline import ProxyPipeline


@dataclass(slots=True)
class Lifecycle:
    """Readiness as /ready reports it: ready once migrations ran, not while draining."""

    ready: bool = False
    draining: bool = False
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


SETTINGS = web.AppKey("settings", Settings)
# The registry (typed by its Protocol, which AppKey cannot take as a runtime type).
STORE: web.AppKey[Registry] = web.AppKey("store")
PRINCIPALS = web.AppKey("principals", PrincipalCache)
SOURCES = web.AppKey("sources", SourceCache)
MONITOR = web.AppKey("monitor", HealthMonitor)
METRICS = web.AppKey("metrics", GatewayMetrics)
SSRF = web.AppKey("ssrf", SsrfPolicy)
FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")  # typed only: forward.py imports us
PIPELINE: web.AppKey[ProxyPipeline] = web.AppKey("pipeline")  # the proxied requests' pipeline
# One probe of one source with the shared session: what the monitor and on-demand checks call.
PROBER: web.AppKey[Prober] = web.AppKey("prober")
HTTP = web.AppKey("http", aiohttp.ClientSession)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)

"""Every typed key for application and request state, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from gateway.config import Settings
from gateway.health.monitor import HealthMonitor
from gateway.metrics import GatewayMetrics
from gateway.registry.cache import SourceCache
from gateway.registry.models import Principal
from gateway.registry.store import RegistryStore
from gateway.security.auth import PrincipalCache


@dataclass(slots=True)
class Lifecycle:
    """Readiness as /ready reports it: ready once migrations ran, not while draining."""

    ready: bool = False
    draining: bool = False
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", RegistryStore)
PRINCIPALS = web.AppKey("principals", PrincipalCache)
SOURCES = web.AppKey("sources", SourceCache)
MONITOR = web.AppKey("monitor", HealthMonitor)
METRICS = web.AppKey("metrics", GatewayMetrics)
HTTP = web.AppKey("http", aiohttp.ClientSession)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)

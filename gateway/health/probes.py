"""Per-type probes: each returns an InfluxDB `HealthCheck` dict for one data source.

This first version has only the generic probe (GET the base URL: below 500 passes). The health
issue adds the per-type probes behind the same `probe_source` signature.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from gateway.registry.models import DataSource

HealthCheck = dict[str, Any]


async def probe_source(
    session: aiohttp.ClientSession, source: DataSource, seconds: float
) -> HealthCheck:
    """Probe `source` once; never raises for upstream failures, never puts a secret in a message."""
    started = time.perf_counter()
    try:
        async with session.get(
            source.url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=seconds)
        ) as response:
            status = response.status
    except TimeoutError:
        check = _check("reachable", False, f"GET base URL timed out after {seconds:g} s")
    except aiohttp.ClientError as exc:
        check = _check("reachable", False, f"GET base URL failed: {type(exc).__name__}")
    else:
        elapsed = (time.perf_counter() - started) * 1000
        check = _check("reachable", status < 500, f"HTTP {status} in {elapsed:.0f} ms")
    return {
        "name": source.name,
        "status": check["status"],
        "message": check["message"],
        "checks": [check],
    }


def _check(name: str, passed: bool, message: str) -> HealthCheck:
    return {"name": name, "status": "pass" if passed else "fail", "message": message}


__all__ = ["HealthCheck", "probe_source"]

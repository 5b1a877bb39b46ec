"""Targets of a source (its `url` and `jsonData.replicaUrls`): which one a request tries next.

The health the gateway measures decides: active health from the HealthMonitor (through the
`TargetHealth` interface below) and passive health (outlier ejection) from the requests
themselves.
"""

from __future__ import annotations

from typing import Protocol

from gateway.registry.models import DataSource


class TargetHealth(Protocol):
    """What the proxy needs from active health (implemented by `HealthMonitor`)."""

    def target_healthy(self, source_id: int, url: str) -> bool: ...

    def report_failure(self, source_id: int, url: str | None = None) -> None: ...

    def add_target_listener(self, listener: _TargetListener) -> None: ...


class _TargetListener(Protocol):
    def __call__(self, source: DataSource, url: str, healthy: bool, /) -> None: ...

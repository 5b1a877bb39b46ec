"""Targets of a source (its `url` and `jsonData.replicaUrls`): which one a request tries next.

The health the gateway measures decides: active health from the HealthMonitor (through the
`TargetHealth` interface below) and passive health (outlier ejection) from the requests
themselves. A target is *healthy* when the monitor says so and it is not ejected.

Choice (`TargetSet.choose`), per `jsonData.loadBalancing`:
- `failover` (the default): the first healthy target in list order, the primary (`url`) first;
- `round_robin`: the healthy targets in turn.
A retry takes the next healthy target the request has not tried yet; with no healthy target
left, the untried ones in list order (a health state can be stale). A source with one URL skips
all of this.

Outlier ejection (Envoy's model, `OutlierPolicy`): consecutive connect failures (1), timeouts (3)
or failures of any kind — 5xx answers, resets, timeouts, connect failures — (5) eject a target for
30 s times the number of times it was ejected, at most 5 min, or until a probe passes (a
`TargetHealth` listener reporting it healthy). Any answer below 500 resets the counts. The last
healthy target of a source is never ejected. Each ejection and return is logged once
(`target_ejected`, `target_returned`) and counted
(`gateway_target_ejections_total`, `gateway_target_returns_total`).

The state lives in the `TargetSet` of a prepared source (gateway/proxy/forward.py): a changed or
deleted source gets a new one or none, so its outlier state is forgotten with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

from gateway.metrics import TargetMeters
from gateway.proxy.policy import UpstreamPath, base_path
from gateway.proxy.upstream import Origin
from gateway.registry.models import DataSource, target_label
from gateway.registry.rules import LOAD_BALANCING

log = structlog.get_logger(__name__)

Clock = Callable[[], float]  # monotonic seconds
# How one try of a target went, as outlier detection counts it: "ok" is any answer below 500.
TryResult = Literal["ok", "5xx", "connect", "timeout", "reset"]
ROUND_ROBIN = "round_robin"


class TargetHealth(Protocol):
    """What the proxy needs from active health (implemented by `HealthMonitor`)."""

    def target_healthy(self, source_id: int, url: str) -> bool: ...

    def report_failure(self, source_id: int, url: str | None = None) -> None: ...

    def add_target_listener(self, listener: _TargetListener) -> None: ...


class _TargetListener(Protocol):
    def __call__(self, source: DataSource, url: str, healthy: bool, /) -> None: ...


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """When a target is ejected and for how long (Envoy's outlier detection defaults, with its
    `consecutive_5xx` counting every kind of failure, and HAProxy-like thresholds for connect
    failures and timeouts)."""

    consecutive_connect_failures: int = 1
    consecutive_timeouts: int = 3
    consecutive_failures: int = 5  # 5xx answers, resets, timeouts and connect failures
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0

    def ejection_time(self, ejections: int) -> float:
        """How long the `ejections`-th ejection of a target lasts."""
        return min(self.base_ejection_time * ejections, self.max_ejection_time)


class Outliers:
    """What every target set of a Forwarder shares: the policy and the clock. Tests replace
    `clock` to move time on without waiting for it."""

    __slots__ = ("clock", "policy")

    def __init__(self, policy: OutlierPolicy | None = None, clock: Clock = time.monotonic) -> None:
        self.policy = policy or OutlierPolicy()
        self.clock = clock


class Target:
    """One URL of a source: where it is, the base path requests are joined under, its metrics
    and its outlier state."""

    __slots__ = (
        "base",
        "connect_failures",
        "ejected_until",
        "ejections",
        "failures",
        "index",
        "label",
        "meters",
        "origin",
        "timeouts",
        "url",
    )

    def __init__(self, index: int, url: str, origin: Origin, meters: TargetMeters) -> None:
        self.index = index  # 0: the primary
        self.url = url
        self.label = target_label(url)  # for logs and metrics: never userinfo
        self.origin = origin
        self.base = base_path(url)
        self.meters = meters
        self.connect_failures = 0
        self.timeouts = 0
        self.failures = 0
        self.ejections = 0
        self.ejected_until: float | None = None

    def target(self, path: UpstreamPath) -> str:
        """The encoded request target (path + query) for `path` at this target."""
        return path.under(self.base)

    def reset_counts(self) -> None:
        self.connect_failures = self.timeouts = self.failures = 0

    def __repr__(self) -> str:
        return f"<Target {self.label}>"


class TargetSet:
    """The targets of one prepared source, and the state that picks among them."""

    __slots__ = ("_health", "_outliers", "_turn", "round_robin", "source", "targets")

    def __init__(
        self,
        source: DataSource,
        targets: Sequence[Target],
        outliers: Outliers,
        health: TargetHealth | None = None,
    ) -> None:
        if not targets:
            raise ValueError("a source needs at least one target")
        self.source = source
        self.targets = tuple(targets)
        self.round_robin = source.json_data.get(LOAD_BALANCING) == ROUND_ROBIN
        self._outliers = outliers
        self._health = health
        self._turn = 0

    # --- choosing ------------------------------------------------------------------------------

    def choose(self, tried: Sequence[Target]) -> Target | None:
        """The target for a request's next try, after `tried`; None when all were tried."""
        targets = self.targets
        if len(targets) == 1:
            return None if tried else targets[0]
        untried = [target for target in targets if target not in tried]
        if not untried:
            return None
        now = self._outliers.clock()
        healthy = [target for target in untried if self.healthy(target, now)]
        if not healthy:
            return untried[0]  # in list order: a health state can be stale
        if not self.round_robin:
            return healthy[0]
        if not tried:
            self._turn += 1
            return healthy[(self._turn - 1) % len(healthy)]
        after = tried[-1].index  # a retry: the next one round the list
        return min(healthy, key=lambda target: (target.index - after) % len(targets))

    def healthy(self, target: Target, now: float) -> bool:
        """Active health passes and the target is not ejected (an ejection that ran out ends
        here, lazily)."""
        if target.ejected_until is not None:
            if now < target.ejected_until:
                return False
            self._return(target, "ejection time over")
        health = self._health
        return health is None or health.target_healthy(self.source.id, target.url)

    # --- what the tries said -------------------------------------------------------------------

    def record(self, target: Target, result: TryResult) -> None:
        """Count one try's result towards `target`'s outlier state; eject it past a threshold."""
        if result == "ok":
            if target.failures:
                target.reset_counts()
            return
        target.failures += 1
        if result == "connect":
            target.connect_failures += 1
        elif result == "timeout":
            target.timeouts += 1
        policy = self._outliers.policy
        if target.connect_failures >= policy.consecutive_connect_failures:
            self._eject(target, f"{target.connect_failures} consecutive connect failures")
        elif target.timeouts >= policy.consecutive_timeouts:
            self._eject(target, f"{target.timeouts} consecutive timeouts")
        elif target.failures >= policy.consecutive_failures:
            self._eject(target, f"{target.failures} consecutive failures (5xx, resets, timeouts)")

    def probe_passed(self, url: str) -> None:
        """Active health found `url` healthy again: an ejection of it ends now."""
        for target in self.targets:
            if target.url == url and target.ejected_until is not None:
                self._return(target, "probe passed")

    def _eject(self, target: Target, reason: str) -> None:
        if target.ejected_until is not None or len(self.targets) == 1:
            return
        now = self._outliers.clock()
        if not any(self.healthy(other, now) for other in self.targets if other is not target):
            return  # never the last healthy target: its counts carry on
        target.ejections += 1
        seconds = self._outliers.policy.ejection_time(target.ejections)
        target.ejected_until = now + seconds
        target.reset_counts()
        target.meters.ejections.inc()
        log.warning(
            "target_ejected",
            source_uid=self.source.uid,
            target=target.label,
            reason=reason,
            seconds=seconds,
            ejections=target.ejections,
        )

    def _return(self, target: Target, reason: str) -> None:
        target.ejected_until = None
        target.reset_counts()
        target.meters.returns.inc()
        log.info("target_returned", source_uid=self.source.uid, target=target.label, reason=reason)

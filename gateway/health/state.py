"""Health state of a source and of each of its targets (its `url` and `jsonData.replicaUrls`).

Every target keeps its own state with today's thresholds: its first result sets the state
directly (Envoy: one pass at start-up); later changes need `rise` consecutive passes or `fall`
consecutive failures (HAProxy's defaults 2 and 3). A source passes while at least one of its
targets passes, and fails once every target is known to fail.

What a source serves (`SourceState.health_check`):
- with one target, that target's latest probe result, exactly as a probe returns it (the state's
  status, with a "still ..." message while the latest probe disagrees with the state);
- with several, one entry per target — `{"name": target_label(url), "status", "message",
  "checks": [that target's probe checks]}` — under a message naming the targets that fail.

In a cluster (gateway/cluster/) a source is probed by one gateway, its owner; the others take
its state as the owner stored it (`StoredSource`, through `SourceState.adopt`).

A source with no URL (TestData and the like) is not probed: it serves `not_probed_check`.

Pure state and threshold logic: no clock, no I/O; the monitor (monitor.py) feeds it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from gateway.health.probes import HealthCheck
from gateway.registry.models import REPLICA_URLS, DataSource, target_label
from gateway.registry.rules import DATABASE_ADDRESS_TYPES
from gateway.registry.validation import needs_url

DEFAULT_RISE = 2
DEFAULT_FALL = 3


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    enabled: bool
    interval: float
    timeout: float
    rise: int
    fall: int

    @classmethod
    def for_source(cls, source: DataSource, interval: float, timeout: float) -> ProbePolicy:
        """The settings' policy, with the valid `jsonData.healthCheck` overrides applied."""
        raw = source.json_data.get("healthCheck")
        overrides: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        return cls(
            enabled=_bool(overrides.get("enabled"), True),
            interval=_positive(overrides.get("interval"), interval, minimum=0.1),
            timeout=_positive(overrides.get("timeout"), timeout, minimum=0.1),
            rise=int(_positive(overrides.get("rise"), DEFAULT_RISE, minimum=1)),
            fall=int(_positive(overrides.get("fall"), DEFAULT_FALL, minimum=1)),
        )


class Change(Enum):
    """What one probe result did to a target's state."""

    DOWN = "target_unhealthy"  # first result a failure, or `fall` failures in a row
    UP = "target_recovered"  # `rise` passes in a row after the state was fail
    PASS_AFTER_FAILURE = "pass_after_failure"  # state stays pass; the failures in a row end


@dataclass(slots=True)
class TargetState:
    url: str
    label: str  # target_label(url): the URL without userinfo, for checks, logs and labels
    view: DataSource  # the source as seen at this URL alone: what the prober is given
    status: str | None = None  # "pass" / "fail" once the first result is in
    since: datetime | None = None
    last_result: HealthCheck | None = None
    last_checked: datetime | None = None
    consecutive_failures: int = 0
    consecutive_passes: int = 0
    probing: bool = False
    last_started: float | None = None  # monitor clock time the latest probe of it began

    def adopt(self, stored: StoredTarget) -> Change | None:
        """Take the state another gateway stored for this target; the change it made, judged
        as `apply` judges one result (so the proxy's listeners hear of the same things)."""
        status_before, failures_before = self.status, self.consecutive_failures
        self.status, self.since = stored.status, stored.since
        self.last_result, self.last_checked = stored.last_result, stored.checked_at
        self.consecutive_failures = stored.consecutive_failures
        self.consecutive_passes = stored.consecutive_passes
        if self.status == status_before or self.status is None:
            if self.status == "pass" and failures_before > 0 and self.consecutive_failures == 0:
                return Change.PASS_AFTER_FAILURE
            return None
        if self.status == "fail":
            return Change.DOWN
        return None if status_before is None else Change.UP

    def apply(self, result: HealthCheck, policy: ProbePolicy, now: datetime) -> Change | None:
        """Count one probe result against the thresholds; the change it made, if any."""
        self.last_result, self.last_checked = result, now
        passed = result.get("status") == "pass"
        failures_before = self.consecutive_failures
        if passed:
            self.consecutive_passes += 1
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
            self.consecutive_passes = 0
        if self.status is None:
            self.status, self.since = ("pass" if passed else "fail"), now
            return None if passed else Change.DOWN
        if self.status == "pass" and self.consecutive_failures >= policy.fall:
            self.status, self.since = "fail", now
            return Change.DOWN
        if self.status == "fail" and self.consecutive_passes >= policy.rise:
            self.status, self.since = "pass", now
            return Change.UP
        if passed and failures_before > 0 and self.status == "pass":
            return Change.PASS_AFTER_FAILURE
        return None

    def health_check(self, policy: ProbePolicy) -> HealthCheck | None:
        """The latest result under the state's status; says so while the two disagree."""
        if self.last_result is None or self.status is None:
            return None
        result = dict(self.last_result)
        if result.get("status") != self.status:
            if self.status == "pass":
                pending, needed = self.consecutive_failures, policy.fall
            else:
                pending, needed = self.consecutive_passes, policy.rise
            result["message"] = (
                f"still {self.status} ({pending} of {needed} probes needed to change): "
                f"{result.get('message', '')}"
            )
            result["status"] = self.status
        return result


@dataclass(slots=True)
class SourceState:
    source: DataSource
    policy: ProbePolicy
    targets: dict[str, TargetState] = field(default_factory=dict)  # by URL, primary first
    status: str | None = None  # "pass" / "fail" once known (see `settle`)
    since: datetime | None = None
    generation: int = 0  # bumps on every reschedule; stale heap entries are skipped
    round_in_flight: bool = False  # a scheduled probe of the targets is running
    next_due: float = 0.0  # monitor clock time of the scheduled probe
    last_started: float | None = None  # monitor clock time the latest probe of a target began
    owned: bool = True  # this gateway probes it (always, but in a cluster: see the module doc)
    # What it serves when it has no URL to probe (`not_probed_check`); never probed then.
    unprobed: HealthCheck | None = None

    @classmethod
    def new(cls, source: DataSource, policy: ProbePolicy) -> SourceState:
        unprobed = not_probed_check(source)
        if unprobed is not None:
            # Never scheduled, never given a result: no state, so no pass/fail to count.
            policy = dataclasses.replace(policy, enabled=False)
        urls = source.target_urls or (source.url,)
        views = target_views(source, urls)
        targets = {url: TargetState(url, target_label(url), views[url]) for url in urls}
        return cls(source=source, policy=policy, targets=targets, unprobed=unprobed)

    @property
    def probing(self) -> bool:
        """A probe of this source (scheduled, or one target's early probe) is in flight."""
        return self.round_in_flight or any(target.probing for target in self.targets.values())

    @property
    def single(self) -> TargetState | None:
        """The one target of a source without replicas; None when it has several."""
        if len(self.targets) != 1:
            return None
        return next(iter(self.targets.values()))

    @property
    def consecutive_failures(self) -> int:
        """Failed probes in a row: the target's, or with several the fewest of any target
        (every target failed at least that many times in a row)."""
        return min(target.consecutive_failures for target in self.targets.values())

    @property
    def consecutive_passes(self) -> int:
        """Passed probes in a row: the target's, or with several the most of any target."""
        return max(target.consecutive_passes for target in self.targets.values())

    @property
    def last_checked(self) -> datetime | None:
        """When the latest probe result of any target came in."""
        return max((t.last_checked for t in self.targets.values() if t.last_checked), default=None)

    @property
    def last_result(self) -> HealthCheck | None:
        """The latest probe results as probed (no thresholds applied)."""
        single = self.single
        if single is not None:
            return single.last_result
        results = [(t.label, t.last_result) for t in self.targets.values() if t.last_result]
        return combined_check(self.source.name, results, len(self.targets)) if results else None

    def settle(self, now: datetime) -> str | None:
        """Derive the source's status from its targets' ('pass' while one passes, 'fail' once
        all are known to fail); the source event it makes, if the status changed."""
        statuses = [target.status for target in self.targets.values()]
        if "pass" in statuses:
            status: str | None = "pass"
        elif None in statuses:
            status = self.status  # the first results are not all in yet
        else:
            status = "fail"
        if status == self.status:
            return None
        before, self.status, self.since = self.status, status, now
        if status == "fail":
            return "source_unhealthy"
        return None if before is None else "source_recovered"

    def adopt(self, stored: StoredSource) -> list[tuple[TargetState, Change]]:
        """Take the state the owner stored (for this version of the source); each target's
        change, for the monitor to tell the proxy. Nothing is logged or counted for it: the
        owner that observed a change did that, once for the cluster."""
        targets = list(self.targets.values())
        changes = []
        for stored_target in stored.targets:
            if 0 <= stored_target.position < len(targets):
                target = targets[stored_target.position]
                change = target.adopt(stored_target)
                if change is not None:
                    changes.append((target, change))
        self.status, self.since = stored.status, stored.since
        return changes

    def stored(self) -> StoredSource:
        """This state as the owner stores it for the other gateways."""
        return StoredSource(
            source_id=self.source.id,
            version=self.source.version,
            status=self.status,
            since=self.since,
            targets=tuple(
                StoredTarget(
                    position=position,
                    status=target.status,
                    since=target.since,
                    last_result=target.last_result,
                    checked_at=target.last_checked,
                    consecutive_failures=target.consecutive_failures,
                    consecutive_passes=target.consecutive_passes,
                )
                for position, target in enumerate(self.targets.values())
            ),
        )

    def health_check(self) -> HealthCheck | None:
        """The HealthCheck to serve: the state's status, the latest probes' checks."""
        if self.unprobed is not None:
            return dict(self.unprobed)
        if self.status is None:
            return None
        single = self.single
        if single is not None:
            return single.health_check(self.policy)
        entries = []
        for target in self.targets.values():
            judged = target.health_check(self.policy)
            entries.append((target.label, judged if judged is not None else _NOT_PROBED))
        return combined_check(self.source.name, entries, len(entries))


@dataclass(frozen=True, slots=True)
class StoredTarget:
    """One target's state as stored for a cluster; `position` is its index in the source's
    targets (url first, then each replica), so no URL (which may hold userinfo) is stored."""

    position: int
    status: str | None
    since: datetime | None
    last_result: HealthCheck | None
    checked_at: datetime | None
    consecutive_failures: int
    consecutive_passes: int


@dataclass(frozen=True, slots=True)
class StoredSource:
    """A source's state as its owner stored it; valid for that `version` of the source only."""

    source_id: int
    version: int
    status: str | None
    since: datetime | None
    targets: tuple[StoredTarget, ...]


# Seen only in the moment between one target's first result and another's: the monitor takes
# a target it has not probed yet as healthy (it routes to it), and says so.
_NOT_PROBED: HealthCheck = {"status": "pass", "message": "not probed yet; taken as healthy"}


def not_probed_check(source: DataSource) -> HealthCheck | None:
    """What a source with no URL at all serves instead of a probe result, else None.

    Only types that reach nothing over HTTP may be saved without a URL (TestData, plugins the
    gateway does not know, an InfluxDB `self` source: gateway/registry/validation.py). There
    is nothing to probe, so such a source is not probed and never counts as failing: its check
    passes and says why, as Grafana's TestData health check passes without reaching anything.
    A record of a type that needs a URL and has none (written around the APIs) is broken, and
    is probed and fails as such. Grafana's SQL types keep a database address, not a URL: not
    probed either.
    """
    if source.type in DATABASE_ADDRESS_TYPES:
        # Grafana's SQL sources hold a database address (`db:5432`), which the gateway
        # neither proxies nor probes: nothing of it is reached over HTTP.
        message = f"not probed: {source.type} sources are databases, not reached over HTTP"
    elif source.target_urls or needs_url(source.spec()):
        return None
    else:
        message = f"not probed: {source.type} sources have no URL"
    return {"name": source.name, "status": "pass", "message": message}


def combined_check(
    name: str, targets: Iterable[tuple[str, HealthCheck]], total: int
) -> HealthCheck:
    """One HealthCheck for a source of several targets, from each (label, target's check):
    passes when one target passes; the message names the targets that fail."""
    checks = [
        {
            "name": label,
            "status": "pass" if check.get("status") == "pass" else "fail",
            "message": check.get("message", ""),
            "checks": list(check.get("checks", [])),
        }
        for label, check in targets
    ]
    failing = [check["name"] for check in checks if check["status"] == "fail"]
    if failing:
        message = f"{len(failing)} of {total} targets failing: {', '.join(failing)}"
    else:
        message = f"all {total} targets pass"
    health: HealthCheck = {
        "name": name,
        "status": "fail" if len(failing) == len(checks) else "pass",
        "message": message,
        "checks": checks,
    }
    return health


def target_views(source: DataSource, urls: Iterable[str]) -> dict[str, DataSource]:
    """`source` as seen at each of `urls` alone: its settings and credentials, that URL, no
    replicas. A source without replicas is its own view (it is probed exactly as before)."""
    urls = tuple(urls)
    if urls == (source.url,):
        return {source.url: source}
    json_data = {key: value for key, value in source.json_data.items() if key != REPLICA_URLS}
    return {url: dataclasses.replace(source, url=url, json_data=json_data) for url in urls}


def _bool(value: object, default: bool) -> bool:
    return value if isinstance(value, bool) else default


def _positive(value: object, default: float, *, minimum: float) -> float:
    """A number (or numeric string, as Grafana's jsonData often holds) ≥ minimum, else default."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    return number if math.isfinite(number) and number >= minimum else default

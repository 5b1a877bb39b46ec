"""HealthMonitor: probes every source on its own schedule and keeps its pass/fail state.

Scheduling is one loop over a heap of due times, not a task per source, so 2,000 sources cost
2,000 heap entries. Probes run as tasks bounded by a semaphore (`max_in_flight`).

- Interval, timeout, rise and fall come from settings, overridable per source in
  `jsonData.healthCheck` (`enabled`, `interval`, `timeout`, `rise`, `fall`).
- Each next probe is due after interval * a random factor in [0.85, 1.15], so sources added
  together drift apart instead of probing in lockstep.
- A new or changed source is probed within a second; its first result sets its state directly
  (Envoy: one pass at start-up). Later changes need `rise` consecutive passes or `fall`
  consecutive failures (HAProxy's defaults 2 and 3), so a single blip does not flip the state.
- Passive health: `report_failure` (a proxied request that could not connect or timed out)
  makes the source due now; the state still changes only through the thresholds.
- A deleted source is dropped from the schedule and the state.

The scheduling clock, the jitter source and the wait between due times are parameters (real
monotonic time, a fresh `random.Random` and `asyncio.wait_for` by default), so tests can drive
the schedule with a fake clock instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from random import Random
from typing import Any

import structlog

from gateway.health.probes import HealthCheck
from gateway.registry.cache import SourceCache
from gateway.registry.models import DataSource

log = structlog.get_logger(__name__)

Prober = Callable[[DataSource, float], Awaitable[HealthCheck]]
TransitionHook = Callable[["SourceState", str], None]
ProbeHook = Callable[[DataSource, HealthCheck, float], None]
# Called when one target (a URL of a source) changes health state: (source, url, healthy).
TargetListener = Callable[[DataSource, str, bool], None]
Clock = Callable[[], float]  # monotonic seconds
# Returns once the event is set or the given seconds (None: no limit) of the clock have passed;
# it may return earlier, so callers re-check what they wait for.
WaitForEvent = Callable[[asyncio.Event, float | None], Awaitable[None]]

NEW_SOURCE_DELAY = 1.0  # a new or changed source is probed within this many seconds
JITTER = 0.15
SYNC_RETRY_SECONDS = 1.0
PASSIVE_MIN_GAP = 1.0  # at most one passive-triggered probe a second per source
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


@dataclass(slots=True)
class SourceState:
    source: DataSource
    policy: ProbePolicy
    status: str | None = None  # "pass" / "fail" once the first result is in
    since: datetime | None = None
    last_result: HealthCheck | None = None
    last_checked: datetime | None = None
    consecutive_failures: int = 0
    consecutive_passes: int = 0
    generation: int = 0  # bumps on every reschedule; stale heap entries are skipped
    probing: bool = False
    next_due: float = 0.0  # monotonic time of the scheduled probe
    last_started: float | None = None  # monotonic time the latest probe began

    def health_check(self) -> HealthCheck | None:
        """The HealthCheck to serve: the state's status, the latest probe's checks."""
        if self.last_result is None or self.status is None:
            return None
        result = dict(self.last_result)
        if result.get("status") != self.status:
            pending = (
                self.consecutive_failures if self.status == "pass" else self.consecutive_passes
            )
            needed = self.policy.fall if self.status == "pass" else self.policy.rise
            result["message"] = (
                f"still {self.status} ({pending} of {needed} probes needed to change): "
                f"{result.get('message', '')}"
            )
            result["status"] = self.status
        return result


class HealthMonitor:
    def __init__(
        self,
        cache: SourceCache,
        prober: Prober,
        *,
        interval: float,
        timeout: float,
        max_in_flight: int = 64,
        on_transition: TransitionHook | None = None,
        on_probe: ProbeHook | None = None,
        log_transitions: bool = True,
        clock: Clock = time.monotonic,
        random: Random | None = None,
        wait: WaitForEvent | None = None,
    ) -> None:
        self._cache = cache
        self._prober = prober
        self._interval = interval
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._on_transition = on_transition
        self._on_probe = on_probe
        self._log_transitions = log_transitions
        self._clock = clock
        self._random = random if random is not None else Random()
        self._wait = wait if wait is not None else wait_for_event
        self._states: dict[int, SourceState] = {}
        self._heap: list[tuple[float, int, int]] = []  # (due, source id, generation)
        self._wake = asyncio.Event()
        self._registry_changed = True
        self._probes: set[asyncio.Task[None]] = set()
        self._target_listeners: list[TargetListener] = []
        cache.subscribe(self._mark_registry_changed)

    # --- reading ---------------------------------------------------------------------------

    def state(self, source_id: int) -> SourceState | None:
        return self._states.get(source_id)

    def states(self) -> list[SourceState]:
        return list(self._states.values())

    def latest(self, source_id: int) -> HealthCheck | None:
        state = self._states.get(source_id)
        return state.health_check() if state else None

    def target_healthy(self, source_id: int, url: str) -> bool:
        """Whether the target `url` of the source passes its health state; True while unknown
        (not probed yet, probing disabled, or not a target of the source)."""
        return True  # per-target state: issue 15 (health side)

    def add_target_listener(self, listener: TargetListener) -> None:
        """Call `listener(source, url, healthy)` whenever a target changes health state."""
        self._target_listeners.append(listener)

    # --- feeding ---------------------------------------------------------------------------

    def report_failure(self, source_id: int, url: str | None = None) -> None:
        """Passive health: a proxied request to `url` (None: the source) failed to connect or
        timed out. Probe it now."""
        state = self._states.get(source_id)
        if state is None or state.probing or not state.policy.enabled:
            return
        # HAProxy's fastinter, not one probe per failed request: a dashboard hammering a dead
        # source must not become a probe storm against it.
        now = self._clock()
        if state.last_started is not None and now - state.last_started < PASSIVE_MIN_GAP:
            return
        if state.next_due - now < PASSIVE_MIN_GAP:
            return  # a probe is due soon anyway
        self._reschedule(state, delay=0.0)

    def record(self, source: DataSource, result: HealthCheck) -> None:
        """Apply one probe result (from the schedule, or an on-demand probe) to the state."""
        state = self._states.get(source.id)
        if state is None or state.source.version != source.version or not state.policy.enabled:
            # Deleted or changed meanwhile (the result describes something else), or not
            # monitored: a disabled source is probed on demand each time, never remembered.
            return
        now = datetime.now(UTC)
        state.last_result = result
        state.last_checked = now
        passed = result.get("status") == "pass"
        if passed:
            state.consecutive_passes += 1
            state.consecutive_failures = 0
        else:
            state.consecutive_failures += 1
            state.consecutive_passes = 0
        if state.status is None:
            state.status, state.since = ("pass" if passed else "fail"), now
            if not passed:
                self._transition(state, "source_unhealthy", result)
            return
        if state.status == "pass" and state.consecutive_failures >= state.policy.fall:
            state.status, state.since = "fail", now
            self._transition(state, "source_unhealthy", result)
        elif state.status == "fail" and state.consecutive_passes >= state.policy.rise:
            state.status, state.since = "pass", now
            self._transition(state, "source_recovered", result)

    def _transition(self, state: SourceState, event: str, result: HealthCheck) -> None:
        """Log each state change once, with the probe message that caused it."""
        source = state.source
        emit = log.warning if event == "source_unhealthy" else log.info
        if self._log_transitions:
            emit(
                event,
                source_uid=source.uid,
                source_name=source.name,
                org=source.org_id,
                reason=result.get("message", ""),
            )
        if self._on_transition is not None:
            self._on_transition(state, event)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The scheduling loop; runs until cancelled, then cancels and awaits its probes."""
        try:
            while True:
                if self._registry_changed:
                    try:
                        await self._sync()
                    except Exception:  # the store may fail for a moment; keep probing meanwhile
                        log.exception("monitor_sync_failed")
                        self._registry_changed = True
                        await self._sleep(SYNC_RETRY_SECONDS)
                delay = self._launch_due()
                self._wake.clear()
                await self._wait(self._wake, delay)
        finally:
            for task in self._probes:
                task.cancel()
            await asyncio.gather(*self._probes, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        """`seconds` of the clock, not cut short by a registry change or a passive failure."""
        deadline = self._clock() + seconds
        while (left := deadline - self._clock()) > 0:
            await self._wait(asyncio.Event(), left)

    def _mark_registry_changed(self) -> None:
        self._registry_changed = True
        self._wake.set()

    async def _sync(self) -> None:
        self._registry_changed = False
        snapshot = await self._cache.snapshot()
        seen = set()
        for source in snapshot.sources:
            seen.add(source.id)
            current = self._states.get(source.id)
            if current is not None and current.source.version == source.version:
                continue
            policy = ProbePolicy.for_source(source, self._interval, self._timeout)
            state = SourceState(source=source, policy=policy)
            self._states[source.id] = state
            if policy.enabled:
                self._reschedule(state, delay=self._random.uniform(0, NEW_SOURCE_DELAY))
        for gone in set(self._states) - seen:
            del self._states[gone]

    def _reschedule(self, state: SourceState, delay: float) -> None:
        state.generation += 1
        state.next_due = self._clock() + delay
        heapq.heappush(self._heap, (state.next_due, state.source.id, state.generation))
        self._wake.set()

    def _launch_due(self) -> float | None:
        """Start every due probe; return seconds until the next one (None: nothing scheduled)."""
        heap = self._heap
        now = self._clock()
        while heap and heap[0][0] <= now:
            _, source_id, generation = heapq.heappop(heap)
            state = self._states.get(source_id)
            if state is None or state.generation != generation or state.probing:
                continue
            state.probing = True
            task = asyncio.create_task(self._probe(state), name=f"probe-{source_id}")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)
        return max(0.0, heap[0][0] - now) if heap else None

    async def _probe(self, state: SourceState) -> None:
        source, policy = state.source, state.policy
        try:
            async with self._slots:
                state.last_started = self._clock()
                started = time.perf_counter()  # the probe's real duration, for the metrics
                try:
                    # The probe bounds itself; this is the backstop if it does not.
                    result = await asyncio.wait_for(
                        self._prober(source, policy.timeout), policy.timeout + 1.0
                    )
                except TimeoutError:
                    result = _failed(source, f"probe did not finish in {policy.timeout:g} s")
                except Exception as exc:  # a probe bug must not stop the monitor
                    log.exception("probe_crashed", source_uid=source.uid)
                    result = _failed(source, f"probe error: {type(exc).__name__}")
                if self._on_probe is not None:
                    self._on_probe(source, result, time.perf_counter() - started)
            self.record(source, result)
        finally:
            state.probing = False
            if self._states.get(source.id) is state:
                factor = self._random.uniform(1 - JITTER, 1 + JITTER)
                self._reschedule(state, delay=policy.interval * factor)


async def wait_for_event(event: asyncio.Event, seconds: float | None) -> None:
    """The real WaitForEvent: until `event` is set or `seconds` (None: no limit) have passed."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


async def current_health(
    monitor: HealthMonitor | None, source: DataSource, prober: Prober, default_timeout: float
) -> HealthCheck:
    """What every health endpoint serves: the monitor's state, else one probe now. Never
    raises for a probe's sake: a crashed probe is a failed HealthCheck.

    An on-demand result is also given to the monitor, so it counts as the first result.
    """
    if monitor is not None:
        latest = monitor.latest(source.id)
        if latest is not None:
            return latest
    state = monitor.state(source.id) if monitor is not None else None
    seconds = state.policy.timeout if state is not None else default_timeout
    try:
        result = await prober(source, seconds)
    except Exception as exc:  # as in the scheduled loop: a probe bug is a failed probe
        log.exception("probe_crashed", source_uid=source.uid)
        result = _failed(source, f"probe error: {type(exc).__name__}")
    if monitor is not None:
        monitor.record(source, result)
    return result


def _failed(source: DataSource, message: str) -> HealthCheck:
    return {
        "name": source.name,
        "status": "fail",
        "message": message,
        "checks": [{"name": "probe", "status": "fail", "message": message}],
    }


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

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
- Targets: a source answers at `url` and at each `jsonData.replicaUrls` entry. Each target is
  probed on its own (concurrently, at the source's scheduled time, each probe taking a slot)
  and keeps its own state and thresholds (health/state.py). The source passes while one
  target passes. The prober is given each target as the source seen at that URL alone
  (`target_views`), so whatever it checks of `source.url` (the app's SSRF refusal) applies to
  every replica; `on_probe` hears of each target's probe. `target_healthy` answers the proxy
  from that state (dict lookups only: it is on the hot path); target listeners hear of every
  target state change, and of a probe that passes after failed ones while the state stayed
  pass (the proxy ends an ejection early on it).
- Passive health: `report_failure` (a proxied request that could not connect or timed out)
  makes the source due now, or probes just that target early when it names one of several;
  the state still changes only through the thresholds.
- A deleted source is dropped from the schedule and the state.
- A source with no URL (TestData and the like) is never probed, on demand neither: its check
  passes, saying so (`not_probed_check`), and it has no pass/fail state.
- Shared probing (a cluster of gateways on one PostgreSQL registry, gateway/cluster/): `owns`
  says which sources this gateway probes; the others are never scheduled, and their state is
  what their owner stored (`adopt`: the proxy's target listeners hear of its changes, nothing
  is logged or counted). `ownership_changed` re-reads `owns` after the members changed: a
  source newly owned is probed soon, from the state adopted so far. `on_result` hears of each
  owned source's state after every result, for storing. Without `owns` every source is owned.

The scheduling clock, the jitter source and the wait between due times are parameters (real
monotonic time, a fresh `random.Random` and `wait_for_event` by default), so tests can drive
the schedule with a fake clock instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from random import Random
from types import TracebackType
from typing import Any

import structlog

from gateway.health.probes import HealthCheck
from gateway.health.state import (
    DEFAULT_FALL,
    DEFAULT_RISE,
    Change,
    ProbePolicy,
    SourceState,
    StoredSource,
    TargetState,
    combined_check,
    not_probed_check,
    target_views,
)
from gateway.registry.cache import SourceCache
from gateway.registry.models import DataSource, target_label

log = structlog.get_logger(__name__)

Prober = Callable[[DataSource, float], Awaitable[HealthCheck]]
TransitionHook = Callable[["SourceState", str], None]
ProbeHook = Callable[[DataSource, HealthCheck, float], None]
# Called when one target (a URL of a source) changes health state: (source, url, healthy).
TargetListener = Callable[[DataSource, str, bool], None]
# Whether this gateway probes the source (shared probing); always, when not given.
Ownership = Callable[[DataSource], bool]
ResultHook = Callable[["SourceState"], None]
Clock = Callable[[], float]  # monotonic seconds
# Returns once the event is set or the given seconds (None: no limit) of the clock have passed;
# it may return earlier, so callers re-check what they wait for.
WaitForEvent = Callable[[asyncio.Event, float | None], Awaitable[None]]

NEW_SOURCE_DELAY = 1.0  # a new or changed source is probed within this many seconds
# A source taken over from a member that left is probed within this many seconds, capped at a
# tenth of its interval (members lose their share within two intervals: see gateway/cluster/).
TAKEOVER_DELAY = 1.0
JITTER = 0.15
SYNC_RETRY_SECONDS = 1.0
PASSIVE_MIN_GAP = 1.0  # at most one passive-triggered probe a second per source or target

__all__ = [
    "DEFAULT_FALL",
    "DEFAULT_RISE",
    "PASSIVE_MIN_GAP",
    "HealthMonitor",
    "ProbePolicy",
    "Prober",
    "SourceState",
    "TargetListener",
    "TargetState",
    "current_health",
]


class Slots:
    """A counting semaphore whose waiters leave in O(1) when cancelled.

    Every due source gets a probe task at once, and all but `max_in_flight` of them wait for a
    slot. asyncio.Semaphore removes a cancelled waiter by scanning its deque: stopping a monitor
    of 10,000 sources cancelled 10,000 waiters, ~10,000 x 5,000 comparisons, seconds of CPU on
    an idle machine and more than the drain timeout on a loaded one (issue 20's benchmark saw a
    gateway still there 60 s after SIGTERM). Here the waiters are an OrderedDict: a cancelled
    one is deleted by key, and a freed slot goes to the oldest waiter directly."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: OrderedDict[asyncio.Future[None], None] = OrderedDict()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = None
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot, but cancelled before taking it: pass it on
            else:
                self._waiters.pop(waiter, None)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the oldest waiter, never freed
                return
        self._free += 1


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
        on_target_transition: TargetListener | None = None,
        log_transitions: bool = True,
        owns: Ownership | None = None,
        on_result: ResultHook | None = None,
        clock: Clock = time.monotonic,
        random: Random | None = None,
        wait: WaitForEvent | None = None,
    ) -> None:
        self._cache = cache
        self._prober = prober
        self._interval = interval
        self._timeout = timeout
        self._slots = Slots(max_in_flight)
        self._on_transition = on_transition
        self._on_probe = on_probe
        self._on_target_transition = on_target_transition
        self._log_transitions = log_transitions
        self._owns = owns
        self._on_result = on_result
        self._clock = clock
        self._random = random if random is not None else Random()
        self._wait = wait if wait is not None else wait_for_event
        self._states: dict[int, SourceState] = {}
        self._heap: list[tuple[float, int, int]] = []  # (due, source id, generation)
        self._wake = asyncio.Event()
        self._registry_changed = True
        self._synced = asyncio.Event()
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
        state = self._states.get(source_id)
        if state is None:
            return True
        target = state.targets.get(url)
        return target is None or target.status != "fail"

    def add_target_listener(self, listener: TargetListener) -> None:
        """Call `listener(source, url, healthy)` whenever a target changes health state, and
        with healthy=True when a probe passes after failed ones while the state stayed pass
        (the failures ended before `fall`: an ejection the proxy made may end now)."""
        self._target_listeners.append(listener)

    # --- feeding ---------------------------------------------------------------------------

    def report_failure(self, source_id: int, url: str | None = None) -> None:
        """Passive health: a proxied request to `url` (None: the source) failed to connect or
        timed out. Probe it now: that target alone when it is one of several, else the source."""
        state = self._states.get(source_id)
        if state is None or not state.policy.enabled or not state.owned:
            return  # unknown, not monitored, or probed by its owner on its own schedule
        target = state.targets.get(url) if url is not None and state.single is None else None
        if target is not None:
            self._report_target_failure(state, target)
            return
        if state.probing:
            return
        # HAProxy's fastinter, not one probe per failed request: a dashboard hammering a dead
        # source must not become a probe storm against it.
        now = self._clock()
        if state.last_started is not None and now - state.last_started < PASSIVE_MIN_GAP:
            return
        if state.next_due - now < PASSIVE_MIN_GAP:
            return  # a probe is due soon anyway
        self._reschedule(state, delay=0.0)

    def _report_target_failure(self, state: SourceState, target: TargetState) -> None:
        """As `report_failure` for the source, per target: at most one early probe a second of
        each, none while it is being probed or when the source's probe is due soon anyway."""
        if target.probing:
            return
        now = self._clock()
        if target.last_started is not None and now - target.last_started < PASSIVE_MIN_GAP:
            return
        if state.next_due - now < PASSIVE_MIN_GAP:
            return
        target.probing = True
        self._start(self._probe_target(state, target), f"probe-{state.source.id}-target")

    def record(self, source: DataSource, result: HealthCheck, url: str | None = None) -> None:
        """Apply one probe result of target `url` (None: the primary URL) — from the schedule
        or an on-demand probe — to the state."""
        state = self._states.get(source.id)
        if (
            state is None
            or state.source.version != source.version
            or not state.policy.enabled
            or not state.owned
        ):
            # Deleted or changed meanwhile (the result describes something else), not
            # monitored (a disabled source is probed on demand each time, never remembered),
            # or another gateway's to probe: its state is the one that gateway stores.
            return
        if url is None:
            target: TargetState | None = next(iter(state.targets.values()))
        else:
            target = state.targets.get(url)
        if target is not None:
            self._apply(state, target, result)

    def _apply(self, state: SourceState, target: TargetState, result: HealthCheck) -> None:
        """One result of one target: its state, then the source's, each change reported once."""
        now = datetime.now(UTC)
        change = target.apply(result, state.policy, now)
        if change is Change.DOWN or change is Change.UP:
            self._target_transition(state, target, change, result)
        elif change is Change.PASS_AFTER_FAILURE:
            self._notify(state.source, target, healthy=True)
        event = state.settle(now)
        if event is not None:
            # With several targets the reason is the source's: which of them fail.
            served = result if state.single is not None else state.health_check()
            self._transition(state, event, served or result)
        if self._on_result is not None:
            self._on_result(state)

    def adopt(self, stored: StoredSource) -> None:
        """Take the state the owner of a source stored, unless this gateway owns it or knows
        another version of it; tell the target listeners what changed."""
        state = self._states.get(stored.source_id)
        if state is None or state.owned or state.source.version != stored.version:
            return
        for target, change in state.adopt(stored):
            self._notify(state.source, target, healthy=change is not Change.DOWN)

    def ownership_changed(self) -> None:
        """The members of the cluster changed: re-read `owns` for every source. One newly
        owned is probed soon; one no longer owned leaves the schedule."""
        for state in self._states.values():
            owned = self._owns is None or self._owns(state.source)
            if owned == state.owned:
                continue
            state.owned = owned
            if not owned:
                state.generation += 1  # its heap entry is skipped
            elif state.policy.enabled:
                soon = min(TAKEOVER_DELAY, state.policy.interval / 10)
                self._reschedule(state, delay=self._random.uniform(0, soon))

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

    def _target_transition(
        self, state: SourceState, target: TargetState, change: Change, result: HealthCheck
    ) -> None:
        """Log and count each target state change once; tell the listeners. The target is
        named by its label: a URL's userinfo never reaches a log line or a metric."""
        source, healthy = state.source, change is Change.UP
        if self._log_transitions:
            emit = log.info if healthy else log.warning
            emit(
                change.value,
                source_uid=source.uid,
                org=source.org_id,
                target=target.label,
                reason=result.get("message", ""),
            )
        if self._on_target_transition is not None:
            self._on_target_transition(source, target.url, healthy)
        self._notify(source, target, healthy=healthy)

    def _notify(self, source: DataSource, target: TargetState, *, healthy: bool) -> None:
        for listener in self._target_listeners:
            try:
                listener(source, target.url, healthy)
            except Exception:  # a listener's bug must not stop the monitor
                log.exception("target_listener_failed", source_uid=source.uid, target=target.label)

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
            state = SourceState.new(source, policy)
            state.owned = self._owns is None or self._owns(source)
            self._states[source.id] = state
            if state.policy.enabled and state.owned:  # the state's: a source with no URL is off
                self._reschedule(state, delay=self._random.uniform(0, NEW_SOURCE_DELAY))
        for gone in set(self._states) - seen:
            del self._states[gone]
        self._synced.set()

    async def synced(self) -> None:
        """Returns once the monitor has read the registry's sources (a state for each)."""
        await self._synced.wait()

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
            if (
                state is None
                or state.generation != generation
                or state.round_in_flight
                or not state.owned
            ):
                continue
            state.round_in_flight = True
            self._start(self._probe_round(state), f"probe-{source_id}")
        return max(0.0, heap[0][0] - now) if heap else None

    def _start(self, probe: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(probe, name=name)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe_round(self, state: SourceState) -> None:
        """The scheduled probe of a source: each of its targets (but one being probed early
        already), concurrently, each taking a slot; then the next one is scheduled."""
        try:
            targets = [target for target in state.targets.values() if not target.probing]
            for target in targets:
                target.probing = True
            await asyncio.gather(*(self._probe_target(state, target) for target in targets))
        finally:
            state.round_in_flight = False
            if self._states.get(state.source.id) is state and state.owned:
                factor = self._random.uniform(1 - JITTER, 1 + JITTER)
                self._reschedule(state, delay=state.policy.interval * factor)

    async def _probe_target(self, state: SourceState, target: TargetState) -> None:
        """Probe one target (the caller has marked it probing) and apply the result."""
        source = state.source
        try:
            async with self._slots:
                state.last_started = target.last_started = self._clock()
                started = time.perf_counter()  # the probe's real duration, for the metrics
                result = await _probe_once(self._prober, target.view, state.policy.timeout)
                if self._on_probe is not None:
                    self._on_probe(source, result, time.perf_counter() - started)
            # Not deleted or changed meanwhile, nor taken over by another gateway.
            if self._states.get(source.id) is state and state.owned:
                self._apply(state, target, result)
        finally:
            target.probing = False


async def _probe_once(prober: Prober, view: DataSource, seconds: float) -> HealthCheck:
    """One probe of one target (`view`: the source at that URL); never raises for its sake."""
    try:
        # The probe bounds itself; this is the backstop if it does not.
        return await asyncio.wait_for(prober(view, seconds), seconds + 1.0)
    except TimeoutError:
        return _failed(view, f"probe did not finish in {seconds:g} s")
    except Exception:  # a probe bug must not stop the monitor
        log.exception("probe_crashed", source_uid=view.uid)
        # The details are in the log; the message users see names no Python class.
        return _failed(view, "the probe failed unexpectedly (details in the gateway log)")


async def wait_for_event(event: asyncio.Event, seconds: float | None) -> None:
    """The real WaitForEvent: until `event` is set or `seconds` (None: no limit) have passed."""
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that comes
    # as the event is set, and the monitor's loop would then never stop.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def current_health(
    monitor: HealthMonitor | None, source: DataSource, prober: Prober, default_timeout: float
) -> HealthCheck:
    """What every health endpoint serves: the monitor's state, else one probe of each target
    now. Never raises for a probe's sake: a crashed probe is a failed HealthCheck.

    On-demand results are also given to the monitor, so they count as the first results.
    """
    if (unprobed := not_probed_check(source)) is not None:
        return unprobed  # nothing to probe: not even on demand
    if monitor is not None:
        latest = monitor.latest(source.id)
        if latest is not None:
            return latest
    state = monitor.state(source.id) if monitor is not None else None
    seconds = state.policy.timeout if state is not None else default_timeout
    views = target_views(source, source.target_urls or (source.url,))
    results = await asyncio.gather(*(_probe_once(prober, v, seconds) for v in views.values()))
    by_url = dict(zip(views, results, strict=True))
    if monitor is not None:
        for url, result in by_url.items():
            monitor.record(source, result, url)
    if len(by_url) == 1:
        return results[0]
    labelled = [(target_label(url), result) for url, result in by_url.items()]
    return combined_check(source.name, labelled, len(labelled))


def _failed(source: DataSource, message: str) -> HealthCheck:
    return {
        "name": source.name,
        "status": "fail",
        "message": message,
        "checks": [{"name": "probe", "status": "fail", "message": message}],
    }

"""A fake monotonic clock for HealthMonitor: tests move time on instead of sleeping through it.

`Schedule` advances the clock the way an event simulator does: only while the monitor is idle
(waiting on the clock, no probe in flight) and straight to the end of its wait, so a test covers
seconds of schedule in milliseconds. Probes stay real HTTP requests; while one is in flight the
fake clock stands still, so a bound like "fail within interval * fall" is checked in schedule time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from gateway.health.monitor import HealthMonitor

REAL_LIMIT = 10.0  # real seconds a Schedule may take: only a loaded machine comes near it


class FakeClock:
    """A HealthMonitor `clock` (call it) and `wait` (the `wait` method) that move only on demand."""

    def __init__(self, start: float = 100.0) -> None:
        self._now = start
        self._waits: dict[asyncio.Event, float] = {}  # event waited on → when its wait ends

    def __call__(self) -> float:
        return self._now

    async def wait(self, event: asyncio.Event, seconds: float | None) -> None:
        if seconds is not None and seconds <= 0:
            return
        self._waits[event] = math.inf if seconds is None else self._now + seconds
        try:
            await event.wait()
        finally:
            del self._waits[event]

    def next_wait_end(self) -> float | None:
        """When the earliest wait in progress ends; None while nobody waits on the clock."""
        return min((end for event, end in self._waits.items() if not event.is_set()), default=None)

    def advance_to(self, moment: float) -> None:
        self._now = max(self._now, moment)
        for event, end in self._waits.items():
            if end <= self._now:
                event.set()


@dataclass(frozen=True, slots=True)
class Schedule:
    """A monitor running on a FakeClock, and the means to move its schedule on."""

    monitor: HealthMonitor
    clock: FakeClock

    async def run_until(self, condition: Callable[[], object], within: float) -> float:
        """Move the schedule on until `condition()` holds; the fake seconds that took. Fails
        the test if it needs more than `within` fake seconds."""
        started = self.clock()
        if not await self._advance(condition, until=started + within):
            pytest.fail(f"not within {within} s of schedule: {condition}")
        return self.clock() - started

    async def let_pass(self, seconds: float) -> None:
        """Run `seconds` of schedule: every probe due meanwhile happens."""
        await self._advance(lambda: False, until=self.clock() + seconds)

    async def _advance(self, condition: Callable[[], object], until: float) -> bool:
        real_deadline = time.monotonic() + REAL_LIMIT
        while not condition():
            if time.monotonic() > real_deadline:
                pytest.fail(f"schedule stuck for {REAL_LIMIT} real seconds")
            wait_end = self.clock.next_wait_end()
            if wait_end is None or any(state.probing for state in self.monitor.states()):
                await asyncio.sleep(0.001)  # the monitor is syncing or probing: real work
                continue
            if self.clock() >= until:
                return False
            self.clock.advance_to(min(wait_end, until))
            await asyncio.sleep(0)
        return True

"""Time as a front connection needs it: one re-armable timer, and the `Date` field value.

A connection has one deadline at a time (the request head's, the idle keep-alive's, or the
lingering close's), so it has one timer. Re-arming it for each request would cost a
`TimerHandle` per request; instead a new deadline is only recorded, and the timer, which never
waits longer than `period`, re-arms itself when it fires early. `period` is the shorter of the
connection's timeouts, so the timer always fires before any new deadline is due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Final

# What the deadline is for (the `kind` passed to the expiry callback).
HEAD: Final = 0
IDLE: Final = 1
LINGERING: Final = 2

# A timer may fire this much before its deadline without being re-armed for the rest.
_SLACK: Final = 0.001


def _nothing(kind: int) -> None:
    pass


class ConnectionTimer:
    """Calls `expired(kind)` once the deadline last armed passes (unless it was cleared).

    `deadline` is public so that the hot path clears it with a plain store (`= None`): the timer
    then finds nothing due when it fires, and the next `arm` schedules a new one if needed.
    """

    __slots__ = ("_expired", "_handle", "_loop", "_period", "deadline", "kind")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, period: float, expired: Callable[[int], None]
    ) -> None:
        self._loop = loop
        self._period = period
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.kind = IDLE

    def arm(self, delay: float, kind: int) -> None:
        now = self._loop.time()
        self.deadline = deadline = now + delay
        self.kind = kind
        handle = self._handle
        if handle is None or handle.when() > deadline:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(min(deadline, now + self._period), self._fire)

    def stop(self) -> None:
        """For good: the connection is gone (this also drops the reference back to it)."""
        self.deadline = None
        self._expired = _nothing
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is None:
            return  # the deadline passed out of use; the next one arms a new timer
        now = self._loop.time()
        if now < deadline - _SLACK:
            self._handle = self._loop.call_at(min(deadline, now + self._period), self._fire)
            return
        self.deadline = None
        self._expired(self.kind)


class HttpDate:
    """`Date` field values, formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


http_date: Final = HttpDate()

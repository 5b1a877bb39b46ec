"""Waking whoever waits on a connection's event: body chunks, drained writes, closed connections.

The front server's objects wait on bare futures (one at most per event, created only when
someone actually waits) rather than on `asyncio.Event`s, which would cost an object each per
request; this is the one way they are woken.
"""

from __future__ import annotations

import asyncio


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolve `waiter` if someone is waiting on it and it is not resolved yet."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)

"""The live front connections of one listening socket, so that a shutdown can drain them.

A `FrontProtocol` registers itself when its connection is made and leaves when the connection is
lost or handed to aiohttp; a handler task still running when its connection was lost (cleaning
up, say) is tracked until it ends, so that `shutdown` waits for it too.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from gateway.front.waiting import wake


class DrainableConnection(Protocol):
    """What a shutdown needs from a connection."""

    def begin_shutdown(self) -> None:
        """Close now if idle, else after the exchange in progress."""

    def kill(self) -> None:
        """Abort the connection and cancel its handler."""


class FrontConnections:
    """The live `FrontProtocol` connections of one listening socket."""

    __slots__ = ("_closing", "_live", "_tasks", "_waiter")

    def __init__(self) -> None:
        self._live: set[DrainableConnection] = set()
        # Handler tasks still running after their connection was lost (cleaning up, say).
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a cap
        """Close every connection: idle ones now, busy ones after their exchange in progress.

        After `timeout` seconds the rest are aborted and their handler tasks cancelled and awaited.
        Connections made from now on are closed at once.
        """
        self._closing = True
        for conn in list(self._live):
            conn.begin_shutdown()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while self._live or self._tasks:
                    self._waiter = loop.create_future()
                    await self._waiter
        except TimeoutError:
            pass
        finally:
            self._waiter = None
        for conn in list(self._live):
            conn.kill()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0)  # let the aborted transports report connection_lost
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def add(self, conn: DrainableConnection) -> bool:
        """Track a new connection; False when shutting down (the caller closes it)."""
        if self._closing:
            return False
        self._live.add(conn)
        return True

    def discard(self, conn: DrainableConnection, task: asyncio.Task[None] | None) -> None:
        """The connection is gone (or handed off); `task`, its handler, may still be running."""
        self._live.discard(conn)
        if task is not None and not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        if not self._live and not self._tasks:
            wake(self._waiter)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._live and not self._tasks:
            wake(self._waiter)

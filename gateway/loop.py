"""The event loop the gateway runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv) makes the proxied hot path markedly cheaper per request (bench/README.md); it is
a dependency on Linux and macOS, and the gateway behaves the same on either loop (the test suite
runs on uvloop, and the front server's tests on both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def event_loop_factory() -> LoopFactory | None:
    """uvloop's loop factory, or None for asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # not installable on this platform: asyncio's loop does the same job
        return None
    return uvloop.new_event_loop

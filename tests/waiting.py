"""Waiting on a condition instead of sleeping for a fixed time and hoping it happened by then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

POLL_SECONDS = 0.01
# Long enough for a loaded CI machine; a passing test returns as soon as the condition holds.
DEFAULT_TIMEOUT = 5.0


async def wait_for(
    condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> None:
    """Return as soon as `condition()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or condition}")
        await asyncio.sleep(POLL_SECONDS)


def wait_for_sync(
    condition: Callable[[], object], timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> None:
    """`wait_for` for code outside the event loop (threads, processes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or condition}")
        time.sleep(POLL_SECONDS)

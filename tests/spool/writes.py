"""Writes for the spool tests: realistic line protocol, each body derivable from its number so
that another process can check the exact bytes."""

from __future__ import annotations

import gzip
import random
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.spool import SpooledWrite, TargetKey, WritePath

TARGET = TargetKey(source_id=1, url="http://influx-a:8086")
OTHER = TargetKey(source_id=2, url="http://influx-b:8086")


def line_protocol(number: int, lines: int = 20) -> bytes:
    """`lines` points of a plausible cpu measurement; values vary with `number`."""
    rng = random.Random(number)
    stamp = 1_700_000_000_000_000_000 + number * 1_000_000_000
    return "".join(
        f"cpu,host=server{rng.randrange(100):03d},region=eu-west,cpu=cpu{line % 4} "
        f"usage_user={rng.uniform(0, 100):.2f},usage_system={rng.uniform(0, 30):.2f},"
        f"usage_idle={rng.uniform(0, 100):.2f},seq={number}i {stamp + line}\n"
        for line in range(lines)
    ).encode()


def numbered_write(number: int, target: TargetKey = TARGET) -> SpooledWrite:
    """Odd numbers: a gzipped v2 write; even: a plain v1 write."""
    body = line_protocol(number)
    if number % 2:
        return SpooledWrite(
            target,
            WritePath.V2,
            {"org": "acme", "bucket": "telegraf/autogen", "precision": "ns"},
            gzip.compress(body, mtime=0),
            content_type="text/plain; charset=utf-8",
            content_encoding="gzip",
        )
    return SpooledWrite(
        target, WritePath.V1, {"db": "telegraf", "rp": "autogen", "consistency": "one"}, body
    )


async def eventually(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """`tests.waiting.wait_for` for a condition that has to ask the spool."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what or condition}")

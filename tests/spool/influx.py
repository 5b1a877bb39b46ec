"""A real influxd 1.x of the test's own, which the test may kill and start again (an outage):
the session's `influxdb` is shared by a worker's tests and must stay up.

Built from the session fixture's pieces (tests/services/influxdb.py): same generated config,
auth on, an admin user. `kill()` is SIGKILL; `start()` runs it again on the same port, config
and data (what it had acknowledged is still there). `freeze()` is SIGSTOP (the kernel still
accepts connections and takes request bytes, nothing answers) and `thaw()` SIGCONT.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.services.influxdb import (
    InfluxDB1,
    _create_admin,
    _start,
    _stop,
    _wait_until_up,
    quote_ident,
)


class InfluxProcess:
    def __init__(self, binary: str, root: Path) -> None:
        self._binary = binary
        self._root = root
        self.process, self.server = _start(binary, root)
        problem = _wait_until_up(self.process, self.server) or _create_admin(self.server)
        if problem:
            _stop(self.process)
            raise RuntimeError(f"influxd did not start: {problem}")

    @property
    def url(self) -> str:
        return self.server.url

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def start(self) -> None:
        """Run influxd again on its config (same port and data)."""
        assert self.process.poll() is not None, "still running"
        with self.server.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self._binary, "run", "-config", str(self._root / "influxdb.conf")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        problem = _wait_until_up(self.process, self.server)
        if problem:
            raise RuntimeError(f"influxd did not start again: {problem}")

    def stop(self) -> None:
        self.thaw()  # a stopped process would not act on SIGTERM
        _stop(self.process)

    async def create_database(self) -> str:
        return await self.server.create_database()

    async def select(self, db: str, statement: str) -> list[list[Any]]:
        """The rows of a one-series answer ([] when there is none)."""
        answer = await self.server.query(statement.replace("$db", quote_ident(db)))
        (result,) = answer["results"]
        series = result.get("series", [])
        rows: list[list[Any]] = [row for one in series for row in one["values"]]
        return rows


StartInflux = Callable[[], Awaitable[InfluxProcess]]


@pytest.fixture
async def start_influx(tmp_path: Path) -> AsyncIterator[StartInflux]:
    """`await start_influx()`: a new influxd of this test's own; all stopped after the test."""
    binary = shutil.which("influxd")
    if binary is None:
        pytest.skip("influxd is not installed (Debian package `influxdb`)")
    started: list[InfluxProcess] = []

    async def start() -> InfluxProcess:
        root = tmp_path / f"influxd-{len(started)}"
        influx = await asyncio.to_thread(InfluxProcess, binary, root)
        started.append(influx)
        return influx

    yield start
    for influx in started:
        await asyncio.to_thread(influx.stop)


__all__ = ["InfluxDB1", "InfluxProcess", "StartInflux", "start_influx"]

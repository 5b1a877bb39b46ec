"""A PostgreSQL of the test's own, which the test may stop, start, freeze and thaw.

The session's server (tests/services/postgres.py) is shared by every test of an xdist worker,
so a test that takes PostgreSQL away gets a server of its own instead: `initdb` in a fresh
directory, a free loopback port, run as `nobody` when the tests run as root — the same steps,
from the same module.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.postgres import (
    START_ATTEMPTS,
    PostgresServer,
    _as_unprivileged,
    _binaries,
    _free_port,
    _initdb_args,
    _run,
    _start,
)


class OwnPostgres:
    """One PostgreSQL server; `url` names its `postgres` database."""

    def __init__(self, binaries: Path, prefix: list[str], root: Path) -> None:
        self._binaries = binaries
        self._prefix = prefix
        self._root = root
        self._data = root / "data"
        self._frozen: list[int] = []
        self.server: PostgresServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url()

    def start(self) -> None:
        """Start; a restart keeps the port, the only one the gateways know."""
        if self.server is not None:
            problem = _start(self._prefix, self._binaries, self._data, self.server, self._root)
            if problem:
                pytest.fail(f"PostgreSQL did not restart: {problem}")
            return
        problem = ""
        for attempt in range(START_ATTEMPTS):
            self.server = PostgresServer(
                host="127.0.0.1",
                port=_free_port(),
                user="postgres",
                socket_dir=self._root,
                log_path=self._root / f"postgres-{attempt}.log",
            )
            problem = _start(self._prefix, self._binaries, self._data, self.server, self._root)
            if not problem:
                return
        pytest.fail(f"PostgreSQL did not start: {problem}")

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: sessions are terminated, the server shuts down cleanly."""
        self.thaw()
        _run([*self._prefix, str(self._binaries / "pg_ctl"), "-D", str(self._data), "-m",
              "fast", "stop"], self._root)  # fmt: skip

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers."""
        pids = self._processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self._frozen = pids

    def thaw(self) -> None:
        for pid in self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    def _processes(self) -> list[int]:
        postmaster = int((self._data / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The parent pid is the 2nd field after the parenthesised command name.
            if int(stat.rpartition(")")[2].split()[1]) == postmaster:
                children.append(int(entry.name))
        return [postmaster, *children]


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    binaries = _binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`)")
    privileges = _as_unprivileged()
    prefix = privileges[0] if privileges else []
    root = Path(tempfile.mkdtemp(prefix="gw-pg-own-"))
    try:
        if privileges:
            os.chown(root, privileges[1], privileges[2])
        _run([*prefix, str(binaries / "initdb"), *_initdb_args(root / "data")], root)
        server = OwnPostgres(binaries, prefix, root)
        server.start()
        try:
            yield server
        finally:
            server.thaw()
            if (root / "data" / "postmaster.pid").exists():
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)

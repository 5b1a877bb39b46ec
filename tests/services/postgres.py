"""A real PostgreSQL for the registry tests, started once per test session (per xdist worker).

`postgres_server` (session): `initdb` + `pg_ctl start` in a fresh temp directory, listening on a
free loopback port (and a unix socket in that directory), trust authentication for the
superuser `postgres`, durability off (fsync, synchronous_commit) since nothing outlives the
session. PostgreSQL refuses to run as root, so when the tests do, the server runs as `nobody`
(through `runuser`, else `setpriv`) in a directory handed to that user. When the binaries are
not installed the fixture skips, naming the Debian package (`postgresql`).

`postgres_url` (per test): a fresh database on that server (CREATE DATABASE with a unique name,
so tests never see each other's rows), dropped after the test; its `postgresql://` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

START_TIMEOUT_SECONDS = 30
START_ATTEMPTS = 3  # a free port may be taken by someone else between probing and binding
UNPRIVILEGED_USER = "nobody"
SUPERUSER = "postgres"
T = TypeVar("T")


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL: where it listens, and helpers to make and drop databases."""

    host: str
    port: int
    user: str
    socket_dir: Path
    log_path: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements as the superuser, each on its own (CREATE DATABASE cannot be inside
        a transaction)."""
        conn = await asyncpg.connect(self.url(database))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    def create_database(self) -> str:
        name = f"test_{secrets.token_hex(6)}"
        _run_coroutine(lambda: self.execute(f'CREATE DATABASE "{name}"'))
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a connection a test left open must not keep its database alive.
        _run_coroutine(lambda: self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _run_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end from synchronous fixture code, on a loop of its own in a
    thread: the test's loop may be set (not running) in this one, and must stay untouched."""
    results: list[T] = []
    errors: list[BaseException] = []

    async def main() -> None:
        results.append(await make())

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="postgres-fixture")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def _binaries() -> Path | None:
    """The directory with initdb, pg_ctl and postgres: Debian keeps them out of PATH, under
    /usr/lib/postgresql/<major>/bin (newest major first)."""
    candidates = [Path(path).parent for path in [shutil.which("pg_ctl")] if path]
    candidates.append(Path("/usr/local/bin"))
    candidates += sorted(
        (Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if all((directory / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _as_unprivileged() -> tuple[list[str], int, int] | None:
    """How to run a command as a user that is not root, and that user's uid and gid; None when
    we are not root (the binaries run as we are)."""
    if os.geteuid() != 0:
        return None
    account = pwd.getpwnam(UNPRIVILEGED_USER)
    if shutil.which("runuser"):
        prefix = ["runuser", "-u", UNPRIVILEGED_USER, "--"]
    else:
        prefix = [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            "--",
        ]
    return prefix, account.pw_uid, account.pw_gid


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL; see this module's docstring."""
    binaries = _binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (Debian package `postgresql`)")
    privileges = _as_unprivileged()
    prefix = privileges[0] if privileges else []
    # Not under pytest's basetemp: that is the test user's alone (0700), and `nobody` could not
    # reach the directory through it. A short path, too: unix socket paths are limited.
    root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    try:
        if privileges:
            os.chown(root, privileges[1], privileges[2])
        data = root / "data"
        _run([*prefix, str(binaries / "initdb"), *_initdb_args(data)], root)
        problem = ""
        for attempt in range(START_ATTEMPTS):
            server = PostgresServer(
                host="127.0.0.1",
                port=_free_port(),
                user=SUPERUSER,
                socket_dir=root,
                log_path=root / f"postgres-{attempt}.log",
            )
            problem = _start(prefix, binaries, data, server, root)
            if not problem:
                break
        else:
            pytest.fail(f"PostgreSQL did not start: {problem}")
        try:
            yield server
        finally:
            _run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database of its own on the session's server."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


def _initdb_args(data: Path) -> list[str]:
    return [
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]


def _start(prefix: list[str], binaries: Path, data: Path, server: PostgresServer, cwd: Path) -> str:
    """'' once the server accepts connections; else why not."""
    options = " ".join(
        [
            "-c listen_addresses=127.0.0.1",
            f"-c port={server.port}",
            f"-c unix_socket_directories={server.socket_dir}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
        ]
    )
    command = [
        *prefix,
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(server.log_path),
        "-o",
        options,
        "-w",
        "-t",
        str(START_TIMEOUT_SECONDS),
        "start",
    ]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return ""
    log = server.log_path.read_text() if server.log_path.exists() else ""
    return f"pg_ctl exited with {result.returncode}: {result.stderr.strip()} {log[-2000:]}"


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed ({result.returncode}): {result.stderr[-2000:]}")


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


__all__ = ["PostgresServer", "postgres_server", "postgres_url"]

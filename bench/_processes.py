"""What the benchmarks that run real processes share: starting children that die with the script,
waiting until one answers, stopping them all, a gateway of their own on a free port, and the
script's temporary directory and exit code.

Imported by `bench/failover.py` and `bench/write_spool.py`, which run as scripts
(`.venv/bin/python bench/failover.py`): Python puts `bench/` on the path, so this module needs no
package, and the benchmarks keep needing nothing from the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

HOST = "127.0.0.1"


class BenchError(Exception):
    """Something the benchmark needs did not work; printed as one line, exit code 1."""


def _die_with_parent() -> None:
    """Runs in each child before exec: SIGKILL it if this script dies (even by kill -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Processes:
    """Every child this script started; `stop_all` ends those still alive (also frozen ones)."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """`argv` with its output appended to `log_path`, in `cwd` (by default the log's
        directory)."""
        # Called from the main thread only: PR_SET_PDEATHSIG fires when the *thread* that forked
        # the child ends.
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd if cwd is not None else log_path.parent,
                start_new_session=True,  # Ctrl-C reaches only this script, which stops them
                preexec_fn=_die_with_parent,
            )
        self._children.append(child)
        return child

    def stop_all(self, grace: float = 5.0) -> None:
        alive = [child for child in self._children if child.poll() is None]
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in alive:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                child.wait(timeout=5)
        self._children.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_ready(
    http: aiohttp.ClientSession,
    url: str,
    child: subprocess.Popen[bytes],
    what: str,
    log_path: Path,
    timeout: float = 30.0,
) -> None:
    """Until `url` answers 2xx; fails early when the process exits."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise BenchError(
                f"{what} exited with code {child.returncode}; its log ({log_path}):\n"
                + log_tail(log_path)
            )
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if 200 <= response.status < 300:
                    return
                last = f"status {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    raise BenchError(f"{what} did not answer {url} within {timeout:g} s ({last})")


# --- a gateway of the benchmark's own -------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySetup:
    directory: Path  # its data dir, provisioning dir and config file are in here
    url: str
    token: str  # the admin token
    env: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def gateway_setup(workdir: Path, settings: Mapping[str, str]) -> GatewaySetup:
    """A directory, a free port and an admin token for `python -m gateway serve`, and its
    environment: this one's without any GATEWAY_* of the caller's, then every setting at its
    default (an empty config file, not the repository's) but these and `settings`."""
    directory = workdir / "gateway"
    (directory / "provisioning").mkdir(parents=True)
    config = directory / "gateway.toml"
    config.write_text("# benchmark: every setting at its default, the rest from GATEWAY_*\n")
    token = "dsg_bench_" + secrets.token_urlsafe(24)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_DATA_DIR": str(directory / "data"),
            "GATEWAY_PROVISIONING_PATH": str(directory / "provisioning"),
            "GATEWAY_ADMIN_TOKEN": token,
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(port),
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_DRAIN_TIMEOUT": "2",
            **settings,
        }
    )
    return GatewaySetup(directory, f"http://{HOST}:{port}", token, env)


async def post_source(
    http: aiohttp.ClientSession, gateway_url: str, auth: Mapping[str, str], body: dict[str, Any]
) -> str:
    """The uid of a source created through Grafana's API."""
    async with http.post(f"{gateway_url}/api/datasources", json=body, headers=auth) as response:
        text = await response.text()
        if response.status != 200:
            raise BenchError(f"creating the source: {response.status} {text[:300]}")
        return str((await response.json())["datasource"]["uid"])


# --- the script ---------------------------------------------------------------------------------


def run_bench(
    prefix: str,
    body: Callable[[Path], Coroutine[Any, Any, None]],
    *,
    keep: bool,
    cleanup: Callable[[], None] = lambda: None,
) -> int:
    """`body(workdir)` in a fresh temporary directory (removed after, unless `keep`); the exit
    code: 0 whatever the figures, 1 when the benchmark could not run, 130 on Ctrl-C.
    `cleanup` runs in every case, before the directory goes."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        asyncio.run(body(workdir))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: everything stopped", file=sys.stderr)
        return 130
    finally:
        cleanup()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal run time {time.monotonic() - started:.1f} s")
    return 0

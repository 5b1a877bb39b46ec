"""Fixtures that start Debian's Prometheus (`/usr/bin/prometheus`) as a real upstream.

- `prometheus_url`: one open Prometheus per test session (per xdist worker), for read-only tests.
- `prometheus_basic_auth_url`: the same, but its web config demands basic auth as
  `PROMETHEUS_USER` / `PROMETHEUS_PASSWORD`.
- `start_prometheus`: a factory for a process a test may `stop()` and `start()` again on the same
  port (to see an upstream die and come back); everything it starts is stopped after the test.

Each process listens on a free loopback port, keeps its TSDB in its own temp dir and scrapes
nothing, so parallel workers never share a port, a file or a target. Tests skip, saying why, when
the binary is missing.
"""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_for_sync

PROMETHEUS_BINARY = "prometheus"
PROMETHEUS_USER = "gateway"
PROMETHEUS_PASSWORD = "s3cret-prom-pass"
# bcrypt of PROMETHEUS_PASSWORD, as Prometheus's web config wants it. Cost 4 (the minimum) keeps
# each authenticated request cheap; made once with bcrypt, since the stdlib has no bcrypt.
_PASSWORD_BCRYPT = "$2b$04$512CmQE4.WvLbdYcct5Qa.DVSTe.ikFqyl/XlQevYKUiyCwC7Alkm"

_CONFIG = """\
global:
  scrape_interval: 1m
  evaluation_interval: 1m
scrape_configs: []
"""
_READY_TIMEOUT_SECONDS = 30.0
_STOP_TIMEOUT_SECONDS = 10.0
_START_ATTEMPTS = 3  # a free port can be taken by another worker before Prometheus binds it


class PrometheusProcess:
    """One Prometheus on 127.0.0.1:<port> with its own config and storage under `directory`."""

    def __init__(self, directory: Path, *, basic_auth: bool = False) -> None:
        self.directory = directory
        self.basic_auth = basic_auth
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(_CONFIG)
        if basic_auth:
            web_config = f"basic_auth_users:\n  {PROMETHEUS_USER}: {_PASSWORD_BCRYPT}\n"
            (directory / "web.yml").write_text(web_config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "prometheus.log"

    def start(self) -> None:
        """Start (or restart) on the same port, and return once /-/ready answers 200."""
        if self._process is not None:
            raise RuntimeError("Prometheus is already running")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        self._wait_until_ready()

    def stop(self) -> None:
        """Terminate and wait: afterwards the port refuses connections."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen one could not act on SIGTERM
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown, connections reset; `start()` again later."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def freeze(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing ever answers."""
        process = self._process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        # The signal is delivered asynchronously: until the process shows as stopped it may
        # still answer, and a test would count a frozen replica's answer.
        wait_for_sync(lambda: _state(process.pid) == "T", what="prometheus stopped")

    def thaw(self) -> None:
        """SIGCONT after `freeze`."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _command(self) -> list[str]:
        command = [
            PROMETHEUS_BINARY,
            f"--config.file={self.directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        if self.basic_auth:
            command.append(f"--web.config.file={self.directory / 'web.yml'}")
        return command

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        request = urllib.request.Request(f"{self.url}/-/ready")
        if self.basic_auth:
            token = base64.b64encode(f"{PROMETHEUS_USER}:{PROMETHEUS_PASSWORD}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise PrometheusExited(self.log_file.read_text(errors="replace")[-2000:])
            try:
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or still starting (503)
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"Prometheus on {self.url} not ready in {_READY_TIMEOUT_SECONDS:g} s")


class PrometheusExited(RuntimeError):
    """Prometheus stopped while starting; the message is the end of its log."""


def launch_prometheus(directory: Path, *, basic_auth: bool = False) -> PrometheusProcess:
    """A started Prometheus, retrying on a fresh port if the chosen one was taken meanwhile."""
    if shutil.which(PROMETHEUS_BINARY) is None:
        pytest.skip("Debian's `prometheus` binary is not installed (apt-get install prometheus)")
    for attempt in range(1, _START_ATTEMPTS + 1):
        process = PrometheusProcess(directory / f"attempt-{attempt}", basic_auth=basic_auth)
        try:
            process.start()
        except PrometheusExited:
            if attempt == _START_ATTEMPTS:
                raise
            continue
        return process
    raise AssertionError("unreachable: the last attempt raises")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = launch_prometheus(tmp_path_factory.mktemp("prometheus"))
    yield process.url
    process.stop()


@pytest.fixture(scope="session")
def prometheus_basic_auth_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process = launch_prometheus(tmp_path_factory.mktemp("prometheus-auth"), basic_auth=True)
    yield process.url
    process.stop()


StartPrometheus = Callable[..., PrometheusProcess]


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[StartPrometheus]:
    """`start_prometheus(basic_auth=False)` → a running `PrometheusProcess`, stopped afterwards."""
    started: list[PrometheusProcess] = []

    def start(*, basic_auth: bool = False) -> PrometheusProcess:
        process = launch_prometheus(tmp_path / f"prometheus-{len(started)}", basic_auth=basic_auth)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]

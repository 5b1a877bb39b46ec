"""`gateway serve --workers N` with real processes: shared port, shared metrics, drain, restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.process import gateway_env, run_cli
from tests.upstreams import free_port
from tests.waiting import wait_for_sync


class Workers:
    def __init__(
        self, data_dir: Path, count: int, env: dict[str, str | None] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / "workers.log"
        environment = gateway_env(data_dir, {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})})
        with self.log.open("w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--workers", str(count),
                 "--port", str(self.port)],
                env=environment, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        self.wait_until(lambda: len(self.events("gateway_listening")) == count, 20)

    def events(self, name: str) -> list[dict[str, object]]:
        records = []
        for line in self.log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                records.append(record)
        return records

    def wait_until(self, condition: object, seconds: float) -> None:
        assert callable(condition)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("not reached; log:\n" + self.log.read_text()[-3000:])

    def get(self, path: str) -> tuple[int, str]:
        request = Request(self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()

    def stop(self) -> None:
        """SIGTERM (the supervisor stops its workers), SIGKILL only if that hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def worker_pids(self) -> list[int]:
        children = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=True
        )
        return [int(pid) for pid in children.stdout.split()]


@pytest.fixture
def workers(data_dir: Path) -> Iterator[Workers]:
    running = Workers(data_dir, 2)
    yield running
    running.stop()


def test_two_workers_share_the_port_and_the_metrics(workers: Workers) -> None:
    for _ in range(40):
        assert workers.get("/api/datasources")[0] == 200
    served_by = {
        r.get("worker") for r in workers.events("request") if r["path"] == "/api/datasources"
    }
    assert served_by == {0, 1}  # the kernel spread the connections over both
    _, text = workers.get("/metrics")
    line = next(
        line for line in text.splitlines()
        if line.startswith("gateway_api_requests_total{") and 'route="/api/datasources"' in line
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) == 40  # whichever worker answered the scrape


def test_sigterm_drains_every_worker_and_exits_0(workers: Workers) -> None:
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(20) == 0
    assert len(workers.events("gateway_stopped")) == 2


def test_a_worker_that_dies_is_replaced(workers: Workers) -> None:
    first = {r["worker"]: r for r in workers.events("gateway_listening")}
    assert set(first) == {0, 1}
    os.kill(workers.worker_pids()[0], signal.SIGKILL)
    workers.wait_until(lambda: len(workers.events("gateway_listening")) == 3, 20)
    assert workers.events("worker_exited")
    assert workers.get("/ready")[0] == 200


def test_port_zero_cannot_be_shared(tmp_path: Path) -> None:
    result = run_cli("serve", "--workers", "2", "--port", "0", data_dir=tmp_path / "data")
    assert result.returncode == 2
    assert "several workers cannot share port 0" in result.stderr


def test_a_restart_that_cannot_start_keeps_the_others_serving(tmp_path: Path) -> None:
    """A provisioning file broken while running stops a restarted worker, not the gateway."""
    files = tmp_path / "provisioning"
    files.mkdir()
    (files / "ok.yaml").write_text("apiVersion: 1\ndatasources: []\n")
    workers = Workers(tmp_path / "data", 2, {"GATEWAY_PROVISIONING_PATH": str(files)})
    try:
        (files / "ok.yaml").write_text("apiVersion: 1\ndatasources:\n  - name: [\n")
        os.kill(workers.worker_pids()[0], signal.SIGKILL)
        workers.wait_until(lambda: len(workers.events("worker_exited")) >= 2, 20)
        assert workers.proc.poll() is None  # the supervisor and the other worker carry on
        assert workers.get("/ready")[0] == 200
        first, second = (record["restart_in"] for record in workers.events("worker_exited")[:2])
        assert isinstance(first, float)  # seconds, from JSON
        assert isinstance(second, float)
        assert second > first  # backing off, not spinning
        (files / "ok.yaml").write_text("apiVersion: 1\ndatasources: []\n")
        workers.wait_until(lambda: len(workers.events("gateway_listening")) == 3, 30)
    finally:
        workers.stop()


def test_only_one_worker_counts_and_logs_state_changes(data_dir: Path) -> None:
    workers = Workers(data_dir, 2, {"GATEWAY_HEALTH_INTERVAL": "0.5"})
    try:
        body = json.dumps(
            {"name": "down", "type": "generic", "access": "proxy",
             "url": f"http://127.0.0.1:{free_port()}"}
        ).encode()  # fmt: skip
        request = Request(
            workers.url + "/api/datasources",
            data=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
        )
        with urlopen(request, timeout=5) as response:
            assert response.status == 200
        workers.wait_until(lambda: workers.events("source_unhealthy"), 10)
        # Not a wait for a state: the behaviour under test is that nothing more is logged while
        # both workers probe it several times (4 intervals).
        time.sleep(2)
        assert len(workers.events("source_unhealthy")) == 1
        _, text = workers.get("/metrics")
        line = next(
            line for line in text.splitlines()
            if line.startswith("gateway_health_transitions_total{") and 'to="down"' in line
        )  # fmt: skip
        assert float(line.rsplit(" ", 1)[1]) == 1
    finally:
        workers.stop()


def test_workers_leave_when_their_supervisor_is_killed(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == 2
    workers.proc.kill()  # SIGKILL: the supervisor cannot forward anything
    workers.proc.wait()
    wait_for_sync(lambda: not any(_alive(pid) for pid in pids), timeout=15)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie already exited; only its entry is left for the (gone) parent to reap.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()

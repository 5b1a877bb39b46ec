"""The real `gateway` command in a subprocess: start-up errors, the CLI, logs, SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import ADMIN_TOKEN, SECRET_KEY


def gateway_env(data_dir: Path, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """A clean environment: no GATEWAY_* from the caller, our data dir and keys.

    In `extra`, a None value removes the variable.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    # No GATEWAY_CONFIG: the default path is relative to the working directory, which for the
    # tests is the repository: its config/gateway.toml states exactly the defaults.
    env.update(
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_SECRET_KEY=SECRET_KEY,
        GATEWAY_LOG_FORMAT="json",
        # `serve` listens before it opens anything else: never the fixed default port, which
        # another test (or a gateway the developer runs) may hold.
        GATEWAY_PORT="0",
    )
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    *args: str, data_dir: Path, env: Mapping[str, str | None] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=gateway_env(data_dir, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class GatewayProcess:
    """`gateway serve` on a free port, its JSON log lines collected as they come."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str | None] | None = None,
        *,
        prefix: Sequence[str] = (),
    ) -> None:
        """`prefix`: a command that runs the gateway's (e.g. `prlimit --nofile=…` --), execing
        it in the same process."""
        extra: dict[str, str | None] = {
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY_PORT": "0",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "gateway", "serve"],
            env=gateway_env(data_dir, extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_for("gateway_listening", timeout=20)
        port = listening["port"]
        assert isinstance(port, int), listening
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def events(self) -> list[dict[str, object]]:
        parsed = []
        for line in list(self.lines):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                parsed.append({"event": "<not json>", "line": line})
        return parsed

    def wait_for(self, event: str, timeout: float = 10) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.events():
                if record.get("event") == event:
                    return record
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {event!r} log line; output so far:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(2)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

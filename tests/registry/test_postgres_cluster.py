"""Real `gateway` processes on one PostgreSQL registry: the CLI against it, and a change made by
one process (here the CLI) refused by a serving gateway within a second (issue 20)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.process import GatewayProcess, run_cli

FAN_OUT_SECONDS = 1.0


def status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            code: int = response.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_cli_and_two_gateways_share_one_registry(postgres_url: str, tmp_path: Path) -> None:
    env = {"GATEWAY_DATABASE_URL": postgres_url}
    created = run_cli("org", "create", "Team B", data_dir=tmp_path / "cli", env=env)
    assert created.returncode == 0, created.stderr
    first = GatewayProcess(tmp_path / "a", env=env)
    try:
        second = GatewayProcess(tmp_path / "b", env=env)
        try:
            token = run_cli(
                "token", "create", "--org", "Team B", "--role", "viewer",
                data_dir=tmp_path / "cli", env=env,
            ).stdout.strip()  # fmt: skip
            assert token.startswith("dsg_")
            # Both gateways know the token the CLI made (and cache it from here on).
            assert status(f"{first.url}/api/datasources", token) == 200
            assert status(f"{second.url}/api/datasources", token) == 200
            listed = run_cli("token", "list", data_dir=tmp_path / "cli", env=env).stdout
            token_id = next(line.split()[0] for line in listed.splitlines() if "Team B" in line)
            revoked = run_cli("token", "revoke", token_id, data_dir=tmp_path / "cli", env=env)
            assert revoked.returncode == 0, revoked.stderr
            start = time.monotonic()
            for gateway in (first, second):
                while status(f"{gateway.url}/api/datasources", token) != 401:
                    assert time.monotonic() - start < FAN_OUT_SECONDS, "still accepted after 1 s"
                    time.sleep(0.01)
        finally:
            assert second.stop() == 0
    finally:
        assert first.stop() == 0
    orgs = run_cli("org", "list", data_dir=tmp_path / "cli", env=env)
    assert "Team B" in orgs.stdout

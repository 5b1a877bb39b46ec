"""Real `gateway` processes on one PostgreSQL registry: the CLI against it, and a change made by
one process (here the CLI) refused by a serving gateway within a second (issue 20)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ADMIN_TOKEN
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


def test_keys_rotate_waits_for_every_gateway_of_the_cluster(
    postgres_url: str, tmp_path: Path
) -> None:
    """A gateway of the cluster on another host keeps the key in memory, where no data directory
    lock can see it: its heartbeat does. One killed counts until its heartbeat is stale."""
    # A member counts as serving for 1.25 intervals after its last heartbeat: 5 s here, long
    # enough for a CLI process to start on a loaded machine, short enough to wait out.
    env = {"GATEWAY_DATABASE_URL": postgres_url, "GATEWAY_HEALTH_INTERVAL": "4"}
    rotate = {**env, "GATEWAY_NEW_SECRET_KEY": "next-key"}
    cli = tmp_path / "cli"
    gateway = GatewayProcess(tmp_path / "a", env=env)
    try:
        refused = run_cli("keys", "rotate", data_dir=cli, env=rotate)
        assert refused.returncode == 2, refused.stderr
        assert "1 gateway(s) serve this registry" in refused.stderr
        assert f"/{gateway.proc.pid}/" in refused.stderr  # the member id names host and pid
        assert "Traceback" not in refused.stderr
        assert status(f"{gateway.url}/api/datasources", ADMIN_TOKEN) == 200  # nothing changed
        gateway.proc.kill()  # no clean leave: its row stays until the heartbeat is stale
        gateway.proc.wait(10)
        still = run_cli("keys", "rotate", data_dir=cli, env=rotate)
        assert still.returncode == 2, still.stderr
        assert "1 gateway(s) serve this registry" in still.stderr
    finally:
        gateway.stop()
    deadline = time.monotonic() + 20
    while (rotated := run_cli("keys", "rotate", data_dir=cli, env=rotate)).returncode != 0:
        assert time.monotonic() < deadline, rotated.stderr
        time.sleep(0.5)
    assert "re-encrypted the secrets of" in rotated.stderr
    assert run_cli("org", "list", data_dir=cli, env=env).returncode == 2  # the old key is out
    renewed = {**env, "GATEWAY_SECRET_KEY": "next-key"}
    assert run_cli("org", "list", data_dir=cli, env=renewed).returncode == 0

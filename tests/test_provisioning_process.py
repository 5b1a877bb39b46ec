"""Provisioning in the real `gateway` command: start-up stops on an invalid file (exit 2, file and
line, no traceback), SIGHUP re-applies all or nothing, and `gateway provision --check`."""

from __future__ import annotations

import json
import signal
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.process import GatewayProcess, run_cli

SECRET = "tok-93b1e0-only-in-the-environment"
REPO_EXAMPLES = Path(__file__).resolve().parent.parent / "config/provisioning/datasources"

GOOD = """
    apiVersion: 1
    prune: true
    datasources:
      - {name: Prometheus, type: prometheus, uid: prom, url: "http://prometheus:9090"}
      - name: Loki
        type: loki
        uid: loki
        url: http://loki:3100
        secureJsonData: {basicAuthPassword: $DSG_TEST_SECRET}
"""
# Line 4 would update Prometheus; line 5 has no type and a secret for a flag, so nothing at
# all may change.
BROKEN = """
    apiVersion: 1
    prune: true
    datasources:
      - {name: Prometheus, type: prometheus, uid: prom, url: "http://prometheus-2:9090"}
      - {name: Tempo, uid: tempo, url: "http://tempo:3200", isDefault: $DSG_TEST_SECRET}
"""
# Prometheus updated, Loki pruned, Tempo created.
FIXED = """
    apiVersion: 1
    prune: true
    datasources:
      - {name: Prometheus, type: prometheus, uid: prom, url: "http://prometheus-2:9090"}
      - {name: Tempo, type: tempo, uid: tempo, url: "http://tempo:3200"}
"""


@pytest.fixture
def env(folder: Path) -> dict[str, str | None]:
    return {"GATEWAY_PROVISIONING_PATH": str(folder), "DSG_TEST_SECRET": SECRET}


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))


def get(gateway: GatewayProcess, path: str) -> Any:
    request = urllib.request.Request(
        gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def registry(gateway: GatewayProcess) -> dict[str, tuple[str, str, int, bool]]:
    """uid → (name, url, version, readOnly), read through the Grafana API."""
    listed = get(gateway, "/api/datasources")
    full = [get(gateway, f"/api/datasources/uid/{item['uid']}") for item in listed]
    return {dto["uid"]: (dto["name"], dto["url"], dto["version"], dto["readOnly"]) for dto in full}


def nth_event(gateway: GatewayProcess, event: str, n: int, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        matching = [record for record in gateway.events() if record.get("event") == event]
        if len(matching) >= n:
            return matching[n - 1]
        time.sleep(0.02)
    raise AssertionError(f"no {event!r} #{n}; output so far:\n" + "\n".join(gateway.lines))


def test_start_up_applies_the_files_and_sighup_applies_them_all_or_nothing(
    tmp_path: Path, folder: Path, env: dict[str, str | None]
) -> None:
    write(folder, "main.yaml", GOOD)
    gateway = GatewayProcess(tmp_path / "data", env)
    try:
        started = nth_event(gateway, "provisioning_applied", 1)
        assert (started["trigger"], started["created"], started["files"]) == ("startup", 2, 1)
        before = registry(gateway)
        assert before == {
            "prom": ("Prometheus", "http://prometheus:9090", 1, True),
            "loki": ("Loki", "http://loki:3100", 1, True),
        }

        write(folder, "main.yaml", BROKEN)
        gateway.proc.send_signal(signal.SIGHUP)
        failed = nth_event(gateway, "provisioning_failed", 1)
        assert (failed["problems"], failed["registry"]) == (2, "unchanged")
        problems = [nth_event(gateway, "provisioning_problem", n)["problem"] for n in (1, 2)]
        assert problems == [
            f"{folder}/main.yaml:5: isDefault: must be a boolean, got a string",
            f"{folder}/main.yaml:5: type: required",
        ]
        assert registry(gateway) == before

        write(folder, "main.yaml", FIXED)
        gateway.proc.send_signal(signal.SIGHUP)
        applied = nth_event(gateway, "provisioning_applied", 2)
        assert applied["trigger"] == "sighup"
        counts = {key: applied[key] for key in ("created", "updated", "deleted", "unchanged")}
        assert counts == {"created": 1, "updated": 1, "deleted": 1, "unchanged": 0}
        assert registry(gateway) == {
            "prom": ("Prometheus", "http://prometheus-2:9090", 2, True),
            "tempo": ("Tempo", "http://tempo:3200", 1, True),
        }
        assert gateway.proc.poll() is None
    finally:
        assert gateway.stop() == 0
    assert SECRET not in "\n".join(gateway.lines)


def test_an_invalid_file_stops_start_up_with_file_line_and_exit_code_2(
    tmp_path: Path, folder: Path, env: dict[str, str | None]
) -> None:
    write(
        folder,
        "bad.yaml",
        """
        apiVersion: 1
        datasources:
          - name: Prometheus
            type: prometheus
            url: http://reader:${DSG_TEST_SECRET}@bad host:9090
            secureJsonData: {password: $DSG_TEST_SECRET, token: $DSG_TEST_MISSING}
        """,
    )
    result = run_cli("serve", data_dir=tmp_path / "data", env={**env, "GATEWAY_PORT": "0"})
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"gateway: provisioning ({folder}): 2 problem(s), nothing was applied:\n"
        f"  {folder}/bad.yaml:5: url: must not contain spaces, control characters or "
        "backslashes\n"
        f"  {folder}/bad.yaml:6: secureJsonData.token: environment variable DSG_TEST_MISSING "
        "is not set (write $$ for a literal $)\n"
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "gateway_ready" not in output
    assert SECRET not in output


def test_an_unknown_org_stops_start_up_too(
    tmp_path: Path, folder: Path, env: dict[str, str | None]
) -> None:
    write(folder, "org.yaml", "apiVersion: 1\ndatasources:\n  - {name: x, type: x, orgId: 5}\n")
    result = run_cli("serve", data_dir=tmp_path / "data", env={**env, "GATEWAY_PORT": "0"})
    assert result.returncode == 2
    assert f"  {folder}/org.yaml:3: org 5 does not exist" in result.stderr
    assert "Traceback" not in result.stderr


class TestCheckCommand:
    def test_problems_are_printed_with_file_and_line_and_exit_1(
        self, tmp_path: Path, folder: Path, env: dict[str, str | None]
    ) -> None:
        write(folder, "a.yaml", BROKEN)
        write(
            folder,
            "b.yml",
            "apiVersion: 1\ndatasources: [{name: x, type: x, uid: $DSG_TEST_SECRET!}]\n",
        )
        data = tmp_path / "data"
        result = run_cli("provision", "--check", data_dir=data, env=env)
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            f"{folder}/a.yaml:5: isDefault: must be a boolean, got a string",
            f"{folder}/a.yaml:5: type: required",
            f'{folder}/b.yml:2: uid: must be 1 to 40 letters, digits, "-" or "_"',
        ]
        assert result.stderr.strip() == f"3 problem(s) in {folder}"
        assert SECRET not in result.stdout + result.stderr
        assert not data.exists()  # no database was opened, or created

    def test_clean_files_exit_0(
        self, tmp_path: Path, folder: Path, env: dict[str, str | None]
    ) -> None:
        write(folder, "main.yaml", GOOD)
        result = run_cli("provision", "--check", data_dir=tmp_path / "data", env=env)
        assert (result.returncode, result.stdout) == (0, "")
        assert result.stderr.strip() == f"{folder}: ok"

    def test_a_variable_that_is_not_set_is_a_problem(
        self, tmp_path: Path, folder: Path, env: dict[str, str | None]
    ) -> None:
        write(folder, "main.yaml", GOOD)
        result = run_cli(
            "provision", "--check", data_dir=tmp_path / "data",
            env={**env, "DSG_TEST_SECRET": None},
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stdout == (
            f"{folder}/main.yaml:9: secureJsonData.basicAuthPassword: environment variable "
            "DSG_TEST_SECRET is not set (write $$ for a literal $)\n"
        )

    def test_a_folder_that_does_not_exist_is_a_problem(self, tmp_path: Path) -> None:
        missing = tmp_path / "mistyped"
        env: dict[str, str | None] = {"GATEWAY_PROVISIONING_PATH": str(missing)}
        result = run_cli("provision", "--check", data_dir=tmp_path / "data", env=env)
        assert (result.returncode, result.stdout) == (1, f"{missing}: the folder does not exist\n")
        assert result.stderr.strip() == f"1 problem(s) in {missing}"

    def test_the_apis_ssrf_policy_applies(
        self, tmp_path: Path, folder: Path, env: dict[str, str | None]
    ) -> None:
        write(
            folder,
            "main.yaml",
            """
            apiVersion: 1
            datasources:
              - {name: listed, type: prometheus, url: "http://prometheus:9090"}
              - {name: other, type: prometheus, url: "http://elsewhere:9090"}
              - {name: meta, type: loki, url: "http://169.254.169.254/"}
            """,
        )
        result = run_cli(
            "provision", "--check", data_dir=tmp_path / "data",
            env={**env, "GATEWAY_PROXY_ALLOWED_HOSTS": "prometheus:9090,169.254.169.254:80"},
        )  # fmt: skip
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            f"{folder}/main.yaml:4: url: not allowed: elsewhere:9090 is not in proxy.allowed_hosts",
            f"{folder}/main.yaml:5: url: not allowed: 169.254.169.254 is in the denied network "
            "169.254.0.0/16",
        ]

    def test_the_shipped_example_passes(self, tmp_path: Path) -> None:
        env: dict[str, str | None] = {"GATEWAY_PROVISIONING_PATH": str(REPO_EXAMPLES)}
        result = run_cli("provision", "--check", data_dir=tmp_path / "data", env=env)
        assert (result.returncode, result.stdout) == (0, "")
        assert result.stderr.strip() == f"{REPO_EXAMPLES}: ok"

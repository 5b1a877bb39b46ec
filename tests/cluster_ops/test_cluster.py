"""Three real `gateway serve` processes on one PostgreSQL registry (issue 20): they start
together with the same provisioning files and converge without version churn; a source created
on one is proxied by the others within a second; a token revoked is refused by all within a
second."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.process import GatewayProcess, run_cli
from tests.upstreams import UpstreamProcess

FAN_OUT_SECONDS = 1.0  # issue 20: a change on one gateway is seen by every other within 1 s
GATEWAYS = 3


def call(
    url: str, token: str = ADMIN_TOKEN, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def seconds_until(condition: Any, limit: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < limit, f"{what}: not within {limit:g} s"
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
def cluster_env(postgres_url: str, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "provisioning"
    folder.mkdir()
    return {
        "GATEWAY_DATABASE_URL": postgres_url,
        "GATEWAY_PROVISIONING_PATH": str(folder),
    }


def start_gateways(tmp_path: Path, env: dict[str, str]) -> list[GatewayProcess]:
    """GATEWAYS gateways started at the same moment, each with a data directory of its own."""
    with ThreadPoolExecutor(GATEWAYS) as pool:
        futures = [
            pool.submit(GatewayProcess, tmp_path / f"gateway-{n}", env) for n in range(GATEWAYS)
        ]
        started: list[GatewayProcess] = []
        problems: list[BaseException] = []
        for future in futures:
            try:
                started.append(future.result())
            except BaseException as exc:
                problems.append(exc)
    if problems:
        for gateway in started:
            gateway.stop()
        raise problems[0]
    return started


@pytest.fixture
def gateways(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    started = start_gateways(tmp_path, cluster_env)
    try:
        yield started
    finally:
        codes = [gateway.stop() for gateway in started]
        assert codes == [0] * GATEWAYS


def proxied_status(gateway: GatewayProcess, uid: str) -> int:
    return call(f"{gateway.url}/api/datasources/proxy/uid/{uid}/")[0]


def test_gateways_starting_together_provision_once_and_all_serve_it(
    tmp_path: Path, cluster_env: dict[str, str], upstream_process: UpstreamProcess
) -> None:
    folder = Path(cluster_env["GATEWAY_PROVISIONING_PATH"])
    (folder / "sources.yaml").write_text(
        "apiVersion: 1\n"
        "datasources:\n"
        "  - name: Shared Prometheus\n"
        "    uid: shared-prom\n"
        "    type: prometheus\n"
        f"    url: {upstream_process.url}\n"
        "    secureJsonData:\n"
        "      httpHeaderValue1: s3cret\n"
        "    jsonData:\n"
        "      httpHeaderName1: X-Key\n"
    )
    started = start_gateways(tmp_path, cluster_env)
    try:
        applied = [gateway.wait_for("provisioning_applied") for gateway in started]
        counts = [(record["created"], record["updated"], record["unchanged"]) for record in applied]
        # One gateway created it; the others, one at a time after it, found nothing to do.
        assert sorted(counts) == [(0, 0, 1)] * (GATEWAYS - 1) + [(1, 0, 0)], counts
        for gateway in started:
            status, body = call(f"{gateway.url}/api/datasources/uid/shared-prom")
            assert status == 200, body
            assert json.loads(body)["version"] == 1
            assert proxied_status(gateway, "shared-prom") == 200
    finally:
        codes = [gateway.stop() for gateway in started]
    assert codes == [0] * GATEWAYS
    # And starting them all again changes nothing either.
    again = start_gateways(tmp_path, cluster_env)
    try:
        for gateway in again:
            assert gateway.wait_for("provisioning_applied")["unchanged"] == 1
        status, body = call(f"{again[0].url}/api/datasources/uid/shared-prom")
        assert json.loads(body)["version"] == 1
    finally:
        for gateway in again:
            gateway.stop()


def test_a_source_created_on_one_is_proxied_by_the_others_within_a_second(
    gateways: list[GatewayProcess], upstream_process: UpstreamProcess
) -> None:
    first, *others = gateways
    uid = "made-on-first"
    for gateway in others:  # unknown everywhere, and the others' caches are loaded
        assert proxied_status(gateway, uid) == 404
    status, body = call(
        f"{first.url}/api/datasources",
        body={
            "name": "made",
            "uid": uid,
            "type": "prometheus",
            "access": "proxy",
            "url": upstream_process.url,
        },
    )
    assert status == 200, body
    for gateway in others:
        seconds_until(
            lambda gateway=gateway: proxied_status(gateway, uid) == 200,
            FAN_OUT_SECONDS,
            f"proxied by {gateway.url}",
        )


def test_a_token_revoked_is_refused_by_every_gateway_within_a_second(
    gateways: list[GatewayProcess], tmp_path: Path, cluster_env: dict[str, str]
) -> None:
    cli_dir = tmp_path / "cli"
    token = run_cli(
        "token",
        "create",
        "--org",
        "Main Org.",
        "--role",
        "viewer",
        data_dir=cli_dir,
        env=cluster_env,
    ).stdout.strip()
    assert token.startswith("dsg_")
    for gateway in gateways:  # known, and cached, everywhere
        assert call(f"{gateway.url}/api/datasources", token)[0] == 200
    listed = run_cli("token", "list", data_dir=cli_dir, env=cluster_env).stdout
    token_id = next(line.split()[0] for line in listed.splitlines() if "viewer" in line)
    revoked = run_cli("token", "revoke", token_id, data_dir=cli_dir, env=cluster_env)
    assert revoked.returncode == 0, revoked.stderr
    start = time.monotonic()
    for gateway in gateways:
        while call(f"{gateway.url}/api/datasources", token)[0] != 401:
            assert time.monotonic() - start < FAN_OUT_SECONDS, f"{gateway.url} still accepts it"
            time.sleep(0.01)

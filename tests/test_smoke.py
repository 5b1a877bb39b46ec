from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop

from gateway.loop import event_loop_factory
from tests.conftest import Headers
from tests.process import GatewayProcess, run_cli
from tests.types import AppClient


async def test_ping_answers_204_without_a_token(client: AppClient) -> None:
    response = await client.get("/ping")
    assert response.status == 204


async def test_api_needs_a_token(client: AppClient, admin_headers: Headers) -> None:
    assert (await client.get("/api/datasources")).status == 401


async def test_tests_run_on_the_loop_the_gateway_serves_on() -> None:
    assert event_loop_factory() is uvloop.new_event_loop  # a dependency on this platform
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_a_second_gateway_on_a_busy_port_fails_before_starting_anything(tmp_path: Path) -> None:
    """The port is bound before provisioning and before `gateway_ready`: a second `gateway
    serve` on a taken port says which address and exits 2, having applied nothing and never
    claimed to be ready (issue 18 item 6)."""
    first = GatewayProcess(tmp_path / "first")
    try:
        second = run_cli(
            "serve", "--port", str(first.port), data_dir=tmp_path / "second", timeout=30
        )
    finally:
        first.stop()
    assert second.returncode == 2
    output = second.stdout + second.stderr
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.stderr
    for event in ("provisioning_applied", "gateway_ready", "migration_applied"):
        assert event not in output
    assert "Traceback" not in output

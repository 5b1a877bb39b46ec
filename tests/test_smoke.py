from __future__ import annotations

import asyncio

import uvloop

from gateway.loop import event_loop_factory
from tests.conftest import Headers
from tests.types import AppClient


async def test_ping_answers_204_without_a_token(client: AppClient) -> None:
    response = await client.get("/ping")
    assert response.status == 204


async def test_api_needs_a_token(client: AppClient, admin_headers: Headers) -> None:
    assert (await client.get("/api/datasources")).status == 401


async def test_tests_run_on_the_loop_the_gateway_serves_on() -> None:
    assert event_loop_factory() is uvloop.new_event_loop  # a dependency on this platform
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import Headers


async def test_ping_answers_204_without_a_token(client: TestClient) -> None:
    response = await client.get("/ping")
    assert response.status == 204


async def test_api_needs_a_token(client: TestClient, admin_headers: Headers) -> None:
    assert (await client.get("/api/datasources")).status == 401

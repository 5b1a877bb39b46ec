"""Tokens: hashing, both header schemes, roles, revocation, bootstrap of the admin token."""

from __future__ import annotations

import asyncio
import base64
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.bootstrap import ADMIN_TOKEN_FILE
from gateway.config import Settings
from gateway.errors import Unauthorized
from gateway.keys import PRINCIPAL, STORE
from gateway.registry.interface import Registry
from gateway.registry.models import Org, Principal, Role
from gateway.requests import principal_for
from gateway.security.auth import PrincipalCache, hash_token, new_token, token_from_header
from tests.conftest import ADMIN_TOKEN, SECRET_KEY, MakeToken
from tests.process import run_cli
from tests.types import AppClient


async def whoami(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    return web.json_response({"org": principal.org.name, "role": principal.role.value})


@pytest.fixture
def app(settings: Settings) -> web.Application:
    """The real app plus one route that reports who the request is authenticated as."""
    application = create_app(settings)
    application.router.add_get("/api/test/whoami", whoami)
    application.router.add_get("/api/v2/test/whoami", whoami)
    return application


class TestHeaderParsing:
    @pytest.mark.parametrize(
        ("header", "token"),
        [
            ("Bearer abc", "abc"),
            ("Token abc", "abc"),
            ("bearer abc", "abc"),
            ("TOKEN   abc  ", "abc"),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("abc", None),
            ("", None),
            (None, None),
            ("Bearer " + "x" * 600, None),
        ],
    )
    def test_token_from_header(self, header: str | None, token: str | None) -> None:
        assert token_from_header(header) == token

    def test_new_tokens_are_long_random_and_prefixed(self) -> None:
        tokens = {new_token() for _ in range(50)}
        assert len(tokens) == 50
        assert all(t.startswith("dsg_") and len(t) >= 40 for t in tokens)


class TestAuthentication:
    @pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer", "token"])
    async def test_both_schemes_are_accepted(self, client: AppClient, scheme: str) -> None:
        response = await client.get(
            "/api/test/whoami", headers={"Authorization": f"{scheme} {ADMIN_TOKEN}"}
        )
        assert response.status == 200
        assert await response.json() == {"org": "Main Org.", "role": "admin"}

    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ADMIN_TOKEN}"}],
    )
    async def test_missing_or_unknown_token_is_401_in_grafanas_shape(
        self, client: AppClient, headers: dict[str, str]
    ) -> None:
        response = await client.get("/api/test/whoami", headers=headers)
        assert response.status == 401
        assert await response.json() == {"message": "Unauthorized"}

    async def test_missing_token_is_401_in_influxs_shape_under_api_v2(
        self, client: AppClient
    ) -> None:
        response = await client.get("/api/v2/test/whoami")
        assert response.status == 401
        assert response.headers["X-Platform-Error-Code"] == "unauthorized"
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await response.json() == {"code": "unauthorized", "message": "unauthorized access"}

    @pytest.mark.parametrize("role", ["admin", "editor", "viewer"])
    async def test_a_token_carries_its_org_and_role(
        self, client: AppClient, make_token: MakeToken, role: str
    ) -> None:
        headers = await make_token(role=role, org="Team B")
        response = await client.get("/api/test/whoami", headers=headers)
        assert await response.json() == {"org": "Team B", "role": role}

    async def test_only_the_hash_is_stored(self, client: AppClient, data_dir: Path) -> None:
        token = new_token()
        await client.app[STORE].create_token(1, Role.VIEWER, hash_token(token), "t")
        raw = b"".join(p.read_bytes() for p in data_dir.glob("gateway.db*"))
        assert token.encode() not in raw
        assert ADMIN_TOKEN.encode() not in raw
        assert hash_token(token).encode() in raw

    async def test_a_revoked_token_stops_working_at_once(self, client: AppClient) -> None:
        store = client.app[STORE]
        token = new_token()
        token_id = await store.create_token(1, Role.EDITOR, hash_token(token), "t")
        headers = {"Authorization": f"Token {token}"}
        assert (await client.get("/api/test/whoami", headers=headers)).status == 200  # now cached
        assert await store.revoke_token(token_id)
        assert (await client.get("/api/test/whoami", headers=headers)).status == 401
        assert not await store.revoke_token(token_id)  # revoking twice reports nothing to do

    async def test_a_token_revoked_by_another_process_stops_working(
        self, client: AppClient, data_dir: Path
    ) -> None:
        store = client.app[STORE]
        token = new_token()
        token_id = await store.create_token(1, Role.EDITOR, hash_token(token), "t")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/api/test/whoami", headers=headers)).status == 200
        result = await asyncio.to_thread(
            run_cli, "token", "revoke", str(token_id), data_dir=data_dir
        )
        assert result.returncode == 0, result.stderr
        for _ in range(50):  # the store polls PRAGMA data_version once a second
            if (await client.get("/api/test/whoami", headers=headers)).status == 401:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the revoked token still authenticates after 5 s")


class TestAdminTokenBootstrap:
    async def test_the_env_token_is_an_admin_of_the_default_org(self, client: AppClient) -> None:
        response = await client.get(
            "/api/test/whoami", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert await response.json() == {"org": "Main Org.", "role": "admin"}

    async def test_without_any_token_one_is_generated_into_a_private_file(
        self, aiohttp_client: AiohttpClient, data_dir: Path
    ) -> None:
        settings = Settings(data_dir=data_dir, secret_key=SECRET_KEY, port=0)
        application = create_app(settings)
        application.router.add_get("/api/test/whoami", whoami)
        client = await aiohttp_client(application)
        path = data_dir / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        response = await client.get("/api/test/whoami", headers={"Authorization": f"Token {token}"})
        assert await response.json() == {"org": "Main Org.", "role": "admin"}

    async def test_no_file_is_written_when_a_token_exists(
        self, client: AppClient, data_dir: Path
    ) -> None:
        assert not (data_dir / ADMIN_TOKEN_FILE).exists()


class TestInfluxV1Compatibility:
    """On /query and /write the gateway token may come as InfluxDB 1.x's password."""

    async def test_p_parameter_and_basic_password_carry_the_token(self, client: AppClient) -> None:
        basic = base64.b64encode(f"anyone:{ADMIN_TOKEN}".encode()).decode()
        for params, headers in (
            ({"u": "anyone", "p": ADMIN_TOKEN, "q": "SHOW DATABASES"}, None),
            ({"q": "SHOW DATABASES"}, {"Authorization": f"Basic {basic}"}),
        ):
            response = await client.get("/query", params=params, headers=headers)
            # Authenticated: the org has no InfluxDB source, so the passthrough says so.
            assert response.status == 404, await response.text()
            assert (await response.json())["code"] == "not found"

    async def test_wrong_or_missing_v1_credentials_are_401(self, client: AppClient) -> None:
        for params, headers in (
            ({"u": "x", "p": "wrong"}, None),
            (None, {"Authorization": "Basic !!!not-base64"}),
            (None, {"Authorization": "Basic " + base64.b64encode(b"nopassword").decode()}),
            (None, None),
        ):
            response = await client.get("/query", params=params, headers=headers)
            assert response.status == 401
            assert (await response.json())["code"] == "unauthorized"

    async def test_other_paths_do_not_take_the_token_as_a_password(self, client: AppClient) -> None:
        response = await client.get("/api/test/whoami", params={"p": ADMIN_TOKEN})
        assert response.status == 401


class TestPrincipalCache:
    """The cache in front of the registry: hits only, cleared on every change, bounded."""

    class Backend:
        def __init__(self) -> None:
            self.known: dict[str, Principal] = {}
            self.listeners: list[Callable[[], None]] = []
            self.lookups = 0

        def subscribe(self, listener: Callable[[], None]) -> None:
            self.listeners.append(listener)

        async def find_principal(self, token_hash: str) -> Principal | None:
            self.lookups += 1
            return self.known.get(token_hash)

        def changed(self) -> None:
            for listener in self.listeners:
                listener()

    @staticmethod
    def principal(token_id: int) -> Principal:
        org = Org(1, "0" * 16, "main", datetime(2024, 1, 1, tzinfo=UTC))
        return Principal(token_id, org, Role.VIEWER)

    def cache(self, backend: Backend, limit: int = 100) -> PrincipalCache:
        return PrincipalCache(cast(Registry, backend), limit=limit)

    async def test_a_hit_is_answered_without_the_registry(self) -> None:
        backend = self.Backend()
        backend.known[hash_token("dsg_a")] = self.principal(1)
        cache = self.cache(backend)
        assert await cache.resolve("dsg_a") == self.principal(1)
        assert await cache.resolve("dsg_a") == self.principal(1)
        assert backend.lookups == 1
        assert await cache.resolve("dsg_unknown") is None
        assert await cache.resolve("dsg_unknown") is None
        assert backend.lookups == 3  # misses are not cached

    async def test_a_change_in_the_registry_empties_it_at_once(self) -> None:
        backend = self.Backend()
        backend.known[hash_token("dsg_a")] = self.principal(1)
        cache = self.cache(backend)
        await cache.resolve("dsg_a")
        del backend.known[hash_token("dsg_a")]  # revoked
        backend.changed()
        assert await cache.resolve("dsg_a") is None
        assert backend.lookups == 2

    async def test_it_holds_at_most_its_limit(self) -> None:
        backend = self.Backend()
        for token_id in range(5):
            backend.known[hash_token(f"dsg_{token_id}")] = self.principal(token_id)
        cache = self.cache(backend, limit=3)
        for token_id in range(5):
            assert await cache.resolve(f"dsg_{token_id}") == self.principal(token_id)
        assert backend.lookups == 5
        assert await cache.resolve("dsg_4") == self.principal(4)  # the newest is held
        assert backend.lookups == 5
        for token_id in range(5):
            await cache.resolve(f"dsg_{token_id}")
        assert backend.lookups - 5 >= 2  # at most 3 of the 5 were still held

    async def test_a_bearer_header_resolved_once_is_then_answered_from_the_header(self) -> None:
        backend = self.Backend()
        backend.known[hash_token("dsg_a")] = self.principal(1)
        cache = self.cache(backend)
        assert cache.cached("Bearer dsg_a") is None  # never resolved yet
        assert await principal_for(cache, "/api/x", "Bearer dsg_a", lambda: None) == (
            self.principal(1)
        )
        assert cache.cached("Bearer dsg_a") == self.principal(1)
        assert cache.cached("Token dsg_a") is None  # another header: resolved on its own
        assert cache.cached("Bearer dsg_b") is None
        assert cache.cached(None) is None
        assert backend.lookups == 1

    async def test_a_change_in_the_registry_forgets_the_headers_at_once(self) -> None:
        backend = self.Backend()
        backend.known[hash_token("dsg_a")] = self.principal(1)
        cache = self.cache(backend)
        await principal_for(cache, "/api/x", "Bearer dsg_a", lambda: None)
        del backend.known[hash_token("dsg_a")]  # revoked
        backend.changed()
        assert cache.cached("Bearer dsg_a") is None
        with pytest.raises(Unauthorized):
            await principal_for(cache, "/api/x", "Bearer dsg_a", lambda: None)
        assert cache.cached("Bearer dsg_a") is None

    async def test_an_influx_v1_password_is_not_remembered_by_its_header(self) -> None:
        # Basic auth names a principal on /query and /write only: a header remembered there
        # would let it in on every other route.
        backend = self.Backend()
        backend.known[hash_token("dsg_a")] = self.principal(1)
        cache = self.cache(backend)
        basic = "Basic " + base64.b64encode(b"user:dsg_a").decode()
        assert await principal_for(cache, "/query", basic, lambda: None) == self.principal(1)
        assert cache.cached(basic) is None
        with pytest.raises(Unauthorized):
            await principal_for(cache, "/api/x", basic, lambda: None)

    async def test_the_headers_held_are_bounded_too(self) -> None:
        backend = self.Backend()
        for token_id in range(5):
            backend.known[hash_token(f"dsg_{token_id}")] = self.principal(token_id)
        cache = self.cache(backend, limit=3)
        for token_id in range(5):
            await principal_for(cache, "/api/x", f"Bearer dsg_{token_id}", lambda: None)
        held = [cache.cached(f"Bearer dsg_{token_id}") is not None for token_id in range(5)]
        assert held[4]  # the newest is held
        assert sum(held) <= 3

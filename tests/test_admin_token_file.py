"""The generated admin token's file (data/admin-token) goes once its token is revoked: whoever
reads it later would take it for a working credential (issue 18 item 5)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import structlog

from gateway.bootstrap import ADMIN_TOKEN_FILE, ensure_admin_token, open_registry
from gateway.config import Settings
from gateway.registry.models import DEFAULT_ORG_ID, Role
from gateway.security.auth import hash_token
from tests.process import run_cli


def generating(settings: Settings) -> Settings:
    """No GATEWAY_ADMIN_TOKEN: the first start makes a token and writes it to the file."""
    return replace(settings, admin_token=None)


async def first_start(settings: Settings) -> tuple[int, Path]:
    """Start-up's token step, then a second admin token, as an operator would add; the id of
    the generated token and its file."""
    async with open_registry(settings) as store:
        await ensure_admin_token(store, settings)
        await store.create_token(DEFAULT_ORG_ID, Role.ADMIN, hash_token("dsg_other"), "other")
        (generated,) = [t for t in await store.list_tokens() if t.description != "other"]
    path = settings.data_dir / ADMIN_TOKEN_FILE
    assert path.read_text().strip()
    return generated.id, path


async def test_revoking_the_generated_token_with_the_cli_removes_its_file(
    settings: Settings,
) -> None:
    settings = generating(settings)
    token_id, path = await first_start(settings)
    other_id = token_id + 1
    revoked = await asyncio.to_thread(
        run_cli, "token", "revoke", str(other_id), data_dir=settings.data_dir
    )
    assert revoked.returncode == 0, revoked.stderr
    assert path.exists()  # another token: the file still holds a working one
    revoked = await asyncio.to_thread(
        run_cli, "token", "revoke", str(token_id), data_dir=settings.data_dir
    )
    assert revoked.returncode == 0, revoked.stderr
    assert not path.exists()
    assert f"removed {path}" in revoked.stderr
    assert "admin_token_file_removed" in revoked.stderr


async def test_a_file_whose_token_was_revoked_meanwhile_is_removed_at_start_up(
    settings: Settings,
) -> None:
    settings = generating(settings)
    token_id, path = await first_start(settings)
    async with open_registry(settings) as store:
        assert await store.revoke_token(token_id)  # as any other writer might
    with structlog.testing.capture_logs() as logs:
        async with open_registry(settings) as store:
            await ensure_admin_token(store, settings)
    assert not path.exists()
    (removed,) = [entry for entry in logs if entry["event"] == "admin_token_file_removed"]
    assert removed["path"] == str(path)
    assert removed["log_level"] == "warning"
    # Another admin token works, so none is generated in its place.
    assert not [entry for entry in logs if entry["event"] == "admin_token_generated"]


async def test_a_file_whose_token_works_is_kept_at_start_up(settings: Settings) -> None:
    settings = generating(settings)
    _, path = await first_start(settings)
    token = path.read_text()
    async with open_registry(settings) as store:
        await ensure_admin_token(store, settings)
    assert path.read_text() == token

"""Start-up steps that touch the data directory: check it, load the key, make the first token."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from gateway.config import Settings
from gateway.errors import StartupError
from gateway.registry.models import DEFAULT_ORG_ID, Role
from gateway.registry.secrets import SecretBox, load_key_text, write_private_file
from gateway.registry.store import RegistryStore
from gateway.security.auth import hash_token, new_token

log = structlog.get_logger(__name__)
ADMIN_TOKEN_FILE = "admin-token"


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory if needed and prove it is writable, or raise StartupError."""
    where = f"data.dir ({data_dir})"
    if data_dir.exists() and not data_dir.is_dir():
        raise StartupError(f"{where}: exists and is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{where}: cannot create: {exc.strerror}") from exc
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise StartupError(f"{where}: not writable by this user")


def open_secret_box(settings: Settings) -> tuple[SecretBox, str]:
    try:
        key_text, origin = load_key_text(settings.data_dir, settings.secret_key)
    except OSError as exc:
        raise StartupError(f"cannot read or create the secret key file: {exc}") from exc
    return SecretBox(key_text), origin


async def ensure_admin_token(store: RegistryStore, settings: Settings) -> None:
    """GATEWAY_ADMIN_TOKEN always works; with no token at all, make one and save it to a file."""
    if settings.admin_token:
        changed = await store.ensure_token(
            DEFAULT_ORG_ID, Role.ADMIN, hash_token(settings.admin_token), "GATEWAY_ADMIN_TOKEN"
        )
        if changed:
            log.info("admin_token_ensured", source="GATEWAY_ADMIN_TOKEN")
        return
    if await store.has_active_tokens():
        return
    token = new_token()
    path = settings.data_dir / ADMIN_TOKEN_FILE
    path.unlink(missing_ok=True)  # an old file names a token that no longer works
    write_private_file(path, token)
    await store.create_token(DEFAULT_ORG_ID, Role.ADMIN, hash_token(token), "generated at start-up")
    log.warning("admin_token_generated", path=str(path), hint="read the token from this file")

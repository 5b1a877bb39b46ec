"""Start-up steps that touch the data directory: check it, load the key, make the first token."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import structlog

from gateway.config import Settings
from gateway.errors import StartupError
from gateway.registry.audit import AuditedBackend
from gateway.registry.backends import backend_for
from gateway.registry.interface import Registry, StoreUnusable
from gateway.registry.models import DEFAULT_ORG_ID, Role
from gateway.registry.secrets import (
    SecretBox,
    SecretKeyMismatch,
    load_key_text,
    write_private_file,
)
from gateway.security.auth import hash_token, new_token

log = structlog.get_logger(__name__)
ADMIN_TOKEN_FILE = "admin-token"


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory if needed and prove it is writable, or raise StartupError."""
    where = f"data.dir ({data_dir})"
    if data_dir.exists() and not data_dir.is_dir():
        raise StartupError(f"{where}: exists and is not a directory")
    try:
        # 0700: the directory holds the database (token hashes, encrypted secrets) and the key.
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{where}: cannot create: {exc.strerror}") from exc
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise StartupError(f"{where}: not writable by this user")


LOCK_FILE = "gateway.lock"


@contextlib.contextmanager
def data_dir_lock(data_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """Servers hold the data directory's lock shared; `keys rotate` needs it alone.

    A running server keeps its key in memory, so rotating underneath it would leave it writing
    rows under the old key. flock is released by the kernel when the process dies, so a crash
    never leaves a stale lock behind.
    """
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirBusy(
                f"{data_dir} is in use by a running gateway; stop it first"
                if exclusive
                else f"{data_dir} is locked by a key rotation in progress"
            ) from None
        yield
    finally:
        os.close(fd)


class DataDirBusy(StartupError):
    """Another process holds the data directory's lock in a conflicting mode."""


def open_secret_box(settings: Settings) -> tuple[SecretBox, str]:
    try:
        key_text, origin = load_key_text(settings.data_dir, settings.secret_key)
    except OSError as exc:
        raise StartupError(f"cannot read or create the secret key file: {exc}") from exc
    if not key_text.strip():
        raise StartupError(f"{origin}: the secret key is empty")
    return SecretBox(key_text), origin


@contextlib.asynccontextmanager
async def open_registry(settings: Settings, *, exclusive: bool = False) -> AsyncIterator[Registry]:
    """The registry the settings select, for the server (shared) or a CLI command; it
    watches for other processes' changes while open.

    Every reason it cannot be opened becomes a StartupError: one line, exit code 2.
    """
    prepare_data_dir(settings.data_dir)
    box, origin = open_secret_box(settings)
    # Every registry the gateway opens audits its changes, whatever the backend.
    backend = AuditedBackend(backend_for(settings))
    with data_dir_lock(settings.data_dir, exclusive=exclusive):
        try:
            async with backend.open(box) as registry:
                yield registry
        except SecretKeyMismatch as exc:
            raise StartupError(
                f"the secret key from {origin} cannot decrypt {backend.location}: it is not the "
                "key this database was written with (nothing was changed)"
            ) from exc
        except StoreUnusable as exc:
            raise StartupError(str(exc)) from exc


async def ensure_admin_token(store: Registry, settings: Settings) -> None:
    """GATEWAY_ADMIN_TOKEN always works; with no token at all, make one and save it to a file.
    A file whose token was revoked meanwhile is removed (see `remove_revoked_admin_token_file`)."""
    await remove_revoked_admin_token_file(store, settings.data_dir)
    if settings.admin_token:
        changed = await store.ensure_token(
            DEFAULT_ORG_ID, Role.ADMIN, hash_token(settings.admin_token), "GATEWAY_ADMIN_TOKEN"
        )
        if changed:
            log.info("admin_token_ensured", source="GATEWAY_ADMIN_TOKEN")
        return
    token = new_token()
    created = await store.create_first_token(
        DEFAULT_ORG_ID, Role.ADMIN, hash_token(token), "generated at start-up"
    )
    if not created:
        return
    path = settings.data_dir / ADMIN_TOKEN_FILE
    path.unlink(missing_ok=True)  # an old file names a token that no longer works
    write_private_file(path, token)
    log.warning("admin_token_generated", path=str(path), hint="read the token from this file")


async def remove_revoked_admin_token_file(store: Registry, data_dir: Path) -> bool:
    """Remove the generated admin token's file once that token no longer works (revoked): an
    operator reading it would take it for a working credential. Called at start-up and after a
    revocation; True if the file was removed."""
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("admin_token_file_unreadable", path=str(path), error=exc.strerror)
        return False
    if token and await store.find_principal(hash_token(token)) is not None:
        return False
    path.unlink(missing_ok=True)
    log.warning(
        "admin_token_file_removed",
        path=str(path),
        reason="the token it held is revoked",
        hint="use another admin token, or `gateway token create --role admin`",
    )
    return True

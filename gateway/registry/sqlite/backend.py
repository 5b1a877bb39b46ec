"""SqliteBackend: the registry in one SQLite file in the data directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from gateway.config import Settings
from gateway.registry.interface import StoreUnusable
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import schema
from gateway.registry.sqlite.registry import SqliteRegistry

# How often an open registry looks for commits by other processes (the CLI, other workers):
# `PRAGMA data_version` is the only way SQLite tells, and it has to be asked.
CHANGE_POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class SqliteBackend:
    path: Path
    change_poll_seconds: float = CHANGE_POLL_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteBackend:
        return cls(settings.db_path)

    @property
    def location(self) -> str:
        return str(self.path)

    @contextlib.asynccontextmanager
    async def open(self, box: SecretBox) -> AsyncIterator[SqliteRegistry]:
        """Open (creating if needed) the database, check the key, migrate, seed the default org,
        and watch for other processes' commits until closed."""
        async with aiosqlite.connect(self.path, isolation_level=None) as conn:
            # Token hashes and encrypted secrets: owner only. SQLite gives the -wal and -shm
            # files the database file's mode, so setting it before WAL starts covers them.
            os.chmod(self.path, 0o600)
            conn.row_factory = sqlite3.Row
            try:
                await schema.prepare(conn, box)
            except sqlite3.DatabaseError as exc:
                raise StoreUnusable(f"{self.path} is not a usable SQLite database: {exc}") from exc
            registry = SqliteRegistry(conn, box)
            # The baseline is read before anyone holds the registry: a commit by another
            # process from here on is heard, however soon it comes.
            seen = await registry.data_version()
            watcher = asyncio.create_task(
                registry.watch_external_changes(self.change_poll_seconds, seen),
                name="registry-change-watcher",
            )
            try:
                yield registry
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

"""Which registry backend the settings select: the one place that names a backend.

`database.url` (`GATEWAY_DATABASE_URL`) unset, or `sqlite:` + a path: the SQLite file
(`gateway/registry/sqlite/`), by default `<data.dir>/gateway.db`. `postgresql://…`: PostgreSQL
(`gateway/registry/postgres/`), one registry shared by every gateway of a cluster. The rest of
the gateway only ever sees a `Registry`.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from gateway.config import Settings
from gateway.errors import StartupError
from gateway.registry.interface import RegistryBackend
from gateway.registry.postgres import PostgresBackend
from gateway.registry.sqlite import SqliteBackend


def backend_for(settings: Settings) -> RegistryBackend:
    url = settings.database_url
    if not url:
        return SqliteBackend(settings.db_path)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SqliteBackend(sqlite_path(url, settings))
    if scheme in ("postgresql", "postgres"):
        return PostgresBackend(url)
    # Settings validate the URL when they are loaded; this is for Settings built in code.
    raise StartupError(
        f"database.url: expected sqlite:///path or postgresql://user@host:port/db, not {scheme!r}"
    )


def sqlite_path(url: str, settings: Settings) -> Path:
    """`sqlite:///abs/file.db` or `sqlite:relative/file.db`; no path: the data dir's file."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return Path(path) if path else settings.db_path

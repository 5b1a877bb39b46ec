"""The SQLite registry backend: everything that knows the registry is SQLite lives here.

- `backend`: `SqliteBackend`, where the file is and how it is opened (and watched);
- `schema`: PRAGMAs, WAL, the key check, the migration runner, the default org;
- `migrations`: the numbered schema scripts;
- `registry`: `SqliteRegistry`, every query (reads, single writes, key rotation, change watch);
- `batch` and `writes`: `SqliteBatch` and the statements single writes and batches share;
- `rows`: the row layout of records and timestamps.
"""

from __future__ import annotations

from gateway.registry.sqlite.backend import SqliteBackend
from gateway.registry.sqlite.registry import SqliteRegistry

__all__ = ["SqliteBackend", "SqliteRegistry"]

"""The PostgreSQL registry backend: everything that knows the registry is PostgreSQL lives here.

One database shared by every gateway of a cluster (`GATEWAY_DATABASE_URL=postgresql://…`).

- `backend`: `PostgresBackend`, where the server is and how a registry is opened on it;
- `schema`: the key check, the migration runner (under an advisory lock), the default org;
- `migrations`: the numbered schema scripts, the SQLite backend's in PostgreSQL's dialect;
- `registry`: `PostgresRegistry`, every query (reads, single writes, key rotation);
- `batch` and `writes`: `PostgresBatch` and the statements single writes and batches share;
- `failures`: what a 503 says when the server cannot be reached, in words;
- `watch`: the change watch, LISTENing on its own connection for other gateways' NOTIFYs;
- `rows`: the row layout of records.
"""

from __future__ import annotations

from gateway.registry.postgres.backend import PostgresBackend
from gateway.registry.postgres.registry import PostgresRegistry

__all__ = ["PostgresBackend", "PostgresRegistry"]

"""Which registry backend the settings select: the one place that names a backend.

Today there is one, SQLite (`gateway/registry/sqlite/`). A second one (PostgreSQL) goes in its
own package beside it, implementing `RegistryBackend` from `gateway/registry/interface.py`, and
is chosen here from a setting; the rest of the gateway only ever sees a `Registry`.
"""

from __future__ import annotations

from gateway.config import Settings
from gateway.registry.interface import RegistryBackend
from gateway.registry.sqlite import SqliteBackend


def backend_for(settings: Settings) -> RegistryBackend:
    return SqliteBackend.from_settings(settings)

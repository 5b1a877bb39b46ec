"""SqliteBatch: the `RegistryBatch` of the SQLite backend, on a connection inside one open
`BEGIN IMMEDIATE` transaction that `SqliteRegistry.batch` commits or rolls back."""

from __future__ import annotations

import aiosqlite

from gateway.registry.interface import Mutation
from gateway.registry.models import DataSource, DataSourceSpec
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import writes
from gateway.registry.sqlite.rows import list_sources_sql, source_of


class SqliteBatch:
    def __init__(self, db: aiosqlite.Connection, box: SecretBox) -> None:
        self._db = db
        self._box = box

    async def sources(self, org_id: int | None = None) -> list[DataSource]:
        cursor = await self._db.execute(*list_sources_sql(org_id))
        return [source_of(row, self._box) for row in await cursor.fetchall()]

    async def org_exists(self, org_id: int) -> bool:
        cursor = await self._db.execute("SELECT 1 FROM org WHERE id = ?", (org_id,))
        return await cursor.fetchone() is not None

    async def create_source(
        self, org_id: int, spec: DataSourceSpec, *, provisioned_by: str | None = None
    ) -> DataSource:
        return await writes.create_source(
            self._db, self._box, org_id, spec, provisioned_by=provisioned_by
        )

    async def update_source(
        self,
        org_id: int,
        source_id: int,
        mutate: Mutation,
        *,
        provisioned_by: str | None = None,
    ) -> DataSource:
        return await writes.update_source(
            self._db,
            self._box,
            org_id,
            source_id,
            mutate,
            expected_version=None,
            provisioned_by=provisioned_by,
        )

    async def delete_source(self, org_id: int, source_id: int) -> DataSource:
        return await writes.delete_source(
            self._db, self._box, org_id, source_id, allow_read_only=True, check=None
        )

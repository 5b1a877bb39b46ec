"""PostgresBatch: the `RegistryBatch` of the PostgreSQL backend, on a connection inside one open
transaction (holding the write lock) that `PostgresRegistry.batch` commits or rolls back."""

from __future__ import annotations

from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from gateway.registry.interface import Mutation
from gateway.registry.models import DataSource, DataSourceSpec
from gateway.registry.postgres import writes
from gateway.registry.postgres.rows import list_sources_sql, source_of
from gateway.registry.secrets import SecretBox


class PostgresBatch:
    def __init__(self, db: PoolConnectionProxy[Record], box: SecretBox) -> None:
        self._db = db
        self._box = box
        self.changed = False  # whether anything was written: only then are gateways told

    async def sources(self, org_id: int | None = None) -> list[DataSource]:
        sql, params = list_sources_sql(org_id)
        return [source_of(row, self._box) for row in await self._db.fetch(sql, *params)]

    async def org_exists(self, org_id: int) -> bool:
        return await self._db.fetchval("SELECT 1 FROM org WHERE id = $1", org_id) is not None

    async def create_source(
        self, org_id: int, spec: DataSourceSpec, *, provisioned_by: str | None = None
    ) -> DataSource:
        self.changed = True
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
        self.changed = True
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
        self.changed = True
        return await writes.delete_source(
            self._db, self._box, org_id, source_id, allow_read_only=True, check=None
        )

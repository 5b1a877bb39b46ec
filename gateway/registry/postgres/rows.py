"""How registry records are laid out in PostgreSQL rows, both ways."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.registry.models import SOURCE_FIELDS, DataSource, DataSourceSpec, FieldKind, Org
from gateway.registry.secrets import SecretBox

# Each writable field of a source is stored in the column of its name (migration 1), in the form
# its kind asks for: flags as booleans, jsonData as JSON text, secrets encrypted. Every column
# name is quoted: `user` is a reserved word in PostgreSQL, and unquoted it would read as
# CURRENT_USER instead of the column.
WRITABLE_COLUMNS = tuple(field.attribute for field in SOURCE_FIELDS)
Row = asyncpg.Record


def quote(column: str) -> str:
    return f'"{column}"'


_READ_COLUMNS = ("id", "org_id", *WRITABLE_COLUMNS, "version", "created", "updated")
SOURCE_COLUMNS = ", ".join(quote(column) for column in (*_READ_COLUMNS, "provisioned_by"))


def now() -> datetime:
    """A timestamp as the SQLite backend keeps it: UTC, milliseconds."""
    stamp = datetime.now(UTC)
    return stamp.replace(microsecond=stamp.microsecond // 1000 * 1000)


# The transaction that wrote a row's current version: PostgreSQL gives every UPDATE a new one,
# so (id, xmin) names one version of one row exactly (see RowReader).
ROW_XMIN = "row_xmin"


def list_sources_sql(org_id: int | None) -> tuple[str, tuple[Any, ...]]:
    """Every source, or one org's, in id order."""
    columns = f"{SOURCE_COLUMNS}, xmin::text AS {ROW_XMIN}"
    if org_id is None:
        return f"SELECT {columns} FROM data_source ORDER BY id", ()
    return f"SELECT {columns} FROM data_source WHERE org_id = $1 ORDER BY id", (org_id,)


def org_of(row: Row) -> Org:
    return Org(id=row["id"], influx_id=row["influx_id"], name=row["name"], created=row["created"])


# Each kind's fields: a listing reads every row of the table, and one loop per kind with no
# per-field dispatch is cheaper than one call per field.
def _fields_of(kind: FieldKind) -> tuple[str, ...]:
    return tuple(field.attribute for field in SOURCE_FIELDS if field.kind is kind)


_TEXT_FIELDS = _fields_of(FieldKind.TEXT)
_FLAG_FIELDS = _fields_of(FieldKind.FLAG)
_OBJECT_FIELDS = _fields_of(FieldKind.OBJECT)
_SECRETS_FIELDS = _fields_of(FieldKind.SECRETS)


def source_of(row: Row, box: SecretBox) -> DataSource:
    fields: dict[str, Any] = {attribute: row[attribute] for attribute in _TEXT_FIELDS}
    for attribute in _FLAG_FIELDS:
        fields[attribute] = bool(row[attribute])
    for attribute in _OBJECT_FIELDS:
        fields[attribute] = json.loads(row[attribute])
    for attribute in _SECRETS_FIELDS:
        fields[attribute] = box.decrypt(row[attribute])
    return DataSource(
        id=row["id"],
        org_id=row["org_id"],
        version=row["version"],
        created=row["created"],
        updated=row["updated"],
        provisioned_by=row["provisioned_by"],
        **fields,
    )


class RowReader:
    """Rows to sources for whole listings (a cache reload, after every change anywhere in the
    cluster): a row whose (id, xmin) was in the last listing is unchanged since, and gives the
    same source as then (a key rotation rewrites every row, and the registry makes a new reader
    for it anyway). Reloading 10,000 sources of which one changed builds one, and skips the
    AES-GCM and JSON work for the other 9,999. Only what the last listing held is kept.
    Sources are frozen, so sharing them between successive snapshots is safe."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self._known: dict[tuple[int, str], DataSource] = {}

    def sources(self, rows: list[Row]) -> list[DataSource]:
        known: dict[tuple[int, str], DataSource] = {}
        previous = self._known
        listed = []
        for row in rows:
            key = (row["id"], row[ROW_XMIN])
            source = previous.get(key)
            if source is None:
                source = source_of(row, self.box)
            known[key] = source
            listed.append(source)
        self._known = known
        return listed


def column_values(spec: DataSourceSpec, box: SecretBox) -> list[Any]:
    """The writable columns' values for `spec`, in WRITABLE_COLUMNS order."""
    return [_stored(field.kind, getattr(spec, field.attribute), box) for field in SOURCE_FIELDS]


def _stored(kind: FieldKind, value: Any, box: SecretBox) -> Any:
    if kind is FieldKind.OBJECT:
        return json.dumps(dict(value))
    if kind is FieldKind.SECRETS:
        return box.encrypt(value)
    if kind is FieldKind.FLAG:
        return bool(value)
    return value

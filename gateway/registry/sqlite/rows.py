"""How registry records are laid out in SQLite rows, both ways."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from gateway.registry.models import SOURCE_FIELDS, DataSource, DataSourceSpec, FieldKind, Org
from gateway.registry.secrets import SecretBox

# Each writable field of a source is stored in the column of its name (migration 1), in the form
# its kind asks for: flags as integers, jsonData as JSON text, secrets encrypted.
WRITABLE_COLUMNS = tuple(field.attribute for field in SOURCE_FIELDS)
SOURCE_COLUMNS = ", ".join(
    ("id", "org_id", *WRITABLE_COLUMNS, "version", "created", "updated", "provisioned_by")
)


def now() -> str:
    """A timestamp as the database stores it: ISO 8601 text, UTC, milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def list_sources_sql(org_id: int | None) -> tuple[str, tuple[Any, ...]]:
    """Every source, or one org's, in id order."""
    if org_id is None:
        return f"SELECT {SOURCE_COLUMNS} FROM data_source ORDER BY id", ()
    return f"SELECT {SOURCE_COLUMNS} FROM data_source WHERE org_id = ? ORDER BY id", (org_id,)


def org_of(row: sqlite3.Row) -> Org:
    created = parse_time(row["created"])
    return Org(id=row["id"], influx_id=row["influx_id"], name=row["name"], created=created)


def source_of(row: sqlite3.Row, box: SecretBox) -> DataSource:
    fields = {
        field.attribute: _read(field.kind, row[field.attribute], box) for field in SOURCE_FIELDS
    }
    return DataSource(
        id=row["id"],
        org_id=row["org_id"],
        version=row["version"],
        created=parse_time(row["created"]),
        updated=parse_time(row["updated"]),
        provisioned_by=row["provisioned_by"],
        **fields,
    )


def column_values(spec: DataSourceSpec, box: SecretBox) -> list[Any]:
    """The writable columns' values for `spec`, in WRITABLE_COLUMNS order."""
    return [_stored(field.kind, getattr(spec, field.attribute), box) for field in SOURCE_FIELDS]


def _stored(kind: FieldKind, value: Any, box: SecretBox) -> Any:
    if kind is FieldKind.OBJECT:
        return json.dumps(dict(value))
    if kind is FieldKind.SECRETS:
        return box.encrypt(value)
    return value  # sqlite3 stores a bool as 0 or 1


def _read(kind: FieldKind, value: Any, box: SecretBox) -> Any:
    if kind is FieldKind.FLAG:
        return bool(value)
    if kind is FieldKind.OBJECT:
        return json.loads(value)
    if kind is FieldKind.SECRETS:
        return box.decrypt(value)
    return value

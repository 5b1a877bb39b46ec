"""How registry records are laid out in SQLite rows, both ways."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from gateway.registry.models import SOURCE_FIELDS, DataSource, DataSourceSpec, FieldKind, Org
from gateway.registry.secrets import SecretBox

# Each writable field of a source is stored in the column of its name (migration 1), in the form
# its kind asks for: flags as integers, jsonData as JSON text, secrets encrypted.
WRITABLE_COLUMNS = tuple(field.attribute for field in SOURCE_FIELDS)
SOURCE_COLUMN_NAMES = (
    "id",
    "org_id",
    *WRITABLE_COLUMNS,
    "version",
    "created",
    "updated",
    "provisioned_by",
)
SOURCE_COLUMNS = ", ".join(SOURCE_COLUMN_NAMES)
# A row as sqlite3 gives it without a row factory: the SOURCE_COLUMNS values, in that order.
PlainRow = tuple[Any, ...]


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


# Where each field sits in a row of SOURCE_COLUMNS, by kind: a listing reads every row of the
# table, and reading by position with no per-field dispatch is a third cheaper than by name.
_AT = {column: index for index, column in enumerate(SOURCE_COLUMN_NAMES)}


def _fields_at(kind: FieldKind) -> tuple[tuple[str, int], ...]:
    return tuple((f.attribute, _AT[f.attribute]) for f in SOURCE_FIELDS if f.kind is kind)


_TEXT_AT = _fields_at(FieldKind.TEXT)
_FLAG_AT = _fields_at(FieldKind.FLAG)
_OBJECT_AT = _fields_at(FieldKind.OBJECT)
_SECRETS_AT = _fields_at(FieldKind.SECRETS)
assert len(_TEXT_AT + _FLAG_AT + _OBJECT_AT + _SECRETS_AT) == len(SOURCE_FIELDS), "a new kind"
_ID, _ORG_ID, _VERSION, _CREATED, _UPDATED, _PROVISIONED_BY = (
    _AT[column] for column in ("id", "org_id", "version", "created", "updated", "provisioned_by")
)


def source_of(row: sqlite3.Row | PlainRow, box: SecretBox) -> DataSource:
    """The source in a row of SOURCE_COLUMNS, in that order (a `sqlite3.Row` or a tuple)."""
    fields: dict[str, Any] = {attribute: row[at] for attribute, at in _TEXT_AT}
    for attribute, at in _FLAG_AT:
        fields[attribute] = bool(row[at])
    for attribute, at in _OBJECT_AT:
        fields[attribute] = json.loads(row[at])
    for attribute, at in _SECRETS_AT:
        fields[attribute] = box.decrypt(row[at])
    return DataSource(
        id=row[_ID],
        org_id=row[_ORG_ID],
        version=row[_VERSION],
        created=parse_time(row[_CREATED]),
        updated=parse_time(row[_UPDATED]),
        provisioned_by=row[_PROVISIONED_BY],
        **fields,
    )


class RowReader:
    """Plain rows to sources for whole listings (a cache reload, after every change anywhere):
    a row exactly equal to one in the last listing gives the same source as then, so reloading
    10,000 sources of which one changed decrypts and maps one, and skips the AES-GCM and JSON
    work (~20-30 us a row) for the other 9,999.

    The key is the whole row, every column as stored, not (id, version): clearing `is_default`
    on an org's other sources does not bump their version, and a key rotation rewrites
    ciphertexts alone. A source is a pure function of its row and the key, so a reused source
    can never be stale; the registry makes a new reader when its key changes. Only what the
    last listing held is kept (the rows' text, a few MB for 10,000). Sources are frozen, so
    sharing them between successive snapshots is safe."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self._known: dict[PlainRow, DataSource] = {}

    def sources(self, rows: Iterable[PlainRow]) -> list[DataSource]:
        known: dict[PlainRow, DataSource] = {}
        previous = self._known
        listed = []
        for row in rows:
            source = previous.get(row)
            if source is None:
                source = source_of(row, self.box)
            known[row] = source
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
    return value  # sqlite3 stores a bool as 0 or 1

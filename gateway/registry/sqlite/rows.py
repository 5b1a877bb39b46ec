"""How registry records are laid out in SQLite rows, both ways."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from gateway.registry.models import DataSource, Org
from gateway.registry.secrets import SecretBox

SOURCE_COLUMNS = (
    "id, org_id, uid, name, type, access, url, user, database, basic_auth, basic_auth_user, "
    "with_credentials, is_default, json_data, secure_json_data, version, read_only, api_version, "
    "created, updated, provisioned_by"
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
    return DataSource(
        id=row["id"],
        org_id=row["org_id"],
        uid=row["uid"],
        name=row["name"],
        type=row["type"],
        access=row["access"],
        url=row["url"],
        user=row["user"],
        database=row["database"],
        basic_auth=bool(row["basic_auth"]),
        basic_auth_user=row["basic_auth_user"],
        with_credentials=bool(row["with_credentials"]),
        is_default=bool(row["is_default"]),
        json_data=json.loads(row["json_data"]),
        secure_json_data=box.decrypt(row["secure_json_data"]),
        version=row["version"],
        read_only=bool(row["read_only"]),
        api_version=row["api_version"],
        created=parse_time(row["created"]),
        updated=parse_time(row["updated"]),
        provisioned_by=row["provisioned_by"],
    )

"""Numbered schema migrations. Applied in order at start-up; `PRAGMA user_version` records the last.

Append, never edit: a database in the field has already run the earlier entries.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: orgs, API tokens (hashes only), data sources, and a key/value table for the key check.
    """
    CREATE TABLE org (
        id          INTEGER PRIMARY KEY,
        influx_id   TEXT NOT NULL UNIQUE CHECK (length(influx_id) = 16),
        name        TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created     TEXT NOT NULL
    );
    CREATE TABLE api_token (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        org_id      INTEGER NOT NULL REFERENCES org(id) ON DELETE CASCADE,
        role        TEXT NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
        token_hash  TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        created     TEXT NOT NULL,
        revoked     TEXT
    );
    CREATE TABLE data_source (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        org_id           INTEGER NOT NULL REFERENCES org(id) ON DELETE CASCADE,
        uid              TEXT NOT NULL,
        name             TEXT NOT NULL COLLATE NOCASE,
        type             TEXT NOT NULL,
        access           TEXT NOT NULL,
        url              TEXT NOT NULL DEFAULT '',
        user             TEXT NOT NULL DEFAULT '',
        database         TEXT NOT NULL DEFAULT '',
        basic_auth       INTEGER NOT NULL DEFAULT 0,
        basic_auth_user  TEXT NOT NULL DEFAULT '',
        with_credentials INTEGER NOT NULL DEFAULT 0,
        is_default       INTEGER NOT NULL DEFAULT 0,
        json_data        TEXT NOT NULL DEFAULT '{}',
        secure_json_data TEXT NOT NULL,
        version          INTEGER NOT NULL DEFAULT 1,
        read_only        INTEGER NOT NULL DEFAULT 0,
        api_version      TEXT NOT NULL DEFAULT '',
        created          TEXT NOT NULL,
        updated          TEXT NOT NULL,
        UNIQUE (org_id, name),
        UNIQUE (org_id, uid)
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: which provisioning file a source came from (NULL: made through an API), for prune.
    """
    ALTER TABLE data_source ADD COLUMN provisioned_by TEXT;
    CREATE INDEX data_source_provisioned_by ON data_source (provisioned_by)
        WHERE provisioned_by IS NOT NULL;
    """,
    # 3: nothing. PostgreSQL's 3 holds a cluster's shared probing; a SQLite registry serves one
    # gateway, which probes every source itself. Kept so both backends count versions alike.
    "",
)

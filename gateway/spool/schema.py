"""The spool file's schema and connection settings, applied by the spool's own thread at open.

Migrations are numbered; `PRAGMA user_version` records the last applied. Append, never edit.
"""

from __future__ import annotations

import sqlite3
import time

MIGRATIONS: tuple[str, ...] = (
    # 1: targets with their running counts and lease, the queue, and the dead letters.
    """
    CREATE TABLE target (
        id             INTEGER PRIMARY KEY,
        source_id      INTEGER NOT NULL,
        url            TEXT NOT NULL,
        queued_entries INTEGER NOT NULL DEFAULT 0,
        queued_bytes   INTEGER NOT NULL DEFAULT 0,
        lease_owner    TEXT,
        lease_expires  REAL,
        UNIQUE (source_id, url)
    );
    -- AUTOINCREMENT: ids are never reused, so append order is id order even after the newest
    -- entries were acknowledged, and a dead letter keeps the id its writer was told about.
    -- The body is the last column: reading the others never touches its overflow pages.
    CREATE TABLE entry (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        target_id        INTEGER NOT NULL REFERENCES target (id),
        enqueued_at      REAL NOT NULL,
        path             TEXT NOT NULL,
        params           TEXT NOT NULL,
        content_type     TEXT,
        content_encoding TEXT,
        size             INTEGER NOT NULL,
        body             BLOB NOT NULL
    );
    CREATE INDEX entry_queue ON entry (target_id, id);
    CREATE TABLE dead_letter (
        id               INTEGER PRIMARY KEY,
        target_id        INTEGER NOT NULL REFERENCES target (id),
        enqueued_at      REAL NOT NULL,
        path             TEXT NOT NULL,
        params           TEXT NOT NULL,
        content_type     TEXT,
        content_encoding TEXT,
        size             INTEGER NOT NULL,
        reason           TEXT NOT NULL,
        dead_at          REAL NOT NULL,
        body             BLOB NOT NULL
    );
    CREATE INDEX dead_letter_target ON dead_letter (target_id);
    -- The counts every append checks its bound against: kept by triggers, so no code path
    -- that adds or removes entries can forget them, and no bound check scans the queue.
    CREATE TRIGGER entry_counted AFTER INSERT ON entry BEGIN
        UPDATE target SET queued_entries = queued_entries + 1,
                          queued_bytes = queued_bytes + NEW.size
        WHERE id = NEW.target_id;
    END;
    CREATE TRIGGER entry_uncounted AFTER DELETE ON entry BEGIN
        UPDATE target SET queued_entries = queued_entries - 1,
                          queued_bytes = queued_bytes - OLD.size
        WHERE id = OLD.target_id;
    END
    """,
)

# Bodies are ~100 KB to ~1 MB, stored as chains of overflow pages: 16 KiB pages make those
# chains 4 x shorter to walk when an entry is read or freed (replay measured ~40 % faster than
# with 4 KiB in one bench run; appends about equal). Only takes effect when the file is created.
PAGE_SIZE = 16384


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the spool file (creating it), in WAL mode with every commit fsynced, migrated."""
    # isolation_level=None: transactions are explicit BEGIN IMMEDIATE ... COMMIT, so the write
    # lock is taken up front; a deferred transaction that upgrades can fail with "locked"
    # without waiting in the busy handler.
    # check_same_thread=False: opened on a worker thread, then used only by the committer's.
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        _enable_wal(conn, patience=busy_timeout)
        # FULL in WAL mode: the WAL is fsynced at every commit, so a commit that returned
        # survives a power cut (NORMAL only syncs at checkpoints).
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, patience: float) -> None:
    """Switch to WAL, retrying while another process does the same on a new file: SQLite
    answers "locked" at once there instead of calling the busy handler (see the registry's
    schema.py, which meets the same with `--workers N`)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        if mode != "wal":
            raise sqlite3.OperationalError(f"could not switch the spool to WAL (got {mode!r})")
        return


def _migrate(conn: sqlite3.Connection) -> None:
    """Each pending migration in its own IMMEDIATE transaction, re-reading the version under
    that lock: processes opening a new file together must not both apply one."""
    for number, script in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(MIGRATIONS):
                raise sqlite3.DatabaseError(
                    f"the spool schema is version {current}, newer than this gateway knows "
                    f"({len(MIGRATIONS)}); upgrade the gateway"
                )
            if current < number:
                for statement in _split_sql(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _split_sql(script: str) -> list[str]:
    """Statements of a script, one at a time: executescript would COMMIT first. A trigger body
    holds `;` too, so split on complete statements."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements

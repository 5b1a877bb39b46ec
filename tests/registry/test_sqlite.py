"""What only the SQLite backend does: the file, its PRAGMAs and WAL, migrations, the change
watch's polling. The registry contract itself is tested in test_store.py."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.registry.interface import StoreUnusable
from gateway.registry.secrets import SecretBox, SecretKeyMismatch
from gateway.registry.sqlite import SqliteBackend, SqliteRegistry
from gateway.registry.sqlite.migrations import MIGRATIONS
from tests.registry.sources import spec

SECRET = "hunter2-d8c1f0e7-unique-marker"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteRegistry]:
    async with SqliteBackend(db_path).open(SecretBox("key-one")) as opened:
        yield opened


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
    return digest.hexdigest()


class TestMigrations:
    async def test_from_empty_creates_the_schema_in_wal_mode(self, db_path: Path) -> None:
        async with SqliteBackend(db_path).open(SecretBox("k")) as store:
            assert await store.schema_version() == len(MIGRATIONS)
        with sqlite3.connect(db_path) as raw:
            tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
            assert {"org", "api_token", "data_source", "meta"} <= tables
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)

    def test_processes_opening_a_new_database_together_all_succeed(self, tmp_path: Path) -> None:
        """`--workers N` starts N servers on a fresh data dir at the same moment."""
        script = (
            "import asyncio, sys, time\n"
            "from pathlib import Path\n"
            "from gateway.registry.secrets import SecretBox\n"
            "from gateway.registry.sqlite import SqliteBackend\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together\n"
            "async def main():\n"
            "    async with SqliteBackend(Path(sys.argv[1])).open(SecretBox('k')) as store:\n"
            "        print(len(await store.list_orgs()))\n"
            "asyncio.run(main())\n"
        )
        for round_ in range(3):  # the race is narrow: a few rounds, each on a new file
            path = tmp_path / f"round-{round_}.db"
            start_at = str(time.time() + 1.5)  # after every interpreter has imported
            processes = [
                subprocess.Popen(
                    [sys.executable, "-c", script, str(path), start_at],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(4)
            ]
            outcomes = [process.communicate(timeout=30) for process in processes]
            assert [out.split()[-1:] for out, _ in outcomes] == [["1"]] * 4, outcomes

    async def test_a_newer_schema_is_refused(self, db_path: Path) -> None:
        async with SqliteBackend(db_path).open(SecretBox("k")):
            pass
        with sqlite3.connect(db_path) as raw:
            raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        with pytest.raises(StoreUnusable, match="newer than this gateway knows"):
            async with SqliteBackend(db_path).open(SecretBox("k")):
                pass

    async def test_a_file_that_is_not_a_database_is_unusable(self, db_path: Path) -> None:
        db_path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(StoreUnusable, match="is not a usable SQLite database"):
            async with SqliteBackend(db_path).open(SecretBox("k")):
                pass


async def test_migration_2_upgrades_a_version_1_database(db_path: Path) -> None:
    """A database written by the first release gains provisioned_by and keeps its rows."""
    with sqlite3.connect(db_path) as raw:
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 1")
    async with SqliteBackend(db_path).open(SecretBox("k")) as store:
        assert await store.schema_version() == len(MIGRATIONS) >= 2
        created = await store.create_source(1, spec())
        assert created.provisioned_by is None


class TestSecretsOnDisk:
    async def test_secrets_are_unreadable_in_the_database_files(
        self, store: SqliteRegistry, db_path: Path
    ) -> None:
        created = await store.create_source(1, spec(secure_json_data={"basicAuthPassword": SECRET}))
        assert created.secure_json_data == {"basicAuthPassword": SECRET}
        raw = b"".join(
            p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)
        )
        assert SECRET.encode() not in raw
        assert b"basicAuthPassword" not in raw  # even the key names are inside the ciphertext

    async def test_a_wrong_key_changes_nothing_on_disk(self, db_path: Path) -> None:
        async with SqliteBackend(db_path).open(SecretBox("right")) as store:
            await store.create_source(1, spec(secure_json_data={"password": SECRET}))
        files = [db_path, db_path.with_name(db_path.name + "-wal")]
        before = file_digest(*files)
        with pytest.raises(SecretKeyMismatch):
            async with SqliteBackend(db_path).open(SecretBox("wrong")):
                pass
        assert file_digest(*files) == before

    def test_the_files_are_the_owners_only(self, store: SqliteRegistry, db_path: Path) -> None:
        assert db_path.stat().st_mode & 0o777 == 0o600


class TestChangeWatch:
    async def test_a_failing_poll_notifies_and_the_watch_goes_on(self, db_path: Path) -> None:
        """A database error must not end the watch (caches would go stale silently)."""
        async with SqliteBackend(db_path, change_poll_seconds=0.01).open(SecretBox("k")) as store:
            heard: list[None] = []
            store.subscribe(lambda: heard.append(None))
            await store._conn.close()  # every poll now fails
            deadline = time.monotonic() + 5
            while len(heard) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(heard) >= 2

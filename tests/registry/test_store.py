"""RegistryStore against a real SQLite file: migrations, secrets at rest, keys, versioned writes."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.errors import DataSourceNotFound, NameConflict, ReadOnlySource, VersionConflict
from gateway.registry.migrations import MIGRATIONS
from gateway.registry.models import DataSource, DataSourceSpec
from gateway.registry.secrets import SecretBox, SecretKeyMismatch
from gateway.registry.store import DEFAULT_ORG_NAME, RegistryStore, StoreUnusable

SECRET = "hunter2-d8c1f0e7-unique-marker"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[RegistryStore]:
    async with RegistryStore.open(db_path, SecretBox("key-one")) as opened:
        yield opened


def spec(name: str = "prom", **changes: object) -> DataSourceSpec:
    values: dict[str, object] = {"name": name, "type": "prometheus", "url": "http://p:9090"}
    values.update(changes)
    return DataSourceSpec(**values)  # type: ignore[arg-type]


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes() if path.exists() else b"<absent>")
    return digest.hexdigest()


class TestMigrations:
    async def test_from_empty_creates_the_schema_and_the_default_org(self, db_path: Path) -> None:
        async with RegistryStore.open(db_path, SecretBox("k")) as store:
            assert await store.schema_version() == len(MIGRATIONS)
            orgs = await store.list_orgs()
        assert [(org.id, org.name) for org in orgs] == [(1, DEFAULT_ORG_NAME)]
        assert len(orgs[0].influx_id) == 16
        int(orgs[0].influx_id, 16)
        with sqlite3.connect(db_path) as raw:
            tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
            assert {"org", "api_token", "data_source", "meta"} <= tables
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    async def test_reopening_runs_nothing_again_and_keeps_data(self, db_path: Path) -> None:
        async with RegistryStore.open(db_path, SecretBox("k")) as store:
            created = await store.create_source(1, spec())
            influx_id = (await store.get_org(1)).influx_id
        async with RegistryStore.open(db_path, SecretBox("k")) as store:
            assert await store.schema_version() == len(MIGRATIONS)
            assert (await store.get_source(1, id=created.id)).name == "prom"
            assert (await store.get_org(1)).influx_id == influx_id
            assert len(await store.list_orgs()) == 1

    def test_processes_opening_a_new_database_together_all_succeed(self, tmp_path: Path) -> None:
        """`--workers N` starts N servers on a fresh data dir at the same moment."""
        script = (
            "import asyncio, sys, time\n"
            "from pathlib import Path\n"
            "from gateway.registry.secrets import SecretBox\n"
            "from gateway.registry.store import RegistryStore\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together\n"
            "async def main():\n"
            "    async with RegistryStore.open(Path(sys.argv[1]), SecretBox('k')) as store:\n"
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
        async with RegistryStore.open(db_path, SecretBox("k")):
            pass
        with sqlite3.connect(db_path) as raw:
            raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        with pytest.raises(StoreUnusable, match="newer than this gateway knows"):
            async with RegistryStore.open(db_path, SecretBox("k")):
                pass


class TestSecrets:
    async def test_secrets_are_unreadable_in_the_database_files(
        self, store: RegistryStore, db_path: Path
    ) -> None:
        created = await store.create_source(1, spec(secure_json_data={"basicAuthPassword": SECRET}))
        assert created.secure_json_data == {"basicAuthPassword": SECRET}
        raw = b"".join(
            p.read_bytes() for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)
        )
        assert SECRET.encode() not in raw
        assert b"basicAuthPassword" not in raw  # even the key names are inside the ciphertext
        assert (await store.get_source(1, id=created.id)).secure_json_data["basicAuthPassword"] == (
            SECRET
        )

    async def test_secrets_never_appear_in_repr(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec(secure_json_data={"password": SECRET}))
        assert SECRET not in repr(created)
        assert SECRET not in repr(created.spec())

    async def test_a_wrong_key_is_refused_and_changes_nothing(self, db_path: Path) -> None:
        async with RegistryStore.open(db_path, SecretBox("right")) as store:
            await store.create_source(1, spec(secure_json_data={"password": SECRET}))
        files = [db_path, db_path.with_name(db_path.name + "-wal")]
        before = file_digest(*files)
        with pytest.raises(SecretKeyMismatch):
            async with RegistryStore.open(db_path, SecretBox("wrong")):
                pass
        assert file_digest(*files) == before

    async def test_rotation_re_encrypts_every_row(self, db_path: Path) -> None:
        async with RegistryStore.open(db_path, SecretBox("old")) as store:
            for n in range(3):
                await store.create_source(1, spec(f"s{n}", secure_json_data={"token": f"t{n}"}))
            assert await store.rotate_key(SecretBox("new")) == 3
            # The open store keeps working with the key it rotated to.
            assert (await store.get_source(1, name="s1")).secure_json_data == {"token": "t1"}
        with pytest.raises(SecretKeyMismatch):
            async with RegistryStore.open(db_path, SecretBox("old")):
                pass
        async with RegistryStore.open(db_path, SecretBox("new")) as store:
            sources = await store.list_sources(1)
        assert [s.secure_json_data["token"] for s in sources] == ["t0", "t1", "t2"]


class TestSources:
    async def test_names_are_unique_per_org_ignoring_case(self, store: RegistryStore) -> None:
        await store.create_source(1, spec("Prom"))
        with pytest.raises(NameConflict):
            await store.create_source(1, spec("pROM"))
        other = await store.create_org("Other")
        assert (await store.create_source(other.id, spec("prom"))).name == "prom"

    async def test_empty_names_follow_grafanas_numbering(self, store: RegistryStore) -> None:
        names = [(await store.create_source(1, spec(""))).name for _ in range(3)]
        assert names == ["prometheus", "prometheus-1", "prometheus-2"]

    async def test_first_source_of_an_org_is_its_default_and_default_is_exclusive(
        self, store: RegistryStore
    ) -> None:
        first = await store.create_source(1, spec("a"))
        second = await store.create_source(1, spec("b"))
        assert first.is_default
        assert not second.is_default
        await store.create_source(1, spec("c", is_default=True))
        defaults = [s.name for s in await store.list_sources(1) if s.is_default]
        assert defaults == ["c"]

    async def test_generated_uids_are_valid_and_distinct(self, store: RegistryStore) -> None:
        uids = {(await store.create_source(1, spec(f"n{i}"))).uid for i in range(20)}
        assert len(uids) == 20
        assert all(len(uid) == 14 and uid.isalnum() for uid in uids)

    async def test_another_orgs_source_is_not_found(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec())
        other = await store.create_org("Other")
        with pytest.raises(DataSourceNotFound):
            await store.get_source(other.id, id=created.id)
        with pytest.raises(DataSourceNotFound):
            await store.delete_source(other.id, created.id)

    async def test_read_only_sources_are_not_deleted(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec(read_only=True))
        with pytest.raises(ReadOnlySource, match="Cannot delete read-only data source"):
            await store.delete_source(1, created.id)
        assert (await store.delete_source(1, created.id, allow_read_only=True)).id == created.id


class TestVersionedUpdates:
    @staticmethod
    def rename(to: str) -> Callable[[DataSource], DataSourceSpec]:
        def mutate(current: DataSource) -> DataSourceSpec:
            return dataclasses.replace(current.spec(), name=to)

        return mutate

    async def test_an_update_bumps_the_version(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec())
        updated = await store.update_source(1, created.id, self.rename("x"), expected_version=1)
        assert (updated.name, updated.version) == ("x", 2)

    async def test_a_stale_version_is_a_conflict(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec())
        await store.update_source(1, created.id, self.rename("x"), expected_version=1)
        with pytest.raises(VersionConflict):
            await store.update_source(1, created.id, self.rename("y"), expected_version=1)
        assert (await store.get_source(1, id=created.id)).name == "x"

    async def test_concurrent_writers_one_wins_one_conflicts(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec())
        results = await asyncio.gather(
            store.update_source(1, created.id, self.rename("a"), expected_version=1),
            store.update_source(1, created.id, self.rename("b"), expected_version=1),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, DataSource)]
        losers = [r for r in results if isinstance(r, VersionConflict)]
        assert len(winners) == 1
        assert len(losers) == 1
        stored = await store.get_source(1, id=created.id)
        assert (stored.name, stored.version) == (winners[0].name, 2)

    async def test_writers_in_two_processes_never_lose_an_update(self, db_path: Path) -> None:
        """Two connections (as the CLI and the server would be): the version check is in SQL."""
        async with (
            RegistryStore.open(db_path, SecretBox("k")) as first,
            RegistryStore.open(db_path, SecretBox("k")) as second,
        ):
            created = await first.create_source(1, spec())
            results = await asyncio.gather(
                first.update_source(1, created.id, self.rename("a"), expected_version=1),
                second.update_source(1, created.id, self.rename("b"), expected_version=1),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["DataSource", "VersionConflict"]

    async def test_unversioned_updates_serialise_without_losing_either(
        self, store: RegistryStore
    ) -> None:
        """Without a version, each mutation sees the previous one's result (no lost update)."""
        created = await store.create_source(1, spec(json_data={"n": 0}))

        def increment(current: DataSource) -> DataSourceSpec:
            return dataclasses.replace(current.spec(), json_data={"n": current.json_data["n"] + 1})

        await asyncio.gather(*(store.update_source(1, created.id, increment) for _ in range(10)))
        final = await store.get_source(1, id=created.id)
        assert (final.json_data["n"], final.version) == (10, 11)


class TestBatch:
    async def test_a_batch_commits_everything_together(self, store: RegistryStore) -> None:
        async with store.batch() as batch:
            a = await batch.create_source(1, spec("a"), provisioned_by="x.yaml")
            await batch.create_source(1, spec("b"))
            await batch.update_source(1, a.id, lambda cur: dataclasses.replace(cur.spec(), url="u"))
        sources = {s.name: s for s in await store.list_sources(1)}
        assert sources["a"].provisioned_by == "x.yaml"
        assert sources["a"].url == "u"
        assert sources["b"].provisioned_by is None

    async def test_a_failing_batch_changes_nothing(self, store: RegistryStore) -> None:
        existing = await store.create_source(1, spec("keep"))

        async def apply() -> None:
            async with store.batch() as batch:
                await batch.create_source(1, spec("new"))
                await batch.delete_source(1, existing.id)
                await batch.create_source(1, spec("NEW"))  # conflicts with the first

        with pytest.raises(NameConflict):
            await apply()
        assert [s.name for s in await store.list_sources(1)] == ["keep"]

    async def test_api_updates_keep_the_provisioning_marker(self, store: RegistryStore) -> None:
        async with store.batch() as batch:
            created = await batch.create_source(1, spec("p"), provisioned_by="f.yaml")
        updated = await store.update_source(
            1, created.id, lambda cur: dataclasses.replace(cur.spec(), url="v")
        )
        assert updated.provisioned_by == "f.yaml"

    async def test_delete_check_runs_inside_the_transaction(self, store: RegistryStore) -> None:
        created = await store.create_source(1, spec())

        def refuse(source: DataSource) -> None:
            raise DataSourceNotFound()

        with pytest.raises(DataSourceNotFound):
            await store.delete_source(1, created.id, check=refuse)
        assert (await store.get_source(1, id=created.id)).id == created.id


async def test_migration_2_upgrades_a_version_1_database(db_path: Path) -> None:
    """A database written by the first release gains provisioned_by and keeps its rows."""
    with sqlite3.connect(db_path) as raw:
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                raw.execute(statement)
        raw.execute("PRAGMA user_version = 1")
    async with RegistryStore.open(db_path, SecretBox("k")) as store:
        assert await store.schema_version() == len(MIGRATIONS) >= 2
        created = await store.create_source(1, spec())
        assert created.provisioned_by is None

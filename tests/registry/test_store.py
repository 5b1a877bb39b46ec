"""The registry contract, run against every backend (tests/registry/conftest.py): orgs, tokens,
sources, versioned writes, batches, secrets and keys, change notification.

Only `Registry` and `RegistryBackend` methods are used here, so a second backend runs this file
unchanged; what only SQLite does (files, PRAGMAs, WAL, migrations) is in test_sqlite.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from gateway.errors import (
    DataSourceNotFound,
    NameConflict,
    OrgNotFound,
    ReadOnlySource,
    UidConflict,
    VersionConflict,
)
from gateway.registry.interface import DEFAULT_ORG_NAME, OrgNameTaken, Registry, RegistryBackend
from gateway.registry.models import DataSource, DataSourceSpec, Role
from gateway.registry.secrets import SecretBox, SecretKeyMismatch
from tests.registry.sources import spec

SECRET = "hunter2-d8c1f0e7-unique-marker"


class TestOpening:
    async def test_a_new_registry_holds_the_default_org_only(self, registry: Registry) -> None:
        assert await registry.schema_version() >= 1
        orgs = await registry.list_orgs()
        assert [(org.id, org.name) for org in orgs] == [(1, DEFAULT_ORG_NAME)]
        assert len(orgs[0].influx_id) == 16
        int(orgs[0].influx_id, 16)

    async def test_reopening_changes_nothing_and_keeps_data(self, backend: RegistryBackend) -> None:
        async with backend.open(SecretBox("k")) as registry:
            created = await registry.create_source(1, spec())
            influx_id = (await registry.get_org(1)).influx_id
            version = await registry.schema_version()
        async with backend.open(SecretBox("k")) as registry:
            assert await registry.schema_version() == version
            assert (await registry.get_source(1, id=created.id)).name == "prom"
            assert (await registry.get_org(1)).influx_id == influx_id
            assert len(await registry.list_orgs()) == 1

    async def test_ping_answers_and_the_engine_has_a_name(self, registry: Registry) -> None:
        await registry.ping()
        assert registry.engine


class TestOrgs:
    async def test_orgs_are_found_by_name_and_influx_id(self, registry: Registry) -> None:
        created = await registry.create_org("Team")
        assert await registry.find_org(name="Team") == created
        assert await registry.find_org(influx_id=created.influx_id) == created
        assert await registry.get_org(created.id) == created
        assert [org.name for org in await registry.list_orgs()] == [DEFAULT_ORG_NAME, "Team"]

    async def test_unknown_orgs_are_not_found(self, registry: Registry) -> None:
        with pytest.raises(OrgNotFound):
            await registry.get_org(999)
        with pytest.raises(OrgNotFound):
            await registry.find_org(name="nobody")
        with pytest.raises(OrgNotFound):
            await registry.find_org(influx_id="00000000000000ff")

    async def test_org_names_are_unique(self, registry: Registry) -> None:
        await registry.create_org("Team")
        with pytest.raises(OrgNameTaken) as taken:
            await registry.create_org("TEAM")
        assert str(taken.value) == 'name: an organization named "Team" already exists'


class TestTokens:
    async def test_an_active_token_names_its_principal_until_revoked(
        self, registry: Registry
    ) -> None:
        token_id = await registry.create_token(1, Role.EDITOR, "hash-1", "ci")
        principal = await registry.find_principal("hash-1")
        assert principal is not None
        assert (principal.token_id, principal.org.id, principal.role) == (token_id, 1, Role.EDITOR)
        assert await registry.revoke_token(token_id)
        assert not await registry.revoke_token(token_id)  # no longer active
        assert await registry.find_principal("hash-1") is None
        [listed] = await registry.list_tokens()
        assert (listed.id, listed.org_name, listed.description) == (
            token_id,
            DEFAULT_ORG_NAME,
            "ci",
        )
        assert listed.revoked is not None

    async def test_ensure_token_acts_only_when_needed(self, registry: Registry) -> None:
        assert await registry.ensure_token(1, Role.ADMIN, "h", "env")
        assert not await registry.ensure_token(1, Role.ADMIN, "h", "env")
        [token] = await registry.list_tokens()
        await registry.revoke_token(token.id)
        assert await registry.ensure_token(1, Role.ADMIN, "h", "env")  # revived
        principal = await registry.find_principal("h")
        assert principal is not None
        assert principal.role is Role.ADMIN

    async def test_a_first_token_is_made_only_when_none_is_active(self, registry: Registry) -> None:
        assert await registry.create_first_token(1, Role.ADMIN, "first", "start-up")
        assert not await registry.create_first_token(1, Role.ADMIN, "second", "start-up")
        assert await registry.find_principal("second") is None


class TestSecrets:
    async def test_secrets_are_read_back_and_never_appear_in_repr(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec(secure_json_data={"password": SECRET}))
        assert created.secure_json_data == {"password": SECRET}
        stored = await registry.get_source(1, id=created.id)
        assert stored.secure_json_data == {"password": SECRET}
        assert SECRET not in repr(created)
        assert SECRET not in repr(created.spec())

    async def test_a_wrong_key_is_refused_and_the_right_one_still_works(
        self, backend: RegistryBackend
    ) -> None:
        async with backend.open(SecretBox("right")) as registry:
            await registry.create_source(1, spec(secure_json_data={"password": SECRET}))
        with pytest.raises(SecretKeyMismatch):
            async with backend.open(SecretBox("wrong")):
                pass
        async with backend.open(SecretBox("right")) as registry:
            [source] = await registry.list_sources(1)
        assert source.secure_json_data == {"password": SECRET}

    async def test_rotation_re_encrypts_every_row(self, backend: RegistryBackend) -> None:
        async with backend.open(SecretBox("old")) as registry:
            for n in range(3):
                await registry.create_source(1, spec(f"s{n}", secure_json_data={"token": f"t{n}"}))
            assert await registry.rotate_key(SecretBox("new")) == 3
            # The open registry keeps working with the key it rotated to.
            assert (await registry.get_source(1, name="s1")).secure_json_data == {"token": "t1"}
        with pytest.raises(SecretKeyMismatch):
            async with backend.open(SecretBox("old")):
                pass
        async with backend.open(SecretBox("new")) as registry:
            sources = await registry.list_sources(1)
        assert [s.secure_json_data["token"] for s in sources] == ["t0", "t1", "t2"]


class TestSources:
    async def test_names_are_unique_per_org_ignoring_case(self, registry: Registry) -> None:
        await registry.create_source(1, spec("Prom"))
        with pytest.raises(NameConflict):
            await registry.create_source(1, spec("pROM"))
        assert (await registry.get_source(1, name="PROM")).name == "Prom"
        other = await registry.create_org("Other")
        assert (await registry.create_source(other.id, spec("prom"))).name == "prom"

    async def test_uids_are_unique_per_org(self, registry: Registry) -> None:
        await registry.create_source(1, spec("a", uid="same"))
        with pytest.raises(UidConflict):
            await registry.create_source(1, spec("b", uid="same"))
        other = await registry.create_org("Other")
        assert (await registry.create_source(other.id, spec("a", uid="same"))).uid == "same"

    async def test_empty_names_follow_grafanas_numbering(self, registry: Registry) -> None:
        names = [(await registry.create_source(1, spec(""))).name for _ in range(3)]
        assert names == ["prometheus", "prometheus-1", "prometheus-2"]

    async def test_first_source_of_an_org_is_its_default_and_default_is_exclusive(
        self, registry: Registry
    ) -> None:
        first = await registry.create_source(1, spec("a"))
        second = await registry.create_source(1, spec("b"))
        assert first.is_default
        assert not second.is_default
        await registry.create_source(1, spec("c", is_default=True))
        defaults = [s.name for s in await registry.list_sources(1) if s.is_default]
        assert defaults == ["c"]

    async def test_generated_uids_are_valid_and_distinct(self, registry: Registry) -> None:
        uids = {(await registry.create_source(1, spec(f"n{i}"))).uid for i in range(20)}
        assert len(uids) == 20
        assert all(len(uid) == 14 and uid.isalnum() for uid in uids)

    async def test_sources_are_listed_in_id_order_per_org_or_all(self, registry: Registry) -> None:
        other = await registry.create_org("Other")
        a = await registry.create_source(1, spec("a"))
        b = await registry.create_source(other.id, spec("b"))
        c = await registry.create_source(1, spec("c"))
        assert [s.id for s in await registry.list_sources(1)] == [a.id, c.id]
        assert [s.id for s in await registry.list_sources()] == [a.id, b.id, c.id]
        assert (await registry.get_source(1, uid=c.uid)).id == c.id

    async def test_another_orgs_source_is_not_found(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec())
        other = await registry.create_org("Other")
        with pytest.raises(DataSourceNotFound):
            await registry.get_source(other.id, id=created.id)
        with pytest.raises(DataSourceNotFound):
            await registry.delete_source(other.id, created.id)

    async def test_read_only_sources_are_not_deleted(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec(read_only=True))
        with pytest.raises(ReadOnlySource, match="Cannot delete read-only data source"):
            await registry.delete_source(1, created.id)
        assert (await registry.delete_source(1, created.id, allow_read_only=True)).id == created.id
        with pytest.raises(DataSourceNotFound):
            await registry.get_source(1, id=created.id)


class TestListingEverySource:
    """A full listing (what a cache reload asks for) reuses the records of rows unchanged since
    the last one: these prove a reused record is never stale."""

    async def test_a_relisting_sees_every_kind_of_change(self, registry: Registry) -> None:
        team = await registry.create_org("Team")
        one = await registry.create_source(1, spec("one", secure_json_data={"password": "a"}))
        await registry.create_source(1, spec("two"))
        await registry.create_source(team.id, spec("other", is_default=True))
        gone = await registry.create_source(team.id, spec("gone"))
        before = {source.name: source for source in await registry.list_sources()}
        assert before["one"].is_default

        await registry.update_source(
            1,
            one.id,
            lambda s: dataclasses.replace(s.spec(), secure_json_data={"password": "b"}),
        )
        # A new default clears the flag on "one" without bumping its version.
        await registry.create_source(1, spec("three", is_default=True))
        await registry.delete_source(team.id, gone.id)
        after = {source.name: source for source in await registry.list_sources()}

        assert sorted(after) == ["one", "other", "three", "two"]
        assert after["one"].secure_json_data == {"password": "b"}
        assert not after["one"].is_default
        assert after["three"].is_default
        assert after["other"].is_default  # another org's default is its own
        # The rows nothing touched give the very records of the last listing: the path that
        # could go stale is the one exercised above.
        assert after["two"] is before["two"]
        assert after["other"] is before["other"]

    async def test_a_relisting_after_a_key_rotation_reads_with_the_new_key(
        self, registry: Registry
    ) -> None:
        await registry.create_source(1, spec("one", secure_json_data={"token": "t"}))
        assert [s.secure_json_data for s in await registry.list_sources()] == [{"token": "t"}]
        await registry.rotate_key(SecretBox("rotated"))
        assert [s.secure_json_data for s in await registry.list_sources()] == [{"token": "t"}]


class TestVersionedUpdates:
    @staticmethod
    def rename(to: str) -> Callable[[DataSource], DataSourceSpec]:
        def mutate(current: DataSource) -> DataSourceSpec:
            return dataclasses.replace(current.spec(), name=to)

        return mutate

    async def test_an_update_bumps_the_version(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec())
        updated = await registry.update_source(1, created.id, self.rename("x"), expected_version=1)
        assert (updated.name, updated.version) == ("x", 2)

    async def test_a_stale_version_is_a_conflict(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec())
        await registry.update_source(1, created.id, self.rename("x"), expected_version=1)
        with pytest.raises(VersionConflict):
            await registry.update_source(1, created.id, self.rename("y"), expected_version=1)
        assert (await registry.get_source(1, id=created.id)).name == "x"

    async def test_concurrent_writers_one_wins_one_conflicts(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec())
        results = await asyncio.gather(
            registry.update_source(1, created.id, self.rename("a"), expected_version=1),
            registry.update_source(1, created.id, self.rename("b"), expected_version=1),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, DataSource)]
        losers = [r for r in results if isinstance(r, VersionConflict)]
        assert len(winners) == 1
        assert len(losers) == 1
        stored = await registry.get_source(1, id=created.id)
        assert (stored.name, stored.version) == (winners[0].name, 2)

    async def test_writers_in_two_processes_never_lose_an_update(
        self, backend: RegistryBackend
    ) -> None:
        """Two open registries (as the CLI and the server would be): the check is the database's."""
        async with (
            backend.open(SecretBox("k")) as first,
            backend.open(SecretBox("k")) as second,
        ):
            created = await first.create_source(1, spec())
            results = await asyncio.gather(
                first.update_source(1, created.id, self.rename("a"), expected_version=1),
                second.update_source(1, created.id, self.rename("b"), expected_version=1),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["DataSource", "VersionConflict"]

    async def test_unversioned_updates_serialise_without_losing_either(
        self, registry: Registry
    ) -> None:
        """Without a version, each mutation sees the previous one's result (no lost update)."""
        created = await registry.create_source(1, spec(json_data={"n": 0}))

        def increment(current: DataSource) -> DataSourceSpec:
            return dataclasses.replace(current.spec(), json_data={"n": current.json_data["n"] + 1})

        await asyncio.gather(*(registry.update_source(1, created.id, increment) for _ in range(10)))
        final = await registry.get_source(1, id=created.id)
        assert (final.json_data["n"], final.version) == (10, 11)


class TestBatch:
    async def test_a_batch_commits_everything_together(self, registry: Registry) -> None:
        async with registry.batch() as batch:
            a = await batch.create_source(1, spec("a"), provisioned_by="x.yaml")
            await batch.create_source(1, spec("b"))
            await batch.update_source(1, a.id, lambda cur: dataclasses.replace(cur.spec(), url="u"))
            assert [s.name for s in await batch.sources(1)] == ["a", "b"]
            assert await batch.org_exists(1)
            assert not await batch.org_exists(999)
        sources = {s.name: s for s in await registry.list_sources(1)}
        assert sources["a"].provisioned_by == "x.yaml"
        assert sources["a"].url == "u"
        assert sources["b"].provisioned_by is None

    async def test_a_failing_batch_changes_nothing(self, registry: Registry) -> None:
        existing = await registry.create_source(1, spec("keep"))

        async def apply() -> None:
            async with registry.batch() as batch:
                await batch.create_source(1, spec("new"))
                await batch.delete_source(1, existing.id)
                await batch.create_source(1, spec("NEW"))  # conflicts with the first

        with pytest.raises(NameConflict):
            await apply()
        assert [s.name for s in await registry.list_sources(1)] == ["keep"]

    async def test_a_batch_deletes_read_only_sources(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec(read_only=True))
        async with registry.batch() as batch:
            await batch.delete_source(1, created.id)
        assert await registry.list_sources(1) == []

    async def test_api_updates_keep_the_provisioning_marker(self, registry: Registry) -> None:
        async with registry.batch() as batch:
            created = await batch.create_source(1, spec("p"), provisioned_by="f.yaml")
        updated = await registry.update_source(
            1, created.id, lambda cur: dataclasses.replace(cur.spec(), url="v")
        )
        assert updated.provisioned_by == "f.yaml"

    async def test_delete_check_runs_inside_the_transaction(self, registry: Registry) -> None:
        created = await registry.create_source(1, spec())

        def refuse(source: DataSource) -> None:
            raise DataSourceNotFound()

        with pytest.raises(DataSourceNotFound):
            await registry.delete_source(1, created.id, check=refuse)
        assert (await registry.get_source(1, id=created.id)).id == created.id


class TestChangeNotification:
    async def test_listeners_hear_of_every_commit_made_here(self, registry: Registry) -> None:
        heard: list[str] = []
        registry.subscribe(lambda: heard.append("first"))
        registry.subscribe(lambda: heard.append("second"))
        created = await registry.create_source(1, spec())
        assert heard[-2:] == ["first", "second"]  # told by the time the write returns
        heard.clear()
        async with registry.batch() as batch:
            await batch.delete_source(1, created.id)
        assert heard[-2:] == ["first", "second"]

    async def test_listeners_hear_of_commits_made_by_another_process(
        self, backend: RegistryBackend
    ) -> None:
        async with (
            backend.open(SecretBox("k")) as server,
            backend.open(SecretBox("k")) as cli,
        ):
            changed = asyncio.Event()
            server.subscribe(changed.set)
            token_id = await cli.create_token(1, Role.VIEWER, "h", "")
            await asyncio.wait_for(changed.wait(), timeout=10)
            changed.clear()
            await cli.revoke_token(token_id)
            await asyncio.wait_for(changed.wait(), timeout=10)
            assert await server.find_principal("h") is None

"""Provisioning applied to a real SQLite registry: create, update, delete, prune, variables,
idempotence, all or nothing, read-only sources through the real Grafana API, and the SIGHUP
reloader. Start-up and SIGHUP in a real process: test_provisioning_process.py."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import Settings
from gateway.errors import StartupError
from gateway.provisioning.apply import Counts, grafana_uid
from gateway.provisioning.model import Problem, ProvisioningFailed
from gateway.provisioning.service import Provisioner, Reloader
from gateway.registry.interface import Registry
from gateway.registry.models import DataSource, DataSourceSpec
from gateway.registry.secrets import SecretBox
from gateway.registry.sqlite import SqliteBackend
from tests.conftest import ADMIN_TOKEN, SECRET_KEY
from tests.waiting import wait_for

SECRET = "pw-5d1e7c-from-the-environment"
REPO_EXAMPLES = Path(__file__).resolve().parent.parent / "config/provisioning/datasources"
PROMETHEUS = """
    apiVersion: 1
    datasources:
      - name: Prometheus
        type: prometheus
        url: http://prometheus:9090
        jsonData: {httpMethod: POST, nested: {list: [1, two, 3.5, null, true]}}
        secureJsonData: {basicAuthPassword: $PROM_PASSWORD}
"""
ENVIRON = {"PROM_PASSWORD": SECRET}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Registry]:
    async with SqliteBackend(tmp_path / "gateway.db").open(SecretBox(SECRET_KEY)) as opened:
        yield opened


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))


async def provision(store: Registry, folder: Path, environ: dict[str, str] | None = None) -> Counts:
    return await Provisioner(store, folder, environ or {}).apply("test")


async def sources(store: Registry) -> dict[str, DataSource]:
    return {source.name: source for source in await store.list_sources()}


def counts(created: int = 0, updated: int = 0, deleted: int = 0, unchanged: int = 0) -> Counts:
    return Counts(created=created, updated=updated, deleted=deleted, unchanged=unchanged)


class TestCreate:
    async def test_listed_sources_are_created_read_only_and_marked(
        self, store: Registry, folder: Path
    ) -> None:
        team = await store.create_org("Team B")
        write(folder, "main.yaml", PROMETHEUS)
        write(
            folder,
            "team.yml",
            f"""
            apiVersion: 1
            datasources:
              - {{name: Loki, type: loki, uid: team-loki, orgId: {team.id}, editable: true,
                  url: "http://loki:3100"}}
            """,
        )
        assert await provision(store, folder, ENVIRON) == counts(created=2)
        made = await sources(store)
        prometheus, loki = made["Prometheus"], made["Loki"]
        assert prometheus.org_id == 1
        assert prometheus.uid == grafana_uid("Prometheus")  # Grafana's uid when none is given
        assert prometheus.url == "http://prometheus:9090"
        assert prometheus.json_data == {
            "httpMethod": "POST",
            "nested": {"list": [1, "two", 3.5, None, True]},
        }
        assert prometheus.secure_json_data == {"basicAuthPassword": SECRET}
        assert (prometheus.read_only, prometheus.provisioned_by) == (True, "main.yaml")
        assert prometheus.is_default  # the first source of an org becomes its default
        assert (loki.org_id, loki.uid, loki.read_only) == (team.id, "team-loki", False)
        assert loki.provisioned_by == "team.yml"

    def test_the_derived_uid_is_grafanas(self) -> None:
        # The values of Grafana's own TestUIDFromNames.
        assert grafana_uid("Hello world") == "P64EC88CA00B268E5"
        assert grafana_uid("Hello World") == "PA591A6D40BF42040"
        assert grafana_uid("AAA") == "PCB1AD2119D8FAFB6"

    async def test_is_default_moves_to_the_source_that_asks(
        self, store: Registry, folder: Path
    ) -> None:
        await store.create_source(1, DataSourceSpec(name="api", type="loki"))
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: P, type: x, isDefault: true}]")
        await provision(store, folder)
        made = await sources(store)
        assert (made["P"].is_default, made["api"].is_default) == (True, False)

    async def test_the_shipped_example_provisions_nothing(self, store: Registry) -> None:
        assert await provision(store, REPO_EXAMPLES) == counts()
        assert await store.list_sources() == []


class TestUpdate:
    async def test_a_changed_file_updates_the_source_in_place(
        self, store: Registry, folder: Path
    ) -> None:
        write(folder, "main.yaml", PROMETHEUS)
        await provision(store, folder, ENVIRON)
        before = (await sources(store))["Prometheus"]
        write(
            folder,
            "main.yaml",
            """
            apiVersion: 1
            datasources:
              - name: Prometheus
                type: prometheus
                url: http://prometheus-2:9090
                jsonData: {httpMethod: GET}
                secureJsonData: {httpHeaderValue1: $PROM_PASSWORD}
            """,
        )
        assert await provision(store, folder, ENVIRON) == counts(updated=1)
        after = (await sources(store))["Prometheus"]
        assert (after.id, after.uid, after.version) == (before.id, before.uid, 2)
        assert after.url == "http://prometheus-2:9090"
        assert after.json_data == {"httpMethod": "GET"}
        # The file's secrets replace the stored ones whole (Grafana: IgnoreOldSecureJsonData).
        assert after.secure_json_data == {"httpHeaderValue1": SECRET}

    async def test_a_new_value_in_the_environment_updates_the_secret(
        self, store: Registry, folder: Path
    ) -> None:
        write(folder, "main.yaml", PROMETHEUS)
        await provision(store, folder, ENVIRON)
        assert await provision(store, folder, {"PROM_PASSWORD": "rotated"}) == counts(updated=1)
        assert (await sources(store))["Prometheus"].secure_json_data == {
            "basicAuthPassword": "rotated"
        }

    async def test_with_a_uid_a_rename_keeps_the_source(
        self, store: Registry, folder: Path
    ) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: old, type: x, uid: u1}]")
        await provision(store, folder)
        [before] = await store.list_sources()
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: new, type: x, uid: u1}]")
        assert await provision(store, folder) == counts(updated=1)
        [after] = await store.list_sources()
        assert (after.id, after.uid, after.name) == (before.id, "u1", "new")

    async def test_a_source_made_through_the_api_is_adopted(
        self, store: Registry, folder: Path
    ) -> None:
        made = await store.create_source(
            1,
            DataSourceSpec(
                name="prometheus", type="prometheus", url="http://old:9090", api_version="v1"
            ),
        )
        write(folder, "main.yaml", PROMETHEUS)  # "Prometheus": names match case-insensitively
        assert await provision(store, folder, ENVIRON) == counts(updated=1)
        adopted = (await sources(store))["Prometheus"]
        assert (adopted.id, adopted.uid, adopted.version) == (made.id, made.uid, 2)
        assert (adopted.read_only, adopted.provisioned_by) == (True, "main.yaml")
        assert adopted.url == "http://prometheus:9090"
        assert adopted.api_version == "v1"  # the files cannot say; kept

    async def test_a_source_made_through_the_api_is_adopted_by_uid(
        self, store: Registry, folder: Path
    ) -> None:
        made = await store.create_source(1, DataSourceSpec(name="api", type="x", uid="shared"))
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: file, type: x, uid: shared}]")
        assert await provision(store, folder) == counts(updated=1)
        [adopted] = await store.list_sources()
        assert (adopted.id, adopted.name, adopted.provisioned_by) == (made.id, "file", "a.yaml")

    async def test_edits_to_an_editable_source_are_reverted_by_the_next_apply(
        self, store: Registry, folder: Path
    ) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: e, type: x, editable: true}]")
        await provision(store, folder)
        [source] = await store.list_sources()
        await store.update_source(
            1, source.id, lambda current: dataclasses.replace(current.spec(), url="http://edit")
        )
        assert await provision(store, folder) == counts(updated=1)
        assert (await store.get_source(1, id=source.id)).url == ""


class TestIdempotence:
    async def test_applying_the_same_files_twice_changes_nothing(
        self, store: Registry, folder: Path
    ) -> None:
        await store.create_org("Team B")
        write(folder, "a.yaml", PROMETHEUS)
        write(
            folder,
            "b.yaml",
            """
            apiVersion: 1
            prune: true
            deleteDatasources: [{name: gone}]
            datasources:
              - {name: Loki, type: loki, uid: loki, url: "http://loki:3100", editable: true}
              - name: Influx
                type: influxdb
                url: http://influx:8086
                orgId: 2
                access: direct
                basicAuth: true
                basicAuthUser: $PROM_PASSWORD
                jsonData: {version: Flux, organization: $PROM_PASSWORD, n: 1, f: 1.0}
                secureJsonData: {token: $PROM_PASSWORD, empty: ""}
            """,
        )
        assert await provision(store, folder, ENVIRON) == counts(created=3)
        first = await store.list_sources()
        assert await provision(store, folder, ENVIRON) == counts(unchanged=3)
        assert await store.list_sources() == first  # versions and update times included


class TestDelete:
    async def test_delete_datasources_removes_named_sources_of_each_org(
        self, store: Registry, folder: Path
    ) -> None:
        team = await store.create_org("Team B")
        await store.create_source(1, DataSourceSpec(name="api-made", type="x"))
        await store.create_source(team.id, DataSourceSpec(name="api-made", type="x"))
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: provisioned, type: x}]")
        await provision(store, folder)
        write(
            folder,
            "a.yaml",
            f"""
            apiVersion: 1
            deleteDatasources:
              - name: API-MADE
              - name: provisioned
                orgId: 1
              - name: never-existed
              - {{name: never-existed, orgId: {team.id}}}
            """,
        )
        assert await provision(store, folder) == counts(deleted=2)
        [left] = await store.list_sources()
        assert (left.org_id, left.name) == (team.id, "api-made")

    async def test_a_source_both_listed_and_deleted_is_updated_not_recreated(
        self, store: Registry, folder: Path
    ) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: p, type: x}]")
        await provision(store, folder)
        [before] = await store.list_sources()
        write(
            folder,
            "a.yaml",
            "apiVersion: 1\ndeleteDatasources: [{name: p}]\ndatasources: [{name: p, type: y}]",
        )
        assert await provision(store, folder) == counts(updated=1)
        [after] = await store.list_sources()
        assert (after.id, after.type) == (before.id, "y")


class TestPrune:
    async def test_prune_removes_what_this_file_provisioned_and_no_longer_lists(
        self, store: Registry, folder: Path
    ) -> None:
        await store.create_source(1, DataSourceSpec(name="api-made", type="x"))
        two = "apiVersion: 1\nprune: true\ndatasources: [{name: a, type: x}, {name: b, type: x}]"
        write(folder, "pruned.yaml", two)
        write(folder, "kept.yaml", "apiVersion: 1\ndatasources: [{name: c, type: x}]")
        await provision(store, folder)
        write(
            folder, "pruned.yaml", "apiVersion: 1\nprune: true\ndatasources: [{name: a, type: x}]"
        )
        write(folder, "kept.yaml", "apiVersion: 1\n")  # no prune: what it made stays
        assert await provision(store, folder) == counts(deleted=1, unchanged=1)
        assert sorted(await sources(store)) == ["a", "api-made", "c"]

    async def test_a_source_moved_to_another_file_is_not_pruned(
        self, store: Registry, folder: Path
    ) -> None:
        write(folder, "a.yaml", "apiVersion: 1\nprune: true\ndatasources: [{name: m, type: x}]")
        await provision(store, folder)
        [before] = await store.list_sources()
        write(folder, "a.yaml", "apiVersion: 1\nprune: true\ndatasources: []")
        write(folder, "b.yaml", "apiVersion: 1\ndatasources: [{name: m, type: x}]")
        assert await provision(store, folder) == counts(updated=1)
        [after] = await store.list_sources()
        assert (after.id, after.provisioned_by) == (before.id, "b.yaml")


class TestAllOrNothing:
    async def test_an_unknown_org_names_file_and_line_and_nothing_is_applied(
        self, store: Registry, folder: Path
    ) -> None:
        write(
            folder,
            "a.yaml",
            """
            apiVersion: 1
            datasources:
              - {name: fine, type: x}
              - {name: elsewhere, type: x, orgId: 9}
            deleteDatasources:
              - {name: x, orgId: 8}
            """,
        )
        with pytest.raises(ProvisioningFailed) as failure:
            await provision(store, folder)
        assert failure.value.lines() == [
            f"{folder}/a.yaml:4: org 9 does not exist (see `gateway org list`)",
            f"{folder}/a.yaml:6: org 8 does not exist (see `gateway org list`)",
        ]
        assert await store.list_sources() == []

    async def test_a_conflict_in_the_registry_rolls_back_every_change(
        self, store: Registry, folder: Path
    ) -> None:
        write(
            folder,
            "a.yaml",
            "apiVersion: 1\ndatasources: [{name: M, type: x, uid: u}, {name: doomed, type: x}]",
        )
        await provision(store, folder)
        await store.create_source(1, DataSourceSpec(name="N", type="x"))
        before = await store.list_sources()
        # Renaming u to N collides with the API-made N, which the files do not manage.
        write(
            folder,
            "a.yaml",
            """
            apiVersion: 1
            deleteDatasources: [{name: doomed}]
            datasources:
              - {name: new, type: x}
              - {name: N, type: x, uid: u}
            """,
        )
        with pytest.raises(ProvisioningFailed) as failure:
            await provision(store, folder)
        assert failure.value.lines() == [
            f"{folder}/a.yaml:5: cannot save this data source: "
            "data source with the same name already exists"
        ]
        assert await store.list_sources() == before

    async def test_one_broken_file_stops_every_file(self, store: Registry, folder: Path) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: fine, type: x}]")
        write(folder, "b.yaml", "apiVersion: 1\ndatasources: [{name: broken}]")
        with pytest.raises(ProvisioningFailed) as failure:
            await provision(store, folder)
        assert failure.value.problems == [Problem(f"{folder}/b.yaml", 2, "type: required")]
        assert await store.list_sources() == []


class TestThroughTheGrafanaApi:
    @pytest.fixture
    def settings(self, settings: Settings, folder: Path) -> Settings:
        return dataclasses.replace(settings, provisioning_path=folder)

    @pytest.fixture
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @pytest.fixture(autouse=True)
    def environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PROM_PASSWORD", SECRET)

    async def test_read_only_sources_refuse_updates_and_deletes(
        self,
        aiohttp_client: AiohttpClient,
        settings: Settings,
        folder: Path,
        headers: dict[str, str],
    ) -> None:
        write(folder, "main.yaml", PROMETHEUS)
        client = await aiohttp_client(create_app(settings))
        uid = grafana_uid("Prometheus")
        response = await client.get(f"/api/datasources/uid/{uid}", headers=headers)
        dto: dict[str, Any] = await response.json()
        assert (dto["readOnly"], dto["secureJsonFields"]) == (True, {"basicAuthPassword": True})
        assert SECRET not in await response.text()
        body = {"name": "Prometheus", "type": "prometheus", "access": "proxy", "url": "http://x"}
        for path in [f"/api/datasources/uid/{uid}", f"/api/datasources/{dto['id']}"]:
            response = await client.put(path, json=body, headers=headers)
            assert (response.status, await response.json()) == (
                403,
                {"message": "Cannot update read-only data source"},
            )
        for path in [
            f"/api/datasources/uid/{uid}",
            f"/api/datasources/{dto['id']}",
            "/api/datasources/name/Prometheus",
        ]:
            response = await client.delete(path, headers=headers)
            assert (response.status, await response.json()) == (
                403,
                {"message": "Cannot delete read-only data source"},
            )
        unchanged = await client.get(f"/api/datasources/uid/{uid}", headers=headers)
        assert (await unchanged.json())["version"] == 1

    async def test_editable_sources_can_be_changed_through_the_api(
        self,
        aiohttp_client: AiohttpClient,
        settings: Settings,
        folder: Path,
        headers: dict[str, str],
    ) -> None:
        write(folder, "a.yaml", "apiVersion: 1\ndatasources: [{name: e, type: x, editable: true}]")
        client = await aiohttp_client(create_app(settings))
        body = {"name": "e", "type": "x", "access": "proxy", "url": "http://changed"}
        response = await client.put(
            f"/api/datasources/uid/{grafana_uid('e')}", json=body, headers=headers
        )
        assert response.status == 200
        response = await client.delete("/api/datasources/name/e", headers=headers)
        assert response.status == 200

    async def test_an_invalid_file_stops_start_up_with_file_and_line(
        self, settings: Settings, folder: Path
    ) -> None:
        write(folder, "bad.yaml", "apiVersion: 1\ndatasources:\n  - {name: x, type: y, orgId: 7}")
        runner = web.AppRunner(create_app(settings))
        try:
            with pytest.raises(StartupError) as failure:
                await runner.setup()
        finally:
            await runner.cleanup()
        assert str(failure.value) == (
            f"provisioning ({folder}): 1 problem(s), nothing was applied:\n"
            f"  {folder}/bad.yaml:3: org 7 does not exist (see `gateway org list`)"
        )

    async def start_up_failure(self, settings: Settings) -> str:
        runner = web.AppRunner(create_app(settings))
        try:
            with pytest.raises(StartupError) as failure:
                await runner.setup()
        finally:
            await runner.cleanup()
        return str(failure.value)

    async def test_a_target_the_apis_would_refuse_stops_start_up(
        self, settings: Settings, folder: Path
    ) -> None:
        """The SSRF policy at save, as both APIs apply it (`proxy.denied_networks`)."""
        write(
            folder,
            "meta.yaml",
            """
            apiVersion: 1
            datasources:
              - name: ok
                type: prometheus
                url: http://prometheus:9090
              - name: metadata
                type: prometheus
                url: http://169.254.169.254/
                jsonData: {replicaUrls: ["http://prometheus:9091", "http://[::ffff:169.254.169.254]/"]}
              - {name: sql, type: postgres, url: "169.254.169.254:5432"}
              - {name: mssql, type: mssql, url: "sqlserver://169.254.169.254:1433"}
            """,
        )
        assert await self.start_up_failure(settings) == (
            f"provisioning ({folder}): 3 problem(s), nothing was applied:\n"
            f"  {folder}/meta.yaml:6: url: not allowed: 169.254.169.254 is in the denied "
            "network 169.254.0.0/16\n"
            f"  {folder}/meta.yaml:6: jsonData.replicaUrls[1]: not allowed: ::ffff:a9fe:a9fe is "
            "in the denied network 169.254.0.0/16\n"
            # As the APIs read a database address: only the `scheme://host` form names a host.
            f"  {folder}/meta.yaml:11: url: not allowed: 169.254.169.254 is in the denied "
            "network 169.254.0.0/16"
        )

    async def test_start_up_lists_20_problems_then_counts_the_rest(
        self, settings: Settings, folder: Path
    ) -> None:
        keys = ", ".join(f"k{index}: 1" for index in range(25))
        write(folder, "many.yaml", f"apiVersion: 1\ndatasources:\n  - {{name: x, type: y, {keys}}}")
        listed = "".join(
            f"\n  {folder}/many.yaml:3: k{index}: unknown field" for index in range(20)
        )
        assert await self.start_up_failure(settings) == (
            f"provisioning ({folder}): 25 problem(s), nothing was applied:{listed}\n  and 5 more"
        )


class FakeProvisioner:
    """Counts applies and how many overlap; each waits until released."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.folder = Path("fake")
        self.outcomes = outcomes
        self.applies = 0
        self.running = 0
        self.most_at_once = 0
        self.release = asyncio.Event()

    def finished(self, applies: int) -> bool:
        return self.applies == applies and self.running == 0

    async def apply(self, trigger: str) -> Counts:
        self.applies += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            outcome = self.outcomes.pop(0) if self.outcomes else None
            if outcome is not None:
                raise outcome
            return Counts()
        finally:
            self.running -= 1


class TestReloader:
    async def test_one_apply_at_a_time_and_requests_during_one_fold_into_one(self) -> None:
        fake = FakeProvisioner([])
        reloader = Reloader(fake)
        reloader.start()
        try:
            reloader.request()
            await wait_for(lambda: fake.applies == 1)
            for _ in range(5):
                reloader.request()
            await asyncio.sleep(0.05)  # a while with requests pending: still no second apply
            assert fake.applies == 1
            fake.release.set()
            await wait_for(functools.partial(fake.finished, 2))
            await asyncio.sleep(0.05)  # and no third one for the requests folded into it
            assert (fake.applies, fake.most_at_once) == (2, 1)
        finally:
            await reloader.stop()

    async def test_failures_are_logged_and_the_reloader_keeps_going(self) -> None:
        problem = Problem("f.yaml", 3, "type is required")
        fake = FakeProvisioner([ProvisioningFailed([problem]), RuntimeError("database is locked")])
        fake.release.set()
        reloader = Reloader(fake)
        reloader.start()
        try:
            with structlog.testing.capture_logs() as logs:
                for expected in (1, 2, 3):
                    reloader.request()
                    await wait_for(functools.partial(fake.finished, expected))
        finally:
            await reloader.stop()
        events = [(log["event"], log.get("problem")) for log in logs]
        assert events == [
            ("provisioning_problem", "f.yaml:3: type is required"),
            ("provisioning_failed", None),
            ("provisioning_reload_crashed", None),
        ]
        assert logs[1]["registry"] == "unchanged"

    async def test_stop_ends_an_apply_in_progress(self) -> None:
        fake = FakeProvisioner([])
        reloader = Reloader(fake)
        reloader.start()
        reloader.request()
        await wait_for(lambda: fake.running == 1)
        await reloader.stop()
        assert fake.running == 0

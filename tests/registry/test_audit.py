"""The audit log of the registry: one JSON line for each committed change, on every backend.

The registry under test is a backend of tests/registry/conftest.py wrapped as `backend_for`
wraps it (`AuditedBackend`); the lines are read as the process prints them (JSON on stderr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from gateway.errors import NameConflict, ReadOnlySourceDelete, VersionConflict
from gateway.logging import configure_logging, request_log
from gateway.registry.audit import (
    CLI,
    AuditedBackend,
    ProvisioningActor,
    TokenActor,
    acting_as,
    changed_fields,
)
from gateway.registry.interface import Registry, RegistryBackend
from gateway.registry.models import DataSource, DataSourceSpec, Role
from gateway.registry.secrets import SecretBox
from tests.registry.sources import spec

SECRET = "s3cret-value-7f3a9c-never-logged"
OTHER_SECRET = "an0ther-s3cret-41d2e8-never-logged"
AUDIT_EVENTS = frozenset(
    {
        "source_created",
        "source_updated",
        "source_deleted",
        "token_created",
        "token_revoked",
        "org_created",
        "secret_key_rotated",
    }
)


class AuditLog:
    """The JSON lines the root logger printed, set up by `configure_logging("json")` as
    `gateway serve` sets it up, into a buffer of the test's own instead of stderr."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        """Everything printed so far, audit or not."""
        return self._stream.getvalue()

    def forget(self) -> None:
        self._stream.seek(0)
        self._stream.truncate()

    def lines(self, *events: str) -> list[dict[str, Any]]:
        """The audit lines (of these events), in order."""
        records = [json.loads(line) for line in self.text.splitlines()]
        wanted = set(events) or AUDIT_EVENTS
        return [
            record
            for record in records
            if record.get("logger") == "gateway.audit" and record["event"] in wanted
        ]

    def one(self, event: str) -> dict[str, Any]:
        lines = self.lines(event)
        assert len(lines) == 1, lines
        return lines[0]


@contextlib.contextmanager
def json_logs() -> Iterator[AuditLog]:
    """JSON logging on the real root logger while the block runs; restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("json", "info")
    # A module's logger cached now would stay this set-up's for the rest of the process, out of
    # later tests' `structlog.testing.capture_logs()`.
    structlog.configure(cache_logger_on_first_use=False)
    request_log.disable()  # request lines go through structlog and the handler too
    stream = io.StringIO()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        yield AuditLog(stream)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


@pytest.fixture
def audit_log() -> Iterator[AuditLog]:
    with json_logs() as captured:
        yield captured


@pytest.fixture
async def audited(backend: RegistryBackend) -> AsyncIterator[Registry]:
    async with AuditedBackend(backend).open(SecretBox("key-one")) as opened:
        yield opened


def source_fields(line: dict[str, Any], source: DataSource) -> None:
    assert line["org"] == source.org_id
    assert line["source_id"] == source.id
    assert line["uid"] == source.uid
    assert line["name"] == source.name
    assert line["type"] == source.type
    assert line["version"] == source.version


class TestSources:
    async def test_a_create_update_and_delete_log_one_line_each(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        created = await audited.create_source(1, spec(secure_json_data={"password": SECRET}))
        line = audit_log.one("source_created")
        source_fields(line, created)
        assert line["version"] == 1
        assert line["actor"] == {"kind": "system"}
        assert line["level"] == "info"

        updated = await audited.update_source(
            1,
            created.id,
            lambda current: dataclasses.replace(
                current.spec(),
                url="http://q:9090",
                json_data={"httpMethod": "POST"},
                secure_json_data={"password": OTHER_SECRET, "token": SECRET},
            ),
        )
        line = audit_log.one("source_updated")
        source_fields(line, updated)
        assert line["version"] == 2
        assert line["changed"] == [
            "url",
            "jsonData.httpMethod",
            "secureJsonData.password",
            "secureJsonData.token",
        ]

        deleted = await audited.delete_source(1, created.id)
        line = audit_log.one("source_deleted")
        source_fields(line, deleted)
        assert [record["event"] for record in audit_log.lines()] == [
            "source_created",
            "source_updated",
            "source_deleted",
        ]
        assert SECRET not in audit_log.text
        assert OTHER_SECRET not in audit_log.text

    async def test_the_registry_s_choices_are_logged_not_the_request_s(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        created = await audited.create_source(1, spec(name="", uid=""))
        line = audit_log.one("source_created")
        assert line["name"] == created.name == "prometheus"
        assert line["uid"] == created.uid != ""

    async def test_an_update_that_changes_nothing_moves_the_version_and_names_nothing(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        created = await audited.create_source(1, spec(secure_json_data={"password": SECRET}))
        updated = await audited.update_source(1, created.id, lambda current: current.spec())
        assert updated.version == created.version + 1
        line = audit_log.one("source_updated")
        assert line["changed"] == []
        assert line["version"] == updated.version

    async def test_removing_a_secret_names_it(self, audited: Registry, audit_log: AuditLog) -> None:
        created = await audited.create_source(1, spec(secure_json_data={"password": SECRET}))
        await audited.update_source(
            1, created.id, lambda current: dataclasses.replace(current.spec(), secure_json_data={})
        )
        assert audit_log.one("source_updated")["changed"] == ["secureJsonData.password"]
        assert SECRET not in audit_log.text

    async def test_refused_writes_log_nothing(self, audited: Registry, audit_log: AuditLog) -> None:
        created = await audited.create_source(1, spec(read_only=True))
        with pytest.raises(NameConflict):
            await audited.create_source(1, spec(name="PROM"))
        with pytest.raises(VersionConflict):
            await audited.update_source(
                1, created.id, lambda current: current.spec(), expected_version=0
            )

        def refuse(current: DataSource) -> DataSourceSpec:
            raise ValueError("no")

        with pytest.raises(ValueError, match="no"):
            await audited.update_source(1, created.id, refuse)
        with pytest.raises(ReadOnlySourceDelete):
            await audited.delete_source(1, created.id)
        assert [record["event"] for record in audit_log.lines()] == ["source_created"]


class TestActors:
    async def test_each_writer_is_named(self, audited: Registry, audit_log: AuditLog) -> None:
        token_id = await audited.create_token(1, Role.EDITOR, "hash-of-ci", "ci pipeline")
        with acting_as(TokenActor(token_id)):
            first = await audited.create_source(1, spec("a"))
        with acting_as(ProvisioningActor("/etc/gateway/datasources.yaml", 7)):
            await audited.update_source(1, first.id, lambda current: current.spec())
        with acting_as(CLI):
            await audited.delete_source(1, first.id)
        await audited.create_source(1, spec("b"))
        actors = [line["actor"] for line in audit_log.lines()]
        assert actors == [
            {"kind": "system"},
            {"kind": "token", "token_id": token_id, "description": "ci pipeline"},
            {"kind": "provisioning", "file": "/etc/gateway/datasources.yaml", "line": 7},
            {"kind": "cli"},
            {"kind": "system"},
        ]


class TestBatches:
    async def test_each_change_of_a_batch_is_logged_after_the_commit_with_its_own_actor(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        doomed = await audited.create_source(1, spec("doomed"))
        kept = await audited.create_source(1, spec("kept"))
        audit_log.forget()  # what came before
        async with audited.batch() as batch:
            with acting_as(ProvisioningActor("a.yaml", 3)):
                await batch.delete_source(1, doomed.id)
            with acting_as(ProvisioningActor("a.yaml", 9)):
                await batch.update_source(
                    1,
                    kept.id,
                    lambda current: dataclasses.replace(current.spec(), url="http://n:1"),
                    provisioned_by="a.yaml",
                )
            with acting_as(ProvisioningActor("b.yaml", 2)):
                created = await batch.create_source(1, spec("new"), provisioned_by="b.yaml")
            assert audit_log.lines() == []  # nothing is committed yet
        lines = audit_log.lines()
        assert [(line["event"], line["name"], line["actor"]["line"]) for line in lines] == [
            ("source_deleted", "doomed", 3),
            ("source_updated", "kept", 9),
            ("source_created", "new", 2),
        ]
        assert lines[1]["changed"] == ["url", "provisionedBy"]
        assert lines[1]["version"] == kept.version + 1
        assert lines[2]["source_id"] == created.id

    async def test_a_batch_that_rolls_back_logs_nothing(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        async def abandoned() -> None:
            async with audited.batch() as batch:
                await batch.create_source(1, spec("gone"))
                raise RuntimeError("abandon")

        with pytest.raises(RuntimeError, match="abandon"):
            await abandoned()
        assert audit_log.lines() == []
        assert await audited.list_sources() == []


class TestTokensAndOrgs:
    async def test_tokens_are_logged_without_their_hash(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        org = await audited.create_org("Team")
        line = audit_log.one("org_created")
        assert (line["org"], line["org_name"], line["influx_id"]) == (org.id, "Team", org.influx_id)

        token_id = await audited.create_token(org.id, Role.VIEWER, "hash-one-9d1c", "dashboards")
        assert await audited.create_first_token(1, Role.ADMIN, "hash-two-4b7e", "first") is False
        assert await audited.ensure_token(1, Role.ADMIN, "hash-three-c0de", "env token") is True
        assert await audited.ensure_token(1, Role.ADMIN, "hash-three-c0de", "env token") is False
        assert await audited.revoke_token(token_id) is True
        assert await audited.revoke_token(token_id) is False
        lines = audit_log.lines("token_created", "token_revoked")
        assert [
            (line["event"], line["org"], line["role"], line["description"]) for line in lines
        ] == [
            ("token_created", org.id, "viewer", "dashboards"),
            ("token_created", 1, "admin", "env token"),
            ("token_revoked", org.id, "viewer", "dashboards"),
        ]
        assert lines[0]["token_id"] == lines[2]["token_id"] == token_id
        ensured = next(token for token in await audited.list_tokens() if token.id != token_id)
        assert lines[1]["token_id"] == ensured.id
        assert "hash-" not in audit_log.text

    async def test_the_first_token_is_the_system_s(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        assert await audited.create_first_token(1, Role.ADMIN, "hash-first", "generated") is True
        line = audit_log.one("token_created")
        assert line["actor"] == {"kind": "system"}
        assert (line["org"], line["role"], line["description"]) == (1, "admin", "generated")
        assert line["token_id"] == (await audited.list_tokens())[0].id

    async def test_a_revived_token_keeps_its_stored_description(
        self, audited: Registry, audit_log: AuditLog
    ) -> None:
        token_id = await audited.create_token(1, Role.ADMIN, "hash-revived", "the original")
        await audited.revoke_token(token_id)
        assert await audited.ensure_token(1, Role.ADMIN, "hash-revived", "from env") is True
        line = audit_log.lines("token_created")[-1]
        assert (line["token_id"], line["description"]) == (token_id, "the original")

    async def test_a_key_rotation_is_logged(self, audited: Registry, audit_log: AuditLog) -> None:
        await audited.create_source(1, spec(secure_json_data={"password": SECRET}))
        with acting_as(CLI):
            assert await audited.rotate_key(SecretBox("key-two")) == 1
        line = audit_log.one("secret_key_rotated")
        assert (line["sources"], line["actor"]) == (1, {"kind": "cli"})
        assert "key-two" not in audit_log.text


def stored(**changes: Any) -> DataSource:
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    base = spec(json_data={"a": 1, "b": [1]}, secure_json_data={"password": SECRET})
    values = {**dataclasses.asdict(base), **changes}
    return DataSource(id=1, org_id=1, version=1, created=stamp, updated=stamp, **values)


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({}, []),
        ({"name": "other", "is_default": True}, ["name", "isDefault"]),
        ({"json_data": {"a": 1, "b": [2], "c": None}}, ["jsonData.b", "jsonData.c"]),
        ({"secure_json_data": {"password": SECRET, "token": "t"}}, ["secureJsonData.token"]),
        ({"secure_json_data": {"password": "other"}}, ["secureJsonData.password"]),
        ({"provisioned_by": "x.yaml"}, ["provisionedBy"]),
    ],
)
def test_changed_fields_are_named_in_grafana_s_spelling(
    changes: dict[str, Any], names: list[str]
) -> None:
    assert changed_fields(stored(), stored(**changes)) == names

"""The audit trail end to end: every writer, driven as its users drive it, logs one line per
change naming who made it — the Grafana API, the InfluxDB API, provisioning (at start-up and on
re-apply), the CLI (in a real process) and start-up itself (the generated admin token)."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import STORE
from gateway.provisioning.service import Provisioner
from tests.conftest import GatewayClient, Headers, MakeToken
from tests.process import run_cli
from tests.registry.test_audit import AuditLog, json_logs
from tests.types import AppClient

SECRET = "pw-audit-91b7e2-never-logged"
NEW_SECRET = "pw-audit-c3d408-never-logged"
SOURCE = {
    "name": "Prom",
    "type": "prometheus",
    "access": "proxy",
    "url": "http://prom.example:9090",
}
SOURCE_EVENTS = ("source_created", "source_updated", "source_deleted")


@pytest.fixture
def audit_log() -> Iterator[AuditLog]:
    with json_logs() as captured:
        yield captured


async def admin_actor(client: AppClient) -> dict[str, Any]:
    (admin,) = [t for t in await client.app[STORE].list_tokens() if t.description]
    return {"kind": "token", "token_id": admin.id, "description": "GATEWAY_ADMIN_TOKEN"}


def events(audit_log: AuditLog) -> list[str]:
    return [line["event"] for line in audit_log.lines()]


class TestGrafanaApi:
    async def test_create_update_and_delete_each_log_one_line_naming_the_token(
        self, client: AppClient, admin_headers: Headers, audit_log: AuditLog
    ) -> None:
        actor = await admin_actor(client)
        body = {**SOURCE, "secureJsonData": {"password": SECRET}}
        response = await client.post("/api/datasources", json=body, headers=admin_headers)
        assert response.status == 200, await response.text()
        created = (await response.json())["datasource"]
        line = audit_log.one("source_created")
        assert line["actor"] == actor
        assert (line["org"], line["source_id"], line["uid"]) == (1, created["id"], created["uid"])
        assert (line["name"], line["type"], line["version"]) == ("Prom", "prometheus", 1)

        changes: dict[str, Any] = {
            **SOURCE,
            "url": "http://prom.example:9091",
            "isDefault": True,  # as it was: the first source of an org is its default
            "jsonData": {"httpMethod": "POST"},
            "secureJsonData": {"password": NEW_SECRET},
        }
        response = await client.put(
            f"/api/datasources/uid/{created['uid']}", json=changes, headers=admin_headers
        )
        assert response.status == 200, await response.text()
        line = audit_log.one("source_updated")
        assert line["changed"] == ["url", "jsonData.httpMethod", "secureJsonData.password"]
        assert (line["version"], line["actor"]) == (2, actor)

        response = await client.delete(
            f"/api/datasources/uid/{created['uid']}", headers=admin_headers
        )
        assert response.status == 200
        line = audit_log.one("source_deleted")
        assert (line["source_id"], line["version"], line["actor"]) == (created["id"], 2, actor)

        assert events(audit_log) == list(SOURCE_EVENTS)
        assert SECRET not in audit_log.text
        assert NEW_SECRET not in audit_log.text

    async def test_each_token_is_named_and_refused_writes_log_nothing(
        self, client: AppClient, make_token: MakeToken, audit_log: AuditLog
    ) -> None:
        editor = await make_token(role="editor")
        viewer = await make_token(role="viewer")
        made = audit_log.lines("token_created")
        assert [(line["role"], line["description"]) for line in made] == [
            ("editor", "test"),
            ("viewer", "test"),
        ]
        audit_log.forget()

        response = await client.post("/api/datasources", json=SOURCE, headers=viewer)
        assert response.status == 403
        response = await client.post("/api/datasources", json=SOURCE, headers=editor)
        assert response.status == 200
        source_id = (await response.json())["id"]
        stale = {**SOURCE, "version": 0, "url": "http://other.example/"}
        response = await client.put(
            f"/api/datasources/{source_id}", json={**stale, "version": 1}, headers=editor
        )
        assert response.status == 200
        response = await client.put(
            f"/api/datasources/{source_id}", json={**stale, "version": 1}, headers=editor
        )
        assert response.status == 409  # version 1 is stale now: nothing written
        response = await client.delete("/api/datasources/999", headers=editor)
        assert response.status == 404

        lines = audit_log.lines()
        assert [line["event"] for line in lines] == ["source_created", "source_updated"]
        assert {line["actor"]["token_id"] for line in lines} == {made[0]["token_id"]}
        assert lines[0]["actor"] == {
            "kind": "token",
            "token_id": made[0]["token_id"],
            "description": "test",
        }


class TestInfluxApi:
    async def test_create_patch_and_delete_each_log_exactly_one_line(
        self, client: AppClient, admin_headers: Headers, audit_log: AuditLog
    ) -> None:
        actor = await admin_actor(client)
        body = {"name": "remote", "type": "v1", "url": "http://influx.example:8086"}
        response = await client.post(
            "/api/v2/sources", json={**body, "password": SECRET}, headers=admin_headers
        )
        assert response.status == 201, await response.text()
        hex_id = (await response.json())["id"]
        response = await client.patch(
            f"/api/v2/sources/{hex_id}",
            json={"password": NEW_SECRET, "defaultRP": "autogen"},
            headers=admin_headers,
        )
        assert response.status == 200, await response.text()
        response = await client.delete(f"/api/v2/sources/{hex_id}", headers=admin_headers)
        assert response.status == 204

        # Exactly one line per change, whatever logger: the handlers' own lines are gone.
        records = [json.loads(line) for line in audit_log.text.splitlines()]
        assert [r["event"] for r in records if r["event"] in SOURCE_EVENTS] == list(SOURCE_EVENTS)
        created, updated, deleted = audit_log.lines()
        assert created["source_id"] == updated["source_id"] == int(hex_id, 16)
        assert updated["changed"] == ["jsonData.defaultRP", "secureJsonData.password"]
        assert [line["version"] for line in (created, updated, deleted)] == [1, 2, 2]
        assert {json.dumps(line["actor"]) for line in (created, updated, deleted)} == {
            json.dumps(actor)
        }
        assert SECRET not in audit_log.text
        assert NEW_SECRET not in audit_log.text


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


class TestProvisioning:
    async def test_start_up_and_re_apply_name_the_file_and_line_of_each_entry(
        self,
        gateway_client: GatewayClient,
        settings: Settings,
        folder: Path,
        audit_log: AuditLog,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("AUDIT_PROM_PASSWORD", SECRET)
        path = write(
            folder,
            "main.yaml",
            """
            apiVersion: 1
            prune: true
            datasources:
              - name: Prometheus
                type: prometheus
                url: http://prometheus:9090
                secureJsonData: {basicAuthPassword: $AUDIT_PROM_PASSWORD}
              - name: Loki
                type: loki
                url: http://loki:3100
            """,
        )
        app = create_app(dataclasses.replace(settings, provisioning_path=folder))
        client = await gateway_client(app)
        created = audit_log.lines(*SOURCE_EVENTS)
        assert [(line["event"], line["name"], line["actor"]) for line in created] == [
            ("source_created", "Prometheus", provisioning(path, 4)),
            ("source_created", "Loki", provisioning(path, 8)),
        ]
        audit_log.forget()

        write(
            folder,
            "main.yaml",
            """
            apiVersion: 1
            prune: true
            datasources:
              - name: Prometheus
                type: prometheus
                url: http://prometheus:9090
                secureJsonData: {basicAuthPassword: changed-in-the-file}
            """,
        )
        provisioner = Provisioner(client.app[STORE], folder, {"AUDIT_PROM_PASSWORD": SECRET})
        await provisioner.apply("test")
        lines = audit_log.lines()
        assert [(line["event"], line["name"], line["actor"]) for line in lines] == [
            ("source_deleted", "Loki", provisioning(path, 2)),  # `prune: true` deleted it
            ("source_updated", "Prometheus", provisioning(path, 4)),
        ]
        assert lines[1]["changed"] == ["secureJsonData.basicAuthPassword"]
        assert lines[1]["version"] == 2

        audit_log.forget()
        await provisioner.apply("test")  # nothing to change: no write, no line
        assert audit_log.lines() == []
        assert SECRET not in audit_log.text
        assert "changed-in-the-file" not in audit_log.text

    async def test_delete_datasources_names_its_entry(
        self,
        client: AppClient,
        admin_headers: Headers,
        folder: Path,
        audit_log: AuditLog,
    ) -> None:
        response = await client.post("/api/datasources", json=SOURCE, headers=admin_headers)
        assert response.status == 200
        path = write(folder, "gone.yaml", "apiVersion: 1\ndeleteDatasources:\n  - name: Prom\n")
        await Provisioner(client.app[STORE], folder, {}).apply("test")
        line = audit_log.one("source_deleted")
        assert (line["name"], line["actor"]) == ("Prom", provisioning(path, 3))


def provisioning(path: Path, line: int) -> dict[str, Any]:
    return {"kind": "provisioning", "file": str(path), "line": line}


class TestStartUp:
    async def test_the_generated_admin_token_is_the_system_s(
        self, gateway_client: GatewayClient, settings: Settings, audit_log: AuditLog
    ) -> None:
        app: web.Application = create_app(dataclasses.replace(settings, admin_token=None))
        client = await gateway_client(app)
        line = audit_log.one("token_created")
        (token,) = await client.app[STORE].list_tokens()
        assert line["actor"] == {"kind": "system"}
        assert (line["token_id"], line["org"], line["role"]) == (token.id, 1, "admin")
        assert line["description"] == "generated at start-up"
        generated = (settings.data_dir / "admin-token").read_text().strip()
        assert generated not in audit_log.text


def cli_audit_lines(stderr: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("logger") == "gateway.audit"]


class TestCli:
    def test_every_registry_command_logs_its_change_as_the_cli(self, data_dir: Path) -> None:
        org = run_cli("org", "create", "Team", data_dir=data_dir)
        assert org.returncode == 0, org.stderr
        created = run_cli(
            "token", "create", "--org", "Team", "--role", "viewer", "--description", "ci",
            data_dir=data_dir,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        revoked = run_cli("token", "revoke", "1", data_dir=data_dir)
        assert revoked.returncode == 0, revoked.stderr
        rotated = run_cli(
            "keys", "rotate", data_dir=data_dir, env={"GATEWAY_NEW_SECRET_KEY": "next-key-1"}
        )
        assert rotated.returncode == 0, rotated.stderr
        listed = run_cli("token", "list", data_dir=data_dir)

        (org_line,) = cli_audit_lines(org.stderr)
        (created_line,) = cli_audit_lines(created.stderr)
        (revoked_line,) = cli_audit_lines(revoked.stderr)
        (rotated_line,) = cli_audit_lines(rotated.stderr)
        assert cli_audit_lines(listed.stderr) == []  # reading changes nothing
        assert (org_line["event"], org_line["org"], org_line["org_name"]) == (
            "org_created",
            2,
            "Team",
        )
        assert (created_line["event"], created_line["token_id"]) == ("token_created", 1)
        assert (created_line["org"], created_line["role"], created_line["description"]) == (
            2,
            "viewer",
            "ci",
        )
        assert (revoked_line["event"], revoked_line["token_id"], revoked_line["org"]) == (
            "token_revoked",
            1,
            2,
        )
        assert (rotated_line["event"], rotated_line["sources"]) == ("secret_key_rotated", 0)
        for line in (org_line, created_line, revoked_line, rotated_line):
            assert line["actor"] == {"kind": "cli"}
        token = created.stdout.strip()
        assert token.startswith("dsg_")
        assert token not in created.stderr
        assert "next-key-1" not in rotated.stderr

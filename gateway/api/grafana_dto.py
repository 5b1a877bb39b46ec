"""Grafana's data source JSON, both ways: request bodies in, DTOs out.

Bodies are hostile input. They are decoded field by field the way Grafana's binder decodes them
into Go structs (a string field takes a string or null, a bool takes a bool or null, …), then
checked by the registry's one set of rules (gateway/registry/validation.py), which every writer
shares. Each problem is a 400 naming the field (`isDefault: must be a boolean, got a string`),
never a 500. Stricter than Grafana (the README lists each case): unknown fields are refused;
`readOnly` and the other fields of our answers are accepted and ignored, so a client may send
back what it was given; the legacy top-level `password` / `basicAuthPassword` are refused
(secrets live in `secureJsonData` only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.api.json_body import read_json_object
from gateway.errors import BadRequest, InvalidId
from gateway.registry.models import (
    SOURCE_FIELDS,
    DataSource,
    DataSourceSpec,
    Role,
    merge_secrets,
)
from gateway.registry.rules import INT64_MAX, INT64_MIN, parse_int64
from gateway.registry.validation import (
    Violation,
    decode_field,
    json_type,
    needs_url,
    raise_violations,
    source_violations,
    unknown_field,
)

UID_CHANGED = "A data source's uid cannot be changed"
UID_MISMATCH = "The uid in the request body does not match the uid in the URL"


# --- known plugin types ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plugin:
    id: str
    name: str
    logo: str  # the small logo, as Grafana serves a core plugin's


def _core(plugin_id: str, name: str, logo: str) -> Plugin:
    return Plugin(plugin_id, name, f"public/app/plugins/datasource/{plugin_id}/img/{logo}")


_PLUGINS = {
    plugin.id: plugin
    for plugin in (
        _core("prometheus", "Prometheus", "prometheus_logo.svg"),
        _core("influxdb", "InfluxDB", "influxdb_logo.svg"),
        _core("loki", "Loki", "loki_icon.svg"),
        _core("graphite", "Graphite", "graphite_logo.png"),
        _core("elasticsearch", "Elasticsearch", "elasticsearch.svg"),
        _core("tempo", "Tempo", "tempo_logo.svg"),
        _core("jaeger", "Jaeger", "jaeger_logo.svg"),
        _core("zipkin", "Zipkin", "zipkin-logo.svg"),
        _core("alertmanager", "Alertmanager", "logo.svg"),
        _core("mysql", "MySQL", "mysql_logo.svg"),
        _core("mssql", "Microsoft SQL Server", "sql_server_logo.svg"),
        _core("grafana-postgresql-datasource", "PostgreSQL", "postgresql_logo.svg"),
        _core("grafana-testdata-datasource", "TestData", "testdata.svg"),
    )
}
# Older type ids Grafana still accepts and answers with the plugin's current id.
_ALIASES = {
    "postgres": "grafana-postgresql-datasource",
    "testdata": "grafana-testdata-datasource",
}
UNKNOWN_TYPE_LOGO = "public/img/icn-datasource.svg"


def plugin_for(type_: str) -> Plugin | None:
    return _PLUGINS.get(_ALIASES.get(type_, type_))


# --- rendering ------------------------------------------------------------------------------


def single_dto(
    source: DataSource, *, access_control: Mapping[str, bool] | None = None
) -> dict[str, Any]:
    """Grafana's `dtos.DataSource`: GET by id/uid/name and inside POST/PUT answers."""
    plugin = plugin_for(source.type)
    dto: dict[str, Any] = {
        "id": source.id,
        "uid": source.uid,
        "orgId": source.org_id,
        "name": source.name,
        "type": plugin.id if plugin else source.type,
        "typeLogoUrl": plugin.logo if plugin else UNKNOWN_TYPE_LOGO,
        "access": source.access,
        "url": source.url,
        "user": source.user,
        "database": source.database,
        "basicAuth": source.basic_auth,
        "basicAuthUser": source.basic_auth_user,
        "withCredentials": source.with_credentials,
        "isDefault": source.is_default,
        "jsonData": dict(source.json_data),
        # Which secrets are set, never their values.
        "secureJsonFields": source.secure_json_fields,
        "version": source.version,
        "readOnly": source.read_only,
        "apiVersion": source.api_version,
    }
    if access_control is not None:
        dto["accessControl"] = dict(access_control)
    return dto


def list_item_dto(source: DataSource) -> dict[str, Any]:
    """Grafana's `DataSourceListItemDTO`: fewer fields than the single DTO, plus `typeName`."""
    plugin = plugin_for(source.type)
    return {
        "id": source.id,
        "uid": source.uid,
        "orgId": source.org_id,
        "name": source.name,
        "type": plugin.id if plugin else source.type,
        "typeName": plugin.name if plugin else source.type,
        "typeLogoUrl": plugin.logo if plugin else UNKNOWN_TYPE_LOGO,
        "access": source.access,
        "url": source.url,
        "user": source.user,
        "database": source.database,
        "basicAuth": source.basic_auth,
        "isDefault": source.is_default,
        "jsonData": dict(source.json_data),
        "readOnly": source.read_only,
    }


def list_dto(sources: list[DataSource]) -> list[dict[str, Any]]:
    """List items sorted by name case-insensitively, as Grafana sorts them."""
    return [list_item_dto(source) for source in sorted(sources, key=lambda s: s.name.lower())]


def access_control_for(role: Role) -> dict[str, bool]:
    """`?accesscontrol=true` metadata: the data source actions this role may take."""
    actions = ["datasources.id:read", "datasources:query", "datasources:read"]
    if role.can_write:
        actions += ["datasources:delete", "datasources:write"]
    return dict.fromkeys(sorted(actions), True)


# --- parsing --------------------------------------------------------------------------------


def parse_id(text: str) -> int:
    """A path id as Grafana parses it (a signed 64-bit decimal), else 400 "id is invalid"."""
    number = parse_int64(text)
    if number is None:
        raise InvalidId()
    return number


@dataclass(frozen=True, slots=True)
class DataSourceBody:
    """A POST or PUT body after type checks; what is required depends on the verb."""

    spec: DataSourceSpec  # every writable field as sent (absent: its zero value)
    version: int


async def read_body(request: web.Request) -> DataSourceBody:
    """Read and type-check a data source body: 400 naming every field of the wrong JSON type
    and every unknown field (the source's rules come after, in `create_spec`/`check_update`)."""
    document = await read_json_object(request)
    values: dict[str, Any] = {}
    problems: list[Violation] = []
    for field in _BODY:
        values[field.attribute], found = decode_field(
            field.kind, field.json_name, document.get(field.json_name)
        )
        problems += found
    version, found = _version(document.get("version"))
    problems += found
    for key in document:
        if key in _LEGACY_SECRETS:
            problems.append(Violation(key, f"not supported: put it in secureJsonData.{key}"))
        elif key not in _ACCEPTED:
            problems.append(unknown_field(key))
    raise_violations(problems)
    return DataSourceBody(spec=DataSourceSpec(**values), version=version)


def create_spec(body: DataSourceBody) -> DataSourceSpec:
    """The spec to insert; an empty name or uid is left for the store to generate."""
    spec = body.spec
    raise_violations(source_violations(spec))
    return dataclasses.replace(spec, secure_json_data=merge_secrets({}, spec.secure_json_data))


def check_update(body: DataSourceBody) -> None:
    """What a PUT body must satisfy before the stored source is even looked up: all the rules
    but a required url (an empty one keeps the stored url; `updated_spec` checks the result)."""
    raise_violations(source_violations(body.spec, name_required=True, url_required=False))


def updated_spec(body: DataSourceBody, current: DataSource) -> DataSourceSpec:
    """`current` as the PUT body leaves it: Grafana's column rules (reference §2.7, §2.9).

    Runs inside the store's transaction, so merging with `current` cannot lose a concurrent
    write. jsonData is replaced whole; secrets the body omits keep their stored values and an
    empty one clears it; an empty url or basicAuthUser keeps the stored value.
    """
    spec = body.spec
    if spec.uid and spec.uid != current.uid:
        raise BadRequest(UID_CHANGED)
    updated = dataclasses.replace(
        spec,
        url=spec.url or current.url,
        basic_auth_user=spec.basic_auth_user or current.basic_auth_user,
        secure_json_data=merge_secrets(current.secure_json_data, spec.secure_json_data),
        uid=current.uid,
        read_only=current.read_only,
    )
    if not updated.url and needs_url(updated):  # a type that needs one, and none stored
        raise_violations([Violation("url", "required")])
    return updated


def _version(value: object) -> tuple[int, list[Violation]]:
    """The optimistic lock: a signed 64-bit whole number (Go's int64), null is 0."""
    if value is None:
        return 0, []
    if isinstance(value, bool) or not isinstance(value, int):
        return 0, [Violation("version", "must be a whole number", json_type(value))]
    if not INT64_MIN <= value <= INT64_MAX:
        return 0, [Violation("version", "must be a whole number of 64 bits")]
    return value, []


# What a body may set: every field but readOnly, which only provisioning sets (Grafana ignores it).
_BODY = tuple(field for field in SOURCE_FIELDS if field.attribute != "read_only")
# Read-only fields of the DTOs we answer with: a client may send back what it was given
# (grafana-client updates that way), so they are accepted and ignored.
_ECHOED = frozenset(
    {"id", "orgId", "typeName", "typeLogoUrl", "secureJsonFields", "readOnly", "accessControl"}
)
_ACCEPTED = frozenset({field.json_name for field in _BODY} | {"version"} | _ECHOED)
# Grafana's legacy top-level secrets: refused rather than dropped, so no one believes a
# password was stored.
_LEGACY_SECRETS = frozenset({"password", "basicAuthPassword"})


__all__ = [
    "UNKNOWN_TYPE_LOGO",
    "DataSourceBody",
    "Plugin",
    "access_control_for",
    "check_update",
    "create_spec",
    "list_dto",
    "parse_id",
    "parse_int64",
    "plugin_for",
    "read_body",
    "single_dto",
    "updated_spec",
]

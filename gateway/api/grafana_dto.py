"""Grafana's data source JSON, both ways: request bodies in, DTOs out.

Bodies are hostile input. They are checked field by field the way Grafana's binder decodes them
into Go structs (a string field takes a string or null, a bool takes a bool or null, …): any other
JSON type is `400 bad request data`, never a 500. Unknown fields are ignored, as Grafana does; so
are `readOnly` (only provisioning sets it) and the legacy top-level `password` /
`basicAuthPassword` (secrets live in `secureJsonData` only).

Where the gateway is stricter than Grafana (uid charset, URL scheme), the issue says so; the
messages are Grafana's own where it has one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, InvalidId
from gateway.registry.models import (
    SOURCE_FIELDS,
    DataSource,
    DataSourceSpec,
    FieldKind,
    Role,
    merge_secrets,
)
from gateway.registry.rules import (
    INT64_MAX,
    INT64_MIN,
    check_name,
    check_targets,
    check_uid,
    check_url,
    finite_float,
    has_unstorable_text,
    parse_int64,
    reject_json_constant,
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
    """Decode and type-check a data source body; 400 "bad request data" for anything off."""
    if request.content_type != "application/json":
        raise BadRequest()
    raw = await request.read()
    try:
        document = json.loads(raw, parse_constant=reject_json_constant, parse_float=finite_float)
    except (ValueError, RecursionError) as exc:  # includes JSONDecodeError and bad UTF-8
        raise BadRequest() from exc
    if not isinstance(document, dict) or has_unstorable_text(document):
        raise BadRequest()
    fields = {field.attribute: _READERS[field.kind](document, field.json_name) for field in _BODY}
    return DataSourceBody(spec=DataSourceSpec(**fields), version=_integer(document, "version"))


def create_spec(body: DataSourceBody) -> DataSourceSpec:
    """The spec to insert; an empty name or uid is left for the store to generate."""
    spec = body.spec
    if not spec.type or not spec.access:
        raise BadRequest()
    _check_common(spec)
    if spec.url:  # Grafana validates a create's URL only when one is given
        check_url(spec.url)
    check_targets(spec.json_data, spec.url)
    return dataclasses.replace(spec, secure_json_data=merge_secrets({}, spec.secure_json_data))


def check_update(body: DataSourceBody) -> None:
    """What a PUT body must satisfy before the stored source is even looked up."""
    spec = body.spec
    if not spec.name or not spec.type or not spec.access:
        raise BadRequest()
    _check_common(spec)
    if spec.url:  # an empty url keeps the stored one
        check_url(spec.url)
    check_targets(spec.json_data, spec.url)  # jsonData is replaced whole


def updated_spec(body: DataSourceBody, current: DataSource) -> DataSourceSpec:
    """`current` as the PUT body leaves it: Grafana's column rules (reference §2.7, §2.9).

    Runs inside the store's transaction, so merging with `current` cannot lose a concurrent
    write. jsonData is replaced whole; secrets the body omits keep their stored values and an
    empty one clears it; an empty url or basicAuthUser keeps the stored value.
    """
    spec = body.spec
    if spec.uid and spec.uid != current.uid:
        raise BadRequest(UID_CHANGED)
    return dataclasses.replace(
        spec,
        url=spec.url or current.url,
        basic_auth_user=spec.basic_auth_user or current.basic_auth_user,
        secure_json_data=merge_secrets(current.secure_json_data, spec.secure_json_data),
        uid=current.uid,
        read_only=current.read_only,
    )


def _check_common(spec: DataSourceSpec) -> None:
    check_name(spec.name)
    check_uid(spec.uid)


# Go's decoder leaves a field at its zero value for JSON null; any other mismatch is an error.


def _string(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest()
    return value


def _boolean(document: Mapping[str, Any], key: str) -> bool:
    value = document.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest()
    return value


def _integer(document: Mapping[str, Any], key: str) -> int:
    value = document.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest()
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadRequest()
    return value


def _object(document: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest()
    return value


def _secrets(document: Mapping[str, Any], key: str) -> dict[str, str]:
    values = _object(document, key)
    if not all(value is None or isinstance(value, str) for value in values.values()):
        raise BadRequest()
    return {name: value or "" for name, value in values.items()}


_READERS: Mapping[FieldKind, Callable[[Mapping[str, Any], str], Any]] = {
    FieldKind.TEXT: _string,
    FieldKind.FLAG: _boolean,
    FieldKind.OBJECT: _object,
    FieldKind.SECRETS: _secrets,
}
# What a body may set: every field but readOnly, which only provisioning sets (Grafana ignores it).
_BODY = tuple(field for field in SOURCE_FIELDS if field.attribute != "read_only")


__all__ = [
    "UNKNOWN_TYPE_LOGO",
    "DataSourceBody",
    "Plugin",
    "access_control_for",
    "check_update",
    "check_url",
    "create_spec",
    "list_dto",
    "parse_id",
    "parse_int64",
    "plugin_for",
    "read_body",
    "single_dto",
    "updated_spec",
]

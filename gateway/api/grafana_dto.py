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

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import BadRequest, InvalidId
from gateway.registry.models import (
    MAX_NAME_LENGTH,
    MAX_URL_LENGTH,
    UID_PATTERN,
    UNSTORABLE_TEXT,
    DataSource,
    DataSourceSpec,
    Role,
    merge_secrets,
)
from gateway.security.org import parse_int64

INVALID_NAME = "Invalid datasource name."
INVALID_URL = "Validation error, invalid URL"
URL_TOO_LONG = "Invalid datasource url."
URL_WITH_CREDENTIALS = (
    "Validation error, credentials in the URL are not allowed: "
    "use basicAuthUser and secureJsonData.basicAuthPassword"
)
INVALID_UID = "Invalid datasource UID."
UID_CHANGED = "A data source's uid cannot be changed"
UID_MISMATCH = "The uid in the request body does not match the uid in the URL"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Control characters, space and backslash never belong in a URL; urlsplit would silently drop
# some of them, and a backslash is read differently by different parsers (an SSRF classic).
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
_URL_SCHEMES = frozenset({"http", "https"})


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

    name: str
    type: str
    access: str
    url: str
    user: str
    database: str
    basic_auth: bool
    basic_auth_user: str
    with_credentials: bool
    is_default: bool
    json_data: dict[str, Any]
    secure_json_data: dict[str, str]
    uid: str
    api_version: str
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
    if not isinstance(document, dict) or _has_unstorable_text(document):
        raise BadRequest()
    return DataSourceBody(
        name=_string(document, "name"),
        type=_string(document, "type"),
        access=_string(document, "access"),
        url=_string(document, "url"),
        user=_string(document, "user"),
        database=_string(document, "database"),
        basic_auth=_boolean(document, "basicAuth"),
        basic_auth_user=_string(document, "basicAuthUser"),
        with_credentials=_boolean(document, "withCredentials"),
        is_default=_boolean(document, "isDefault"),
        json_data=_object(document, "jsonData"),
        secure_json_data=_secrets(document, "secureJsonData"),
        uid=_string(document, "uid"),
        api_version=_string(document, "apiVersion"),
        version=_integer(document, "version"),
    )


def create_spec(body: DataSourceBody) -> DataSourceSpec:
    """The spec to insert; an empty name or uid is left for the store to generate."""
    if not body.type or not body.access:
        raise BadRequest()
    _check_common(body)
    if body.url:  # Grafana validates a create's URL only when one is given
        check_url(body.url)
    return DataSourceSpec(
        name=body.name,
        type=body.type,
        access=body.access,
        url=body.url,
        user=body.user,
        database=body.database,
        basic_auth=body.basic_auth,
        basic_auth_user=body.basic_auth_user,
        with_credentials=body.with_credentials,
        is_default=body.is_default,
        json_data=body.json_data,
        secure_json_data=merge_secrets({}, body.secure_json_data),
        uid=body.uid,
        api_version=body.api_version,
    )


def check_update(body: DataSourceBody) -> None:
    """What a PUT body must satisfy before the stored source is even looked up."""
    if not body.name or not body.type or not body.access:
        raise BadRequest()
    _check_common(body)
    if body.url:  # an empty url keeps the stored one
        check_url(body.url)


def updated_spec(body: DataSourceBody, current: DataSource) -> DataSourceSpec:
    """`current` as the PUT body leaves it: Grafana's column rules (reference §2.7, §2.9).

    Runs inside the store's transaction, so merging with `current` cannot lose a concurrent
    write. jsonData is replaced whole; secrets the body omits keep their stored values and an
    empty one clears it; an empty url or basicAuthUser keeps the stored value.
    """
    if body.uid and body.uid != current.uid:
        raise BadRequest(UID_CHANGED)
    return DataSourceSpec(
        name=body.name,
        type=body.type,
        access=body.access,
        url=body.url or current.url,
        user=body.user,
        database=body.database,
        basic_auth=body.basic_auth,
        basic_auth_user=body.basic_auth_user or current.basic_auth_user,
        with_credentials=body.with_credentials,
        is_default=body.is_default,
        json_data=body.json_data,
        secure_json_data=merge_secrets(current.secure_json_data, body.secure_json_data),
        uid=current.uid,
        api_version=body.api_version,
        read_only=current.read_only,
    )


def check_url(url: str) -> None:
    """Stricter than Grafana: an absolute http(s) URL with a host, or 400."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(URL_TOO_LONG)
    if _URL_FORBIDDEN.search(url):
        raise BadRequest(INVALID_URL)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it validates the port (ValueError when out of range)
    except ValueError as exc:
        raise BadRequest(INVALID_URL) from exc
    if parts.scheme.lower() not in _URL_SCHEMES or not parts.hostname:
        raise BadRequest(INVALID_URL)
    if parts.username is not None or parts.password is not None:
        # A URL is shown to every viewer (and in InfluxDB's view): credentials go where they
        # are encrypted and never returned.
        raise BadRequest(URL_WITH_CREDENTIALS)


def _check_common(body: DataSourceBody) -> None:
    if len(body.name) > MAX_NAME_LENGTH:
        raise BadRequest(INVALID_NAME)
    # A uid becomes an RBAC scope in Grafana (CVE-2024-1442: "*" granted every source);
    # only the plain charset is ever stored.
    if body.uid and not UID_PATTERN.fullmatch(body.uid):
        raise BadRequest(INVALID_UID)


def _has_unstorable_text(document: Any) -> bool:
    """Whether any key or string holds a NUL or a lone surrogate.

    JSON can spell both (`\\u0000`, `\\ud800`); SQLite cannot store a lone surrogate (UTF-8 has
    no encoding for it) and a NUL has no place in a name, URL or header. Walked with a stack,
    not recursion: the document may be as deep as the JSON parser allowed.
    """
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if UNSTORABLE_TEXT.search(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def finite_float(text: str) -> float:
    """A JSON number that fits a float: `1e999` would be stored as Infinity, which is not JSON."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is out of range")
    return number


def reject_json_constant(name: str) -> Any:
    """NaN and ±Infinity are not JSON; json.loads would accept them and we would echo them."""
    raise ValueError(f"{name} is not valid JSON")


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
    if not _INT64_MIN <= value <= _INT64_MAX:
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

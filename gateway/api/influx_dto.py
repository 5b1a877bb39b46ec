"""InfluxDB v2 `Source` ⇔ the canonical registry record. No I/O.

Decoding treats every byte as hostile: the body must be a JSON object, keys match
case-insensitively (as Go's decoder does: `metaURL` is `metaUrl`), `null` means "not sent", and a
value of the wrong type or shape is a 400 `invalid` naming the field. Unknown keys and the
read-only `links`/`languages` are ignored, so a client may send back a Source it was given.

Rendering never includes `password`, `token` or `sharedSecret`, and answers like InfluxDB's Go
encoder: keys in the struct's order, `&<>` escaped, a trailing newline.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import yarl

from gateway.errors import BadRequest, DataSourceNotFound, Forbidden, InvalidId, ReadOnlySource
from gateway.registry.models import (
    MAX_NAME_LENGTH,
    MAX_URL_LENGTH,
    DataSource,
    DataSourceSpec,
    influx_id,
    merge_secrets,
)
from gateway.registry.rules import finite_float, reject_json_constant
from gateway.upstream.influx import Bucket

SOURCES_PATH = "/api/v2/sources"
INFLUX_TYPE = "influxdb"  # the Grafana plugin id of every source this API shows
MAX_TEXT_LENGTH = 255
MAX_SECRET_LENGTH = 8192
_HEX16 = re.compile(r"[0-9a-fA-F]{16}")
# SQLite integers are signed 64-bit: a larger 16-hex id names no stored source.
_MAX_STORED_ID = 2**63 - 1


class SourceType(StrEnum):
    V1 = "v1"
    V2 = "v2"
    SELF = "self"


LANGUAGES: Mapping[SourceType, list[str]] = {
    SourceType.V1: ["influxql"],
    SourceType.V2: ["flux"],
    SourceType.SELF: ["flux", "influxql"],
}


# --- ids ---------------------------------------------------------------------------------------


def parse_id(text: str) -> int:
    """InfluxDB's platform.ID decoding: exactly 16 hex digits (either case), not zero."""
    if len(text) != 16:
        raise BadRequest(influx_message="id must have a length of 16 bytes")
    if not _HEX16.fullmatch(text) or (number := int(text, 16)) == 0:
        raise InvalidId()
    return number


def parse_source_id(text: str) -> int:
    """A path `sourceID`: 400 when malformed, 404 when it cannot name a stored source."""
    number = parse_id(text)
    if number > _MAX_STORED_ID:
        raise DataSourceNotFound()
    return number


# --- canonical record → Source -----------------------------------------------------------------


def source_type(source: DataSource) -> SourceType | None:
    """How this API sees a record, or None when it does not show it at all (not `influxdb`, or
    a jsonData.version it cannot express, such as Grafana's `SQL`)."""
    if source.type != INFLUX_TYPE:
        return None
    if source.json_data.get("influxSourceType") == "self":
        return SourceType.SELF
    version = source.json_data.get("version")
    if version is None or version == "":
        return SourceType.V1
    if isinstance(version, str):
        return {"influxql": SourceType.V1, "flux": SourceType.V2}.get(version.lower())
    return None


def require_type(source: DataSource) -> SourceType:
    """The source's type, or 404 as if it did not exist when this API does not show it."""
    kind = source_type(source)
    if kind is None:
        raise DataSourceNotFound()
    return kind


def _source_links(source_id: int) -> dict[str, str]:
    base = f"{SOURCES_PATH}/{influx_id(source_id)}"
    return {
        "buckets": f"{base}/buckets",
        "health": f"{base}/health",
        "query": f"{base}/query",
        "self": base,
    }


def render_source(source: DataSource, org_influx_id: str) -> dict[str, Any]:
    kind = require_type(source)
    json_data = source.json_data
    body: dict[str, Any] = {
        "id": influx_id(source.id),
        "orgID": org_influx_id,
        "default": source.is_default,
        "name": source.name,
        "type": kind.value,
        "url": source.url,
    }
    if json_data.get("tlsSkipVerify") is True:
        body["insecureSkipVerify"] = True
    body["telegraf"] = _text(json_data, "telegraf")
    if source.user:
        body["username"] = source.user
    if meta_url := _text(json_data, "metaUrl"):
        body["metaUrl"] = meta_url
    body["defaultRP"] = _text(json_data, "defaultRP")
    body["languages"] = list(LANGUAGES[kind])
    body["links"] = _source_links(source.id)
    return body


def render_sources(sources: Iterable[DataSource], org_influx_id: str) -> dict[str, Any]:
    shown = [render_source(s, org_influx_id) for s in sources if source_type(s) is not None]
    return {"sources": shown, "links": {"self": SOURCES_PATH}}


def render_buckets(source_id: int, buckets: Iterable[Bucket]) -> dict[str, Any]:
    """OpenAPI `Buckets`: `links.self` and, per bucket, at least `name` and `retentionRules`."""
    return {
        "links": {"self": f"{SOURCES_PATH}/{influx_id(source_id)}/buckets"},
        "buckets": [_render_bucket(bucket) for bucket in buckets],
    }


def _render_bucket(bucket: Bucket) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in (("id", bucket.id), ("orgID", bucket.org_id), ("type", bucket.type)):
        if value:
            body[key] = value
    body["name"] = bucket.name
    for key, value in (("description", bucket.description), ("rp", bucket.rp)):
        if value:
            body[key] = value
    rules: list[dict[str, Any]] = []
    for rule in bucket.retention_rules:
        rendered: dict[str, Any] = {"type": "expire", "everySeconds": rule.every_seconds}
        if rule.shard_group_seconds is not None:
            rendered["shardGroupDurationSeconds"] = rule.shard_group_seconds
        rules.append(rendered)
    body["retentionRules"] = rules
    for key, value in (("createdAt", bucket.created_at), ("updatedAt", bucket.updated_at)):
        if value:
            body[key] = value
    return body


def _text(json_data: Mapping[str, Any], key: str) -> str:
    """A jsonData string as written through either API; anything else reads as empty."""
    value = json_data.get(key)
    return value if isinstance(value, str) else ""


_GO_ESCAPES = (
    ("&", "\\u0026"),
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def encode_json(data: object) -> bytes:
    """JSON as InfluxDB's Go encoder writes it: compact, UTF-8, `&<>` and U+2028/9 escaped,
    ending in a newline."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in _GO_ESCAPES:
        text = text.replace(raw, escaped)
    return (text + "\n").encode()


# --- request body → SourceInput ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceInput:
    """The fields of a Source request body; None means the client did not send the field."""

    id: int | None = None
    org_id: str | None = None
    default: bool | None = None
    name: str | None = None
    type: SourceType | None = None
    url: str | None = None
    insecure_skip_verify: bool | None = None
    telegraf: str | None = None
    username: str | None = None
    meta_url: str | None = None
    default_rp: str | None = None
    # secure_json_data key → new value; "" removes the secret.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)


def parse_source(raw: bytes) -> SourceInput:
    """A Source request body, validated (see the module docstring)."""
    return _source_fields(_decode_object(raw))


def _decode_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 400 invalid saying what is wrong with it."""
    if not raw.strip():
        raise BadRequest(influx_message="request body is empty: expected a JSON object")
    try:
        data = json.loads(
            raw.decode("utf-8"), parse_float=finite_float, parse_constant=reject_json_constant
        )
    except UnicodeDecodeError:
        raise BadRequest(influx_message="request body is not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError, or a number json cannot hold
        raise BadRequest(influx_message=f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(influx_message="request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest(
            influx_message=f"request body must be a JSON object, not {_json_type(data)}"
        )
    return data


def _source_fields(data: Mapping[str, Any]) -> SourceInput:
    values: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key, value in data.items():
        spec = _FIELDS.get(key.lower())
        if spec is None or value is None:
            continue
        canonical, attribute, parse = spec
        if canonical in seen:
            raise BadRequest(
                influx_message=f'"{canonical}" is given twice (as "{seen[canonical]}" and "{key}")'
            )
        seen[canonical] = key
        parsed = parse(canonical, value)
        if attribute == "secret":
            secrets[canonical] = parsed
        else:
            values[attribute] = parsed
    return SourceInput(**values, secrets=secrets)


def _string(name: str, value: object, *, limit: int = MAX_TEXT_LENGTH) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    if len(value) > limit:
        raise BadRequest(influx_message=f'"{name}" must be at most {limit} characters')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" decodes but cannot be stored
        raise BadRequest(influx_message=f'"{name}" is not valid Unicode text') from None
    return value


def _name_field(name: str, value: object) -> str:
    text = _string(name, value, limit=MAX_NAME_LENGTH)
    if not text.strip():
        raise BadRequest(influx_message=f'"{name}" must not be empty')
    return text


def _secret_field(name: str, value: object) -> str:
    return _string(name, value, limit=MAX_SECRET_LENGTH)


def _bool_field(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def _id_field(name: str, value: object) -> int:
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return parse_id(value)


def _org_id_field(name: str, value: object) -> str:
    return influx_id(_id_field(name, value))


def _type_field(name: str, value: object) -> SourceType:
    text = _string(name, value)
    try:
        return SourceType(text)
    except ValueError:
        raise BadRequest(
            influx_message=f'"{name}" must be one of "v1", "v2", "self", not {json.dumps(text)}'
        ) from None


def _url_field(name: str, value: object) -> str:
    text = _string(name, value, limit=MAX_URL_LENGTH)
    if text and not _is_http_url(text):
        raise BadRequest(
            influx_message=f'"{name}" must be an absolute http(s) URL without credentials'
        )
    return text


def _is_http_url(text: str) -> bool:
    if text != text.strip() or any(ord(c) < 0x20 or c == "\x7f" for c in text):
        return False
    try:
        url = yarl.URL(text)
        return (
            url.scheme in ("http", "https")
            and bool(url.host)
            and url.user is None
            and url.password is None
            and url.explicit_port != 0
        )
    except ValueError:  # yarl rejects bad ports and hosts when parsing or reading them
        return False


def _wrong_type(name: str, expected: str, value: object) -> BadRequest:
    return BadRequest(influx_message=f'"{name}" must be {expected}, not {_json_type(value)}')


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


# lowercased key → (name in messages, SourceInput attribute or "secret", parser)
_FIELDS: dict[str, tuple[str, str, Callable[[str, Any], Any]]] = {
    key.lower(): (key, attribute, parser)
    for key, attribute, parser in (
        ("id", "id", _id_field),
        ("orgID", "org_id", _org_id_field),
        ("default", "default", _bool_field),
        ("name", "name", _name_field),
        ("type", "type", _type_field),
        ("url", "url", _url_field),
        ("insecureSkipVerify", "insecure_skip_verify", _bool_field),
        ("telegraf", "telegraf", _string),
        ("username", "username", _string),
        ("metaUrl", "meta_url", _url_field),
        ("defaultRP", "default_rp", _string),
        ("password", "secret", _secret_field),
        ("token", "secret", _secret_field),
        ("sharedSecret", "secret", _secret_field),
    )
}


# --- SourceInput → DataSourceSpec --------------------------------------------------------------


def new_source_spec(source: SourceInput, org_influx_id: str) -> DataSourceSpec:
    """The record a POST creates. `orgID`, when sent, must be the token's org."""
    _check_org(source, org_influx_id)
    kind = source.type or SourceType.V1
    json_data: dict[str, Any] = {}
    _set_type(json_data, kind)
    _apply_json_data(json_data, source)
    secrets = merge_secrets({}, source.secrets)
    url = source.url or ""
    _check_url_present(kind, url)
    return DataSourceSpec(
        name=source.name or "",
        type=INFLUX_TYPE,
        access="proxy",
        url=url,
        user=source.username or "",
        is_default=bool(source.default),
        json_data=json_data,
        secure_json_data=secrets,
    )


def patched_spec(current: DataSource, patch: SourceInput, org_influx_id: str) -> DataSourceSpec:
    """`current` with only the sent fields changed. Runs inside the store's update transaction."""
    kind = require_type(current)
    if current.read_only:
        raise ReadOnlySource()
    _check_org(patch, org_influx_id)
    if patch.id is not None and patch.id != current.id:
        raise BadRequest(influx_message='"id" in the body does not match the source in the path')
    spec = current.spec()
    json_data = dict(spec.json_data)
    if patch.type is not None and patch.type is not kind:
        kind = patch.type
        _set_type(json_data, kind)
    _apply_json_data(json_data, patch)
    secrets = merge_secrets(spec.secure_json_data, patch.secrets)
    url = spec.url if patch.url is None else patch.url
    _check_url_present(kind, url)
    return dataclasses.replace(
        spec,
        name=spec.name if patch.name is None else patch.name,
        url=url,
        user=spec.user if patch.username is None else patch.username,
        is_default=spec.is_default if patch.default is None else patch.default,
        json_data=json_data,
        secure_json_data=secrets,
    )


def _check_org(source: SourceInput, org_influx_id: str) -> None:
    if source.org_id is not None and source.org_id != org_influx_id:
        raise Forbidden(
            influx_message=f"this token cannot write sources of organization {source.org_id}"
        )


def _check_url_present(kind: SourceType, url: str) -> None:
    if kind is not SourceType.SELF and not url:
        raise BadRequest(influx_message=f'"url" is required for a {kind.value} source')


def _set_type(json_data: dict[str, Any], kind: SourceType) -> None:
    if kind is SourceType.SELF:
        json_data["influxSourceType"] = "self"
        return
    json_data.pop("influxSourceType", None)
    json_data["version"] = "Flux" if kind is SourceType.V2 else "InfluxQL"


def _apply_json_data(json_data: dict[str, Any], source: SourceInput) -> None:
    """Write the jsonData-backed fields that were sent; an empty or false value removes the key."""
    updates: dict[str, str | bool | None] = {
        "tlsSkipVerify": source.insecure_skip_verify,
        "telegraf": source.telegraf,
        "metaUrl": source.meta_url,
        "defaultRP": source.default_rp,
    }
    for key, value in updates.items():
        if value is None:
            continue
        if value:
            json_data[key] = value
        else:
            json_data.pop(key, None)


__all__ = [
    "INFLUX_TYPE",
    "LANGUAGES",
    "SOURCES_PATH",
    "SourceInput",
    "SourceType",
    "encode_json",
    "new_source_spec",
    "parse_id",
    "parse_source",
    "parse_source_id",
    "patched_spec",
    "render_buckets",
    "render_source",
    "render_sources",
    "require_type",
    "source_type",
]

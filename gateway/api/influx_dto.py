"""InfluxDB v2 `Source` ⇔ the canonical registry record. No I/O.

Decoding treats every byte as hostile: the body must be a JSON object (gateway/api/json_body.py),
keys match case-insensitively (as Go's decoder does: `metaURL` is `metaUrl`), `null` means "not
sent", and a value of the wrong type, an unknown key or a key given twice is a 400 `invalid`
naming the field (`default: must be a boolean, got a string`). The read-only `links` and
`languages` are ignored, so a client may send back a Source it was given. The record a body
makes is then checked by the registry's one set of source rules
(gateway/registry/validation.py), the same as every other writer's, in this API's field names.

Rendering never includes `password`, `token` or `sharedSecret`, and answers like InfluxDB's Go
encoder: keys in the struct's order, `&<>` escaped, a trailing newline.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.errors import BadRequest, DataSourceNotFound, Forbidden, InvalidId, ReadOnlySource
from gateway.registry.models import (
    DataSource,
    DataSourceSpec,
    influx_id,
    merge_secrets,
)
from gateway.registry.rules import url_problem
from gateway.registry.validation import (
    Violation,
    json_type,
    parse_hex16,
    raise_violations,
    shown,
    source_violations,
    text_violations,
    unknown_field,
)
from gateway.upstream.influx import Bucket

SOURCES_PATH = "/api/v2/sources"
INFLUX_TYPE = "influxdb"  # the Grafana plugin id of every source this API shows
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
    number = parse_hex16(text)
    if number is None:
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


def parse_source(document: Mapping[str, Any]) -> SourceInput:
    """A Source request body (a JSON object), type-checked: 400 naming every field of the
    wrong type or shape, every unknown field, every field given twice."""
    values: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    seen: dict[str, str] = {}
    problems: list[Violation] = []
    for key, value in document.items():
        spec = _FIELDS.get(key.lower())
        if spec is None:
            if key.lower() not in _ECHOED:
                problems.append(unknown_field(key))
            continue
        canonical, attribute, parse = spec
        if canonical in seen:
            problems.append(
                Violation(canonical, f'given twice (as "{seen[canonical]}" and {shown(key)})')
            )
            continue
        seen[canonical] = key
        if value is None:
            continue
        try:
            parsed = parse(canonical, value)
        except _Wrong as wrong:
            problems.append(wrong.violation)
            continue
        if attribute == "secret":
            secrets[canonical] = parsed
        else:
            values[attribute] = parsed
    raise_violations(problems)
    return SourceInput(**values, secrets=secrets)


class _Wrong(Exception):
    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.message())
        self.violation = violation


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return value


def _json_data_text(name: str, value: object) -> str:
    """A text kept in jsonData, which the source rules leave to the plugin: checked here."""
    text = _string(name, value)
    for violation in text_violations(name, text):
        raise _Wrong(violation)
    return text


def _url_field(name: str, value: object) -> str:
    """Checked when decoded, by the source rules' own URL rule, so that a PATCH's URL is
    valid before the SSRF policy looks at it."""
    text = _string(name, value)
    if text and (problem := url_problem(text)):
        raise _Wrong(Violation(name, problem))
    return text


def _name_field(name: str, value: object) -> str:
    text = _string(name, value)
    if not text.strip():  # absent: generated; empty: a mistake
        raise _Wrong(Violation(name, "must not be blank"))
    return text


def _bool_field(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def _id_field(name: str, value: object) -> int:
    text = _string(name, value)
    number = parse_hex16(text)
    if number is None:
        raise _Wrong(Violation(name, "must be 16 hex digits, not all zero"))
    return number


def _org_id_field(name: str, value: object) -> str:
    return influx_id(_id_field(name, value))


def _type_field(name: str, value: object) -> SourceType:
    text = _string(name, value)
    try:
        return SourceType(text)
    except ValueError:
        raise _Wrong(Violation(name, 'must be "v1", "v2" or "self"', shown(text))) from None


def _wrong_type(name: str, expected: str, value: object) -> _Wrong:
    return _Wrong(Violation(name, f"must be {expected}", json_type(value)))


# lowercased key → (name in messages, SourceInput attribute or "secret", parser). Lengths,
# characters and URLs are the source rules' (gateway/registry/validation.py), checked on the
# record the body makes.
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
        ("telegraf", "telegraf", _json_data_text),
        ("username", "username", _string),
        ("metaUrl", "meta_url", _url_field),
        ("defaultRP", "default_rp", _json_data_text),
        ("password", "secret", _string),
        ("token", "secret", _string),
        ("sharedSecret", "secret", _string),
    )
}
# Read-only fields of a Source we answer with: a client may send back what it was given.
_ECHOED = frozenset({"links", "languages"})
# The source rules speak Grafana's field names (the registry's); this API says its own.
INFLUX_NAMES: Mapping[str, str] = {
    "isDefault": "default",
    "user": "username",
    "jsonData.tlsSkipVerify": "insecureSkipVerify",
    "jsonData.metaUrl": "metaUrl",
    "jsonData.telegraf": "telegraf",
    "jsonData.defaultRP": "defaultRP",
    "secureJsonData.password": "password",
    "secureJsonData.token": "token",
    "secureJsonData.sharedSecret": "sharedSecret",
}


# --- SourceInput → DataSourceSpec --------------------------------------------------------------


def new_source_spec(source: SourceInput, org_influx_id: str) -> DataSourceSpec:
    """The record a POST creates. `orgID`, when sent, must be the token's org."""
    _check_org(source, org_influx_id)
    kind = source.type or SourceType.V1
    json_data: dict[str, Any] = {}
    _set_type(json_data, kind)
    _apply_json_data(json_data, source)
    spec = DataSourceSpec(
        name=source.name or "",
        type=INFLUX_TYPE,
        access="proxy",
        url=source.url or "",
        user=source.username or "",
        is_default=bool(source.default),
        json_data=json_data,
        secure_json_data=merge_secrets({}, source.secrets),
    )
    raise_violations(source_violations(spec), INFLUX_NAMES)
    return spec


def patched_spec(current: DataSource, patch: SourceInput, org_influx_id: str) -> DataSourceSpec:
    """`current` with only the sent fields changed. Runs inside the store's update transaction."""
    kind = require_type(current)
    if current.read_only:
        raise ReadOnlySource()
    _check_org(patch, org_influx_id)
    if patch.id is not None and patch.id != current.id:
        raise BadRequest(influx_message="id: does not match the source in the path")
    spec = current.spec()
    json_data = dict(spec.json_data)
    if patch.type is not None and patch.type is not kind:
        kind = patch.type
        _set_type(json_data, kind)
    _apply_json_data(json_data, patch)
    patched = dataclasses.replace(
        spec,
        name=spec.name if patch.name is None else patch.name,
        url=spec.url if patch.url is None else patch.url,
        user=spec.user if patch.username is None else patch.username,
        is_default=spec.is_default if patch.default is None else patch.default,
        json_data=json_data,
        secure_json_data=merge_secrets(spec.secure_json_data, patch.secrets),
    )
    raise_violations(source_violations(patched), INFLUX_NAMES)
    return patched


def _check_org(source: SourceInput, org_influx_id: str) -> None:
    if source.org_id is not None and source.org_id != org_influx_id:
        raise Forbidden(
            influx_message=f"this token cannot write sources of organization {source.org_id}"
        )


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

"""One validation of a data source for every writer: Grafana's API, InfluxDB's API, provisioning
files and the CLI (its org names and token descriptions).

The rules are stated once, on the canonical record (`DataSourceSpec`) and in Grafana's field
names, which are the registry's own (`SOURCE_FIELDS`). A writer decodes its dialect into a spec,
asks `source_violations` what is wrong, and renders the answer; a dialect with other field names
(InfluxDB's `default`, `username`, `insecureSkipVerify`) only renames the field in each message.

Every message is `<field>: <problem>[, got <what>]` — `access: must be "proxy" or "direct", got
"bogus"`, `isDefault: must be a boolean, got a string`, `url: required` — and several problems
are joined with `; `. `got` names a JSON type, a length or an allowed-values field's value; free
text (a URL, a secret, a name) is never quoted back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import BadRequest
from gateway.registry.models import (
    MAX_NAME_LENGTH,
    SOURCE_FIELDS,
    UID_PATTERN,
    UNSTORABLE_TEXT,
    DataSourceSpec,
    FieldKind,
)
from gateway.registry.rules import (
    ACCESS_MODES,
    has_unstorable_text,
    source_url_problem,
    target_problems,
    url_problem,
)

MAX_TEXT_LENGTH = 255  # every text column but name's (Grafana's varchar(255))
MAX_SECRET_LENGTH = 8192
MAX_DESCRIPTION_LENGTH = 255  # a token's description (CLI)
MAX_ORG_NAME_LENGTH = 190  # as a source's name
# A source body is a few hundred bytes; jsonData may hold headers and replica lists.
MAX_BODY_BYTES = 1 << 20
TLS_SKIP_VERIFY = "tlsSkipVerify"
META_URL = "metaUrl"
# Types whose plugin reaches its data over HTTP at `url`: a source of one is useless without
# it (always unhealthy, nothing to proxy). Types left out have no URL (TestData), a host:port
# rather than a URL (the SQL types), or are not known to the gateway (plugins): `url` stays
# optional for them. An influxdb `self` source stands for the org's default source (InfluxDB's
# API) and has no URL of its own.
URL_REQUIRED_TYPES = frozenset(
    {
        "prometheus",
        "influxdb",
        "loki",
        "graphite",
        "elasticsearch",
        "tempo",
        "jaeger",
        "zipkin",
        "alertmanager",
    }
)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_SHOWN_LENGTH = 40


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the field (Grafana's name), the problem, and what was given."""

    field: str
    problem: str
    got: str = ""

    def message(self, names: Mapping[str, str] | None = None) -> str:
        """`field: problem[, got …]`, the field renamed by `names` (a dialect's own names)."""
        field = (names or {}).get(self.field, self.field)
        return f"{field}: {self.problem}" + (f", got {self.got}" if self.got else "")


class InvalidSource(BadRequest):
    """400 with every violation, `; `-joined, in the caller's field names."""

    def __init__(
        self, violations: Iterable[Violation], names: Mapping[str, str] | None = None
    ) -> None:
        self.violations = tuple(violations)
        super().__init__(bounded([violation.message(names) for violation in self.violations]))


# A body of 20,000 unknown keys must not get an answer listing them all.
MAX_LISTED_PROBLEMS = 20


def bounded(messages: list[str], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """The first `limit` messages `; `-joined, then `; and N more` for the rest."""
    shown_part = "; ".join(messages[:limit])
    rest = len(messages) - limit
    return shown_part + (f"; and {rest} more" if rest > 0 else "")


def raise_violations(
    violations: Iterable[Violation], names: Mapping[str, str] | None = None
) -> None:
    found = list(violations)
    if found:
        raise InvalidSource(found, names)


# --- JSON types -------------------------------------------------------------------------------


def json_type(value: object) -> str:
    """A JSON value's type as a message says it: "a string", "an array", …"""
    if value is None:
        return "null"
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
    return type(value).__name__


def shown(text: str) -> str:
    """Client text safe to quote in a message: JSON-quoted (control characters escaped), cut."""
    if len(text) > _SHOWN_LENGTH:
        text = text[: _SHOWN_LENGTH - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


def unknown_field(name: str) -> Violation:
    return Violation(shown(name)[1:-1], "unknown field")


_KIND_TYPES: Mapping[FieldKind, tuple[type, str]] = {
    FieldKind.TEXT: (str, "a string"),
    FieldKind.FLAG: (bool, "a boolean"),
    FieldKind.OBJECT: (dict, "an object"),
    FieldKind.SECRETS: (dict, "an object"),
}


def decode_field(kind: FieldKind, field: str, value: object) -> tuple[Any, list[Violation]]:
    """A JSON value for a field of `kind`: null is the kind's zero value ("", false, {}), as Go
    decodes it; another type is a violation (and the zero value)."""
    expected, described = _KIND_TYPES[kind]
    zero: Any = {str: "", bool: False, dict: {}}[expected]
    if value is None:
        return zero, []
    if not isinstance(value, expected):
        return zero, [Violation(field, f"must be {described}", json_type(value))]
    if kind is not FieldKind.SECRETS:
        return value, []
    assert isinstance(value, dict)
    secrets: dict[str, str] = {}
    problems = []
    for key, secret in value.items():
        if secret is not None and not isinstance(secret, str):
            problems.append(Violation(f"{field}.{key}", "must be a string", json_type(secret)))
        else:
            secrets[key] = secret or ""
    return secrets, problems


# --- the rules of a source --------------------------------------------------------------------


def text_violations(field: str, text: str, max_length: int = MAX_TEXT_LENGTH) -> list[Violation]:
    """A text value: at most `max_length` characters, no control characters, storable."""
    problems = []
    if len(text) > max_length:
        problems.append(
            Violation(field, f"must be at most {max_length} characters", str(len(text)))
        )
    if CONTROL_CHARACTERS.search(text):
        problems.append(Violation(field, "must not contain control characters"))
    elif UNSTORABLE_TEXT.search(text):
        problems.append(Violation(field, "must be valid Unicode text (no lone surrogates)"))
    return problems


def needs_url(spec: DataSourceSpec) -> bool:
    if spec.type not in URL_REQUIRED_TYPES:
        return False
    return not (spec.type == "influxdb" and spec.json_data.get("influxSourceType") == "self")


def source_violations(
    spec: DataSourceSpec, *, name_required: bool = False, url_required: bool = True
) -> list[Violation]:
    """Everything wrong with `spec`, in field order. An empty name or uid is generated by the
    store unless `name_required`; `url_required=False` when an empty url keeps the stored one
    (checked again on the merged record)."""
    problems: list[Violation] = []
    for field in SOURCE_FIELDS:
        if field.kind is FieldKind.TEXT:
            problems += _TEXT_RULES.get(field.attribute, _plain_text)(
                spec, field.json_name, getattr(spec, field.attribute)
            )
    if url_required and not spec.url and needs_url(spec):
        problems.append(Violation("url", "required"))
    problems += json_data_violations(spec.json_data, spec.url)
    problems += secret_violations(spec.secure_json_data)
    if name_required and not spec.name:
        problems.insert(0, Violation("name", "required"))
    return problems


def _plain_text(spec: DataSourceSpec, field: str, text: str) -> list[Violation]:
    return text_violations(field, text)


def _name(spec: DataSourceSpec, field: str, name: str) -> list[Violation]:
    problems = text_violations(field, name, MAX_NAME_LENGTH)
    if name and not name.strip():
        problems.append(Violation(field, "must not be blank"))
    return problems


def _type(spec: DataSourceSpec, field: str, type_: str) -> list[Violation]:
    return text_violations(field, type_) if type_ else [Violation(field, "required")]


def _access(spec: DataSourceSpec, field: str, access: str) -> list[Violation]:
    if not access:
        return [Violation(field, "required")]
    if access not in ACCESS_MODES:
        return [Violation(field, 'must be "proxy" or "direct"', shown(access))]
    return []


def _url(spec: DataSourceSpec, field: str, url: str) -> list[Violation]:
    problem = source_url_problem(spec.type, url) if url else None
    return [Violation(field, problem)] if problem else []


def _uid(spec: DataSourceSpec, field: str, uid: str) -> list[Violation]:
    # A uid becomes an RBAC scope in Grafana (CVE-2024-1442: "*" granted every source): only
    # the plain charset is ever stored. An empty one is generated.
    if uid and not UID_PATTERN.fullmatch(uid):
        return [Violation(field, 'must be 1 to 40 letters, digits, "-" or "_"')]
    return []


_TEXT_RULES = {"name": _name, "type": _type, "access": _access, "url": _url, "uid": _uid}


def json_data_violations(json_data: Mapping[str, Any], url: str = "") -> list[Violation]:
    """jsonData: storable text throughout, the settings the gateway itself reads typed."""
    if has_unstorable_text(json_data):
        return [Violation("jsonData", "must not contain NUL characters or lone surrogates")]
    problems = []
    skip_verify = json_data.get(TLS_SKIP_VERIFY)
    # One reading everywhere (proxy, probes, bucket listings): a boolean, never the string
    # "true" that a careless client sends.
    if skip_verify is not None and not isinstance(skip_verify, bool):
        problems.append(
            Violation(f"jsonData.{TLS_SKIP_VERIFY}", "must be a boolean", json_type(skip_verify))
        )
    meta_url = json_data.get(META_URL)
    if meta_url is not None and meta_url != "":
        if not isinstance(meta_url, str):
            problems.append(
                Violation(f"jsonData.{META_URL}", "must be a string", json_type(meta_url))
            )
        elif problem := url_problem(meta_url):
            problems.append(Violation(f"jsonData.{META_URL}", problem))
    for message in target_problems(json_data, url):
        field, _, problem = message.partition(": ")
        problems.append(Violation(field, problem))
    return problems


def secret_violations(secrets: Mapping[str, str]) -> list[Violation]:
    """Secret values are never quoted: only their field and length are named."""
    problems = []
    for key, value in secrets.items():
        field = f"secureJsonData.{key}"
        if UNSTORABLE_TEXT.search(key) or UNSTORABLE_TEXT.search(value):
            problems.append(Violation(field, "must not contain NUL characters or lone surrogates"))
        if len(value) > MAX_SECRET_LENGTH:
            problems.append(
                Violation(field, f"must be at most {MAX_SECRET_LENGTH} characters", str(len(value)))
            )
    return problems


# --- ids ------------------------------------------------------------------------------------

HEX16 = re.compile(r"[0-9a-fA-F]{16}")


def parse_hex16(text: str) -> int | None:
    """An id as InfluxDB names it: exactly 16 hex digits (either case), not all zero."""
    if not HEX16.fullmatch(text):
        return None
    return int(text, 16) or None


# --- orgs and tokens (the CLI) ----------------------------------------------------------------


def org_name_violations(name: str) -> list[Violation]:
    """An org's name as given (before stripping): the words a source's name gets."""
    if not name:
        return [Violation("name", "required")]
    problems = text_violations("name", name, MAX_ORG_NAME_LENGTH)
    if not name.strip():
        problems.append(Violation("name", "must not be blank"))
    return problems


def org_name_taken(existing_name: str) -> str:
    """Names compare case-insensitively (ASCII, as the registry's index does): the message
    names the org that holds the name, spelt as it is stored."""
    return Violation(
        "name", f"an organization named {shown(existing_name)} already exists"
    ).message()


def token_description_violations(description: str) -> list[Violation]:
    return text_violations("description", description, MAX_DESCRIPTION_LENGTH)


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LISTED_PROBLEMS",
    "URL_REQUIRED_TYPES",
    "InvalidSource",
    "Violation",
    "bounded",
    "decode_field",
    "json_data_violations",
    "json_type",
    "needs_url",
    "org_name_taken",
    "org_name_violations",
    "parse_hex16",
    "raise_violations",
    "secret_violations",
    "shown",
    "source_violations",
    "text_violations",
    "token_description_violations",
    "unknown_field",
]

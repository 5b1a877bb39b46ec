"""Registry records. Plain frozen data: no I/O, no HTTP, no SQL."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

UID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Text the registry must refuse: SQLite cannot store a lone surrogate (UTF-8 has no encoding
# for it), and a NUL has no place in a name, URL or header.
UNSTORABLE_TEXT = re.compile("[\x00\ud800-\udfff]")
MAX_NAME_LENGTH = 190
MAX_URL_LENGTH = 255
DEFAULT_ORG_ID = 1
# jsonData key: more URLs of the same data source, beside `url` (see DataSource.target_urls).
REPLICA_URLS = "replicaUrls"


class Role(Enum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    # Members are singletons compared by identity: the identity hash is the C one, where
    # Enum's own hashes the name in Python (the proxied path's cached lookups key on a role).
    __hash__ = object.__hash__

    @property
    def can_write(self) -> bool:
        return self is not Role.VIEWER


@dataclass(frozen=True, slots=True)
class Org:
    id: int
    influx_id: str  # 16 lowercase hex digits: how InfluxDB's API names the org
    name: str
    created: datetime


def merge_secrets(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """Secrets after an update: keys the update omits keep their value, an empty value clears
    one, and no empty value is stored."""
    return {key: value for key, value in {**current, **changes}.items() if value}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the token's org and role. Cached; holds no secret."""

    token_id: int
    org: Org
    role: Role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: int
    org_name: str
    role: Role
    description: str
    created: datetime
    revoked: datetime | None


class FieldKind(Enum):
    """What a source field holds, which says how every dialect reads and stores it."""

    TEXT = "text"
    FLAG = "flag"
    OBJECT = "object"  # a JSON object (jsonData)
    SECRETS = "secrets"  # names to secret strings: encrypted at rest, never returned


@dataclass(frozen=True, slots=True)
class SourceField:
    attribute: str  # on DataSourceSpec and DataSource
    json_name: str  # in Grafana's JSON: its API and its provisioning files
    kind: FieldKind


def _field(attribute: str, json_name: str, kind: FieldKind = FieldKind.TEXT) -> SourceField:
    return SourceField(attribute, json_name, kind)


# Every field a writer may set on a data source: the one declaration the APIs, provisioning and
# the store's columns are built from (DataSourceSpec below has these fields and their defaults;
# a test holds the two together). The registry adds id, org, version and timestamps.
SOURCE_FIELDS: tuple[SourceField, ...] = (
    _field("name", "name"),
    _field("type", "type"),
    _field("access", "access"),
    _field("url", "url"),
    _field("user", "user"),
    _field("database", "database"),
    _field("basic_auth", "basicAuth", FieldKind.FLAG),
    _field("basic_auth_user", "basicAuthUser"),
    _field("with_credentials", "withCredentials", FieldKind.FLAG),
    _field("is_default", "isDefault", FieldKind.FLAG),
    _field("json_data", "jsonData", FieldKind.OBJECT),
    _field("secure_json_data", "secureJsonData", FieldKind.SECRETS),
    _field("uid", "uid"),
    _field("api_version", "apiVersion"),
    _field("read_only", "readOnly", FieldKind.FLAG),
)


@dataclass(frozen=True, slots=True)
class DataSourceSpec:
    """Everything a client may write about a data source; the store adds id, org and version."""

    name: str
    type: str
    access: str = "proxy"
    url: str = ""
    user: str = ""
    database: str = ""
    basic_auth: bool = False
    basic_auth_user: str = ""
    with_credentials: bool = False
    is_default: bool = False
    json_data: Mapping[str, Any] = field(default_factory=dict)
    secure_json_data: Mapping[str, str] = field(default_factory=dict, repr=False)
    uid: str = ""
    api_version: str = ""
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class DataSource:
    id: int
    org_id: int
    uid: str
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
    json_data: Mapping[str, Any]
    # Decrypted values; never rendered. repr=False keeps them out of logs and tracebacks.
    secure_json_data: Mapping[str, str] = field(repr=False)
    version: int
    read_only: bool
    api_version: str
    created: datetime
    updated: datetime
    provisioned_by: str | None = None  # the provisioning file that manages it, if any

    @property
    def secure_json_fields(self) -> dict[str, bool]:
        """Which secret keys hold a value: all a client is ever told about secrets."""
        return {key: True for key, value in self.secure_json_data.items() if value}

    @property
    def target_urls(self) -> tuple[str, ...]:
        """Every URL the source answers at: `url` (the primary) first, then the replicas of
        `jsonData.replicaUrls` in order. Writers validate replicaUrls; reading stays tolerant:
        an entry that is not a non-empty string, or repeats an earlier URL, is skipped."""
        urls = [self.url] if self.url else []
        replicas = self.json_data.get(REPLICA_URLS)
        if isinstance(replicas, list):
            for replica in replicas:
                if isinstance(replica, str) and replica and replica not in urls:
                    urls.append(replica)
        return tuple(urls)

    def spec(self) -> DataSourceSpec:
        names = {f.name for f in dataclasses.fields(DataSourceSpec)}
        return DataSourceSpec(**{name: getattr(self, name) for name in names})


def target_label(url: str) -> str:
    """How a target is named in checks, logs and metric labels: its URL without userinfo.

    Writers refuse credentials in URLs; this is the guarantee for anything stored before."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}{sep}{host}{slash}{path}" if sep else url


def influx_id(number: int) -> str:
    """InfluxDB's form of an integer id: 16 lowercase hex digits."""
    return f"{number:016x}"

"""Settings: `config/gateway.toml`, then `GATEWAY_*` environment variables, then CLI flags.

Every setting is declared once in `FIELDS` with its TOML key, environment variable, type and
default, so the loader, the error messages and the README table cannot drift apart. Loading is
pure: `load_settings` reads the file it is given and the mapping it is given, nothing else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("config/gateway.toml")
CONFIG_ENV = "GATEWAY_CONFIG"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingsError(Exception):
    """A setting that cannot be used; `str()` is the one line printed before exiting 2."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8480
    data_dir: Path = Path("./data")
    # None: the SQLite file in data_dir. May hold a password, so it stays out of repr.
    database_url: str | None = dataclasses.field(default=None, repr=False)
    # PostgreSQL only: a query slower than this counts as the database being unreachable, and
    # /ready says 503 once it has been unreachable for the grace period.
    database_query_timeout: float = 5.0
    database_outage_grace_period: float = 30.0
    workers: int = 1
    drain_delay: float = 0.0
    drain_timeout: float = 30.0
    log_format: str = "auto"
    log_level: str = "info"
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    secret_key: str | None = dataclasses.field(default=None, repr=False)
    health_interval: float = 15.0
    health_timeout: float = 5.0
    proxy_connect_timeout: float = 10.0
    proxy_response_timeout: float = 30.0
    proxy_idle_timeout: float = 60.0
    proxy_max_idle_connections: int = 256
    proxy_allowed_hosts: tuple[str, ...] = ()
    proxy_denied_networks: tuple[str, ...] = (
        "169.254.0.0/16",  # IPv4 link-local, incl. 169.254.169.254 (AWS, GCP, Azure, OpenStack)
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "168.63.129.16/32",  # Azure WireServer
    )
    metrics_token: str | None = dataclasses.field(default=None, repr=False)
    provisioning_path: Path = Path("config/provisioning/datasources")
    # The write spool (gateway/spool/): per-target bounds, unless a source's
    # jsonData.writeBuffer says otherwise, and the largest write body it reads whole.
    spool_max_bytes: int = 1 << 30
    spool_max_age: float = 7 * 24 * 3600.0
    spool_max_body_bytes: int = 64 << 20
    # Appends are refused (503) before they would leave less free disk than this.
    spool_min_free_bytes: int = 256 << 20
    # How long a write sent straight to its upstream waits for the answer before it is spooled:
    # below the writers' own timeout, so they hear 204, not a timeout (gateway/spool/policy.py).
    spool_forward_timeout: float = 8.0

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.db"


# --- value parsers: each takes the raw value (TOML-typed or a string) and raises ValueError -----


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def _as_nonempty_str(value: object) -> str:
    text = _as_str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _integer(*, minimum: int, maximum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_type_name(value)}")
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}, got {value}")
        return value

    return parse


def _seconds(*, minimum: float, allow_zero: bool = False) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number of seconds, got a boolean")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number of seconds, got {value!r}") from None
        if not isinstance(value, int | float):
            raise ValueError(f"expected a number of seconds, got {_type_name(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        if allow_zero and number == 0:
            return 0.0
        if number < minimum:
            raise ValueError(f"must be at least {minimum:g} seconds, got {number:g}")
        return number

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _as_str(value).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return text

    return parse


def _string_list(value: object) -> tuple[str, ...]:
    """A TOML array of strings, or a comma-separated environment value."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list):
        items = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected strings, got {_type_name(item)}")
            items.append(item.strip())
    else:
        raise ValueError(f"expected an array of strings, got {_type_name(value)}")
    return tuple(item for item in items if item)


def _host_rules(value: object) -> tuple[str, ...]:
    rules = _string_list(value)
    for rule in rules:
        if "/" in rule:
            _network(rule)
        elif not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}", rule):
            raise ValueError(f"{rule!r} is neither host:port nor a CIDR network")
    return rules


def _networks(value: object) -> tuple[str, ...]:
    rules = _string_list(value)
    for rule in rules:
        _network(rule)
    return rules


def _network(text: str) -> None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR network") from None


def _as_path(value: object) -> Path:
    return Path(_as_nonempty_str(value))


DATABASE_URL_FORMS = "sqlite:///path/to/gateway.db or postgresql://user@host:5432/database"


def _database_url(value: object) -> str:
    """`sqlite:` + a file path, or a PostgreSQL connection URL. Messages never repeat the URL:
    it may hold a password."""
    text = _as_nonempty_str(value)
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"a sqlite URL names a file only: {DATABASE_URL_FORMS}")
        return text
    if scheme in ("postgresql", "postgres"):
        try:
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("the port of the PostgreSQL URL is not a number") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError(f"the PostgreSQL URL names no host: {DATABASE_URL_FORMS}")
        if not parts.path.strip("/"):
            raise ValueError(f"the PostgreSQL URL names no database: {DATABASE_URL_FORMS}")
        return text
    raise ValueError(f"expected {DATABASE_URL_FORMS}; got a URL of scheme {scheme or 'none'!r}")


def _type_name(value: object) -> str:
    return {dict: "a table", list: "an array", bool: "a boolean", int: "an integer"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # attribute of Settings
    toml: str | None  # dotted key in gateway.toml; None for secrets: those come only from env
    env: str
    parse: Callable[[object], Any]
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("host", "server.host", "GATEWAY_HOST", _as_nonempty_str, "listen address"),
    Field(
        "port",
        "server.port",
        "GATEWAY_PORT",
        _integer(minimum=0, maximum=65535),
        "listen port (0 picks a free one)",
    ),
    Field(
        "workers",
        "server.workers",
        "GATEWAY_WORKERS",
        _integer(minimum=1, maximum=64),
        "processes serving the port together (SO_REUSEPORT); 1 serves in-process",
    ),
    Field(
        "drain_delay",
        "server.drain_delay",
        "GATEWAY_DRAIN_DELAY",
        _seconds(minimum=0, allow_zero=True),
        "on SIGTERM, seconds /ready answers 503 while still serving, so balancers stop sending",
    ),
    Field(
        "drain_timeout",
        "server.drain_timeout",
        "GATEWAY_DRAIN_TIMEOUT",
        _seconds(minimum=0, allow_zero=True),
        "on SIGTERM, seconds in-flight requests get to finish before they are cut",
    ),
    Field("data_dir", "data.dir", "GATEWAY_DATA_DIR", _as_path, "SQLite database and key files"),
    Field(
        "database_url",
        "database.url",
        "GATEWAY_DATABASE_URL",
        _database_url,
        "the registry: unset or sqlite:///path for a SQLite file, postgresql://… to share one",
    ),
    Field(
        "database_query_timeout",
        "database.query_timeout",
        "GATEWAY_DATABASE_QUERY_TIMEOUT",
        _seconds(minimum=0.1),
        "PostgreSQL: seconds a registry query (or connecting) may take before the database "
        "counts as unreachable",
    ),
    Field(
        "database_outage_grace_period",
        "database.outage_grace_period",
        "GATEWAY_DATABASE_OUTAGE_GRACE_PERIOD",
        _seconds(minimum=0, allow_zero=True),
        "PostgreSQL: seconds the database may be unreachable before /ready says 503",
    ),
    Field(
        "log_format",
        "log.format",
        "GATEWAY_LOG_FORMAT",
        _choice(LOG_FORMATS),
        "json, console, or auto (console on a TTY, json otherwise)",
    ),
    Field("log_level", "log.level", "GATEWAY_LOG_LEVEL", _choice(LOG_LEVELS), "log level"),
    Field(
        "admin_token",
        None,
        "GATEWAY_ADMIN_TOKEN",
        _as_nonempty_str,
        "an admin token for the default org that start-up makes sure exists",
    ),
    Field(
        "secret_key",
        None,
        "GATEWAY_SECRET_KEY",
        _as_nonempty_str,
        "key that encrypts secureJsonData (else generated once into <data>/secret.key)",
    ),
    Field(
        "health_interval",
        "health.interval",
        "GATEWAY_HEALTH_INTERVAL",
        _seconds(minimum=0.1),
        "seconds between probes of one source",
    ),
    Field(
        "health_timeout",
        "health.timeout",
        "GATEWAY_HEALTH_TIMEOUT",
        _seconds(minimum=0.1),
        "seconds one probe may take",
    ),
    Field(
        "proxy_connect_timeout",
        "proxy.connect_timeout",
        "GATEWAY_PROXY_CONNECT_TIMEOUT",
        _seconds(minimum=0.1),
        "seconds to connect to an upstream",
    ),
    Field(
        "proxy_response_timeout",
        "proxy.response_timeout",
        "GATEWAY_PROXY_RESPONSE_TIMEOUT",
        _seconds(minimum=0.1),
        "seconds to wait for response headers (jsonData.timeout overrides)",
    ),
    Field(
        "proxy_idle_timeout",
        "proxy.idle_timeout",
        "GATEWAY_PROXY_IDLE_TIMEOUT",
        _seconds(minimum=0.1),
        "seconds a proxied body may stall between chunks",
    ),
    Field(
        "proxy_max_idle_connections",
        "proxy.max_idle_connections",
        "GATEWAY_PROXY_MAX_IDLE_CONNECTIONS",
        _integer(minimum=0, maximum=100_000),
        "keep-alive connections kept per upstream once unused for 1 s; 0 turns keep-alive off",
    ),
    Field(
        "proxy_allowed_hosts",
        "proxy.allowed_hosts",
        "GATEWAY_PROXY_ALLOWED_HOSTS",
        _host_rules,
        "upstreams a source may point at: host:port or CIDR entries; empty allows all",
    ),
    Field(
        "proxy_denied_networks",
        "proxy.denied_networks",
        "GATEWAY_PROXY_DENIED_NETWORKS",
        _networks,
        "networks no source may reach (link-local and cloud metadata by default)",
    ),
    Field(
        "metrics_token",
        None,
        "GATEWAY_METRICS_TOKEN",
        _as_nonempty_str,
        "when set, GET /metrics needs `Authorization: Bearer <this>`",
    ),
    Field(
        "provisioning_path",
        "provisioning.path",
        "GATEWAY_PROVISIONING_PATH",
        _as_path,
        "folder of Grafana-format data source provisioning files",
    ),
    Field(
        "spool_max_bytes",
        "spool.max_bytes",
        "GATEWAY_SPOOL_MAX_BYTES",
        _integer(minimum=1, maximum=2**62),
        "bytes of writes queued per target before new writes get 503 (jsonData.writeBuffer"
        ".maxBytes overrides)",
    ),
    Field(
        "spool_max_age",
        "spool.max_age",
        "GATEWAY_SPOOL_MAX_AGE",
        _seconds(minimum=1),
        "seconds a queued write may wait before it becomes a dead letter "
        "(jsonData.writeBuffer.maxAge overrides)",
    ),
    Field(
        "spool_max_body_bytes",
        "spool.max_body_bytes",
        "GATEWAY_SPOOL_MAX_BODY_BYTES",
        _integer(minimum=1024, maximum=1 << 31),
        "largest write body the spool takes (read whole); a larger one gets 413",
    ),
    Field(
        "spool_min_free_bytes",
        "spool.min_free_bytes",
        "GATEWAY_SPOOL_MIN_FREE_BYTES",
        _integer(minimum=0, maximum=2**62),
        "free disk bytes the spool leaves; a write that would go below gets 503 (0: none)",
    ),
    Field(
        "spool_forward_timeout",
        "spool.forward_timeout",
        "GATEWAY_SPOOL_FORWARD_TIMEOUT",
        _seconds(minimum=0.1),
        "seconds a write sent straight to its upstream waits for the answer before it is "
        "spooled instead (jsonData.writeBuffer.forwardTimeout overrides)",
    ),
)

_BY_TOML = {f.toml: f for f in FIELDS if f.toml}
_BY_ENV = {f.env: f for f in FIELDS}
# Variables that are ours but not settings fields: they must not be reported as unknown.
_OTHER_ENV = {CONFIG_ENV, "GATEWAY_NEW_SECRET_KEY", "GATEWAY_BUILD_COMMIT", "GATEWAY_WORKER_INDEX"}


def config_path(environ: Mapping[str, str], flag: str | None = None) -> Path:
    """Where the TOML file is: the --config flag, then GATEWAY_CONFIG, then the default.

    Only the default may be missing (then the defaults apply): a path someone named must exist.
    """
    if flag:
        return _must_exist(Path(flag), "--config")
    if environ.get(CONFIG_ENV):
        return _must_exist(Path(environ[CONFIG_ENV]), CONFIG_ENV)
    return DEFAULT_CONFIG_PATH


def _must_exist(path: Path, source: str) -> Path:
    if not path.is_file():
        raise SettingsError(source, f"{path}: no such file")
    return path


def load_settings(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build Settings from the TOML file (if `path` exists), then `environ`, then `overrides`.

    `overrides` maps Settings attribute names to values from CLI flags (None means "not given").
    Raises SettingsError naming the key and the problem.
    """
    values: dict[str, object] = {}
    if path is not None and path.exists():
        values.update(_read_toml(path))
    for key, text in environ.items():
        if not key.startswith("GATEWAY_") or key in _OTHER_ENV or _is_service_link(key, text):
            continue
        field = _BY_ENV.get(key)
        if field is None:
            raise SettingsError(key, "unknown setting (see the settings table in README.md)")
        values[field.name] = _parse(field, text, key)
    by_name = {f.name: f for f in FIELDS}
    for name, flag_value in (overrides or {}).items():
        if flag_value is None:
            continue
        values[name] = _parse(by_name[name], flag_value, "--" + name.replace("_", "-"))
    return Settings(**values)  # type: ignore[arg-type]


def _is_service_link(key: str, value: str) -> bool:
    """Kubernetes injects GATEWAY_SERVICE_HOST, GATEWAY_PORT=tcp://…, GATEWAY_PORT_8480_TCP…
    for a Service named `gateway`: they are not settings and must not stop the pod."""
    return key.startswith(("GATEWAY_SERVICE_", "GATEWAY_PORT_")) or (
        key == "GATEWAY_PORT" and value.startswith(("tcp://", "udp://"))
    )


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(str(path), f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(str(path), f"not valid TOML: {exc}") from exc
    values: dict[str, object] = {}
    for dotted, raw in _flatten(document):
        field = _BY_TOML.get(dotted)
        where = f"{path}: {dotted}"
        if field is None:
            if dotted.split(".")[-1] in {"admin_token", "secret_key", "token", "metrics_token"}:
                raise SettingsError(where, "secrets are read only from environment variables")
            raise SettingsError(where, "unknown key")
        values[field.name] = _parse(field, raw, where)
    return values


def _flatten(table: Mapping[str, object], prefix: str = "") -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, f"{dotted}."))
        else:
            items.append((dotted, value))
    return items


def _parse(field: Field, raw: object, where: str) -> object:
    try:
        return field.parse(raw)
    except ValueError as exc:
        raise SettingsError(where, str(exc)) from exc

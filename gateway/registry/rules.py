"""The low-level rules of a data source's values: what a URL may be, replica, load balancing,
retry and write-buffer settings, numbers JSON and SQLite can hold.

`gateway/registry/validation.py` composes these into the rules of a whole source, which every
writer (both APIs, provisioning files, the CLI) applies; nothing here knows a dialect. Each
problem is worded once, as `<field>: <problem>`, so every writer says the same thing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.registry.models import MAX_URL_LENGTH, REPLICA_URLS, UNSTORABLE_TEXT

# How Grafana's frontend reaches a source; the gateway proxies either way.
ACCESS_MODES = ("proxy", "direct")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Control characters, space and backslash never belong in a URL; urlsplit would silently drop
# some of them, and a backslash is read differently by different parsers (an SSRF classic).
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
_URL_SCHEMES = frozenset({"http", "https"})
# What is wrong with a URL: the same words from every writer. A URL is never quoted back: it
# may carry credentials.
URL_TOO_LONG = f"must be at most {MAX_URL_LENGTH} characters"
URL_FORBIDDEN_CHARACTERS = "must not contain spaces, control characters or backslashes"
URL_NOT_HTTP = "must be an absolute http or https URL with a host"
URL_BAD_PORT = "port must be a number from 1 to 65535"
URL_WITH_CREDENTIALS = (
    "must not contain a user or password: give credentials as the source's basic auth "
    "user and password"
)


# Grafana's SQL types store a database address, not an HTTP URL: `localhost:5432`, `db:3306`,
# `sqlserver://db:1433`, mssql's `host\\instance:1433`. The gateway neither proxies nor probes
# them (the proxy answers 400 "Invalid data source URL", a probe says there is no http(s) URL),
# so their url is kept as Grafana keeps it, checked only for what may never be stored.
DATABASE_ADDRESS_TYPES = frozenset({"postgres", "grafana-postgresql-datasource", "mysql", "mssql"})
# Space and control characters never belong in an address; a backslash does (mssql instances).
_ADDRESS_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")
ADDRESS_FORBIDDEN_CHARACTERS = "must not contain spaces or control characters"
ADDRESS_WITH_CREDENTIALS = (
    "must not contain a user or password: give them as the source's user and "
    "secureJsonData.password"
)
# mssql's ODBC form may carry credentials as `;password=…`.
_ODBC_SECRET_KEYS = frozenset({"password", "pwd"})


def source_url_problem(source_type: str, url: str) -> str | None:
    """What is wrong with a source's `url` for a source of `source_type`, or None."""
    if source_type in DATABASE_ADDRESS_TYPES:
        return address_problem(url)
    return url_problem(url)


def address_problem(address: str) -> str | None:
    """What is wrong with a SQL source's database address (Grafana's own forms are kept): too
    long, spaces or control characters, or credentials in it."""
    if len(address) > MAX_URL_LENGTH:
        return URL_TOO_LONG
    if _ADDRESS_FORBIDDEN.search(address):
        return ADDRESS_FORBIDDEN_CHARACTERS
    host, _, options = address.partition(";")
    try:
        # As Grafana reads `db:5432` (it prepends a scheme): anything before `@` is userinfo.
        parts = urlsplit(host if "://" in host else "//" + host)
        has_userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        has_userinfo = "@" in host
    odbc_keys = {option.partition("=")[0].strip().lower() for option in options.split(";")}
    if has_userinfo or odbc_keys & _ODBC_SECRET_KEYS:
        return ADDRESS_WITH_CREDENTIALS
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with a source URL (stricter than Grafana: an absolute http(s) URL with a
    host, a port from 1 to 65535, no credentials), or None."""
    if len(url) > MAX_URL_LENGTH:
        return URL_TOO_LONG
    if _URL_FORBIDDEN.search(url):
        return URL_FORBIDDEN_CHARACTERS
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket, for one
        return URL_NOT_HTTP
    if parts.scheme.lower() not in _URL_SCHEMES or not parts.hostname:
        return URL_NOT_HTTP
    try:
        port = parts.port  # ValueError when not a number or out of range
    except ValueError:
        return URL_BAD_PORT
    if port == 0:  # nothing listens on port 0; urlsplit takes it
        return URL_BAD_PORT
    if parts.username is not None or parts.password is not None:
        # A URL is shown to every viewer (and in InfluxDB's view): credentials go where they
        # are encrypted and never returned.
        return URL_WITH_CREDENTIALS
    return None


# Replicas and how requests are spread over them (read by gateway/proxy/targets.py and retry.py).
LOAD_BALANCING = "loadBalancing"
LOAD_BALANCING_MODES = ("failover", "round_robin")
RETRY = "retry"
RETRY_ATTEMPTS = "attempts"
RETRY_PER_TRY_TIMEOUT = "perTryTimeout"
# The write spool (gateway/spool/): per-source bounds, and fan-out of writes to every target.
WRITE_BUFFER = "writeBuffer"
WRITE_BUFFER_ENABLED = "enabled"
WRITE_BUFFER_MAX_BYTES = "maxBytes"
WRITE_BUFFER_MAX_AGE = "maxAge"
WRITE_BUFFER_FORWARD_TIMEOUT = "forwardTimeout"
WRITE_MIRROR = "writeMirror"
# One metric series per target URL: a bound keeps a source's series (and its probes) bounded.
MAX_REPLICAS = 16


def target_problems(json_data: Mapping[str, Any], url: str = "") -> list[str]:
    """What is wrong with a source's replica URLs, load balancing and retry settings: one
    message per problem, each naming its field (`jsonData.replicaUrls[1]: ...`). Messages
    never quote a URL: it may carry credentials."""
    problems = _replica_problems(json_data.get(REPLICA_URLS), url)
    mode = json_data.get(LOAD_BALANCING)
    if mode is not None and mode not in LOAD_BALANCING_MODES:
        problems.append(f'jsonData.{LOAD_BALANCING}: must be "failover" or "round_robin"')
    retry = json_data.get(RETRY)
    if retry is not None:
        problems += _retry_problems(retry)
    buffer = json_data.get(WRITE_BUFFER)
    if buffer is not None:
        problems += _write_buffer_problems(buffer)
    mirror = json_data.get(WRITE_MIRROR)
    if mirror is not None and not isinstance(mirror, bool):
        problems.append(f"jsonData.{WRITE_MIRROR}: must be true or false")
    return problems


def _replica_problems(replicas: object, url: str) -> list[str]:
    field = f"jsonData.{REPLICA_URLS}"
    if replicas is None:
        return []
    if not isinstance(replicas, list):
        return [f"{field}: must be an array of URLs"]
    if len(replicas) > MAX_REPLICAS:
        return [f"{field}: at most {MAX_REPLICAS} replica URLs"]
    problems = []
    for index, replica in enumerate(replicas):
        if not isinstance(replica, str) or not replica:
            problems.append(f"{field}[{index}]: must be a URL string")
            continue
        problem = url_problem(replica)
        if problem is not None:
            problems.append(f"{field}[{index}]: {problem}")
            continue
        if replica == url or replica in replicas[:index]:
            problems.append(f"{field}[{index}]: repeats the source's url or an earlier replica")
    return problems


def _retry_problems(retry: object) -> list[str]:
    field = f"jsonData.{RETRY}"
    if not isinstance(retry, Mapping):
        return [f"{field}: must be an object ({RETRY_ATTEMPTS}, {RETRY_PER_TRY_TIMEOUT})"]
    problems = []
    attempts = retry.get(RETRY_ATTEMPTS)
    if attempts is not None and (
        isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0
    ):
        problems.append(f"{field}.{RETRY_ATTEMPTS}: must be a whole number, 0 or more")
    timeout = retry.get(RETRY_PER_TRY_TIMEOUT)
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        problems.append(f"{field}.{RETRY_PER_TRY_TIMEOUT}: must be a number of seconds above 0")
    return problems


def _write_buffer_problems(buffer: object) -> list[str]:
    field = f"jsonData.{WRITE_BUFFER}"
    if not isinstance(buffer, Mapping):
        return [
            f"{field}: must be an object ({WRITE_BUFFER_ENABLED}, {WRITE_BUFFER_MAX_BYTES}, "
            f"{WRITE_BUFFER_MAX_AGE}, {WRITE_BUFFER_FORWARD_TIMEOUT})"
        ]
    problems = []
    for key in buffer:
        if key not in _WRITE_BUFFER_KEYS:
            problems.append(f"{field}.{key}: unknown key")
    enabled = buffer.get(WRITE_BUFFER_ENABLED)
    if enabled is not None and not isinstance(enabled, bool):
        problems.append(f"{field}.{WRITE_BUFFER_ENABLED}: must be true or false")
    max_bytes = buffer.get(WRITE_BUFFER_MAX_BYTES)
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0
    ):
        problems.append(f"{field}.{WRITE_BUFFER_MAX_BYTES}: must be a whole number above 0 (bytes)")
    for key in (WRITE_BUFFER_MAX_AGE, WRITE_BUFFER_FORWARD_TIMEOUT):
        seconds = buffer.get(key)
        if seconds is not None and (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            problems.append(f"{field}.{key}: must be a number of seconds above 0")
    return problems


_WRITE_BUFFER_KEYS = (
    WRITE_BUFFER_ENABLED,
    WRITE_BUFFER_MAX_BYTES,
    WRITE_BUFFER_MAX_AGE,
    WRITE_BUFFER_FORWARD_TIMEOUT,
)


def parse_int64(text: str) -> int | None:
    """`text` as Go's `strconv.ParseInt(text, 10, 64)` reads it, or None."""
    sign, digits = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
    significant = digits.lstrip("0")
    # isdecimal() alone would take non-ASCII digits; the length bound keeps int() (which
    # refuses over 4,300 digits with a ValueError) away from attacker-sized input.
    if not (digits.isascii() and digits.isdecimal()) or len(significant) > 19:
        return None
    number = int(sign + (significant or "0"))
    return number if INT64_MIN <= number <= INT64_MAX else None


def has_unstorable_text(document: Any) -> bool:
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

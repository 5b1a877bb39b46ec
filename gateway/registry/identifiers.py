"""Names and ids the registry makes up, by Grafana's and InfluxDB's rules: every backend uses
these, so a source gets the same default name and uid shape whichever database holds it."""

from __future__ import annotations

import secrets
import string

_UID_ALPHABET = string.ascii_lowercase + string.digits


def available_name(type_: str, taken: set[str]) -> str:
    """Grafana's rule: `<type>`, then `<type>-1`, `<type>-2`, … (case-insensitively free).

    `taken` holds the org's names in lower case."""
    if type_.lower() not in taken:
        return type_
    n = 1
    while f"{type_}-{n}".lower() in taken:
        n += 1
    return f"{type_}-{n}"


def new_uid() -> str:
    """Grafana's shape: a letter a-f, a random base36 body, a letter a-f (14 characters)."""
    body = "".join(secrets.choice(_UID_ALPHABET) for _ in range(12))
    return secrets.choice("abcdef") + body + secrets.choice("abcdef")


def new_influx_id() -> str:
    """An org's id as InfluxDB's API names it: 16 lowercase hex digits, never all zeros."""
    while True:
        value = secrets.token_hex(8)
        if int(value, 16) != 0:
            return value

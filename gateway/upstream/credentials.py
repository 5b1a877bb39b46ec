"""The credentials a source's upstream expects, as request headers: shared by probes and the proxy.

Grafana's injection rules (reference/grafana-datasource-api.md §3.3), applied in this order so
that each later step overrides the `Authorization` an earlier one set:

1. userinfo in the source URL (`http://user:pass@host`), as basic auth: what Go and aiohttp do
   with such a URL, kept as the weakest choice because the URL itself must never be sent or shown;
2. `basicAuth`: `basicAuthUser` + `secureJsonData.basicAuthPassword`; without it, an InfluxQL
   source with a `user` sends `user` + `secureJsonData.password` (InfluxDB 1.x auth);
3. a Flux source with `secureJsonData.token`: `Authorization: Token <token>`;
4. custom headers `jsonData.httpHeaderNameN` + `secureJsonData.httpHeaderValueN` for N = 1, 2, …,
   stopping at the first missing name and skipping names without a value. Each replaces any header
   of the same name (case-insensitive), so a custom `Authorization` wins.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from enum import Enum

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.registry.models import DataSource

AUTHORIZATION = "Authorization"
NO_CREDENTIALS = "no credentials"  # the description of a source that sends none

# RFC 9110 token characters: anything else could smuggle a second header line or break parsing.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


class InfluxQueryLanguage(Enum):
    """Which InfluxDB API an `influxdb` source speaks, from Grafana's `jsonData.version`."""

    INFLUXQL = "InfluxQL"  # InfluxDB 1.x API; also what an absent version means
    FLUX = "Flux"  # InfluxDB 2.x API
    SQL = "SQL"  # InfluxDB 3 (Flight SQL)


def influx_query_language(source: DataSource) -> InfluxQueryLanguage | None:
    """The query language of an `influxdb` source; None for other types or an unknown version."""
    if source.type != "influxdb":
        return None
    version = source.json_data.get("version")
    if not isinstance(version, str) or not version.strip():
        return InfluxQueryLanguage.INFLUXQL
    wanted = version.strip().casefold()
    for language in InfluxQueryLanguage:
        if language.value.casefold() == wanted:
            return language
    return None


@dataclass(frozen=True, slots=True)
class Credentials:
    """Headers to add to every request to one source's upstream, and a safe way to name them."""

    headers: CIMultiDictProxy[str] = field(repr=False)
    # Names the kinds of credential, never a value: "basic auth", "token", "custom header X-Key".
    description: str
    # Every string whose appearance in text shown to people would leak a credential.
    secrets: frozenset[str] = field(repr=False)


def source_credentials(source: DataSource) -> Credentials:
    """Build the credential headers for `source` by Grafana's rules (see the module docstring)."""
    headers: CIMultiDict[str] = CIMultiDict()
    authorization_kind = ""
    for kind, value in _authorization_candidates(source):
        headers[AUTHORIZATION] = value
        authorization_kind = kind
    custom_names: list[str] = []
    for name, value in custom_headers(source):
        headers[name] = value
        custom_names.append(name)
    if any(name.casefold() == AUTHORIZATION.casefold() for name in custom_names):
        authorization_kind = ""  # the custom header replaced it; naming both would mislead
    return Credentials(
        headers=CIMultiDictProxy(headers),
        description=_describe(authorization_kind, custom_names),
        secrets=_secrets(source, headers),
    )


def custom_headers(source: DataSource) -> list[tuple[str, str]]:
    """`jsonData.httpHeaderNameN` / `secureJsonData.httpHeaderValueN` pairs, in order."""
    pairs: list[tuple[str, str]] = []
    number = 1
    while True:
        name = source.json_data.get(f"httpHeaderName{number}")
        if not isinstance(name, str) or not name.strip():
            return pairs  # numbering gaps drop later headers, as in Grafana
        value = source.secure_json_data.get(f"httpHeaderValue{number}", "")
        if value and _HEADER_NAME.fullmatch(name.strip()) and not _is_unsafe_value(value):
            pairs.append((name.strip(), value))
        number += 1


def tls_skip_verify(source: DataSource) -> bool:
    """Grafana's `jsonData.tlsSkipVerify`: only a JSON `true` turns certificate checks off.

    Every writer refuses any other type at save time (gateway/registry/validation.py), so the
    proxy, the probes and the bucket listings read it one way; a string stored before that
    rule (`"true"`) keeps verification on, the safe reading."""
    return source.json_data.get("tlsSkipVerify") is True


def url_without_userinfo(url: URL) -> URL:
    """`url` minus `user:password@`, which aiohttp would otherwise turn into its own basic auth."""
    return url.with_user(None) if url.raw_user or url.raw_password else url


def _authorization_candidates(source: DataSource) -> list[tuple[str, str]]:
    """(kind, Authorization value) from weakest to strongest; the last one is sent."""
    secure = source.secure_json_data
    candidates = []
    url_user, url_password = _url_userinfo(source.url)
    if url_user or url_password:
        candidates.append(("basic auth from the URL", _basic(url_user, url_password)))
    language = influx_query_language(source)
    if source.basic_auth:
        password = secure.get("basicAuthPassword", "")
        candidates.append(("basic auth", _basic(source.basic_auth_user, password)))
    elif language is InfluxQueryLanguage.INFLUXQL and source.user:
        password = secure.get("password", "")
        candidates.append(("InfluxDB user and password", _basic(source.user, password)))
    if language is InfluxQueryLanguage.FLUX and secure.get("token"):
        candidates.append(("token", f"Token {secure['token']}"))
    return [(kind, value) for kind, value in candidates if not _is_unsafe_value(value)]


def _url_userinfo(url: str) -> tuple[str, str]:
    try:
        parsed = URL(url)
    except ValueError:
        return "", ""
    return parsed.user or "", parsed.password or ""


def _basic(user: str, password: str) -> str:
    # Built by hand: aiohttp.BasicAuth raises on a ":" in the user, and a probe must not raise.
    # UTF-8, as Go's SetBasicAuth (and so Grafana) encodes non-ASCII credentials.
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _is_unsafe_value(value: str) -> bool:
    return bool(_HEADER_VALUE_FORBIDDEN.search(value))


def _describe(authorization_kind: str, custom_names: list[str]) -> str:
    parts = [authorization_kind] if authorization_kind else []
    if custom_names:
        noun = "custom header" if len(custom_names) == 1 else "custom headers"
        parts.append(f"{noun} {', '.join(custom_names)}")
    return " and ".join(parts) or NO_CREDENTIALS


def _secrets(source: DataSource, headers: CIMultiDict[str]) -> frozenset[str]:
    """Secret inputs plus the header values built from them (an upstream may echo either)."""
    values = {value for value in source.secure_json_data.values() if value}
    _, url_password = _url_userinfo(source.url)
    if url_password:
        values.add(url_password)
    if AUTHORIZATION in headers:
        authorization = headers[AUTHORIZATION]
        values.add(authorization)
        _, _, credential = authorization.partition(" ")
        if credential:
            values.add(credential)
    for _name, value in custom_headers(source):
        values.add(value)
    return frozenset(values)


__all__ = [
    "AUTHORIZATION",
    "NO_CREDENTIALS",
    "Credentials",
    "InfluxQueryLanguage",
    "custom_headers",
    "influx_query_language",
    "source_credentials",
    "tls_skip_verify",
    "url_without_userinfo",
]

"""Bucket listings from a real InfluxDB upstream, with the source's own credentials.

- v1 (InfluxDB 1.x): `SHOW DATABASES`, then `SHOW RETENTION POLICIES ON "<db>"` for every
  database (a few at a time: one failing statement would stop the rest of a multi-statement
  query), one bucket per (db, rp) named `db/rp`.
- v2 (InfluxDB 2.x): `GET /api/v2/buckets` page by page with `Authorization: Token <token>`.

Credentials are the ones the proxy and the probes send (upstream/credentials.py): Basic(username,
password) for v1, `Token <token>` for v2, Grafana's basic auth and custom headers where set; for a
v1 user with a `sharedSecret`, InfluxDB 1.x's `Bearer <JWT>` instead of the password. They travel
in headers only, never in the URL.

Everything the upstream sends is hostile: bodies are size-capped, parsed strictly, only
validated fields are kept, and a listing stops at V1_MAX_DATABASES databases or V2_MAX_PAGES
pages. Failures become gateway errors: unreachable or too slow → 503 `unavailable`; 401/403 → 400
`invalid` "source rejected the credentials" (never passed through, so a client does not think
its own token was refused); anything else unexpected → 502. Messages never carry a URL, a
credential or the upstream's own words.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import aiohttp
import yarl
from multidict import CIMultiDict

from gateway.errors import BadGateway, BadRequest, Unavailable
from gateway.registry.models import DataSource
from gateway.upstream.credentials import (
    AUTHORIZATION,
    custom_headers,
    source_credentials,
    tls_skip_verify,
    url_without_userinfo,
)
from gateway.upstream.failures import describe_transport_error

InfluxKind = Literal["v1", "v2"]

MAX_BODY_BYTES = 8 * 1024 * 1024
V2_PAGE_SIZE = 100  # InfluxDB 2's maximum `limit`
V2_MAX_PAGES = 100
V1_CONCURRENCY = 8  # SHOW RETENTION POLICIES queries in flight at once
V1_MAX_DATABASES = 1000  # one query each: a listing stops there, as v2's stops at V2_MAX_PAGES
JWT_LIFETIME_SECONDS = 60
CREDENTIALS_REJECTED = "source rejected the credentials"
# What a `self` source's buckets, health and query answer when it has nothing to stand for.
SELF_WITHOUT_DEFAULT = (
    "a self source uses the organization's default InfluxDB source, and there is none"
)


@dataclass(frozen=True, slots=True)
class RetentionRule:
    every_seconds: int  # 0 = keep forever
    shard_group_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    retention_rules: tuple[RetentionRule, ...]
    rp: str = ""
    id: str = ""
    org_id: str = ""
    type: str = ""
    description: str = ""
    created_at: str = ""
    updated_at: str = ""


@dataclass(frozen=True, slots=True)
class ListingTimeouts:
    """Limits, in seconds, on each aiohttp request a bucket listing makes: `connect` for the TCP
    connect and TLS handshake, `total` for the whole exchange. A listing's answers are small, so
    one total bound fits them; the proxy pool's per-phase `proxy.http1.Timeouts` deliberately has
    none, because a long proxied stream that keeps moving is legitimate."""

    connect: float
    total: float

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.total, sock_connect=self.connect)


# --- v1 ----------------------------------------------------------------------------------------


async def list_v1_buckets(
    session: aiohttp.ClientSession, source: DataSource, timeouts: ListingTimeouts
) -> list[Bucket]:
    call = _Upstream(session, source, timeouts, _credentials(source, "v1"))
    listed = _result(await call.query("SHOW DATABASES"))
    if "error" in listed:  # the upstream's words are not repeated: they are not ours to vouch for
        raise BadGateway(influx_message="source refused SHOW DATABASES")
    databases = [row[0] for row in _series_rows(listed, ("name",))][:V1_MAX_DATABASES]

    limit = asyncio.Semaphore(V1_CONCURRENCY)

    async def policies(database: str) -> dict[str, Any]:
        async with limit:
            return _result(await call.query(f"SHOW RETENTION POLICIES ON {quote_ident(database)}"))

    try:
        async with asyncio.TaskGroup() as group:  # the first failure cancels the others
            tasks = [group.create_task(policies(database)) for database in databases]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    buckets: list[Bucket] = []
    for database, task in zip(databases, tasks, strict=True):
        result = task.result()
        if "error" in result:  # dropped since SHOW DATABASES, or not readable by this user
            continue
        for rp, duration, shard_duration in _series_rows(
            result, ("name", "duration", "shardGroupDuration")
        ):
            rule = RetentionRule(parse_duration(duration), parse_duration(shard_duration))
            buckets.append(Bucket(name=f"{database}/{rp}", rp=rp, retention_rules=(rule,)))
    return buckets


def quote_ident(name: str) -> str:
    """InfluxQL's QuoteIdent: upstream database names go into the next statement safely."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> int:
    """A Go duration as InfluxDB 1.x prints it (`168h0m0s`, `0s`) → whole seconds."""
    if text == "0":
        return 0
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise BadGateway(influx_message="source answered with an unreadable retention duration")
    return int(total)


def _credentials(source: DataSource, kind: InfluxKind) -> CIMultiDict[str]:
    """The headers the proxy and the probes send (upstream/credentials.py: Grafana's rules), plus
    InfluxDB 1.x's JWT in place of the password when a v1 source has a user and a shared secret
    (and no proxy basic auth or custom Authorization header overrides it)."""
    headers = CIMultiDict(source_credentials(source).headers)
    shared_secret = source.secure_json_data.get("sharedSecret")
    custom_authorization = any(
        name.casefold() == AUTHORIZATION.casefold() for name, _ in custom_headers(source)
    )
    if (
        kind == "v1"
        and source.user
        and shared_secret
        and not source.basic_auth
        and not custom_authorization
    ):
        headers[AUTHORIZATION] = f"Bearer {_jwt(source.user, shared_secret)}"
    return headers


def _jwt(username: str, shared_secret: str) -> str:
    """The HS512 token InfluxDB 1.x accepts with `[http] shared-secret`."""

    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = part(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    claims = {"username": username, "exp": int(time.time()) + JWT_LIFETIME_SECONDS}
    signing_input = header + b"." + part(json.dumps(claims).encode())
    signature = hmac.new(shared_secret.encode(), signing_input, hashlib.sha512).digest()
    return (signing_input + b"." + part(signature)).decode()


def _result(body: object) -> dict[str, Any]:
    """The one result of a one-statement query."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], dict):
        raise _unexpected()
    result: dict[str, Any] = results[0]
    return result


def _series_rows(result: Mapping[str, Any], columns: tuple[str, ...]) -> list[list[str]]:
    """The string cells of the named columns, for every row of every series in `result`."""
    rows: list[list[str]] = []
    series_list = result.get("series", [])
    if not isinstance(series_list, list):
        raise _unexpected()
    for series in series_list:
        names = series.get("columns") if isinstance(series, dict) else None
        values = series.get("values", []) if isinstance(series, dict) else None
        if not isinstance(names, list) or not isinstance(values, list):
            raise _unexpected()
        try:
            indexes = [names.index(column) for column in columns]
        except ValueError:
            raise _unexpected() from None
        for row in values:
            if not isinstance(row, list) or len(row) != len(names):
                raise _unexpected()
            cells = [row[i] for i in indexes]
            if not all(isinstance(cell, str) for cell in cells):
                raise _unexpected()
            rows.append(cells)
    return rows


# --- v2 ----------------------------------------------------------------------------------------


async def list_v2_buckets(
    session: aiohttp.ClientSession, source: DataSource, timeouts: ListingTimeouts
) -> list[Bucket]:
    call = _Upstream(session, source, timeouts, _credentials(source, "v2"))
    params = {"limit": str(V2_PAGE_SIZE)}
    organization = source.json_data.get("organization")  # Grafana's Flux data source setting
    if isinstance(organization, str) and organization:
        params["org"] = organization
    buckets: list[Bucket] = []
    for page in range(V2_MAX_PAGES):
        body = await call.get("/api/v2/buckets", {**params, "offset": str(page * V2_PAGE_SIZE)})
        items = body.get("buckets") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise _unexpected()
        buckets.extend(_v2_bucket(item) for item in items)
        if len(items) < V2_PAGE_SIZE:
            break
    return buckets


def _v2_bucket(item: object) -> Bucket:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise _unexpected()
    rules = item.get("retentionRules", [])
    if not isinstance(rules, list):
        raise _unexpected()
    bucket_type = item.get("type")
    return Bucket(
        name=item["name"],
        retention_rules=tuple(_v2_rule(rule) for rule in rules),
        rp=_optional_str(item, "rp"),
        id=_optional_str(item, "id"),
        org_id=_optional_str(item, "orgID"),
        type=bucket_type if bucket_type in ("user", "system") else "",
        description=_optional_str(item, "description"),
        created_at=_timestamp(item, "createdAt"),
        updated_at=_timestamp(item, "updatedAt"),
    )


def _v2_rule(rule: object) -> RetentionRule:
    if not isinstance(rule, dict) or rule.get("type", "expire") != "expire":
        raise _unexpected()
    every = _seconds(rule.get("everySeconds"))
    shard = rule.get("shardGroupDurationSeconds")
    if every is None or (shard is not None and _seconds(shard) is None):
        raise _unexpected()
    return RetentionRule(every_seconds=every, shard_group_seconds=shard)


def _seconds(value: object) -> int | None:
    """A JSON count of seconds (a non-negative integer), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _optional_str(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _timestamp(item: Mapping[str, Any], key: str) -> str:
    """An RFC 3339 time kept only when it parses: clients parse it and fail on garbage."""
    value = _optional_str(item, key)
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return ""
    return value


# --- HTTP --------------------------------------------------------------------------------------


class _Upstream:
    """Requests to one source's base URL, turning every failure into a gateway error."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        source: DataSource,
        timeouts: ListingTimeouts,
        headers: CIMultiDict[str],
    ) -> None:
        self._session = session
        # Credentials from the URL are in `headers` already; the URL itself never carries them.
        self._base = url_without_userinfo(_base_url(source.url))
        self._timeouts = timeouts
        self._headers = headers
        # insecureSkipVerify ⇔ jsonData.tlsSkipVerify (ssl=False turns certificate checks off),
        # read as the proxy and the probes read it.
        self._ssl = not tls_skip_verify(source)

    async def query(self, statement: str) -> object:
        return await self._request("POST", "/query", {}, form={"q": statement})

    async def get(self, path: str, params: Mapping[str, str]) -> object:
        return await self._request("GET", path, params)

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        form: Mapping[str, str] | None = None,
    ) -> object:
        url = self._base.with_path(self._base.path.rstrip("/") + path).with_query(params)
        try:
            async with self._session.request(
                method,
                url,
                data=form,
                headers=self._headers,
                allow_redirects=False,
                ssl=self._ssl,
                timeout=self._timeouts.client_timeout(),
            ) as response:
                if response.status in (401, 403):
                    raise BadRequest(influx_message=CREDENTIALS_REJECTED)
                body = await _read_capped(response)
                status = response.status
        except TimeoutError as exc:
            raise Unavailable(
                influx_message=f"source did not answer within {self._timeouts.total:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            # Never connected (refused, DNS, TLS) or failed on the way back (cut short).
            if isinstance(exc, aiohttp.ClientConnectorError):
                what = "source is unreachable"
            else:
                what = "the request to the source failed"
            raise Unavailable(influx_message=f"{what}: {describe_transport_error(exc)}") from exc
        if status != 200:
            raise BadGateway(influx_message=f"source answered HTTP {status}")
        try:
            return json.loads(body)
        except ValueError:
            raise BadGateway(
                influx_message="source answered with a body that is not JSON"
            ) from None
        except RecursionError:
            raise BadGateway(influx_message="source answered with JSON nested too deeply") from None


def _base_url(text: str) -> yarl.URL:
    try:
        url = yarl.URL(text)
        usable = url.scheme in ("http", "https") and bool(url.host)
    except ValueError:
        usable = False
    if not usable:
        raise BadRequest(influx_message="the source has no usable http(s) url")
    return url.with_query(None).with_fragment(None)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadGateway(
                influx_message=f"source answered with more than {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _unexpected() -> BadGateway:
    return BadGateway(influx_message="source answered with an unexpected body")


__all__ = [
    "CREDENTIALS_REJECTED",
    "SELF_WITHOUT_DEFAULT",
    "Bucket",
    "ListingTimeouts",
    "RetentionRule",
    "list_v1_buckets",
    "list_v2_buckets",
    "parse_duration",
    "quote_ident",
]

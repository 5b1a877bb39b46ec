"""Per-type probes: each returns an InfluxDB `HealthCheck` for one data source.

Checks per source type, in order:
- prometheus: reachable (`/-/ready`), auth + query (`1+1` on `/api/v1/query`); version and commit
  come from `/api/v1/status/buildinfo`.
- influxdb, InfluxQL: reachable (`/ping`, version from `X-Influxdb-Version`), auth + query
  (`SHOW DATABASES`).
- influxdb, Flux: reachable (`/health`, with the upstream's own HealthCheck nested in it),
  auth + query (`/api/v2/buckets?limit=1` with the token).
- loki: reachable (`/ready`).
- elasticsearch: reachable + cluster (`/_cluster/health`; red fails).
- graphite: reachable + query (`/render` of `constantLine(1)`).
- anything else: reachable (GET the base URL; below 500 passes).

Rules all probes share:
- Every request carries the source's credentials (upstream/credentials.py), as the proxy does, so a
  source behind an authenticating reverse proxy is probed the way its users reach it.
- A 401 or 403 is a failed `auth` check. The probe stops at its first failing check: later steps
  depend on earlier ones and would only repeat the error while spending the time budget.
- `seconds` bounds the whole probe, not each request. Redirects are not followed. TLS certificates
  are verified unless `jsonData.tlsSkipVerify`.
- A probe never raises for an upstream failure; the failure becomes a failing check.
- Messages say what was tried, what happened and how long it took. Our own wording never holds a
  credential; text that comes from the upstream is redacted before it is shown.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway import __version__
from gateway.registry.models import DataSource
from gateway.upstream.credentials import (
    NO_CREDENTIALS,
    Credentials,
    InfluxQueryLanguage,
    influx_query_language,
    source_credentials,
    tls_skip_verify,
    url_without_userinfo,
)
from gateway.upstream.failures import describe_transport_error

HealthCheck = dict[str, Any]

# Enough for any health or tiny-query answer; a probe must not buffer an unbounded reply.
MAX_BODY_BYTES = 1 << 20
MAX_UPSTREAM_TEXT = 200
# Bounds on the upstream HealthCheck nested in a Flux probe, which we do not control.
MAX_NESTED_DEPTH = 4
MAX_NESTED_CHECKS = 50
REDACTED = "[redacted]"
USER_AGENT = f"datasource-gateway-health/{__version__}"

_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


async def probe_source(
    session: aiohttp.ClientSession, source: DataSource, seconds: float, *, url: str | None = None
) -> HealthCheck:
    """Probe `source` once at `url` (None: `source.url`), one of its targets, whose path is the
    base path there; never raises for upstream failures, never puts a secret in a message."""
    probe = _Probe(session, source, seconds, source.url if url is None else url)
    if probe.base_url is None:
        probe.add("reachable", False, "the source has no absolute http(s) URL to probe")
    else:
        await _probe_for(source)(probe)
    return probe.result(source.name)


# --------------------------------------------------------------------------------------------
# One probe run


@dataclass(frozen=True, slots=True)
class _Reply:
    """What one probe request got: an HTTP response, or (status None) why there was none."""

    summary: str  # "GET /-/ready: HTTP 200 in 3 ms", "GET /-/ready: connection refused after 1 ms"
    status: int | None = None
    headers: CIMultiDictProxy[str] = field(default_factory=lambda: _NO_HEADERS)
    body: bytes = b""

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON, None when it is not JSON; `UnusableAnswer` when it is too deeply
        nested to read (a hostile or broken upstream: a failed check, not a crashed probe)."""
        try:
            return json.loads(self.body)
        except ValueError:  # also covers bytes that are not UTF-8
            return None
        except RecursionError:
            raise UnusableAnswer("nested too deeply") from None


class UnusableAnswer(Exception):
    """An answer whose JSON cannot be read at all; `str()` says why, in words."""


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A judge's reading of a reply. `detail` may quote the upstream; it is redacted before use."""

    passed: bool
    detail: str = ""
    nested: HealthCheck | None = None  # the upstream's own HealthCheck, when it has one
    version: str = ""
    commit: str = ""


_Judge = Callable[[_Reply], _Verdict]


class _Probe:
    """One probe run: where requests go, with which credentials, until when; and the results."""

    def __init__(
        self, session: aiohttp.ClientSession, source: DataSource, seconds: float, url: str
    ) -> None:
        self._session = session
        self._seconds = seconds
        self._started = time.perf_counter()
        self._deadline = asyncio.get_running_loop().time() + seconds
        self._credentials: Credentials = source_credentials(source)
        self._headers = CIMultiDict(self._credentials.headers)
        self._headers.setdefault("User-Agent", USER_AGENT)
        self._headers.setdefault("Accept", "application/json, text/plain;q=0.9, */*;q=0.1")
        # False turns verification off in aiohttp; True means the default verifying context.
        self._ssl = not tls_skip_verify(source)
        self.base_url = _base_url(url)
        self.checks: list[HealthCheck] = []
        self.version = ""
        self.commit = ""

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> _Reply:
        """GET `path` under the source's base URL within what is left of the time budget."""
        assert self.base_url is not None, "probe_source checks the URL before any request"
        url = self.base_url.with_path(_join_path(self.base_url.path, path)).with_query(query)
        request = f"GET {url.path}"
        if asyncio.get_running_loop().time() >= self._deadline:
            return _Reply(f"{request}: not sent, probe timeout {self._seconds:g} s already spent")
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout_at(self._deadline),
                self._session.get(
                    url,
                    headers=self._headers,
                    allow_redirects=False,
                    ssl=self._ssl,
                    raise_for_status=False,  # whatever the caller's session says: we judge
                ) as response,
            ):
                body = await _read_body(response)
        except TimeoutError:
            took = _elapsed(started)
            return _Reply(f"{request}: timed out after {took} (probe timeout {self._seconds:g} s)")
        except (aiohttp.ClientError, OSError) as exc:
            return _Reply(f"{request}: {describe_transport_error(exc)} after {_elapsed(started)}")
        summary = f"{request}: HTTP {response.status} in {_elapsed(started)}"
        return _Reply(summary, response.status, response.headers, body)

    def check(self, name: str, reply: _Reply, judge: _Judge) -> bool:
        """Record check `name` for `reply` as `judge` reads it; True if it passed."""
        if self._stopped_at(name, reply):
            return False
        return self._record(name, reply, _judged(reply, judge))

    def authenticated_check(self, name: str, reply: _Reply, judge: _Judge) -> bool:
        """Like `check`, with an `auth` check first when the reply proves the credentials work."""
        if self._stopped_at(name, reply):
            return False
        if reply.succeeded:
            self.add("auth", True, f"{reply.summary}, {self._accepted()}")
        return self._record(name, reply, _judged(reply, judge))

    def add(self, name: str, passed: bool, message: str, **extra: Any) -> None:
        self.checks.append(
            {"name": name, "status": "pass" if passed else "fail", "message": message, **extra}
        )

    def take_version(self, version: str, commit: str = "") -> None:
        self.version = self._clean(version) if version else self.version
        self.commit = self._clean(commit) if commit else self.commit

    def result(self, name: str) -> HealthCheck:
        failing = next((check for check in self.checks if check["status"] == "fail"), None)
        if failing is not None:
            message = failing["message"]
        else:
            message = f"all checks passed in {_elapsed(self._started)}"
        health: HealthCheck = {
            "name": name,
            "status": "fail" if failing is not None else "pass",
            "message": message,
            "checks": self.checks,
        }
        if self.version:
            health["version"] = self.version
        if self.commit:
            health["commit"] = self.commit
        return health

    def _stopped_at(self, name: str, reply: _Reply) -> bool:
        """Record the failure that ends the probe (no answer, or credentials refused), if any."""
        if reply.status is None:
            self.add(name, False, reply.summary)
            return True
        if reply.status in (401, 403):
            self.add("auth", False, self._auth_failure(reply))
            return True
        return False

    def _accepted(self) -> str:
        description = self._credentials.description
        if description == NO_CREDENTIALS:
            return "no credentials configured and none needed"
        return f"{description} accepted"

    def _auth_failure(self, reply: _Reply) -> str:
        description = self._credentials.description
        if description == NO_CREDENTIALS:
            message = f"{reply.summary}, the upstream wants credentials and none are configured"
        else:
            message = f"{reply.summary}, {description} rejected"
        reason = _upstream_reason(reply)
        return f"{message} (upstream: {self._clean(reason)})" if reason else message

    def _record(self, name: str, reply: _Reply, verdict: _Verdict) -> bool:
        message = reply.summary
        if verdict.detail:
            message = f"{message}, {self._clean(verdict.detail)}"
        extra = {}
        if verdict.nested is not None:
            extra["checks"] = [self._clean_tree(verdict.nested)]
        self.add(name, verdict.passed, message, **extra)
        self.take_version(verdict.version, verdict.commit)
        return verdict.passed

    def _clean(self, text: str) -> str:
        """Upstream text made safe to show: secrets redacted, one short line."""
        # Longest first, so a secret that contains a shorter one is not left half-redacted.
        for secret in sorted(self._credentials.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return _shorten(text)

    def _clean_tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._clean(value)
        if isinstance(value, list):
            return [self._clean_tree(item) for item in value]
        if isinstance(value, dict):
            return {key: self._clean_tree(item) for key, item in value.items()}
        return value


# --------------------------------------------------------------------------------------------
# The probes, one per kind of source


async def _probe_prometheus(probe: _Probe) -> None:
    if not probe.check("reachable", await probe.get("/-/ready"), _expect_success):
        return
    probe.take_version(*_prometheus_build(await probe.get("/api/v1/status/buildinfo")))
    answer = await probe.get("/api/v1/query", {"query": "1+1"})
    probe.authenticated_check("query", answer, _prometheus_answer)


async def _probe_influxql(probe: _Probe) -> None:
    ping = await probe.get("/ping")
    if not probe.check("reachable", ping, _expect_success):
        return
    probe.take_version(ping.headers.get("X-Influxdb-Version", ""))
    databases = await probe.get("/query", {"q": "SHOW DATABASES"})
    probe.authenticated_check("query", databases, _influxql_databases)


async def _probe_flux(probe: _Probe) -> None:
    if not probe.check("reachable", await probe.get("/health"), _influxdb_health):
        return
    buckets = await probe.get("/api/v2/buckets", {"limit": "1"})
    probe.authenticated_check("query", buckets, _influxdb_buckets)


async def _probe_loki(probe: _Probe) -> None:
    probe.check("reachable", await probe.get("/ready"), _expect_success)


async def _probe_elasticsearch(probe: _Probe) -> None:
    health = await probe.get("/_cluster/health")
    if probe.check("reachable", health, _expect_success):
        probe.check("cluster", health, _elasticsearch_cluster)


async def _probe_graphite(probe: _Probe) -> None:
    query = {"target": "constantLine(1)", "format": "json", "from": "-1min"}
    render = await probe.get("/render", query)
    if probe.check("reachable", render, _expect_success):
        probe.check("query", render, _graphite_series)


async def _probe_generic(probe: _Probe) -> None:
    probe.check("reachable", await probe.get(""), _below_500)


_ProbeFunction = Callable[[_Probe], Awaitable[None]]
_PROBES_BY_TYPE: dict[str, _ProbeFunction] = {
    "prometheus": _probe_prometheus,
    "loki": _probe_loki,
    "elasticsearch": _probe_elasticsearch,
    "graphite": _probe_graphite,
}


def _probe_for(source: DataSource) -> _ProbeFunction:
    """The probe for `source`'s type; InfluxDB's two HTTP APIs need different ones."""
    language = influx_query_language(source)
    if language is InfluxQueryLanguage.INFLUXQL:
        return _probe_influxql
    if language is InfluxQueryLanguage.FLUX:
        return _probe_flux
    # Everything else, influxdb SQL included (it speaks Flight, not HTTP), gets the generic probe.
    return _PROBES_BY_TYPE.get(source.type, _probe_generic)


# --------------------------------------------------------------------------------------------
# Judges: what a reply means, per check


def _judged(reply: _Reply, judge: _Judge) -> _Verdict:
    try:
        return judge(reply)
    except UnusableAnswer as exc:
        return _Verdict(False, f"answer is not usable JSON: {exc}")


def _expect_success(reply: _Reply) -> _Verdict:
    if reply.succeeded:
        return _Verdict(True)
    return _Verdict(False, _failure_detail(reply))


def _below_500(reply: _Reply) -> _Verdict:
    passed = reply.status is not None and reply.status < 500
    return _Verdict(passed, "" if passed else _failure_detail(reply))


def _prometheus_answer(reply: _Reply) -> _Verdict:
    if not reply.succeeded:
        return _expect_success(reply)
    result = _dig(reply.json(), "data", "result")
    if isinstance(result, list) and len(result) == 2 and result[1] == "2":
        return _Verdict(True, "1+1 = 2")
    return _Verdict(False, "1+1 did not come back as 2")


def _prometheus_build(reply: _Reply) -> tuple[str, str]:
    """(version, revision) from buildinfo; empty when the upstream does not say (not a failure)."""
    if not reply.succeeded:
        return "", ""
    try:
        data = _dig(reply.json(), "data")
    except UnusableAnswer:
        return "", ""
    version, revision = _dig(data, "version"), _dig(data, "revision")
    return (
        version if isinstance(version, str) else "",
        revision if isinstance(revision, str) else "",
    )


def _influxql_databases(reply: _Reply) -> _Verdict:
    if not reply.succeeded:
        return _expect_success(reply)
    results = _dig(reply.json(), "results")
    if not isinstance(results, list) or not results or not isinstance(results[0], dict):
        return _Verdict(False, "SHOW DATABASES got no InfluxQL result")
    error = results[0].get("error")
    if isinstance(error, str):
        return _Verdict(False, f"SHOW DATABASES failed: {error}")
    series = results[0].get("series")
    first_series = series[0] if isinstance(series, list) and series else None
    names = _dig(first_series, "values")
    count = len(names) if isinstance(names, list) else 0  # no "values" key when there are none
    return _Verdict(True, f"SHOW DATABASES listed {_plural(count, 'database')}")


def _influxdb_health(reply: _Reply) -> _Verdict:
    """InfluxDB's /health: its own HealthCheck (200 or 503), passed through as a nested check."""
    upstream = _upstream_health_check(reply.json())
    if upstream is None:
        if not reply.succeeded:
            return _expect_success(reply)
        return _Verdict(False, "the answer is not an InfluxDB HealthCheck")
    said = upstream.get("message", upstream["status"])
    return _Verdict(
        passed=reply.succeeded and upstream["status"] == "pass",
        detail=f"{upstream['name']}: {said}",
        nested=upstream,
        version=upstream.get("version", ""),
        commit=upstream.get("commit", ""),
    )


def _influxdb_buckets(reply: _Reply) -> _Verdict:
    if not reply.succeeded:
        return _expect_success(reply)
    if isinstance(_dig(reply.json(), "buckets"), list):
        return _Verdict(True, "buckets listed")
    return _Verdict(False, "the answer has no bucket list")


def _elasticsearch_cluster(reply: _Reply) -> _Verdict:
    health = reply.json()
    status = _dig(health, "status")
    if status not in ("green", "yellow", "red"):
        return _Verdict(False, "the answer is not an Elasticsearch cluster health")
    name = _dig(health, "cluster_name")
    detail = f"cluster {name!r} is {status}" if isinstance(name, str) else f"cluster is {status}"
    unassigned = _dig(health, "unassigned_shards")
    if isinstance(unassigned, int) and unassigned > 0:
        detail += f", {_plural(unassigned, 'unassigned shard')}"
    return _Verdict(status != "red", detail)


def _graphite_series(reply: _Reply) -> _Verdict:
    series = reply.json()
    first = series[0] if isinstance(series, list) and series else None
    points = _dig(first, "datapoints")
    if isinstance(points, list) and points:
        return _Verdict(True, f"constantLine(1) returned {_plural(len(points), 'point')}")
    return _Verdict(False, "constantLine(1) returned no data")


def _failure_detail(reply: _Reply) -> str:
    if reply.status is not None and 300 <= reply.status < 400:
        return "a redirect, which probes do not follow"
    reason = _upstream_reason(reply)
    return f"upstream says: {reason}" if reason else ""


def _upstream_reason(reply: _Reply) -> str:
    """The upstream's own explanation of an error, if it gave one in a readable form.

    Raw upstream text: the caller redacts it before shortening, so a secret is never cut in half
    (which would leave its first part showing)."""
    try:
        body = reply.json()
    except UnusableAnswer:
        return ""
    if isinstance(body, dict):
        for key in ("error", "message"):
            value = body.get(key)
            if isinstance(value, dict):  # Elasticsearch: {"error": {"reason": ...}}
                value = value.get("reason")
            if isinstance(value, str) and value.strip():
                return value
        return ""
    if reply.headers.get("Content-Type", "").startswith("text/plain"):
        text = reply.body.decode("utf-8", "replace").strip()
        return text.splitlines()[0] if text else ""
    return ""  # HTML error pages and the like say nothing a message can use


def _upstream_health_check(value: Any, depth: int = 0) -> HealthCheck | None:
    """The schema's fields of an upstream HealthCheck (recursive, bounded), or None if not one."""
    if not isinstance(value, dict):
        return None
    name, status = value.get("name"), value.get("status")
    if not isinstance(name, str) or status not in ("pass", "fail"):
        return None
    check: HealthCheck = {"name": name, "status": status}
    for key in ("message", "version", "commit"):
        if isinstance(value.get(key), str):
            check[key] = value[key]
    nested = value.get("checks")
    if isinstance(nested, list) and depth < MAX_NESTED_DEPTH:
        items = (_upstream_health_check(item, depth + 1) for item in nested[:MAX_NESTED_CHECKS])
        check["checks"] = [item for item in items if item is not None]
    return check


# --------------------------------------------------------------------------------------------
# Small helpers


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) >= MAX_BODY_BYTES:
            break  # enough to judge by; an honest health answer is far smaller
    return bytes(body[:MAX_BODY_BYTES])


def _base_url(url: str) -> URL | None:
    """The source URL without credentials, query or fragment; None unless absolute http(s)."""
    try:
        parsed = URL(url)
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return None
    return url_without_userinfo(parsed).with_query(None).with_fragment(None)


def _join_path(base: str, path: str) -> str:
    return (base.rstrip("/") + path) or "/"


def _dig(value: Any, *keys: str) -> Any:
    """`value[k1][k2]…` through dicts; None as soon as a step is not a dict with that key."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _shorten(text: str) -> str:
    one_line = " ".join(text.split())
    if len(one_line) <= MAX_UPSTREAM_TEXT:
        return one_line
    return one_line[: MAX_UPSTREAM_TEXT - 1] + "…"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _elapsed(started: float) -> str:
    seconds = time.perf_counter() - started
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


__all__ = ["HealthCheck", "probe_source"]

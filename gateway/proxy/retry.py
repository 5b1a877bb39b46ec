"""When a failed try of a proxied request may be sent again, to the next target of its source.

A retry goes to another target (a replica), at most `jsonData.retry.attempts` times (default 1),
and only when it is safe:

1. nothing of the response reached the client: the try failed before its response head
   (connect error, reset, timeout waiting for the head), or it answered 5xx, which is then
   discarded instead of relayed;
2. the body can be sent again: none, or one read whole (up to `REPLAY_BODY_LIMIT`); a streamed
   body is gone once its bytes left;
3. sending it twice cannot do harm (`replayable`): GET, HEAD and OPTIONS, and the read-only POSTs
   Grafana sends — Prometheus `api/v1/query`, `query_range`, `series`, `labels`,
   `query_exemplars`; Loki's `loki/api/v1/query`, `query_range`, `labels`, `label/…/values`,
   `series`; InfluxDB `query` whose statements are all SELECT (without INTO) or SHOW (`q` from
   the query string or a form body, for any method); `api/v2/query` (Flux) unless it calls
   `to()`/`wideTo()` or imports a package that sends (http, sql, mqtt, notification endpoints).
   Writes are never sent to a second target.

The pool's own retry (a stale keep-alive connection, gateway/proxy/upstream.py) is separate: it
resends to the same target, once, and only what the upstream cannot have acted on.

`jsonData.retry.perTryTimeout` (seconds) bounds each try's wait for the response head, the only
try of a write included: a frozen replica (accepts connections, never answers) costs a request
at most that long before the next target answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from gateway.proxy.http1 import RequestBody
from gateway.proxy.policy import PROMETHEUS_ROUTES, ROUTES_BY_TYPE, UpstreamPath
from gateway.registry.rules import RETRY, RETRY_ATTEMPTS, RETRY_PER_TRY_TIMEOUT

# Bodies a retry-eligible request keeps so that it can be sent again (forward.py reads bodies
# of at most this size whole).
REPLAY_BODY_LIMIT = 64 * 1024
DEFAULT_ATTEMPTS = 1

_PROMETHEUS_TYPES = frozenset(
    source_type for source_type, routes in ROUTES_BY_TYPE.items() if routes is PROMETHEUS_ROUTES
)
_PROMETHEUS_READS = frozenset(
    {
        "api/v1/query",
        "api/v1/query_range",
        "api/v1/series",
        "api/v1/labels",
        "api/v1/query_exemplars",
    }
)
_LOKI_READS = frozenset(
    {
        "loki/api/v1/query",
        "loki/api/v1/query_range",
        "loki/api/v1/labels",
        "loki/api/v1/series",
    }
)
_LOKI_LABEL_VALUES = re.compile(r"loki/api/v1/label/[^/]+/values")
_FORM = b"application/x-www-form-urlencoded"
# InfluxQL: every statement (split at every `;`, even one inside a string: a false split only
# makes a query ineligible) must start with SELECT or SHOW, and none may hold INTO anywhere.
_READ_STATEMENT = re.compile(r"\s*(?:select|show)\b", re.IGNORECASE)
_INTO = re.compile(r"\binto\b", re.IGNORECASE)
# Flux that writes or sends: to(), experimental.to(), wideTo(), or a package that sends.
_FLUX_SENDS = re.compile(
    rb"(?:\b|wide)to\s*\(|\bimport\s*\\?\"(?:[^\"\\]*/)?"
    rb"(?:http|sql|mqtt|kafka|slack|pagerduty|opsgenie|sensu|telegram|discord|teams|victorops"
    rb"|zenoss|servicenow|bigpanda|pushbullet|webexteams|alerta)\\?\"",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A source's `jsonData.retry`. Read tolerantly: the writers validate it (registry/rules.py),
    and an invalid stored value falls back to its default."""

    attempts: int = DEFAULT_ATTEMPTS
    per_try_timeout: float | None = None  # None: the source's response timeout

    @classmethod
    def of(cls, json_data: Mapping[str, Any]) -> RetryPolicy:
        raw = json_data.get(RETRY)
        if not isinstance(raw, Mapping):
            return cls()
        attempts = raw.get(RETRY_ATTEMPTS)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            attempts = DEFAULT_ATTEMPTS
        timeout = raw.get(RETRY_PER_TRY_TIMEOUT)
        per_try: float | None = None
        if (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and math.isfinite(timeout)
            and timeout > 0
        ):
            per_try = float(timeout)
        return cls(attempts, per_try)


def replayable(
    source_type: str,
    method: str,
    path: UpstreamPath,
    body: RequestBody,
    content_type: bytes | None,
) -> bool:
    """Whether this request may be sent to a second target (rules 2 and 3 above)."""
    if body is not None and not isinstance(body, bytes):
        return False  # streamed: its bytes are gone once sent
    if method in ("HEAD", "OPTIONS"):
        return True
    clean = path.path.clean
    if source_type == "influxdb" and clean == "query":
        return _influxql_reads_only(method, path.query, body, content_type)
    if method == "GET":
        return True
    if method != "POST":
        return False
    if source_type in _PROMETHEUS_TYPES:
        return clean in _PROMETHEUS_READS
    if source_type == "loki":
        return clean in _LOKI_READS or _LOKI_LABEL_VALUES.fullmatch(clean) is not None
    if source_type == "influxdb" and clean == "api/v2/query":
        return body is not None and _FLUX_SENDS.search(body) is None
    return False


def _influxql_reads_only(
    method: str, query: str, body: bytes | None, content_type: bytes | None
) -> bool:
    """InfluxDB 1.x `/query`: `q` from the query string and from a form body (InfluxDB reads
    either); every one must only read."""
    texts = [value for key, value in parse_qsl(query, keep_blank_values=True) if key == "q"]
    if body:
        if content_type is None or content_type.split(b";")[0].strip().lower() != _FORM:
            return False  # a body we cannot read (multipart) may carry the statements
        form = body.decode("utf-8", "replace")
        texts += [value for key, value in parse_qsl(form, keep_blank_values=True) if key == "q"]
    if not texts:
        return method == "GET"  # nothing to run; a POST without q is not one Grafana sends
    return all(_reads_only(text) for text in texts)


def _reads_only(influxql: str) -> bool:
    if _INTO.search(influxql):
        return False
    statements = [part for part in influxql.split(";") if part.strip()]
    return bool(statements) and all(_READ_STATEMENT.match(part) for part in statements)

"""Which requests the spool takes, and a source's bounds: pure functions of the source, no I/O.

A request is a spooled write when it is a POST of an `influxdb` source to InfluxDB's write API —
`write` (1.x) or `api/v2/write` (2.x) — whichever route carried it (the passthrough `/write`,
or `/api/datasources/proxy/uid/{uid}/write`), and the source's `jsonData.writeBuffer` does not
turn the spool off (it is on by default). Its bounds are `writeBuffer.maxBytes` and `maxAge`,
else the settings `spool.max_bytes` and `spool.max_age`; how long a write sent straight to its
upstream waits for the answer before it is spooled instead is `writeBuffer.forwardTimeout`,
else `spool.forward_timeout`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gateway.registry.models import DataSource
from gateway.registry.rules import (
    WRITE_BUFFER,
    WRITE_BUFFER_ENABLED,
    WRITE_BUFFER_FORWARD_TIMEOUT,
    WRITE_BUFFER_MAX_AGE,
    WRITE_BUFFER_MAX_BYTES,
    WRITE_MIRROR,
)
from gateway.spool.models import WritePath

# Below influxdb-client's own timeout (10 s), so its writer hears 204 from the spool rather than
# giving up on a frozen upstream; above what a loaded influxd takes to answer a 5,000-line batch
# (over 4 s measured with 16 writers on a busy 2-core machine: each such answer spooled a write
# that influxd had applied, and it was applied again on replay).
DEFAULT_FORWARD_TIMEOUT = 8.0
# The remainder (decoded, no slashes around it) of each write API, and the path it replays on.
_WRITE_PATHS = {"write": WritePath.V1, "api/v2/write": WritePath.V2}
# Never kept in the spool file: InfluxDB 1.x's credentials (here the gateway's token) and the
# gateway's own parameters; the shipper sends the source's credentials instead.
_DROPPED_PARAMS = frozenset({"u", "p", "source", "auth_token", "token"})


@dataclass(frozen=True, slots=True)
class WriteBuffer:
    """A source's spool settings."""

    max_bytes: int
    max_age: float
    mirror: bool  # every write goes to every target (jsonData.writeMirror with replicas)
    # Seconds a write sent straight to its target may take to be answered (connect, send,
    # answer) before it is given up on and queued: a frozen upstream must not hold the writer
    # for the whole response timeout, which may be longer than the writer's own.
    forward_timeout: float = DEFAULT_FORWARD_TIMEOUT


def write_path(source: DataSource, method: str, clean_path: str) -> WritePath | None:
    """The write API this request uses, when it is a write the spool may take."""
    if source.type != "influxdb" or method != "POST":
        return None
    return _WRITE_PATHS.get(clean_path)


def write_buffer(
    source: DataSource,
    default_max_bytes: int,
    default_max_age: float,
    default_forward_timeout: float = DEFAULT_FORWARD_TIMEOUT,
) -> WriteBuffer | None:
    """The source's spool settings; None when its spool is off (or it is not InfluxDB)."""
    if source.type != "influxdb":
        return None
    raw = source.json_data.get(WRITE_BUFFER)
    settings: Mapping[str, object] = raw if isinstance(raw, Mapping) else {}
    if settings.get(WRITE_BUFFER_ENABLED) is False:
        return None
    max_bytes = settings.get(WRITE_BUFFER_MAX_BYTES)
    max_age = settings.get(WRITE_BUFFER_MAX_AGE)
    forward_timeout = settings.get(WRITE_BUFFER_FORWARD_TIMEOUT)
    return WriteBuffer(
        max_bytes=max_bytes
        if isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes > 0
        else default_max_bytes,
        max_age=_seconds(max_age, default_max_age),
        mirror=source.json_data.get(WRITE_MIRROR) is True and len(source.target_urls) > 1,
        forward_timeout=_seconds(forward_timeout, default_forward_timeout),
    )


def write_params(query: str) -> dict[str, str]:
    """The write parameters of a query string (db, rp, precision, consistency, org, bucket,
    ...), without credentials: what the spool keeps and the shipper sends again."""
    return {
        name: value
        for name, value in parse_qsl(query, keep_blank_values=True)
        if name not in _DROPPED_PARAMS
    }


def _seconds(value: object, default: float) -> float:
    """A positive number of seconds from jsonData, else `default` (checked at save already)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return default

"""Per-query results and the `/api/ds/query` answer, as Grafana writes them.

Each result is a `backend.DataResponse`; the SDK writes it (backend/json.go,
`writeDataResponseJSON`) as `error` and `errorSource` when it failed, then `status`, then
`frames` when it has any (a failed query may still carry frames: Prometheus' does, with the
executed query in their meta). The answer is `{"results": {refId: ...}}` with refIds sorted.

The HTTP status (grafana/grafana pkg/api/ds_query.go, `toJsonStreamingResponse`): 200 when no
query failed, 400 as soon as any did, whether some others succeeded (partial failure) or
none did (total failure). A body Grafana cannot use at all is a 400 of its own before any query
runs (`QueryRequestError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum

import orjson

from gateway.query.frames import Frame, frame_json


class ErrorSource(Enum):
    """Who a failure is on: the data source plugin (here, the gateway) or the upstream."""

    PLUGIN = "plugin"
    DOWNSTREAM = "downstream"


@dataclass(slots=True)
class QueryResult:
    frames: list[Frame] | None = field(default_factory=list)
    status: int = 200
    error: str | None = None
    error_source: ErrorSource | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def query_failed(
    message: str, *, status: int = 400, source: ErrorSource = ErrorSource.PLUGIN
) -> QueryResult:
    """A result with no frames: the query never produced any."""
    return QueryResult(frames=None, status=status, error=message, error_source=source)


def response_status(results: Mapping[str, QueryResult]) -> int:
    """Grafana's toJsonStreamingResponse: 400 if any query failed, else 200."""
    return 400 if any(result.failed for result in results.values()) else 200


def iter_result_json(ref_id: str, result: QueryResult) -> Iterator[bytes]:
    """One result as JSON chunks, with its refId stamped on every frame (Grafana's frames name
    the query they answer). Frames are serialized one at a time, as the chunks are taken."""
    head: dict[str, object] = {}
    if result.error is not None:
        head["error"] = result.error
        head["errorSource"] = result.error_source.value if result.error_source else ""
    head["status"] = result.status
    if result.frames is None:
        yield orjson.dumps(head)
        return
    yield orjson.dumps(head)[:-1] + b',"frames":['
    for index, frame in enumerate(result.frames):
        if not frame.ref_id:
            frame.ref_id = ref_id
        yield (b"," if index else b"") + frame_json(frame)
    yield b"]}"


def iter_results_json(results: Mapping[str, QueryResult]) -> Iterator[bytes]:
    """The whole answer as chunks, refIds sorted: a route can stream them as they come, so a
    large answer is held as one frame's JSON at a time, never as one tree or one string."""
    yield b'{"results":{'
    for index, ref_id in enumerate(sorted(results)):
        yield (b"," if index else b"") + orjson.dumps(ref_id) + b":"
        yield from iter_result_json(ref_id, results[ref_id])
    yield b"}}"


def results_json(results: Mapping[str, QueryResult]) -> bytes:
    """The whole answer in one piece (joined once, at its exact size)."""
    return b"".join(iter_results_json(results))

"""The API fuzzed from its own description (gateway/api/openapi.yaml) with schemathesis.

A live gateway (the shared `client` fixture: the app behind the front server, real SQLite) is
sent requests generated from each operation's description, valid ones and invalid ones, with a
fixed seed (`derandomize`) and a bounded number of examples per operation, as each of: the
admin token, an editor of another org, a viewer, and no token. Every answer must:

- not be a 5xx, except the two 503s InfluxDB's contract has (below);
- conform to the description: a documented status, its content type, its body schema;
- come within a second;
- leave the registry (sources, orgs, tokens) as it was when it is a 4xx.

The cases are sent with a `requests` session of our own rather than `case.call`: schemathesis
counts its pool's connections through urllib3 internals that urllib3-future (which
grafana-client's niquests installs in urllib3's place) does not have. `requests` blocks: the
cases run in a worker thread while the test's event loop serves the gateway, and the registry
is read on that loop between calls.

Not fuzzed: the proxied operations (tag `proxy`). They pass the request to the source's
upstream by design, so what they answer is the upstream's and their bodies are not ours to
describe; tests/proxy/ covers them on both carriers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from aiohttp import web
from pytest_aiohttp import AiohttpServer
from schemathesis.checks import CheckFunction
from schemathesis.core import NotSet
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.openapi import load_description
from gateway.config import Settings
from gateway.keys import STORE
from gateway.registry.models import DEFAULT_ORG_ID, DataSourceSpec
from tests.conftest import ADMIN_TOKEN, Headers, MakeToken
from tests.types import AppClient

# Examples per operation, per generation mode (valid, invalid), per caller.
EXAMPLES = 6
MAX_SECONDS = 1.0
# A source's health and a self source's buckets answer 503 by InfluxDB's contract: the source
# fails its check, or the org has no default InfluxDB source for the self source to stand for.
ALLOWED_5XX = {
    ("GET", "/api/v2/sources/{source_id}/health"): {503},
    ("GET", "/api/v2/sources/{source_id}/buckets"): {503},
}
SAMPLED_METHODS = frozenset({"GET", "POST", "DELETE"})
CHECKS: list[CheckFunction] = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# --- the upstream every registered source points at -----------------------------------------


def _upstream() -> web.Application:
    """Answers what the health probes, bucket listings and /api/ds/query ask Prometheus and
    InfluxDB (1.x and 2.x) for, quickly and successfully."""

    def json_answer(body: object) -> web.Response:
        return web.json_response(body)

    async def influx_query(request: web.Request) -> web.Response:
        statement = request.query.get("q", "")
        if "RETENTION" in statement.upper():
            columns = ["name", "duration", "shardGroupDuration", "replicaN", "default"]
            values: list[list[object]] = [["autogen", "0s", "168h0m0s", 1, True]]
        else:
            columns, values = ["name"], [["telegraf"]]
        series = [{"name": "databases", "columns": columns, "values": values}]
        return json_answer({"results": [{"statement_id": 0, "series": series}]})

    async def ping(request: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Influxdb-Version": "1.8.10"})

    async def influx_health(request: web.Request) -> web.Response:
        return json_answer({"name": "influxdb", "status": "pass", "message": "ready"})

    async def buckets(request: web.Request) -> web.Response:
        bucket = {"id": "0000000000000001", "name": "b", "retentionRules": []}
        return json_answer({"links": {"self": "/api/v2/buckets"}, "buckets": [bucket]})

    async def prometheus(request: web.Request) -> web.Response:
        if request.path.endswith("buildinfo"):
            return json_answer({"status": "success", "data": {"version": "2.45.0"}})
        kind = "matrix" if request.path.endswith("query_range") else "vector"
        return json_answer({"status": "success", "data": {"resultType": kind, "result": []}})

    async def anything(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/query", influx_query)
    app.router.add_post("/query", influx_query)
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", influx_health)
    app.router.add_get("/api/v2/buckets", buckets)
    app.router.add_route("*", "/api/v1/{rest:.*}", prometheus)
    app.router.add_route("*", "/{rest:.*}", anything)
    return app


@pytest.fixture
async def upstream_url(aiohttp_server: AiohttpServer) -> str:
    server = await aiohttp_server(_upstream())
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def settings(settings: Settings, upstream_url: str) -> Settings:
    """Sources may only point at the upstream: a fuzzed URL elsewhere is refused when saved,
    so no probe, listing or query waits on an address that never answers."""
    host_port = upstream_url.removeprefix("http://")
    return dataclasses.replace(settings, proxy_allowed_hosts=(host_port,))


async def _seed(client: AppClient, upstream_url: str) -> None:
    """A source of each kind the APIs show, in the admin's org, for the fuzzed ids to find."""
    store = client.app[STORE]
    for spec in (
        DataSourceSpec(
            name="Prom", type="prometheus", access="proxy", url=upstream_url, uid="prom"
        ),
        DataSourceSpec(
            name="Influx1",
            type="influxdb",
            access="proxy",
            url=upstream_url,
            uid="influx1",
            is_default=True,
            json_data={"version": "InfluxQL"},
            database="telegraf",
        ),
        DataSourceSpec(
            name="Influx2",
            type="influxdb",
            access="proxy",
            url=upstream_url,
            uid="influx2",
            json_data={"version": "Flux", "organization": "o", "defaultBucket": "b"},
        ),
        DataSourceSpec(
            name="Self",
            type="influxdb",
            access="proxy",
            url="",
            uid="self",
            json_data={"influxSourceType": "self"},
        ),
    ):
        await store.create_source(DEFAULT_ORG_ID, spec)


# What schemathesis generates cases from, and the cases: of any operation.
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]


# --- the fuzz ---------------------------------------------------------------------------------


@dataclass
class Findings:
    """What went wrong, one line each (the run goes on: no shrinking, a bounded time)."""

    lines: list[str] = field(default_factory=list)
    calls: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    slowest: float = 0.0

    def add(self, case: Case, status: int | None, problem: str) -> None:
        request = f"{case.method} {case.formatted_path}"
        body = case.body if not isinstance(case.body, bytes) else case.body[:200]
        shown = "" if isinstance(body, NotSet) else json.dumps(body, default=repr)[:300]
        self.lines.append(f"{request} -> {status}: {problem} (query={case.query} body={shown})")


def fuzzed_operations() -> Iterator[Operation]:
    schema = schemathesis.openapi.from_dict(load_description())
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the description is checked valid in tests/api/
            raise result.err()
        operation = result.ok()
        if "proxy" in operation.definition.raw.get("tags", []):
            continue
        # The health routes take every method and run one handler for all: three of them
        # (one without a body, two with) stand for the rest.
        if operation.path.endswith("/health") and operation.method.upper() not in SAMPLED_METHODS:
            continue
        yield operation


@dataclass(frozen=True)
class Target:
    """Where the cases go and as whom, and how to read the registry between them."""

    base_url: str
    upstream_url: str
    headers: Headers
    registry: Callable[[], object]


def run_fuzz(target: Target, findings: Findings) -> None:
    """Every fuzzed operation, `EXAMPLES` valid and invalid cases each (runs in a thread)."""
    for operation in fuzzed_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, target, findings)


def _fuzz_operation(
    operation: Operation, mode: GenerationMode, target: Target, findings: Findings
) -> None:
    strategy = operation.as_strategy(generation_mode=mode)

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.given(case=strategy)
    def fuzz(case: Case) -> None:
        if mode is GenerationMode.POSITIVE:
            _point_at_upstream(case, target.upstream_url)
        before = target.registry()
        started = time.perf_counter()
        request = case.as_transport_kwargs(base_url=target.base_url, headers=dict(target.headers))
        response = session.request(**request, timeout=10, allow_redirects=False)
        elapsed = time.perf_counter() - started
        findings.calls += 1
        findings.statuses[(f"{case.method} {operation.path}", response.status_code)] += 1
        findings.slowest = max(findings.slowest, elapsed)
        status = response.status_code
        key = (case.method.upper(), operation.path)
        if status >= 500 and status not in ALLOWED_5XX.get(key, set()):
            findings.add(case, status, f"server error: {response.text[:200]}")
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                findings.add(case, status, f"{failure.title}: {failure.message[:300]}")
        if 400 <= status < 500 and target.registry() != before:
            findings.add(case, status, "a 4xx answer changed the registry")
        if elapsed >= MAX_SECONDS:
            # The machine is shared: a slow answer counts when the same request is slow again
            # (a handler that is slow is slow every time; a descheduled process is not).
            started = time.perf_counter()
            session.request(**request, timeout=10, allow_redirects=False)
            again = time.perf_counter() - started
            if again >= MAX_SECONDS:
                findings.add(case, status, f"slow: {elapsed:.2f} s, then {again:.2f} s")

    with requests.Session() as session:
        try:
            fuzz()
        except hypothesis.errors.Unsatisfiable:
            # An operation with nothing to make invalid (no parameters, no body) has no invalid
            # cases; any other operation must have both kinds.
            if mode is not GenerationMode.NEGATIVE or _has_parameters(operation):
                raise


def _point_at_upstream(case: Case, upstream_url: str) -> None:
    """Half the valid bodies' `url`s (those of even length) become the upstream's, the one URL
    the SSRF policy allows, so that creates and updates succeed as often as they are refused."""
    body = case.body
    url = body.get("url") if isinstance(body, dict) else None
    if isinstance(body, dict) and isinstance(url, str) and len(url) % 2 == 0:
        body["url"] = upstream_url


def _has_parameters(operation: Operation) -> bool:
    return any(True for _ in operation.iter_parameters())


@pytest.mark.parametrize("caller", ["admin", "editor", "viewer", "anonymous"])
@pytest.mark.timeout(150)
async def test_api_fuzz(
    client: AppClient, make_token: MakeToken, upstream_url: str, caller: str
) -> None:
    await _seed(client, upstream_url)
    if caller == "admin":
        headers: Headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    elif caller == "editor":  # of another org: Main Org.'s sources are not its to see
        headers = await make_token(role="editor", org="Fuzz Org")
    elif caller == "viewer":
        headers = await make_token(role="viewer")
    else:
        headers = {}
    store = client.app[STORE]
    loop = asyncio.get_running_loop()

    async def read_registry() -> object:
        sources = await store.list_sources()
        return (
            [repr(source) for source in sources],
            [repr(org) for org in await store.list_orgs()],
            [repr(token) for token in await store.list_tokens()],
        )

    def registry() -> object:
        return asyncio.run_coroutine_threadsafe(read_registry(), loop).result(timeout=10)

    findings = Findings()
    base_url = str(client.make_url("")).rstrip("/")
    started = time.perf_counter()
    target = Target(base_url, upstream_url, headers, registry)
    await asyncio.to_thread(run_fuzz, target, findings)
    seconds = time.perf_counter() - started
    print(f"{caller}: {findings.calls} calls in {seconds:.1f} s, slowest {findings.slowest:.3f} s")
    for (operation, status), count in sorted(findings.statuses.items()):
        print(f"  {operation} {status}: {count}")
    assert findings.calls > 100
    assert not findings.lines, "\n".join(findings.lines[:40])

"""InfluxDB upstreams for tests: a real 1.x (Debian's `influxd`) and a faithful fake of 2.x.

`influxdb` (session-scoped): a real InfluxDB 1.x. Use it like this::

    async def test_something(influxdb: InfluxDB1) -> None:
        db = await influxdb.create_database(retention_policies={"week": "7d"})
        await influxdb.create_user("reader", "pw")           # a non-admin user
        ... point a data source at influxdb.url with influxdb.admin_user/admin_password ...

What it starts, once per pytest process (so once per xdist worker, each with its own process, free
loopback ports and temp dirs — nothing is shared between workers):

- `influxd run` with a generated config: meta, data and wal dirs under the session's tmp dir,
  HTTP and the RPC `bind-address` on free 127.0.0.1 ports, usage reporting, monitoring, subscriber
  and continuous queries off, HTTP and query logging off (influxd's output goes to
  `InfluxDB1.log_path`, quoted in the error if it fails to start).
- **Authentication is enabled.** An admin user (`admin_user` / `admin_password`) is created at
  start; `/ping` answers 204 without credentials, `/query` needs them (401 otherwise, or for a
  wrong password). `shared_secret` is the `[http] shared-secret`, so a client may also send
  `Authorization: Bearer <JWT signed HS512 with it, claims username + exp>`.
- InfluxDB 1.6 has `/ping` and `/query` but no `/health` (that came in 1.8).

Tests share the server within a worker, so each should create its own databases and users: the
helpers pick unique names unless given one. The process is killed at the end of the session. When
`influxd` is not installed the fixture skips, naming the Debian package (`influxdb`).

`fake_influxdb2` (per test): an aiohttp server that answers like InfluxDB 2.7 on `/health`,
`/ping` and `/api/v2/buckets` (token auth, `limit`/`offset` paging, `org` filter, InfluxDB's
error bodies). It records what it receives in `FakeInfluxDB2.requests`; see that class.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from pytest_aiohttp import AiohttpServer

START_TIMEOUT_SECONDS = 20.0
START_ATTEMPTS = 3  # a free port may be taken by someone else between probing and binding


@dataclass(frozen=True)
class InfluxDB1:
    """A running influxd 1.x: where it listens, its admin credentials, and small helpers."""

    url: str
    admin_user: str
    admin_password: str
    shared_secret: str
    log_path: Path

    async def query(
        self, statement: str, *, user: str | None = None, password: str | None = None
    ) -> dict[str, Any]:
        """POST one InfluxQL statement (or several, `;`-separated) as admin or the given user;
        raise if the answer is not 200 or any statement failed."""
        auth = aiohttp.encode_basic_auth(user or self.admin_user, password or self.admin_password)
        async with (
            aiohttp.ClientSession(headers={"Authorization": auth}) as session,
            session.post(f"{self.url}/query", data={"q": statement}) as response,
        ):
            body: dict[str, Any] = await response.json()
        _raise_for_errors(statement, response.status, body)
        return body

    async def create_database(
        self, name: str | None = None, retention_policies: Mapping[str, str] | None = None
    ) -> str:
        """Create a database (with its default `autogen` policy) and extra retention policies
        given as name → InfluxQL duration (`"7d"`, `"INF"`); returns the database name."""
        name = name or f"db_{secrets.token_hex(4)}"
        statements = [f"CREATE DATABASE {quote_ident(name)}"]
        statements += [
            f"CREATE RETENTION POLICY {quote_ident(rp)} ON {quote_ident(name)} "
            f"DURATION {duration} REPLICATION 1"
            for rp, duration in (retention_policies or {}).items()
        ]
        await self.query("; ".join(statements))
        return name

    async def create_user(self, name: str, password: str, *, admin: bool = False) -> str:
        privileges = " WITH ALL PRIVILEGES" if admin else ""
        await self.query(
            f"CREATE USER {quote_ident(name)} WITH PASSWORD {quote_string(password)}{privileges}"
        )
        return name


def quote_ident(name: str) -> str:
    """InfluxQL's QuoteIdent: a double-quoted identifier."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def quote_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """A running influxd 1.x with auth enabled; see this module's docstring."""
    binary = shutil.which("influxd") or next(
        (path for path in ("/usr/bin/influxd", "/usr/sbin/influxd") if Path(path).exists()), None
    )
    if binary is None:
        pytest.skip("influxd is not installed (Debian package `influxdb`)")
    root = tmp_path_factory.mktemp("influxdb")
    problem = ""
    for attempt in range(START_ATTEMPTS):
        process, server = _start(binary, root / f"run{attempt}")
        try:
            # Creating the admin also proves /ping was answered by this process: a foreign
            # server that grabbed the port would already have users and refuse it.
            problem = _wait_until_up(process, server) or _create_admin(server)
        except BaseException:
            _stop(process)
            raise
        if not problem:
            break
        _stop(process)
    else:
        pytest.fail(f"influxd did not start: {problem}")
    try:
        yield server
    finally:
        _stop(process)


def _start(binary: str, root: Path) -> tuple[subprocess.Popen[bytes], InfluxDB1]:
    http_port, rpc_port = _free_port(), _free_port()
    for sub in ("meta", "data", "wal"):
        (root / sub).mkdir(parents=True)
    shared_secret = secrets.token_hex(16)
    config = root / "influxdb.conf"
    config.write_text(
        f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root / "meta"}"
  logging-enabled = false
[data]
  dir = "{root / "data"}"
  wal-dir = "{root / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[shard-precreation]
  enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = true
  log-enabled = false
  pprof-enabled = false
  shared-secret = "{shared_secret}"
[logging]
  level = "warn"
  suppress-logo = true
"""
    )
    log_path = root / "influxd.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "run", "-config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = InfluxDB1(
        url=f"http://127.0.0.1:{http_port}",
        admin_user="admin",
        admin_password=secrets.token_hex(12),
        shared_secret=shared_secret,
        log_path=log_path,
    )
    return process, server


def _wait_until_up(process: subprocess.Popen[bytes], server: InfluxDB1) -> str:
    """'' once /ping answers 204; else why not (the process died, or the time ran out)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}: {server.log_path.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{server.url}/ping", timeout=1) as response:
                if response.status == 204 and process.poll() is None:
                    return ""
        except OSError:
            pass
        time.sleep(0.05)
    return f"/ping did not answer in {START_TIMEOUT_SECONDS:g} s: {server.log_path.read_text()}"


def _create_admin(server: InfluxDB1) -> str:
    """'' once the admin user exists; else why not. With auth enabled and no users yet, influxd
    accepts exactly this statement without credentials."""
    statement = (
        f"CREATE USER {quote_ident(server.admin_user)} WITH PASSWORD "
        f"{quote_string(server.admin_password)} WITH ALL PRIVILEGES"
    )
    data = urllib.parse.urlencode({"q": statement}).encode()
    try:
        with urllib.request.urlopen(f"{server.url}/query", data=data, timeout=10) as response:
            _raise_for_errors("CREATE USER admin", response.status, json.load(response))
    except (OSError, RuntimeError) as exc:  # urllib's HTTPError and URLError are OSErrors
        return f"creating the admin user failed: {exc}"
    return ""


def _raise_for_errors(statement: str, status: int, body: dict[str, Any]) -> None:
    errors = [body["error"]] if "error" in body else []
    errors += [result["error"] for result in body.get("results", []) if "error" in result]
    if status != 200 or errors:
        raise RuntimeError(f"influxd refused {statement!r}: HTTP {status} {errors}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def closed_port_url() -> str:
    """A loopback URL where nothing listens (an upstream that is down): connecting is refused."""
    return f"http://127.0.0.1:{_free_port()}"


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- a fake InfluxDB 2.x -----------------------------------------------------------------------

FAKE_V2_VERSION = "v2.7.12"
FAKE_V2_COMMIT = "ec9dcde5d6"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path_qs: str
    authorization: str | None


@dataclass
class FakeInfluxDB2:
    """An InfluxDB 2.x double for `/health`, `/ping` and `/api/v2/buckets`.

    `token` is the one API token it accepts (`Authorization: Token <t>` or `Bearer <t>`); `org` is
    its one organization. `buckets` starts with the two system buckets a fresh 2.x has; use
    `add_bucket`. Set `buckets_answer = (status, body bytes)` to make `/api/v2/buckets` answer
    that instead, `buckets_delay` (seconds) to make it slow, and `healthy = False` to make
    `/health` fail with 503.
    """

    url: str
    token: str
    org: str = "acme"
    org_id: str = "9a1b2c3d4e5f6071"
    healthy: bool = True
    buckets: list[dict[str, Any]] = field(default_factory=list)
    buckets_answer: tuple[int, bytes] | None = None
    buckets_delay: float = 0.0
    requests: list[SeenRequest] = field(default_factory=list)

    def add_bucket(
        self, name: str, every_seconds: int = 0, *, bucket_type: str = "user"
    ) -> dict[str, Any]:
        bucket_id = f"{len(self.buckets) + 1:016x}"
        bucket = {
            "id": bucket_id,
            "orgID": self.org_id,
            "type": bucket_type,
            "name": name,
            "retentionRules": [
                {
                    "type": "expire",
                    "everySeconds": every_seconds,
                    "shardGroupDurationSeconds": 604800 if every_seconds == 0 else 86400,
                }
            ],
            "createdAt": "2024-05-17T10:00:00.123456789Z",
            "updatedAt": "2024-05-17T10:00:00.123456789Z",
            "links": {
                "labels": f"/api/v2/buckets/{bucket_id}/labels",
                "members": f"/api/v2/buckets/{bucket_id}/members",
                "org": f"/api/v2/orgs/{self.org_id}",
                "owners": f"/api/v2/buckets/{bucket_id}/owners",
                "self": f"/api/v2/buckets/{bucket_id}",
                "write": f"/api/v2/write?org={self.org_id}&bucket={bucket_id}",
            },
            "labels": [],
        }
        self.buckets.append(bucket)
        return bucket

    def bucket_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if r.path_qs.startswith("/api/v2/buckets")]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._ping)
        app.router.add_get("/api/v2/buckets", self._list_buckets)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        seen = SeenRequest(request.method, request.path_qs, request.headers.get("Authorization"))
        self.requests.append(seen)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "name": "influxdb",
            "message": "ready for queries and writes" if self.healthy else "storage unavailable",
            "status": "pass" if self.healthy else "fail",
            "checks": [],
            "version": FAKE_V2_VERSION,
            "commit": FAKE_V2_COMMIT,
        }
        return web.json_response(body, status=200 if self.healthy else 503)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204, headers={"X-Influxdb-Version": FAKE_V2_VERSION, "X-Influxdb-Build": "OSS"}
        )

    async def _list_buckets(self, request: web.Request) -> web.Response:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() not in ("token", "bearer") or credential != self.token:
            return _influx_error(401, "unauthorized", "unauthorized access")
        await asyncio.sleep(self.buckets_delay)
        if self.buckets_answer is not None:
            status, raw = self.buckets_answer
            return web.Response(status=status, body=raw, content_type="application/json")
        try:
            limit = int(request.query.get("limit", "20"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _influx_error(400, "invalid", "limit and offset must be integers")
        if not 1 <= limit <= 100:
            return _influx_error(400, "invalid", "limit must be between 1 and 100")
        org = request.query.get("org")
        if org is not None and org != self.org:
            return _influx_error(404, "not found", f'organization name "{org}" not found')
        page = self.buckets[offset : offset + limit]
        links = {"self": f"/api/v2/buckets?descending=false&limit={limit}&offset={offset}"}
        if len(page) >= limit:
            links["next"] = (
                f"/api/v2/buckets?descending=false&limit={limit}&offset={offset + limit}"
            )
        return web.json_response({"links": links, "buckets": page})


def _influx_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"code": code, "message": message}, status=status, headers={"X-Platform-Error-Code": code}
    )


@pytest.fixture
async def fake_influxdb2(aiohttp_server: AiohttpServer) -> FakeInfluxDB2:
    """A running `FakeInfluxDB2` with its two system buckets; stopped after the test."""
    fake = FakeInfluxDB2(url="", token=f"v2-token-{secrets.token_hex(8)}")
    fake.add_bucket("_monitoring", 604800, bucket_type="system")
    fake.add_bucket("_tasks", 259200, bucket_type="system")
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


__all__ = [
    "FakeInfluxDB2",
    "InfluxDB1",
    "SeenRequest",
    "closed_port_url",
    "fake_influxdb2",
    "influxdb",
    "quote_ident",
    "quote_string",
]

#!/usr/bin/env python3
"""Cluster benchmark (issue 20): several gateways on one PostgreSQL registry.

Everything runs on 127.0.0.1 from one temporary directory and is stopped on exit:

- PostgreSQL (Debian's `postgresql`): `initdb` + `pg_ctl` on a free port, as `nobody` when run as
  root, durability off (fsync, synchronous_commit) as in the tests;
- origin: nginx (1 worker, no log) answering every request with its own path (`return 200
  $uri`), so a proxied answer shows which URL the gateway's cache had for the source;
- gateways: `python -m gateway serve`, one process each, at log level warning.

Phases:
1. **propagation**: gateways A and B on PostgreSQL, one source. `--changes` times: A's API
   changes the source's URL to `<origin>/v<n>` (PUT), and B's proxy is polled until it answers
   `/v<n>`, i.e. until B's cache has the change. Reports p50/p90/p99/max from sending the PUT,
   and from A's 200;
2. **list**: `--sources` sources (over 100 orgs), stored through each backend (SQLite file,
   PostgreSQL), then `Registry.list_sources()` of all of them timed `--list-rounds` times
   (what a cache reload costs: decryption of secrets and the row mapping included), and
   `GET /api/datasources` (org 1's hundredth) through a gateway on each;
3. **proxied req/s**: a gateway on SQLite and one on PostgreSQL, one source each; wrk against
   each in turn, `--rounds` times, interleaved: req/s per run, and the ratio PostgreSQL/SQLite
   within each round (the proxied path reads only the in-memory cache, so it should be ~1).

    .venv/bin/python bench/cluster.py                       # ~1.5 min
    .venv/bin/python bench/cluster.py --changes 200 --rounds 2 --duration 3

Needs the gateway's virtualenv (asyncpg, aiohttp), PostgreSQL, nginx and wrk from Debian
(`apt-get install postgresql nginx wrk`); without them it says what is missing and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.registry.interface import Registry, RegistryBackend  # noqa: E402
from gateway.registry.models import DataSourceSpec  # noqa: E402
from gateway.registry.postgres import PostgresBackend  # noqa: E402
from gateway.registry.secrets import SecretBox  # noqa: E402
from gateway.registry.sqlite import SqliteBackend  # noqa: E402

ADMIN_TOKEN = "dsg_bench-cluster-admin"
SECRET_KEY = "bench-cluster-secret-key"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Every process started, stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, command: Sequence[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- PostgreSQL -----------------------------------------------------------------------------


def pg_binaries() -> Path | None:
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if all((Path(directory) / name).exists() for name in ("initdb", "pg_ctl")):
            return Path(directory)
    return None


@contextlib.contextmanager
def postgresql(workdir: Path) -> Iterator[str]:
    binaries = pg_binaries()
    assert binaries is not None
    root = workdir / "pg"
    root.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("nobody")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "nobody", "--"]
    data = root / "data"
    subprocess.run(
        [*prefix, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--no-sync"], check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
    )
    subprocess.run(
        [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o",
         options, "-w", "start"], check=True, capture_output=True, cwd=root,
    )  # fmt: skip
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, cwd=root, check=False,
        )  # fmt: skip


# --- origin and gateways --------------------------------------------------------------------


def start_origin(workdir: Path, processes: Processes) -> str:
    port = free_port()
    root = workdir / "nginx"
    root.mkdir()
    (root / "nginx.conf").write_text(
        f"""daemon off; master_process off; worker_processes 1; pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000;
  client_body_temp_path {root}; proxy_temp_path {root}; fastcgi_temp_path {root};
  uwsgi_temp_path {root}; scgi_temp_path {root};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "$uri"; }} }}
}}
"""
    )
    processes.start(["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)], root / "out.log")
    wait_port(port)
    return f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s, saying so: its figures are taken already, but a gateway
    that does not stop in time is a bug (one with 10,000 sources once took over 60 s)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        print(f"gateway {proc.pid} still running 10 s after SIGTERM: killed", file=sys.stderr)
        proc.kill()
        proc.wait()
    else:
        if proc.returncode != 0:
            print(f"gateway {proc.pid} exited {proc.returncode} after SIGTERM", file=sys.stderr)


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


class Gateway:
    def __init__(self, name: str, workdir: Path, database_url: str | None, processes: Processes):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = workdir / name
        data.mkdir()
        (data / "provisioning").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_DATA_DIR=str(data),
            GATEWAY_PORT=str(self.port),
            GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN,
            GATEWAY_SECRET_KEY=SECRET_KEY,
            GATEWAY_LOG_LEVEL="warning",
            GATEWAY_LOG_FORMAT="json",
            GATEWAY_HEALTH_INTERVAL="300",
            GATEWAY_PROVISIONING_PATH=str(data / "provisioning"),
        )
        if database_url:
            env["GATEWAY_DATABASE_URL"] = database_url
        self.proc = processes.start(
            [sys.executable, "-m", "gateway", "serve"], data / "gateway.log", env=env, cwd=REPO
        )

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/ready") as response:
                    if response.status == 200:
                        return
            if self.proc.poll() is not None:
                raise SystemExit(f"gateway {self.name} exited with {self.proc.returncode}")
            await asyncio.sleep(0.1)
        raise SystemExit(f"gateway {self.name} not ready after {timeout} s")

    async def create_source(self, http: aiohttp.ClientSession, uid: str, url: str) -> None:
        body = {"name": uid, "uid": uid, "type": "prometheus", "access": "proxy", "url": url}
        async with http.post(f"{self.url}/api/datasources", json=body, headers=AUTH) as response:
            assert response.status == 200, await response.text()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- phase 1: propagation -------------------------------------------------------------------


async def propagation(args: argparse.Namespace, workdir: Path, database_url: str,
                      origin: str, processes: Processes) -> None:  # fmt: skip
    a = Gateway("a", workdir, database_url, processes)
    b = Gateway("b", workdir, database_url, processes)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await a.ready(http)
        await b.ready(http)
        await a.create_source(http, "moving", f"{origin}/v0")
        proxied = f"{b.url}/api/datasources/proxy/uid/moving/"
        since_send: list[float] = []
        since_ack: list[float] = []
        polls = 0
        for n in range(1, args.changes + 1):
            body = {"name": "moving", "type": "prometheus", "access": "proxy",
                    "url": f"{origin}/v{n}"}  # fmt: skip
            expected = f"/v{n}"
            sent = time.perf_counter()
            async with http.put(
                f"{a.url}/api/datasources/uid/moving", json=body, headers=AUTH
            ) as response:
                assert response.status == 200, await response.text()
            acked = time.perf_counter()
            while True:
                polls += 1
                async with http.get(proxied, headers=AUTH) as response:
                    text = await response.text()
                if text == expected:
                    break
                if time.perf_counter() - sent > 10:
                    raise SystemExit(f"change {n} not on B after 10 s (B says {text!r})")
            seen = time.perf_counter()
            since_send.append(seen - sent)
            since_ack.append(seen - acked)
    print(f"\n## Propagation A -> B over {args.changes} changes (ms; {polls} polls of B)")
    print("| measured from | p50 | p90 | p99 | max | within 1 s |")
    print("|---|---|---|---|---|---|")
    for label, values in (("sending the PUT to A", since_send), ("A's 200", since_ack)):
        within = sum(1 for v in values if v < 1.0)
        p50, p90, p99 = (ms(percentile(values, q)) for q in (0.5, 0.9, 0.99))
        worst = ms(max(values))
        print(f"| {label} | {p50} | {p90} | {p99} | {worst} | {within}/{len(values)} |")


# --- phase 2: list of many sources ---------------------------------------------------------


ORGS = 100  # the sources are spread over orgs: a create checks names within its org


async def fill(registry: Registry, count: int) -> None:
    orgs = [1] + [(await registry.create_org(f"org-{n}")).id for n in range(1, ORGS)]
    async with registry.batch() as batch:
        for n in range(count):
            spec = DataSourceSpec(
                name=f"source-{n:05d}",
                uid=f"s{n:05d}",
                type="prometheus",
                access="proxy",
                url=f"http://127.0.0.1:9/{n}",
                json_data={"httpMethod": "POST", "n": n},
                secure_json_data={"basicAuthPassword": f"pw-{n}"},
            )
            await batch.create_source(orgs[n % ORGS], spec)


async def time_list(registry: Registry, rounds: int) -> tuple[float, list[float], list[float]]:
    """The first listing's wall time (cold: every row mapped), then each later listing's wall
    and CPU time (this process's; the machine is shared, and CPU time is what is ours)."""
    started = time.perf_counter()
    assert await registry.list_sources()
    cold = time.perf_counter() - started
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        await registry.list_sources()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return cold, walls, cpus


async def listing(args: argparse.Namespace, workdir: Path, database_url: str,
                  processes: Processes) -> None:  # fmt: skip
    import asyncpg

    list_db = "list_bench"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"CREATE DATABASE {list_db}")
    await conn.close()
    pg_url = database_url.rsplit("/", 1)[0] + f"/{list_db}"
    sqlite_dir = workdir / "list-sqlite"
    sqlite_dir.mkdir()
    backends: list[tuple[str, RegistryBackend, str | None]] = [
        ("SQLite", SqliteBackend(sqlite_dir / "gateway.db"), f"sqlite:///{sqlite_dir}/gateway.db"),
        ("PostgreSQL", PostgresBackend(pg_url), pg_url),
    ]
    print(f"\n## List of {args.sources:,} sources, {ORGS} orgs ({args.list_rounds} rounds, ms)")
    print(
        "| backend | first list_sources | then p50 wall | min-max wall | p50 CPU | "
        "GET /api/datasources p50 | min-max |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, backend, url in backends:
        async with backend.open(SecretBox(SECRET_KEY)) as registry:
            await fill(registry, args.sources)
            cold, walls, cpus = await time_list(registry, args.list_rounds)
        gateway = Gateway(f"api-{name.lower()}", workdir, url, processes)
        api_times = []
        async with aiohttp.ClientSession() as http:
            await gateway.ready(http)
            for _ in range(args.list_rounds):
                started = time.perf_counter()
                async with http.get(f"{gateway.url}/api/datasources", headers=AUTH) as response:
                    listed = await response.read()
                api_times.append(time.perf_counter() - started)
                assert response.status == 200
            # The admin token's org (1) holds 1/ORGS of them.
            assert len(json.loads(listed)) == len(range(0, args.sources, ORGS))
        stop(gateway.proc)
        print(
            f"| {name} | {ms(cold)} | {ms(statistics.median(walls))} | "
            f"{ms(min(walls))}-{ms(max(walls))} | {ms(statistics.median(cpus))} | "
            f"{ms(statistics.median(api_times))} | {ms(min(api_times))}-{ms(max(api_times))} |"
        )


# --- phase 3: proxied req/s -----------------------------------------------------------------

WRK_SUMMARY = re.compile(r"Requests/sec:\s+([\d.]+)")


def wrk(url: str, args: argparse.Namespace) -> tuple[float, str]:
    command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
               "-H", f"Authorization: Bearer {ADMIN_TOKEN}", url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = WRK_SUMMARY.search(out)
    assert match, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(match.group(1)), (errors.group(1) if errors else "0")


async def throughput(args: argparse.Namespace, workdir: Path, database_url: str,
                     origin: str, processes: Processes) -> None:  # fmt: skip
    import asyncpg

    conn = await asyncpg.connect(database_url)
    await conn.execute("CREATE DATABASE rps_bench")
    await conn.close()
    pg_url = database_url.rsplit("/", 1)[0] + "/rps_bench"
    gateways = {
        "SQLite": Gateway("rps-sqlite", workdir, None, processes),
        "PostgreSQL": Gateway("rps-postgres", workdir, pg_url, processes),
    }
    async with aiohttp.ClientSession() as http:
        for gateway in gateways.values():
            await gateway.ready(http)
            await gateway.create_source(http, "origin", origin)
    rows = []
    for round_no in range(1, args.rounds + 1):
        results = {}
        order = list(gateways) if round_no % 2 else list(reversed(gateways))
        for name in order:
            url = f"{gateways[name].url}/api/datasources/proxy/uid/origin/q"
            wrk(url, argparse.Namespace(connections=args.connections, duration=1))  # warm-up
            results[name] = wrk(url, args)
        rows.append((round_no, results))
    print(f"\n## Proxied req/s, wrk -t1 -c{args.connections} -d{args.duration}s, "
          f"{args.rounds} rounds interleaved")  # fmt: skip
    print("| round | SQLite req/s | PostgreSQL req/s | PostgreSQL / SQLite | non-2xx |")
    print("|---|---|---|---|---|")
    ratios = []
    for round_no, results in rows:
        sqlite_rps, sqlite_bad = results["SQLite"]
        pg_rps, pg_bad = results["PostgreSQL"]
        ratios.append(pg_rps / sqlite_rps)
        print(f"| {round_no} | {sqlite_rps:,.0f} | {pg_rps:,.0f} | {pg_rps / sqlite_rps:.2f} "
              f"| {sqlite_bad} / {pg_bad} |")  # fmt: skip
    print(f"ratio PostgreSQL/SQLite: median {statistics.median(ratios):.2f}, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}")  # fmt: skip


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=1000, help="propagation: changes")
    parser.add_argument("--sources", type=int, default=10_000, help="list: sources stored")
    parser.add_argument("--list-rounds", type=int, default=10, help="list: timed calls")
    parser.add_argument("--rounds", type=int, default=3, help="req/s: wrk rounds per backend")
    parser.add_argument("--duration", type=int, default=5, help="req/s: seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="req/s: wrk connections")
    parser.add_argument("--phases", default="propagation,list,rps", help="which phases to run")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, workdir: Path, processes: Processes) -> None:
    phases = set(args.phases.split(","))
    with postgresql(workdir) as database_url:
        origin = start_origin(workdir, processes)
        print(f"PostgreSQL at {database_url}, origin at {origin}; "
              f"{os.cpu_count()} CPUs, shared machine: compare within one run")  # fmt: skip
        if "propagation" in phases:
            await propagation(args, workdir, database_url, origin, processes)
        if "list" in phases:
            await listing(args, workdir, database_url, processes)
        if "rps" in phases:
            await throughput(args, workdir, database_url, origin, processes)
        processes.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [name for name in ("nginx", "wrk") if shutil.which(name) is None]
    if pg_binaries() is None:
        missing.append("postgresql")
    if missing:
        print(f"bench/cluster.py needs {', '.join(missing)} (apt-get install {' '.join(missing)})")
        return 0
    # SIGTERM ends the run as Ctrl-C does: PostgreSQL, nginx and the gateways are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    processes = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        asyncio.run(run(args, workdir, processes))
    finally:
        processes.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

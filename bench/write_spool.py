#!/usr/bin/env python3
"""Write spool end to end (issue 16): InfluxDB 1.x writes through the real gateway process while
InfluxDB is up, down, back, and across a `kill -9` of the gateway.

Everything runs on 127.0.0.1 from one temporary directory, on free ports, and is stopped when the
script ends (also on Ctrl-C, SIGTERM or an error):

- Debian's InfluxDB 1.x (`/usr/bin/influxd`): generated config (as tests/services/influxdb.py),
  auth on, an admin user, HTTP and query logs off;
- the gateway, `python -m gateway serve` (one process, its own data dir, registry and spool), with
  one `influxdb` source created through Grafana's API with the admin token (InfluxDB's admin user
  and password as the source's credentials); health probes every 1 s (timeout 1 s);
  `spool.max_bytes` raised to 8 GiB so that the spooling phase measures speed, not the bound;
- the writers: aiohttp in this process, each sending 5,000-line Telegraf-like batches (cpu, mem,
  disk, net from 200 hosts; every line its own nanosecond timestamp; ~0.5 MB) one after the other
  (closed loop) with `POST /write?db=…&precision=ns` — to the gateway with the gateway token
  (`Authorization: Token …`; the org's default InfluxDB source receives it), or to influxd
  directly with Basic auth. A batch counts when it is answered 204 ("acknowledged").

Phases, for each writer concurrency of `--writers` (1, 4, 16):

1. pass-through: influxd up; direct, then through the gateway, the same writers and batches
   (a pool of distinct batches cycled through) for `--duration` s each; acknowledged points/s;
   target: the gateway within 10 % of direct.
2. spooling: influxd killed (SIGKILL); the gateway answers 204 once the batch is in its spool;
   acknowledged points/s; target >= 200,000 points/s with one gateway process.
3. replay: influxd started again (same data); the replay rate from the gateway's
   `gateway_spool_replayed_points_total` sampled every 0.25 s until `gateway_spool_queued_entries`
   is 0; target >= 5 x a 20,000 points/s ingest = 100,000 points/s.
4. durability: a fresh database; influxd killed; one writer at a steady `--ingest-rate` (20,000
   points/s = 4 batches/s) for `--outage` s, every batch with timestamps of its own; `kill -9` of
   the gateway half-way, then the gateway started again (same data dir and port) — writes meanwhile
   fail and are not counted; at the end influxd is started, the spool drains, and influxd is asked
   per batch how many of its points it holds (`SELECT count(seq) … GROUP BY time(1s)`): lost =
   acknowledged points missing (target 0); duplicates = points influxd received (its own
   `SHOW STATS` `write.pointReq` since its restart) minus distinct points stored (harmless:
   InfluxDB overwrites an identical point).

    .venv/bin/python bench/write_spool.py            # 10 s per measurement, 60 s outage: ~6 min
    .venv/bin/python bench/write_spool.py --quick    # 3 s (spooling 2 s), 15 s outage: ~2.3 min

Most of the time is the replay: 4 s of spooling per concurrency queues ~16 M points (~1.8 GB),
which influxd takes in at ~120,000 points/s.
    .venv/bin/python bench/write_spool.py --help

It is a benchmark, not a test: it exits 0 whatever the figures are (1 when it could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# bench/_processes.py: the script's own directory is on the path
from _processes import (
    HOST,
    BenchError,
    Processes,
    free_port,
    gateway_setup,
    post_source,
    run_bench,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
BASE_NS = 1_700_000_000 * 1_000_000_000  # 2023-11-14: the durability batches, one second each
POOL_BASE_NS = 1_690_000_000 * 1_000_000_000  # the pass-through / spooling pool, elsewhere
MEASUREMENTS = ("cpu", "mem", "disk", "net")
SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (?P<value>\S+)", re.M)
SPOOL_TARGET = 200_000.0
REPLAY_TARGET = 5 * 20_000.0
PASS_THROUGH_SLACK = 0.10


# --- processes ----------------------------------------------------------------------------------


def kill_9(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.kill()
    child.wait(timeout=10)  # reaped: the port is free for the restart


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (nan when it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Influx:
    """influxd 1.x on fixed ports with its own directory; can be killed and started again."""

    def __init__(self, binary: str, directory: Path, processes: Processes) -> None:
        self.binary = binary
        self.directory = directory
        self.processes = processes
        self.port = free_port()
        self.user = "admin"
        self.password = secrets.token_hex(12)
        self.child: subprocess.Popen[bytes] | None = None
        for sub in ("meta", "data", "wal"):
            (directory / sub).mkdir(parents=True)
        self.config = directory / "influxdb.conf"
        self.config.write_text(
            f"""\
reporting-disabled = true
bind-address = "{HOST}:{free_port()}"
[meta]
  dir = "{directory / "meta"}"
  logging-enabled = false
[data]
  dir = "{directory / "data"}"
  wal-dir = "{directory / "wal"}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "{HOST}:{self.port}"
  auth-enabled = true
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "influxd.log"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": aiohttp.encode_basic_auth(self.user, self.password)}

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.child = self.processes.start(
            [self.binary, "run", "-config", str(self.config)], self.log_path
        )
        await wait_ready(http, f"{self.url}/ping", self.child, "influxd", self.log_path)

    def kill(self) -> None:
        assert self.child is not None
        kill_9(self.child)

    async def create_admin(self, http: aiohttp.ClientSession) -> None:
        """With auth on and no users yet, influxd takes exactly this statement unauthenticated."""
        statement = f"CREATE USER {self.user} WITH PASSWORD '{self.password}' WITH ALL PRIVILEGES"
        async with http.post(f"{self.url}/query", data={"q": statement}) as response:
            if response.status != 200:
                raise BenchError(f"influxd: creating the admin: {await response.text()}")

    async def query(self, http: aiohttp.ClientSession, statement: str) -> list[dict[str, Any]]:
        """The series of the one statement's result (raises on any error)."""
        async with http.post(
            f"{self.url}/query",
            data={"q": statement, "epoch": "ns"},
            headers=self.auth,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as response:
            body: dict[str, Any] = await response.json(content_type=None)
        results = body.get("results", [{}])
        if response.status != 200 or "error" in body or "error" in results[0]:
            raise BenchError(f"influxd refused {statement!r}: {response.status} {body}")
        series: list[dict[str, Any]] = results[0].get("series", [])
        return series

    async def points_received(self, http: aiohttp.ClientSession) -> float:
        """influxd's `write.pointReq`: points in the writes it took since it started."""
        for one in await self.query(http, "SHOW STATS FOR 'write'"):
            columns: list[str] = one["columns"]
            if "pointReq" in columns:
                return float(one["values"][0][columns.index("pointReq")])
        return float("nan")


@dataclass
class Gateway:
    url: str
    token: str
    env: dict[str, str]
    log_path: Path
    python: str
    child: subprocess.Popen[bytes] | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def start(self, http: aiohttp.ClientSession, processes: Processes) -> None:
        self.child = processes.start(
            [self.python, "-m", "gateway", "serve"], self.log_path, env=self.env
        )
        await wait_ready(http, f"{self.url}/ready", self.child, "the gateway", self.log_path)

    def kill_9(self) -> None:
        assert self.child is not None
        kill_9(self.child)


def make_gateway(python: str, workdir: Path) -> Gateway:
    setup = gateway_setup(
        workdir,
        {
            "GATEWAY_HEALTH_INTERVAL": "1",
            "GATEWAY_HEALTH_TIMEOUT": "1",
            "GATEWAY_SPOOL_MAX_BYTES": str(8 << 30),
        },
    )
    return Gateway(setup.url, setup.token, setup.env, setup.directory / "gateway.log", python)


async def create_source(http: aiohttp.ClientSession, gateway: Gateway, influx: Influx) -> str:
    body = {
        "name": "bench-influx",
        "type": "influxdb",
        "access": "proxy",
        "url": influx.url,
        "database": "bench",
        "user": influx.user,
        "isDefault": True,
        "secureJsonData": {"password": influx.password},
        "jsonData": {"version": "InfluxQL"},
    }
    return await post_source(http, gateway.url, gateway.auth, body)


async def gateway_metrics(http: aiohttp.ClientSession, gateway: Gateway) -> dict[str, float]:
    """Each `gateway_spool_*` metric summed over its series; {} when /metrics cannot be read."""
    try:
        async with http.get(
            f"{gateway.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    sums: dict[str, float] = {}
    for match in SERIES.finditer(text):
        if match["name"].startswith("gateway_spool_"):
            sums[match["name"]] = sums.get(match["name"], 0.0) + float(match["value"])
    return sums


# --- writes -------------------------------------------------------------------------------------


def batch(seed: int, lines: int, stamp: int, seq: int) -> bytes:
    """Telegraf-like points: cpu, mem, disk and net from 200 hosts; line i at `stamp + i` ns.
    Every line also has `seq` (the batch number): one field all lines share, to count them."""
    rng = random.Random(seed)
    out = []
    for line in range(lines):
        host = f"host=web{rng.randrange(200):03d},region={rng.choice(('eu-west', 'us-east'))}"
        kind = line % 4
        if kind == 0:
            fields = (
                f"usage_user={rng.uniform(0, 100):.3f},usage_system={rng.uniform(0, 30):.3f},"
                f"usage_idle={rng.uniform(0, 100):.3f}"
            )
            tags = f"cpu,{host},cpu=cpu{rng.randrange(8)}"
        elif kind == 1:
            fields = f"used={rng.randrange(1 << 34)}i,used_percent={rng.uniform(0, 100):.2f}"
            tags = f"mem,{host}"
        elif kind == 2:
            fields = f"free={rng.randrange(1 << 40)}i,used_percent={rng.uniform(0, 100):.2f}"
            tags = f"disk,{host},path=/var,fstype=ext4"
        else:
            fields = f"bytes_recv={rng.randrange(1 << 40)}i,bytes_sent={rng.randrange(1 << 40)}i"
            tags = f"net,{host},interface=eth0"
        out.append(f"{tags} {fields},seq={seq}i {stamp + line}\n")
    return "".join(out).encode()


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str  # .../write
    headers: dict[str, str]


@dataclass
class Run:
    """One measurement: closed-loop writers for a while."""

    label: str
    writers: int
    lines: int
    seconds: float = 0.0
    acked: int = 0  # batches answered 204
    failed: dict[str, int] = field(default_factory=dict)  # "HTTP 503", "ClientConnectorError"…
    gateway_cpu: float = float("nan")  # the gateway process's CPU seconds meanwhile

    @property
    def points_per_second(self) -> float:
        return self.acked * self.lines / self.seconds if self.seconds else 0.0

    def fail(self, kind: str) -> None:
        self.failed[kind] = self.failed.get(kind, 0) + 1


async def post(
    http: aiohttp.ClientSession, endpoint: Endpoint, db: str, body: bytes
) -> tuple[int | None, str]:
    """(status, error kind or '')."""
    try:
        async with http.post(
            endpoint.url,
            params={"db": db, "precision": "ns"},
            data=body,
            headers=endpoint.headers,
        ) as response:
            await response.read()
            return response.status, "" if response.status == 204 else f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, type(exc).__name__


async def closed_loop(
    http: aiohttp.ClientSession,
    endpoint: Endpoint,
    db: str,
    pool: Sequence[bytes],
    writers: int,
    duration: float,
    lines: int,
    label: str,
    gateway_pid: int | None = None,
) -> Run:
    run = Run(label, writers, lines)
    cpu = cpu_seconds(gateway_pid)
    start = time.perf_counter()
    stop_at = start + duration

    async def writer(number: int) -> None:
        turn = number
        while time.perf_counter() < stop_at:
            status, kind = await post(http, endpoint, db, pool[turn % len(pool)])
            turn += writers
            if status == 204:
                run.acked += 1
            else:
                run.fail(kind)
                await asyncio.sleep(0.05)  # an error comes back at once: no busy loop

    await asyncio.gather(*(writer(number) for number in range(writers)))
    run.seconds = time.perf_counter() - start
    run.gateway_cpu = cpu_seconds(gateway_pid) - cpu
    return run


# --- report -------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def failures(run: Run) -> str:
    if not run.failed:
        return ""
    return " · not acknowledged: " + ", ".join(f"{k} x {n}" for k, n in sorted(run.failed.items()))


def print_run(run: Run, extra: str = "") -> None:
    share = run.gateway_cpu / run.seconds if run.seconds else float("nan")
    cpu = "" if share != share else f", gateway CPU {share:.0%} of a core"
    print(
        f"  {run.label:<28} {run.writers:>2} writer{'s' if run.writers > 1 else ' '}  "
        f"{run.points_per_second:>11,.0f} points/s  ({run.acked:,} batches in "
        f"{run.seconds:.1f} s){cpu}{extra}{failures(run)}",
        flush=True,
    )


# --- phases -------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    http: aiohttp.ClientSession
    processes: Processes
    influx: Influx
    gateway: Gateway
    pool: list[bytes]
    summary: list[str] = field(default_factory=list)

    @property
    def gateway_pid(self) -> int | None:
        return self.gateway.child.pid if self.gateway.child else None

    @property
    def direct(self) -> Endpoint:
        return Endpoint("direct", f"{self.influx.url}/write", self.influx.auth)

    @property
    def through(self) -> Endpoint:
        headers = {"Authorization": f"Token {self.gateway.token}"}
        return Endpoint("gateway", f"{self.gateway.url}/write", headers)

    async def pass_through(self) -> None:
        args = self.args
        print(
            f"\n1. pass-through: influxd up, direct vs through the gateway, {args.rounds} "
            "round(s) per concurrency, which goes first alternating",
            flush=True,
        )
        # Warm-up (not reported): influxd's first writes create its shard and series.
        await closed_loop(self.http, self.direct, "bench", self.pool, 4, 2.0, args.lines, "")
        for writers in args.writers:
            runs: dict[str, list[Run]] = {"direct": [], "gateway": []}
            for turn in range(args.rounds):
                order = (
                    (self.direct, self.through) if turn % 2 == 0 else (self.through, self.direct)
                )
                for endpoint in order:
                    label = (
                        "direct to influxd" if endpoint.name == "direct" else "through the gateway"
                    )
                    run = await closed_loop(
                        self.http, endpoint, "bench", self.pool, writers, args.duration,
                        args.lines, label, self.gateway_pid,
                    )  # fmt: skip
                    print_run(run)
                    runs[endpoint.name].append(run)
            direct, through = (
                sum(r.acked for r in runs[name]) * args.lines / sum(r.seconds for r in runs[name])
                for name in ("direct", "gateway")
            )
            ratio = through / max(direct, 1.0)
            met = ratio >= 1 - PASS_THROUGH_SLACK
            line = (
                f"pass-through, {writers:>2} writers: {through:,.0f} vs {direct:,.0f} points/s "
                f"direct = {ratio:.0%} (target >= 90 %): {verdict(met)}"
            )
            print(f"  => {line}", flush=True)
            self.summary.append(line)
        # Pass-through measures the direct path only if no write took the spool's way (an
        # answer slower than forwardTimeout, or a failed try, queues it and what follows).
        metrics = await gateway_metrics(self.http, self.gateway)
        spooled = metrics.get("gateway_spool_appended_total", 0.0)
        print(f"  writes spooled during pass-through: {spooled:,.0f}", flush=True)

    async def spooling(self) -> None:
        print("\n2. spooling: influxd killed, the gateway acknowledges into its spool", flush=True)
        self.influx.kill()
        for writers in self.args.writers:
            run = await closed_loop(
                self.http, self.through, "bench", self.pool, writers, self.args.spool_duration,
                self.args.lines, "into the spool", self.gateway_pid,
            )  # fmt: skip
            met = run.points_per_second >= SPOOL_TARGET
            print_run(run, f" (target >= 200,000: {verdict(met)})")
            self.summary.append(
                f"spooling, {writers:>2} writers: {run.points_per_second:,.0f} points/s "
                f"(target >= 200,000): {verdict(met)}"
            )
        await asyncio.sleep(1.5)  # the queue gauges are refreshed about once a second
        metrics = await gateway_metrics(self.http, self.gateway)
        print(
            f"  spool now: {metrics.get('gateway_spool_queued_entries', 0):,.0f} writes, "
            f"{metrics.get('gateway_spool_queued_bytes', 0) / 1e6:,.0f} MB queued"
        )

    async def drain(
        self, timeout: float, restarted: float
    ) -> tuple[list[tuple[float, float]], float]:
        """Samples (seconds since `restarted`, replayed points) until nothing is queued, and the
        time it took."""
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + timeout
        while True:
            metrics = await gateway_metrics(self.http, self.gateway)
            now = time.monotonic() - restarted
            if metrics:
                samples.append((now, metrics.get("gateway_spool_replayed_points_total", 0.0)))
                if metrics.get("gateway_spool_queued_entries", 1.0) == 0:
                    return samples, now
            if time.monotonic() > deadline:
                raise BenchError(f"the spool did not drain within {timeout:g} s: {metrics}")
            await asyncio.sleep(0.25)

    async def replay(self) -> None:
        print("\n3. replay: influxd started again, the spool drains", flush=True)
        before = await gateway_metrics(self.http, self.gateway)
        queued = before.get("gateway_spool_queued_entries", 0.0)
        restarted = time.monotonic()
        await self.influx.start(self.http)
        up = time.monotonic() - restarted
        samples, drained = await self.drain(self.args.drain_timeout, restarted)
        first = next((s for s in samples if s[1] > samples[0][1]), None)
        points = samples[-1][1] - samples[0][1]
        if first is None or points <= 0:
            print(f"  nothing replayed (queued before: {queued:,.0f})")
            return
        # From the sample before the first delivery to the drained one.
        index = samples.index(first)
        t_from = samples[max(index - 1, 0)][0]
        rate = points / max(drained - t_from, 1e-9)
        overall = points / drained
        peak = max((b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples))
        met = rate >= REPLAY_TARGET
        print(
            f"  {queued:,.0f} writes = {points:,.0f} points replayed; influxd answering /ping "
            f"{up:.1f} s after its start, first delivery seen at {first[0]:.1f} s, spool empty "
            f"at {drained:.1f} s"
        )
        print(
            f"  replay rate {rate:,.0f} points/s from the first delivery (peak 0.25 s sample "
            f"{peak:,.0f}; {overall:,.0f} counting influxd's start-up) "
            f"(target >= 100,000: {verdict(met)})"
        )
        self.summary.append(f"replay: {rate:,.0f} points/s (target >= 100,000): {verdict(met)}")

    async def durability(self) -> None:
        args = self.args
        per_batch = args.lines
        batches_per_second = args.ingest_rate / per_batch
        print(
            f"\n4. durability: {args.outage:g} s outage, one writer at {args.ingest_rate:,.0f} "
            f"points/s ({batches_per_second:g} batches/s), kill -9 of the gateway at "
            f"{args.outage / 2:g} s",
            flush=True,
        )
        await self.influx.query(self.http, "CREATE DATABASE durability")
        self.influx.kill()
        acked: list[int] = []
        failed = Run("durability", 1, per_batch)
        stop = asyncio.Event()

        async def writer() -> None:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            number = 0
            while not stop.is_set():
                body = await asyncio.to_thread(
                    batch, 1_000_000 + number, per_batch, BASE_NS + number * 1_000_000_000, number
                )
                status, kind = await post(self.http, self.through, "durability", body)
                if status == 204:
                    acked.append(number)
                else:
                    failed.fail(kind)
                number += 1
                delay = t0 + number / batches_per_second - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)

        start = time.monotonic()
        task = asyncio.create_task(writer())
        try:
            await asyncio.sleep(args.outage / 2)
            self.gateway.kill_9()
            killed_at = time.monotonic() - start
            await asyncio.sleep(args.restart_delay)
            await self.gateway.start(self.http, self.processes)
            back_at = time.monotonic() - start
            await asyncio.sleep(max(0.0, args.outage - (time.monotonic() - start)))
        finally:
            stop.set()
            await task
        sent = len(acked) + sum(failed.failed.values())
        print(
            f"  {sent} batches sent: {len(acked)} acknowledged = {len(acked) * per_batch:,} "
            f"points; gateway killed at {killed_at:.1f} s, serving again at {back_at:.1f} s"
            f"{failures(failed)}",
            flush=True,
        )
        restarted = time.monotonic()
        await self.influx.start(self.http)
        _, drained = await self.drain(args.drain_timeout, restarted)
        print(f"  influxd started; spool empty {drained:.1f} s later")
        received = await self.influx.points_received(self.http)
        stored = await self.stored_per_batch(sent)
        lost = sum(max(0, per_batch - stored.get(number, 0)) for number in acked)
        acked_set = set(acked)
        extra = sum(count for number, count in stored.items() if number not in acked_set)
        total = sum(stored.values())
        duplicates = received - total
        met = lost == 0
        print(
            f"  influxd holds {total:,} points of the durability batches; lost acknowledged "
            f"points: {lost:,} (target 0: {verdict(met)})"
        )
        print(
            f"  duplicates: influxd received {received:,.0f} points since its restart = "
            f"{duplicates:,.0f} delivered more than once (harmless: overwritten); "
            f"{extra:,} points stored from writes not acknowledged (the gateway died "
            "after making them durable, before its 204)"
        )
        self.summary.append(
            f"durability ({args.outage:g} s outage, kill -9): lost {lost:,} of "
            f"{len(acked) * per_batch:,} acknowledged points (target 0): {verdict(met)}; "
            f"duplicates {duplicates:,.0f}"
        )

    async def stored_per_batch(self, batches: int) -> dict[int, int]:
        """Batch number -> points of it in influxd (batch n holds the second BASE + n)."""
        high = BASE_NS + (batches + 1) * 1_000_000_000
        statement = (
            f"SELECT count(seq) FROM {','.join(f'durability.autogen.{m}' for m in MEASUREMENTS)} "
            f"WHERE time >= {BASE_NS} AND time < {high} GROUP BY time(1s) fill(none)"
        )
        per_batch: dict[int, int] = {}
        for one in await self.influx.query(self.http, statement):
            for stamp, count in one["values"]:
                number = (int(stamp) - BASE_NS) // 1_000_000_000
                per_batch[number] = per_batch.get(number, 0) + int(count)
        return per_batch


async def run_all(args: argparse.Namespace, workdir: Path, processes: Processes) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    print(
        f"write spool benchmark: {args.lines:,}-line batches, writers "
        f"{', '.join(map(str, args.writers))}, {args.duration:g} s per measurement, "
        f"{args.outage:g} s outage; temp dir {workdir}",
        flush=True,
    )
    pool = [
        batch(seed, args.lines, POOL_BASE_NS + seed * 1_000_000_000, seed)
        for seed in range(args.pool)
    ]
    print(
        f"pool: {len(pool)} distinct batches of {len(pool[0]) / 1e3:,.0f} KB "
        f"({len(pool[0]) / args.lines:.0f} bytes a line)"
    )
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        influx = Influx(args.influxd, workdir / "influxd", processes)
        await influx.start(http)
        await influx.create_admin(http)
        await influx.query(http, "CREATE DATABASE bench")
        gateway = make_gateway(args.python, workdir)
        await gateway.start(http, processes)
        uid = await create_source(http, gateway, influx)
        assert gateway.child is not None
        print(
            f"influxd {influx.url}, gateway {gateway.url} (pid {gateway.child.pid}), source {uid}"
        )
        bench = Bench(args, http, processes, influx, gateway, pool)
        phases = {
            "pass-through": bench.pass_through,
            "spooling": bench.spooling,
            "replay": bench.replay,
            "durability": bench.durability,
        }
        for name, phase in phases.items():
            if name in args.phases:
                await phase()
        print("\nsummary:")
        for line in bench.summary:
            print(f"  {line}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 s measurements (spooling 2 s), 15 s outage"
    )
    parser.add_argument(
        "--writers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4, 16],
        help="writer concurrencies, comma-separated",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds per measurement (10; 3 --quick)"
    )
    parser.add_argument(
        "--outage", type=float, default=None, help="durability outage, seconds (60; 15 --quick)"
    )
    parser.add_argument(
        "--spool-duration",
        type=float,
        default=None,
        help="seconds per spooling measurement (4; 2 --quick): the backlog replay has to drain",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="pass-through rounds per concurrency (2; 1 --quick)",
    )
    parser.add_argument("--lines", type=int, default=5000, help="lines per batch")
    parser.add_argument("--pool", type=int, default=64, help="distinct batches writers cycle")
    parser.add_argument(
        "--ingest-rate", type=float, default=20_000.0, help="durability writer, points/s"
    )
    parser.add_argument(
        "--restart-delay", type=float, default=1.0, help="seconds the gateway stays dead"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds the spool may take to drain"
    )
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=["pass-through", "spooling", "replay", "durability"],
        help="which phases, comma-separated",
    )
    parser.add_argument(
        "--influxd", default=shutil.which("influxd") or "/usr/bin/influxd", help="influxd 1.x"
    )
    venv = ROOT / ".venv" / "bin" / "python"
    parser.add_argument(
        "--python",
        default=str(venv) if venv.exists() else sys.executable,
        help="interpreter that runs the gateway",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.spool_duration is None:
        args.spool_duration = 2.0 if args.quick else 4.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.outage is None:
        args.outage = 15.0 if args.quick else 60.0
    if args.outage < 2 * args.restart_delay + 2:
        parser.error("--outage is too short for a kill -9 and a restart of the gateway")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.access(args.influxd, os.X_OK):
        print("bench/write_spool.py needs influxd 1.x: apt-get install influxdb (or --influxd)")
        return 0
    processes = Processes()
    return run_bench(
        "gw-write-spool-bench-",
        lambda workdir: run_all(args, workdir, processes),
        keep=args.keep,
        cleanup=processes.stop_all,
    )


if __name__ == "__main__":
    sys.exit(main())

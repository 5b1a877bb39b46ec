#!/usr/bin/env python3
"""Failover benchmark (issue 15): three Prometheus replicas behind one source, one of them killed
or frozen under a steady open-loop load.

Everything runs on 127.0.0.1 from one temporary directory, on free ports, and is stopped when the
script ends (also on Ctrl-C, SIGTERM or an error):

- three Debian `prometheus` processes (`/usr/bin/prometheus`), each with its own port, config and
  TSDB directory, scraping nothing;
- the gateway, `python -m gateway serve` (one process, its own data dir and SQLite), with one
  Prometheus source created through Grafana's API: `url` = replica 1, `jsonData.replicaUrls` =
  [replica 2, replica 3], `jsonData.loadBalancing` = `--load-balancing`, `jsonData.retry` =
  {attempts: 2, perTryTimeout: 1};
- the client: aiohttp in this process, `GET /api/datasources/proxy/uid/<uid>/api/v1/query?query=up`
  at a steady `--rate` (open loop: request i is sent at i / rate whatever the earlier ones do;
  latency counts from that scheduled time) for `--duration` seconds.

Faults (`--fault`): `kill` sends SIGKILL to the victim replica (`--victim`, by default replica 1,
the primary, so that failover matters) at 1/3 of the run and starts it again on the same port
with the same data dir at 2/3; `stop` sends SIGSTOP at 1/3 and SIGCONT at 2/3. The default runs
both, one after the other, each on fresh processes.

Printed per fault: client errors (non-200 answers and exceptions; target 0), p50/p99 latency
before, during and after the fault, and where the requests went: the gateway's
`gateway_target_requests_total{source_uid, target, result}` and each replica's own
`prometheus_http_requests_total{handler="/api/v1/query"}`, both sampled every 0.5 s — from which
how long the victim kept receiving requests after the fault, and how soon after its restart it
got traffic again. A metric that is absent (a gateway without per-target counts) is reported as
such, not as zero.

    .venv/bin/python bench/failover.py                    # both faults, 60 s each: ~2.1 min
    .venv/bin/python bench/failover.py --quick            # both faults, 12 s each: ~30 s smoke test
    .venv/bin/python bench/failover.py --fault stop --load-balancing round_robin
    .venv/bin/python bench/failover.py --help

It is a benchmark, not a test: it exits 0 whatever the figures are (1 when it could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
QUERY_PATH = "api/v1/query?query=up"
PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1m
  evaluation_interval: 1m
scrape_configs: []
"""
Fault = Literal["kill", "stop"]
PHASES = ("before", "during", "after")
# One sample of a labelled series in Prometheus's text format: name{labels} value
SERIES = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)", re.M
)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
TARGET_REQUESTS = "gateway_target_requests_total"
SOURCE_COUNTERS = ("gateway_proxy_failovers_total", "gateway_target_ejections_total")
UPSTREAM_QUERIES = "prometheus_http_requests_total"
# The gateway's own health probe sends one `1+1` query per interval to a replica; more than this
# many queries in one sample is client traffic.
TRAFFIC_THRESHOLD = 3


# --- processes ----------------------------------------------------------------------------------


class Replica:
    """One Prometheus on a fixed port with its own directory; can be killed, frozen, restarted."""

    def __init__(self, number: int, directory: Path, binary: str, processes: Processes) -> None:
        self.number = number
        self.name = f"r{number}"
        self.directory = directory
        self.binary = binary
        self.processes = processes
        self.port = free_port()
        self.child: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True)
        (directory / "prometheus.yml").write_text(PROMETHEUS_CONFIG)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "prometheus.log"

    def start(self) -> None:
        """Start (or restart) on the same port with the same TSDB directory."""
        self.child = self.processes.start(
            [
                self.binary,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ],
            self.log_path,
            cwd=self.directory,
        )

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        assert self.child is not None
        await wait_ready(http, f"{self.url}/-/ready", self.child, self.name, self.log_path, timeout)

    def send(self, signum: signal.Signals) -> None:
        assert self.child is not None
        self.child.send_signal(signum)
        if signum == signal.SIGKILL:
            self.child.wait(timeout=10)  # reaped: the port is free for the restart


# --- the gateway --------------------------------------------------------------------------------


@dataclass
class Gateway:
    url: str
    token: str
    child: subprocess.Popen[bytes]
    log_path: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_gateway(python: str, workdir: Path, processes: Processes) -> Gateway:
    setup = gateway_setup(workdir, {})
    log_path = workdir / "gateway.log"
    child = processes.start(
        [python, "-m", "gateway", "serve"], log_path, env=setup.env, cwd=setup.directory
    )
    return Gateway(setup.url, setup.token, child, log_path)


async def create_source(
    http: aiohttp.ClientSession, gateway: Gateway, replicas: Sequence[Replica], balancing: str
) -> tuple[str, bool]:
    """The source's uid, and whether the API kept `jsonData.replicaUrls` as sent."""
    replica_urls = [replica.url for replica in replicas[1:]]
    body = {
        "name": "bench-failover",
        "type": "prometheus",
        "access": "proxy",
        "url": replicas[0].url,
        "jsonData": {
            "replicaUrls": replica_urls,
            "loadBalancing": balancing,
            "retry": {"attempts": 2, "perTryTimeout": 1},
        },
    }
    uid = await post_source(http, gateway.url, gateway.auth, body)
    async with http.get(f"{gateway.url}/api/datasources/uid/{uid}", headers=gateway.auth) as got:
        stored: dict[str, Any] = await got.json()
    kept = stored.get("jsonData", {}).get("replicaUrls") == replica_urls
    return uid, kept


async def first_answer(http: aiohttp.ClientSession, url: str, gateway: Gateway) -> None:
    """One proxied query answers 200 before the load starts (retried for a few seconds)."""
    deadline = time.monotonic() + 10
    last = ""
    while time.monotonic() < deadline:
        try:
            async with http.get(url, headers=gateway.auth) as response:
                body = await response.read()
                if response.status == 200 and b'"success"' in body:
                    return
                last = f"{response.status} {body[:200]!r}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    raise BenchError(f"no proxied answer through the gateway: {last}")


# --- load ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    scheduled: float  # seconds after the load started
    sent: float  # when the request task actually started (client lag = sent - scheduled)
    latency: float  # from `scheduled` to the end of the body, or to the error
    status: int | None
    error: str | None  # None for a 200; "HTTP 502", "TimeoutError", ...


async def one_request(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    t0: float,
    scheduled: float,
    answers: list[Answer],
) -> None:
    loop = asyncio.get_running_loop()
    sent = loop.time() - t0
    status: int | None = None
    error: str | None = None
    try:
        async with http.get(url, headers=headers) as response:
            status = response.status
            await response.read()
            if status != 200:
                error = f"HTTP {status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        error = type(exc).__name__
    answers.append(Answer(scheduled, sent, loop.time() - t0 - scheduled, status, error))


async def open_loop(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    t0: float,
    rate: float,
    duration: float,
    answers: list[Answer],
    drain: float,
) -> None:
    """Request i at t0 + i / rate, never waiting for earlier ones; then wait for stragglers."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    count = int(rate * duration)
    for i in range(count):
        scheduled = i / rate
        delay = t0 + scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one_request(http, url, headers, t0, scheduled, answers))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=drain)
    for task in list(in_flight):
        task.cancel()


# --- sampling -----------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds after the load started
    # (target label, result) -> tries; None when /metrics could not be read
    targets: dict[tuple[str, str], float] | None
    counters: dict[str, float]  # SOURCE_COUNTERS present for the source
    upstream: list[float | None]  # per replica: its /api/v1/query count; None when unreadable


def parse_series(text: str, names: Iterable[str]) -> list[tuple[str, dict[str, str], float]]:
    wanted = set(names)
    found = []
    for match in SERIES.finditer(text):
        if match["name"] in wanted:
            labels = dict(LABEL.findall(match["labels"]))
            found.append((match["name"], labels, float(match["value"])))
    return found


async def sample_gateway(
    http: aiohttp.ClientSession, gateway: Gateway, uid: str
) -> tuple[dict[tuple[str, str], float] | None, dict[str, float]]:
    try:
        async with http.get(
            f"{gateway.url}/metrics", timeout=aiohttp.ClientTimeout(total=2)
        ) as response:
            if response.status != 200:
                return None, {}
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None, {}
    targets: dict[tuple[str, str], float] = {}
    counters: dict[str, float] = {}
    for name, labels, value in parse_series(text, (TARGET_REQUESTS, *SOURCE_COUNTERS)):
        if labels.get("source_uid") != uid:
            continue
        if name == TARGET_REQUESTS:
            key = (labels.get("target", "?"), labels.get("result", "?"))
            targets[key] = targets.get(key, 0.0) + value
        else:
            counters[name] = counters.get(name, 0.0) + value
    return targets, counters


async def sample_replica(http: aiohttp.ClientSession, replica: Replica) -> float | None:
    try:
        async with http.get(
            f"{replica.url}/metrics", timeout=aiohttp.ClientTimeout(total=0.3)
        ) as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return None  # dead or frozen
    return sum(
        value
        for _, labels, value in parse_series(text, (UPSTREAM_QUERIES,))
        if labels.get("handler") == "/api/v1/query"
    )


async def sampler(
    gateway: Gateway,
    uid: str,
    replicas: Sequence[Replica],
    t0: float,
    every: float,
    samples: list[Sample],
) -> None:
    """Every `every` seconds until cancelled. Own session: never queued behind the load."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        tick = 0
        while True:
            at = loop.time() - t0
            from_gateway = asyncio.create_task(sample_gateway(http, gateway, uid))
            upstream = await asyncio.gather(*(sample_replica(http, r) for r in replicas))
            targets, counters = await from_gateway
            samples.append(Sample(at, targets, counters, upstream))
            tick += 1
            await asyncio.sleep(max(0.0, t0 + tick * every - loop.time()))


# --- one scenario -------------------------------------------------------------------------------


@dataclass
class Timeline:
    fault: float = float("nan")
    restore: float = float("nan")
    back: float = float("nan")  # the victim answered /-/ready again
    end: float = float("nan")  # the load's last request was scheduled
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    fault: Fault
    balancing: str
    rate: float
    duration: float
    replicas: list[tuple[str, str]]  # (name, url)
    victim: int  # index into replicas
    uid: str
    replica_urls_kept: bool
    answers: list[Answer]
    samples: list[Sample]
    timeline: Timeline
    wall: float


async def controller(
    fault: Fault,
    victim: Replica,
    http: aiohttp.ClientSession,
    t0: float,
    fault_at: float,
    restore_at: float,
    timeline: Timeline,
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + fault_at - loop.time()))
    victim.send(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    timeline.fault = loop.time() - t0
    await asyncio.sleep(max(0.0, t0 + restore_at - loop.time()))
    if fault == "kill":
        victim.start()
    else:
        victim.send(signal.SIGCONT)
    timeline.restore = loop.time() - t0
    try:
        await victim.ready(http)
        timeline.back = loop.time() - t0
    except BenchError as exc:
        timeline.notes.append(f"the victim did not come back: {exc}")


async def run_scenario(args: argparse.Namespace, fault: Fault, workdir: Path) -> Outcome:
    started = time.monotonic()
    processes = Processes()
    try:
        replicas = [
            Replica(n, workdir / f"prometheus-{n}", args.prometheus, processes) for n in (1, 2, 3)
        ]
        for replica in replicas:
            replica.start()
        gateway = start_gateway(args.python, workdir, processes)
        connector = aiohttp.TCPConnector(limit=0)  # open loop: never queue in the client pool
        timeout = aiohttp.ClientTimeout(total=args.client_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            for replica in replicas:
                await replica.ready(http)
            await wait_ready(
                http, f"{gateway.url}/ready", gateway.child, "gateway", gateway.log_path
            )
            uid, kept = await create_source(http, gateway, replicas, args.load_balancing)
            url = f"{gateway.url}/api/datasources/proxy/uid/{uid}/{QUERY_PATH}"
            await first_answer(http, url, gateway)

            loop = asyncio.get_running_loop()
            answers: list[Answer] = []
            samples: list[Sample] = []
            timeline = Timeline()
            t0 = loop.time() + 0.2
            victim = replicas[args.victim - 1]
            sampling = asyncio.create_task(
                sampler(gateway, uid, replicas, t0, args.sample_interval, samples)
            )
            control = asyncio.create_task(
                controller(
                    fault, victim, http, t0, args.duration / 3, 2 * args.duration / 3, timeline
                )
            )
            try:
                await open_loop(
                    http,
                    url,
                    gateway.auth,
                    t0,
                    args.rate,
                    args.duration,
                    answers,
                    drain=args.client_timeout + 1,
                )
                timeline.end = args.duration
                await control
                await asyncio.sleep(args.sample_interval * 2)  # the last tries reach the metrics
            finally:
                for task in (sampling, control):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        processes.stop_all()
    return Outcome(
        fault=fault,
        balancing=args.load_balancing,
        rate=args.rate,
        duration=args.duration,
        replicas=[(replica.name, replica.url) for replica in replicas],
        victim=args.victim - 1,
        uid=uid,
        replica_urls_kept=kept,
        answers=sorted(answers, key=lambda answer: answer.scheduled),
        samples=samples,
        timeline=timeline,
        wall=time.monotonic() - started,
    )


# --- report -------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def ms(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-"
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def phase_of(at: float, timeline: Timeline) -> str:
    if at < timeline.fault:
        return "before"
    if at < timeline.restore:
        return "during"
    return "after"


def increments(values: Sequence[float | None]) -> list[float]:
    """Per sample, what a counter grew by since the last readable sample (0 when unreadable; a
    counter that went down was restarted, so all of its value is new)."""
    grown: list[float] = []
    last: float | None = None
    for value in values:
        if value is None:
            grown.append(0.0)
            continue
        grown.append(value if last is None or value < last else value - last)
        last = value
    if grown and values and values[0] is not None:
        grown[0] = 0.0  # what was counted before the load (the readiness check, probes)
    return grown


def replica_of(label: str, replicas: Sequence[tuple[str, str]]) -> str:
    for name, url in replicas:
        if url.split("://", 1)[1] in label:
            return name
    return label


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        print(indent + "  ".join(cells).rstrip())


def report(outcome: Outcome) -> None:
    tl = outcome.timeline
    victim_name = outcome.replicas[outcome.victim][0]
    action = {"kill": ("SIGKILL", "restart"), "stop": ("SIGSTOP", "SIGCONT")}[outcome.fault]
    print()
    print(
        f"== fault {outcome.fault}: {action[0]} {victim_name} at {tl.fault:.2f} s, "
        f"{action[1]} at {tl.restore:.2f} s · loadBalancing={outcome.balancing} · "
        f"{outcome.rate:g} req/s for {outcome.duration:g} s"
    )
    roles = [
        ", ".join(role for role, on in (("primary", i == 0), ("victim", i == outcome.victim)) if on)
        for i in range(len(outcome.replicas))
    ]
    names = ", ".join(
        f"{name} {url}" + (f" ({role})" if role else "")
        for (name, url), role in zip(outcome.replicas, roles, strict=True)
    )
    print(f"replicas: {names}")
    print(
        f"source {outcome.uid}: jsonData.replicaUrls kept by the API: "
        f"{'yes' if outcome.replica_urls_kept else 'NO'}"
    )
    back = f"{tl.back:.2f} s ({tl.back - tl.restore:+.2f} s)" if tl.back == tl.back else "never"
    print(f"victim answering /-/ready again at {back}; scenario took {outcome.wall:.1f} s")
    for note in tl.notes:
        print(f"note: {note}")

    # Client side.
    answers = outcome.answers
    errors = [answer for answer in answers if answer.error is not None]
    expected = int(outcome.rate * outcome.duration)
    lag = max((answer.sent - answer.scheduled for answer in answers), default=0.0)
    print(
        f"client: {len(answers):,} answers of {expected:,} requests sent, "
        f"errors {len(errors):,} (target 0); worst send lag {ms(lag)}"
    )
    if len(answers) < expected:
        print(f"  {expected - len(answers):,} requests unanswered when the drain time ran out")
    if errors:
        kinds: dict[str, int] = {}
        for answer in errors:
            assert answer.error is not None
            kinds[answer.error] = kinds.get(answer.error, 0) + 1
        by_kind = ", ".join(f"{kind} x {n:,}" for kind, n in sorted(kinds.items()))
        first, last = errors[0].scheduled - tl.fault, errors[-1].scheduled - tl.fault
        print(f"  errors by kind: {by_kind}")
        print(f"  errors sent from {first:+.2f} s to {last:+.2f} s after the fault")
    rows = []
    bounds = {
        "before": (0.0, tl.fault),
        "during": (tl.fault, tl.restore),
        "after": (tl.restore, outcome.duration),
    }
    for phase in PHASES:
        in_phase = [answer for answer in answers if phase_of(answer.scheduled, tl) == phase]
        latencies = sorted(answer.latency for answer in in_phase)
        ok = sorted(answer.latency for answer in in_phase if answer.error is None)
        low, high = bounds[phase]
        rows.append(
            [
                phase,
                f"{low:.1f}-{high:.1f} s",
                f"{len(in_phase):,}",
                f"{sum(answer.error is not None for answer in in_phase):,}",
                ms(percentile(latencies, 50)),
                ms(percentile(latencies, 99)),
                ms(latencies[-1] if latencies else float("nan")),
                ms(percentile(ok, 99)),
            ]
        )
    print("latency from the scheduled send time to the end of the answer (errors included):")
    print_table(["phase", "sent", "requests", "errors", "p50", "p99", "max", "p99 of 200s"], rows)

    report_gateway_targets(outcome)
    report_upstream(outcome)


def report_gateway_targets(outcome: Outcome) -> None:
    tl = outcome.timeline
    victim_name = outcome.replicas[outcome.victim][0]
    samples = outcome.samples
    readable = [sample for sample in samples if sample.targets is not None]
    print(f"gateway side: {TARGET_REQUESTS} for the source, sampled every ~0.5 s:")
    if not readable:
        print("  /metrics could not be read")
        return
    keys = sorted({key for sample in readable for key in (sample.targets or {})})
    if not keys:
        print(
            f"  absent: the gateway exports no {TARGET_REQUESTS} series for this source "
            "(per-target counts not implemented), so no gateway-side figures"
        )
    else:
        per_key = {
            key: increments(
                [
                    (s.targets or {}).get(key, 0.0) if s.targets is not None else None
                    for s in samples
                ]
            )
            for key in keys
        }
        rows = []
        for target, result in keys:
            grown = per_key[(target, result)]
            counts = {phase: 0.0 for phase in PHASES}
            for sample, n in zip(samples, grown, strict=True):
                counts[phase_of(sample.at, tl)] += n
            name = replica_of(target, outcome.replicas)
            rows.append([name, result, *(f"{counts[phase]:,.0f}" for phase in PHASES)])
        print_table(["target", "result", *PHASES], rows)
        victim_keys = [key for key in keys if replica_of(key[0], outcome.replicas) == victim_name]
        victim_any = [sum(per_key[key][i] for key in victim_keys) for i in range(len(samples))]
        victim_ok = [
            sum(per_key[key][i] for key in victim_keys if key[1] == "2xx")
            for i in range(len(samples))
        ]
        during = [
            (sample.at, n)
            for sample, n in zip(samples, victim_any, strict=True)
            if phase_of(sample.at, tl) == "during"
        ]
        tries = sum(n for _, n in during)
        last = max((at for at, n in during if n > 0), default=None)
        if last is None:
            print(f"  {victim_name} after the fault: no tries at all")
        else:
            print(
                f"  {victim_name} kept receiving tries for {last - tl.fault:.1f} s after the "
                f"fault (last seen in the sample at {last:.1f} s; {tries:,.0f} tries in all "
                "while it was down; counted when a try ends, so a frozen replica's are "
                "seen up to perTryTimeout late)"
            )
        print("  " + first_after_restore(victim_name, samples, victim_ok, tl, "2xx tries", 0))
    for name in SOURCE_COUNTERS:
        values = [
            sample.counters.get(name) if sample.targets is not None else None for sample in samples
        ]
        if all(value is None for value in values):
            print(f"  {name}: absent")
            continue
        grown = increments([0.0 if v is None else v for v in values])
        counts = {phase: 0.0 for phase in PHASES}
        for sample, n in zip(samples, grown, strict=True):
            counts[phase_of(sample.at, tl)] += n
        print(f"  {name}: " + ", ".join(f"{p} {counts[p]:,.0f}" for p in PHASES))


def first_after_restore(
    name: str,
    samples: Sequence[Sample],
    grown: Sequence[float],
    tl: Timeline,
    what: str,
    threshold: float,
) -> str:
    """When the victim got traffic again: the first sample after the restore that grew."""
    for sample, n in zip(samples, grown, strict=True):
        if sample.at > tl.restore and n > threshold:
            since_back = (
                f", {sample.at - tl.back:+.1f} s after it answered /-/ready"
                if tl.back == tl.back
                else ""
            )
            return (
                f"{name} after the restore: first {what} in the sample at {sample.at:.1f} s = "
                f"{sample.at - tl.restore:+.1f} s after the restore{since_back}"
            )
    return f"{name} after the restore: no {what} seen by the end of the run"


def report_upstream(outcome: Outcome) -> None:
    tl = outcome.timeline
    samples = outcome.samples
    print(
        f'upstream side: each replica\'s {UPSTREAM_QUERIES}{{handler="/api/v1/query"}} '
        "(health probes' `1+1` included; '-' = unreadable, i.e. dead or frozen):"
    )
    rows = []
    victim_grown: list[float] = []
    for index, (name, _) in enumerate(outcome.replicas):
        values = [
            sample.upstream[index] if index < len(sample.upstream) else None for sample in samples
        ]
        grown = increments(values)
        if index == outcome.victim:
            victim_grown = grown
        counts = {phase: 0.0 for phase in PHASES}
        readable = dict.fromkeys(PHASES, False)
        for sample, value, n in zip(samples, values, grown, strict=True):
            phase = phase_of(sample.at, tl)
            counts[phase] += n
            readable[phase] = readable[phase] or value is not None
        rows.append([name, *(f"{counts[p]:,.0f}" if readable[p] else "-" for p in PHASES)])
    print_table(["replica", *PHASES], rows)
    victim_name = outcome.replicas[outcome.victim][0]
    line = first_after_restore(
        victim_name,
        samples,
        victim_grown,
        tl,
        f"more than {TRAFFIC_THRESHOLD} queries",
        TRAFFIC_THRESHOLD,
    )
    if outcome.fault == "stop":
        line += " (after SIGCONT this includes requests queued while it was frozen)"
    print("  " + line)


def write_answers(path: Path, answers: Sequence[Answer]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["scheduled_s", "sent_s", "latency_s", "status", "error"])
        for a in answers:
            writer.writerow(
                [
                    f"{a.scheduled:.4f}",
                    f"{a.sent:.4f}",
                    f"{a.latency:.5f}",
                    a.status or "",
                    a.error or "",
                ]
            )


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--fault",
        choices=["kill", "stop", "both"],
        default="both",
        help="kill: SIGKILL + restart; stop: SIGSTOP + SIGCONT; both in turn",
    )
    parser.add_argument(
        "--load-balancing",
        choices=["failover", "round_robin"],
        default="failover",
        help="the source's jsonData.loadBalancing",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of load; the fault at 1/3, the restore at 2/3 (default: 60, 12 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: 12 s per fault")
    parser.add_argument(
        "--victim",
        type=int,
        choices=[1, 2, 3],
        default=1,
        help="the replica to kill or freeze (1 = the primary, `url`)",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=10.0,
        help="seconds a request may take before the client counts an error",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=0.5,
        help="seconds between /metrics samples (gateway and replicas)",
    )
    parser.add_argument(
        "--prometheus", default=shutil.which("prometheus") or "", help="the Prometheus binary"
    )
    venv = ROOT / ".venv" / "bin" / "python"
    parser.add_argument(
        "--python",
        default=str(venv) if venv.exists() else sys.executable,
        help="interpreter that runs the gateway",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temp dir (logs, answers-<fault>.csv per request)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 12.0 if args.quick else 60.0
    if args.duration < 3 or args.rate <= 0:
        parser.error("--duration must be at least 3 s and --rate positive")
    return args


async def run_all(args: argparse.Namespace, workdir: Path) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    faults: list[Fault] = ["kill", "stop"] if args.fault == "both" else [args.fault]
    print(
        f"failover benchmark: {args.rate:g} req/s for {args.duration:g} s per fault "
        f"({', '.join(faults)}), loadBalancing={args.load_balancing}, "
        f"retry attempts 2 perTryTimeout 1 s, client timeout {args.client_timeout:g} s"
    )
    print(f"gateway: {args.python} -m gateway serve; temp dir {workdir}")
    for fault in faults:
        print(f"\nrunning fault {fault} ...", flush=True)
        outcome = await run_scenario(args, fault, workdir / fault)
        write_answers(workdir / f"answers-{fault}.csv", outcome.answers)
        report(outcome)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.prometheus or not os.access(args.prometheus, os.X_OK):
        print("bench/failover.py needs Prometheus: apt-get install prometheus (or --prometheus)")
        return 0
    return run_bench("gw-failover-bench-", lambda workdir: run_all(args, workdir), keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())

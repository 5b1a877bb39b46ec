"""Write spool storage (issue 16): how fast SpoolStore keeps InfluxDB write batches durable.

For 1, 8 and 32 concurrent writers, each appending 5,000-line line-protocol batches (~500 KB,
built up front) to one SpoolStore for `--duration` seconds: batches/s, points/s, commits (one
WAL fsync each) per second, and the process's CPU. Then the replay rate: peek + ack of a
backlog until the queue is empty, in points/s. Each measurement starts from a fresh file in a
temp dir on the disk of `--dir` (default: the system temp dir), deleted at the end.

The issue's target for spooling through the gateway: >= 200,000 points/s with one process.
This measures the storage layer alone, without HTTP.

    .venv/bin/python bench/spool.py [--duration 5] [--lines 5000] [--writers 1,8,32] [--gzip]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.spool import SpooledWrite, SpoolStore, TargetKey, WritePath

TARGET = TargetKey(source_id=1, url="http://influxdb:8086")
DISTINCT_BATCHES = 16  # writers cycle through these, so bodies differ from append to append
UNBOUNDED = 1 << 50  # the bench measures speed, not the per-target bound


@dataclass(frozen=True)
class Figures:
    label: str
    batches: int
    points: int
    seconds: float
    commits: int
    cpu_seconds: float
    body_bytes: int

    def row(self) -> str:
        return (
            f"| {self.label} | {self.batches / self.seconds:,.0f} | "
            f"{self.points / self.seconds:,.0f} | {self.commits / self.seconds:,.0f} | "
            f"{self.batches / max(self.commits, 1):.1f} | "
            f"{self.body_bytes / self.seconds / 1e6:,.0f} | "
            f"{100 * self.cpu_seconds / self.seconds:.0f} % |"
        )


def line_protocol_batch(seed: int, lines: int) -> bytes:
    """Telegraf-like points: cpu, mem, disk and net measurements from 200 hosts, ns stamps."""
    rng = random.Random(seed)
    stamp = 1_700_000_000_000_000_000 + seed * 10_000_000_000
    out = []
    for line in range(lines):
        host = f"host=web{rng.randrange(200):03d},region={rng.choice(('eu-west', 'us-east'))}"
        kind = line % 4
        if kind == 0:
            fields = (
                f"usage_user={rng.uniform(0, 100):.3f},usage_system={rng.uniform(0, 30):.3f},"
                f"usage_idle={rng.uniform(0, 100):.3f}"
            )
            out.append(f"cpu,{host},cpu=cpu{rng.randrange(8)} {fields} {stamp + line}\n")
        elif kind == 1:
            fields = f"used={rng.randrange(1 << 34)}i,used_percent={rng.uniform(0, 100):.2f}"
            out.append(f"mem,{host} {fields} {stamp + line}\n")
        elif kind == 2:
            fields = f"free={rng.randrange(1 << 40)}i,used_percent={rng.uniform(0, 100):.2f}"
            out.append(f"disk,{host},path=/var,fstype=ext4 {fields} {stamp + line}\n")
        else:
            fields = f"bytes_recv={rng.randrange(1 << 40)}i,bytes_sent={rng.randrange(1 << 40)}i"
            out.append(f"net,{host},interface=eth0 {fields} {stamp + line}\n")
    return "".join(out).encode()


def make_writes(lines: int, compress: bool) -> list[SpooledWrite]:
    writes = []
    for seed in range(DISTINCT_BATCHES):
        body = line_protocol_batch(seed, lines)
        writes.append(
            SpooledWrite(
                TARGET,
                WritePath.V1,
                {"db": "telegraf", "precision": "ns"},
                gzip.compress(body, compresslevel=1) if compress else body,
                content_type="text/plain; charset=utf-8",
                content_encoding="gzip" if compress else None,
            )
        )
    return writes


async def measure_appends(
    path: Path, writes: list[SpooledWrite], writers: int, duration: float, lines: int
) -> Figures:
    async with SpoolStore.open(path, max_bytes=UNBOUNDED) as spool:
        done = 0
        body_bytes = 0
        stop_at = time.perf_counter() + duration

        async def writer(number: int) -> None:
            nonlocal done, body_bytes
            turn = number
            while time.perf_counter() < stop_at:
                write = writes[turn % len(writes)]
                await spool.append(write)
                done += 1
                body_bytes += write.size
                turn += writers

        commits, cpu, start = spool.commits, time.process_time(), time.perf_counter()
        await asyncio.gather(*(writer(number) for number in range(writers)))
        seconds = time.perf_counter() - start
        return Figures(
            label=f"{writers} writer{'s' if writers > 1 else ''}",
            batches=done,
            points=done * lines,
            seconds=seconds,
            commits=spool.commits - commits,
            cpu_seconds=time.process_time() - cpu,
            body_bytes=body_bytes,
        )


async def measure_replay(
    path: Path, writes: list[SpooledWrite], backlog: int, lines: int, peek_bytes: int
) -> Figures:
    async with SpoolStore.open(path, max_bytes=UNBOUNDED) as spool:
        # The backlog goes in in groups, as concurrent writers would put it there.
        for start in range(0, backlog, 32):
            count = min(32, backlog - start)
            await asyncio.gather(
                *(spool.append(writes[(start + n) % len(writes)]) for n in range(count))
            )
        replayed = body_bytes = 0
        commits, cpu, start_time = spool.commits, time.process_time(), time.perf_counter()
        while entries := await spool.peek(TARGET, limit=1000, max_bytes=peek_bytes):
            await spool.ack(entry.id for entry in entries)
            replayed += len(entries)
            body_bytes += sum(entry.write.size for entry in entries)
        seconds = time.perf_counter() - start_time
        return Figures(
            label=f"replay (peek {peek_bytes >> 20} MiB + ack)",
            batches=replayed,
            points=replayed * lines,
            seconds=seconds,
            commits=spool.commits - commits,
            cpu_seconds=time.process_time() - cpu,
            body_bytes=body_bytes,
        )


async def run(args: argparse.Namespace) -> None:
    writes = make_writes(args.lines, args.gzip)
    average = sum(write.size for write in writes) / len(writes)
    print(
        f"batches of {args.lines:,} lines, {average / 1000:,.0f} KB each"
        f"{' (gzip level 1)' if args.gzip else ''}; {args.duration:g} s per measurement"
    )
    print()
    print("| writers | batches/s | points/s | commits/s | batches/commit | MB/s | CPU |")
    print("|---|---|---|---|---|---|---|")
    workdir = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        for writers in args.writers:
            path = workdir / f"appends-{writers}.sqlite3"
            figures = await measure_appends(path, writes, writers, args.duration, args.lines)
            print(figures.row(), flush=True)
            _remove(path)
        path = workdir / "replay.sqlite3"
        figures = await measure_replay(path, writes, args.backlog, args.lines, args.peek_bytes)
        print(figures.row(), flush=True)
        print(
            f"\n(replay: a backlog of {args.backlog} batches; its commits are the acks, "
            "batches/commit the entries per peek)"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per writer count")
    parser.add_argument("--lines", type=int, default=5000, help="lines per batch")
    parser.add_argument(
        "--writers",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 8, 32],
        help="comma-separated concurrent writer counts",
    )
    parser.add_argument("--backlog", type=int, default=1000, help="batches to replay")
    parser.add_argument(
        "--peek-bytes", type=lambda text: int(text) << 20, default=8 << 20, help="MiB per peek"
    )
    parser.add_argument("--gzip", action="store_true", help="spool gzipped bodies")
    parser.add_argument("--dir", default=None, help="where the temp dir goes")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

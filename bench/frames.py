"""How fast, and in how much memory, a large Prometheus range answer becomes data frames.

Issue 19: a 10,000-point x 100-series matrix must convert "without holding more than a small
multiple of the answer in memory, and faster than the upstream takes to produce it". This
builds such an answer as Prometheus writes it, then times `convert_prometheus_response` plus
`results_json` (the whole `/api/ds/query` body) and traces the peak of Python allocations
during that work (tracemalloc: the upstream body, built before, is not counted in the peak;
it is printed beside it). The full-parse path (what the converter falls back to for shapes
the fast path does not know) is measured the same way, for comparison. Times are wall clock and
CPU (process time, which a loaded machine disturbs less).

With `--prometheus`, the upstream's side is measured too: the same series are backfilled into a
fresh TSDB with `promtool tsdb create-blocks-from openmetrics`, Debian's Prometheus is started on
it, and the time it takes to answer the query_range (the whole body received, over loopback) is
timed over the same rounds, wall clock and the CPU time of Prometheus' process; the answer it
gives is then the one converted. "fed" then does what the route does: reads Prometheus' answer
in 64 KiB chunks, handing each to a MatrixFeed that converts every series as soon as it is in,
and writes the answer; it reports the total and the part after the upstream's last byte.

    .venv/bin/python bench/frames.py [--points 10000] [--series 100] [--rounds 3]
                                     [--prometheus [--expr 'rate(node_cpu_seconds_total[1m])']
                                      [--save-body FILE]]
                                     [--body FILE] [--only streamed]

`--save-body` keeps Prometheus' answer, `--body` converts a kept one instead of building one:
an A/B run of two trees (`PYTHONPATH=<a copy of the other tree>`) then converts the very same
bytes without starting Prometheus again.

A benchmark, not a test: it prints figures and fails on nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import tracemalloc
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from gateway.query import durations
from gateway.query.prometheus import PrometheusQuery, add_metadata, convert_prometheus_response
from gateway.query.promstyle import MatrixFeed, read_document
from gateway.query.results import QueryResult, iter_results_json, results_json

START_S = 1_700_000_000


def matrix_body(points: int, series: int) -> bytes:
    """A Prometheus query_range answer: `[<seconds>, "<value>"]` pairs, values as Prometheus
    formats them (shortest decimal text)."""
    rng = random.Random(19)
    result = []
    for index in range(series):
        values = [
            [START_S + step * 15, repr(round(rng.uniform(0, 1000), rng.randint(0, 6)))]
            for step in range(points)
        ]
        metric = {"__name__": "node_cpu_seconds_total", "cpu": str(index), "mode": "idle"}
        result.append({"metric": metric, "values": values})
    return orjson.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}})


def query() -> PrometheusQuery:
    return PrometheusQuery(
        ref_id="A",
        expr="node_cpu_seconds_total",
        step_ns=15 * durations.SECOND,
        start_ms=START_S * 1000,
        end_ms=(START_S + 150_000) * 1000,
        utc_offset_s=0,
        range=True,
        instant=False,
        legend_format="",
        format="time_series",
    )


def fast_path(body: bytes) -> int:
    result = convert_prometheus_response(body, 200, query())
    return len(results_json({"A": result}))


def streamed(body: bytes) -> int:
    """As a route would answer: chunks written out as they come (here, only counted)."""
    result = convert_prometheus_response(body, 200, query())
    return sum(len(chunk) for chunk in iter_results_json({"A": result}))


def full_parse(body: bytes) -> int:
    answer = read_document(orjson.loads(body), dataplane=True)
    for frame in answer.frames:
        add_metadata(frame, query())
    return len(results_json({"A": QueryResult(frames=answer.frames)}))


def measure(name: str, convert: Callable[[bytes], int], body: bytes, rounds: int) -> None:
    """`convert` answers the size of the answer it made (and keeps nothing)."""
    timings = []
    cpu_timings = []
    output_size = 0
    for _ in range(rounds):
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        output_size = convert(body)
        timings.append(time.perf_counter() - started)
        cpu_timings.append(time.process_time() - cpu_started)
    gc.collect()
    tracemalloc.start()
    convert(body)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mib = 1024 * 1024
    print(
        f"{name:<11} best {min(timings) * 1000:6.0f} ms  median "
        f"{sorted(timings)[len(timings) // 2] * 1000:6.0f} ms  cpu best "
        f"{min(cpu_timings) * 1000:6.0f} ms  peak {peak / mib:6.1f} MiB "
        f"({peak / len(body):4.1f}x the upstream body, {peak / output_size:4.1f}x the answer)  "
        f"answer {output_size / mib:.1f} MiB"
    )


def openmetrics_text(points: int, series: int, end_s: int) -> Iterator[str]:
    """The same series as `matrix_body`, as OpenMetrics for promtool's backfill."""
    rng = random.Random(19)
    start_s = end_s - (points - 1) * 15
    yield "# TYPE node_cpu_seconds_total gauge\n"
    for index in range(series):
        for step in range(points):
            value = repr(round(rng.uniform(0, 1000), rng.randint(0, 6)))
            stamp = start_s + step * 15
            yield f'node_cpu_seconds_total{{cpu="{index}",mode="idle"}} {value} {stamp}\n'
    yield "# EOF\n"


@contextmanager
def backfilled_prometheus(points: int, series: int, end_s: int) -> Iterator[tuple[str, int]]:
    """Debian's Prometheus serving the series from a TSDB backfilled by promtool; its URL and
    process id."""
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as directory:
        root = Path(directory)
        source = root / "series.om"
        with source.open("w") as out:
            out.writelines(openmetrics_text(points, series, end_s))
        data = root / "data"
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        source.unlink()
        (root / "prometheus.yml").write_text("scrape_configs: []\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as ready:
                        if ready.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            yield url, process.pid
        finally:
            process.terminate()
            process.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prometheus_answer(url: str, pid: int, points: int, end_s: int, rounds: int) -> bytes:
    """Time Prometheus answering the query_range (wall clock, and the CPU time its process
    spent meanwhile, which a loaded machine disturbs less); its body."""
    form = _query_range_form(points, end_s)
    timings, cpu_timings, heads = [], [], []
    body = b""
    for _ in range(rounds + 1):  # the first one warms Prometheus's caches: not counted
        started, cpu_started = time.perf_counter(), cpu_seconds(pid)
        with urllib.request.urlopen(f"{url}/api/v1/query_range", data=form, timeout=60) as answer:
            heads.append(time.perf_counter() - started)
            body = answer.read()
        timings.append(time.perf_counter() - started)
        cpu_timings.append(cpu_seconds(pid) - cpu_started)
    timings, cpu_timings, heads = timings[1:], cpu_timings[1:], heads[1:]
    print(
        f"{'prometheus':<11} best {min(timings) * 1000:6.0f} ms  median "
        f"{_median(timings) * 1000:6.0f} ms  cpu best "
        f"{min(cpu_timings) * 1000:6.0f} ms  median "
        f"{_median(cpu_timings) * 1000:6.0f} ms  (query_range answered, "
        f"{len(body) / 2**20:.1f} MiB; its head after {_median(heads) * 1000:.0f} ms, median)"
    )
    return body


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def fed_while_arriving(url: str, points: int, end_s: int, rounds: int) -> None:
    """As the route does it: the body read from Prometheus 64 KiB at a time, each chunk handed
    to a MatrixFeed, then the answer written (only counted). Times from the request to the
    answer's last byte ("total"), and the part after the upstream's last byte ("after").
    Prometheus encodes its whole answer before it writes the head, so what comes after the
    head is the transfer, which the conversion rides on."""
    form = _query_range_form(points, end_s)
    totals, tails, cpus, heads = [], [], [], []
    for _ in range(rounds + 1):
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        feed = MatrixFeed(dataplane=True)
        chunks = []
        with urllib.request.urlopen(f"{url}/api/v1/query_range", data=form, timeout=60) as answer:
            heads.append(time.perf_counter() - started)
            while chunk := answer.read(64 * 1024):
                chunks.append(chunk)
                feed.feed(chunk)
        last_byte = time.perf_counter()
        body = b"".join(chunks)
        del chunks
        result = convert_prometheus_response(body, 200, query(), feed=feed)
        sum(len(chunk) for chunk in iter_results_json({"A": result}))
        finished = time.perf_counter()
        totals.append(finished - started)
        tails.append(finished - last_byte)
        cpus.append(time.process_time() - cpu_started)
    totals, tails, cpus, heads = totals[1:], tails[1:], cpus[1:], heads[1:]
    print(
        f"{'fed':<11} best {min(totals) * 1000:6.0f} ms  median "
        f"{_median(totals) * 1000:6.0f} ms  total, of which after the last "
        f"byte: best {min(tails) * 1000:4.0f} ms  median "
        f"{_median(tails) * 1000:4.0f} ms  (cpu best {min(cpus) * 1000:4.0f} ms, "
        f"the HTTP client's included; the head after {_median(heads) * 1000:.0f} ms, median)"
    )


CONVERSIONS = {"fast path": fast_path, "streamed": streamed, "full parse": full_parse}

# The PromQL Prometheus is asked (`--expr`): the bare selector is the cheapest for it.
EXPRESSION = ["node_cpu_seconds_total"]


def _query_range_form(points: int, end_s: int) -> bytes:
    return urllib.parse.urlencode(
        {
            "query": EXPRESSION[0],
            "start": end_s - (points - 1) * 15,
            "end": end_s,
            "step": 15,
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prometheus", action="store_true", help="time Prometheus too")
    parser.add_argument(
        "--expr", default=EXPRESSION[0], help="the PromQL asked of Prometheus (--prometheus)"
    )
    parser.add_argument("--save-body", type=Path, help="keep Prometheus' answer in this file")
    parser.add_argument("--body", type=Path, help="convert this kept answer")
    parser.add_argument("--only", choices=sorted(CONVERSIONS), help="one conversion only")
    options = parser.parse_args()
    EXPRESSION[0] = options.expr
    if options.prometheus:
        if shutil.which("prometheus") is None or shutil.which("promtool") is None:
            raise SystemExit("--prometheus needs Debian's prometheus and promtool")
        end_s = (int(time.time()) - 3 * 3600) // 15 * 15  # inside retention, out of the head
        with backfilled_prometheus(options.points, options.series, end_s) as (url, pid):
            body = prometheus_answer(url, pid, options.points, end_s, options.rounds)
            fed_while_arriving(url, options.points, end_s, options.rounds)
            gc.collect()
        if options.save_body is not None:
            options.save_body.write_bytes(body)
    elif options.body is not None:
        body = options.body.read_bytes()
    else:
        body = matrix_body(options.points, options.series)
    print(
        f"matrix: {options.series} series x {options.points} points = "
        f"{options.series * options.points:,} points, upstream body {len(body) / 2**20:.1f} MiB"
    )
    for name, convert in CONVERSIONS.items():
        if options.only in (None, name):
            measure(name, convert, body, options.rounds)


if __name__ == "__main__":
    main()

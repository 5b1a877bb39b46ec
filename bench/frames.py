"""How fast, and in how much memory, a large Prometheus range answer becomes data frames.

Issue 19: a 10,000-point x 100-series matrix must convert "without holding more than a small
multiple of the answer in memory, and faster than the upstream takes to produce it". This
builds such an answer as Prometheus writes it, then times `convert_prometheus_response` plus
`results_json` (the whole `/api/ds/query` body) and traces the peak of Python allocations
during that work (tracemalloc: the upstream body, built before, is not counted in the peak;
it is printed beside it). The full-parse path (what the converter falls back to for shapes
the fast path does not know) is measured the same way, for comparison.

    .venv/bin/python bench/frames.py [--points 10000] [--series 100] [--rounds 3]

A benchmark, not a test: it prints figures and fails on nothing.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc
from collections.abc import Callable

import orjson

from gateway.query import durations
from gateway.query.prometheus import PrometheusQuery, add_metadata, convert_prometheus_response
from gateway.query.promstyle import read_document
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
    output_size = 0
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        output_size = convert(body)
        timings.append(time.perf_counter() - started)
    gc.collect()
    tracemalloc.start()
    convert(body)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mib = 1024 * 1024
    print(
        f"{name:<11} best {min(timings) * 1000:7.0f} ms  median "
        f"{sorted(timings)[len(timings) // 2] * 1000:7.0f} ms  peak {peak / mib:7.1f} MiB "
        f"({peak / len(body):4.1f}x the upstream body, {peak / output_size:4.1f}x the answer)  "
        f"answer {output_size / mib:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    body = matrix_body(options.points, options.series)
    print(
        f"matrix: {options.series} series x {options.points} points = "
        f"{options.series * options.points:,} points, upstream body {len(body) / 2**20:.1f} MiB"
    )
    measure("fast path", fast_path, body, options.rounds)
    measure("streamed", streamed, body, options.rounds)
    measure("full parse", full_parse, body, options.rounds)


if __name__ == "__main__":
    main()

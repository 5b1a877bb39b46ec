"""Health monitor at scale: N sources probed every `interval` seconds against a local upstream.

Starts a small upstream (aiohttp, its own process), the real gateway (`python -m gateway serve`),
registers N sources through Grafana's API, lets the first probes settle, then for `duration`
seconds measures:
- the gateway process's CPU time (user + system, from /proc) as a share of one core;
- freshness: from /metrics, for every source, now - gateway_source_last_probe_timestamp_seconds,
  sampled every 5 s; the worst and the 99th percentile, as multiples of the interval;
- probes per second (gateway_health_probes_total).
Targets (issue 6): CPU < 25 % of one core, every result fresh within 1.5 x interval.

Loopback only; everything it starts is stopped when it ends (also on Ctrl-C).

    .venv/bin/python bench/health_scale.py [--sources 2000] [--interval 10] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

TOKEN = "dsg_bench-health-scale"
UPSTREAM = """
import sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
LAST_PROBE = re.compile(r"^gateway_source_last_probe_timestamp_seconds\{[^}]*\} (\S+)$", re.M)
PROBES = re.compile(r"^gateway_health_probes_total\{[^}]*\} (\S+)$", re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


async def wait_http(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


async def scrape(http: aiohttp.ClientSession, url: str) -> tuple[list[float], float]:
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    stamps = [float(value) for value in LAST_PROBE.findall(text)]
    probes = sum(float(value) for value in PROBES.findall(text))
    return stamps, probes


async def run(sources: int, interval: float, duration: float, workdir: Path) -> int:
    upstream_port, gateway_port = free_port(), free_port()
    (workdir / "gateway.toml").write_text("")  # the defaults, whatever the working directory
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "GATEWAY_DATA_DIR": str(workdir / "data"),
        "GATEWAY_CONFIG": str(workdir / "gateway.toml"),
        "GATEWAY_PORT": str(gateway_port),
        "GATEWAY_ADMIN_TOKEN": TOKEN,
        "GATEWAY_SECRET_KEY": "bench-key",
        "GATEWAY_HEALTH_INTERVAL": str(interval),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_LOG_FORMAT": "json",
    }
    log = (workdir / "gateway.log").open("w")
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, stderr=log)
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        await wait_http(f"http://127.0.0.1:{upstream_port}/")
        await wait_http(url + "/ready")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        started = time.monotonic()
        async with aiohttp.ClientSession(headers=headers) as http:
            for n in range(sources):
                body = {
                    "name": f"s{n:05d}",
                    "type": "generic-http",
                    "access": "proxy",
                    "url": f"http://127.0.0.1:{upstream_port}/s{n}",
                }
                async with http.post(url + "/api/datasources", json=body) as response:
                    if response.status != 200:
                        print("register failed:", response.status, await response.text())
                        return 1
            registered = time.monotonic() - started
            print(f"registered {sources} sources in {registered:.1f} s")
            settle = interval * 1.5 + 2
            print(f"settling for {settle:.0f} s (first probes, then jittered intervals) ...")
            await asyncio.sleep(settle)

            cpu_start, wall_start = cpu_seconds(gateway.pid), time.monotonic()
            _, probes_start = await scrape(http, url)
            worst, samples, fresh_counts = 0.0, [], []
            while time.monotonic() - wall_start < duration:
                await asyncio.sleep(5)
                stamps, _ = await scrape(http, url)
                now = time.time()
                ages = [now - stamp for stamp in stamps]
                fresh_counts.append(len(stamps))
                samples.extend(ages)
                worst = max(worst, *ages) if ages else worst
            cpu = cpu_seconds(gateway.pid) - cpu_start
            wall = time.monotonic() - wall_start
            _, probes_end = await scrape(http, url)
        samples.sort()
        p99 = samples[int(len(samples) * 0.99)] if samples else float("nan")
        share = cpu / wall
        print()
        print(f"sources                  {sources} (results seen: {min(fresh_counts)})")
        print(f"interval                 {interval:g} s")
        print(f"measured                 {wall:.1f} s")
        print(f"gateway CPU              {share * 100:.1f} % of one core   (target < 25 %)")
        print(f"probes per second        {(probes_end - probes_start) / wall:.1f}")
        print(f"result age, worst        {worst:.1f} s = {worst / interval:.2f} x interval"
              "   (target <= 1.5 x)")  # fmt: skip
        print(f"result age, p99          {p99:.1f} s = {p99 / interval:.2f} x interval")
        ok = share < 0.25 and worst <= 1.5 * interval and min(fresh_counts) == sources
        print("targets met" if ok else "TARGETS NOT MET")
        return 0 if ok else 1
    finally:
        for process in (gateway, upstream):
            process.send_signal(signal.SIGTERM)
        for process in (gateway, upstream):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-health-bench-") as workdir:
        return asyncio.run(run(args.sources, args.interval, args.duration, Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())

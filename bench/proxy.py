#!/usr/bin/env python3
"""Proxy benchmark: nginx, nginx / HAProxy / Caddy as reverse proxies, and the gateway.

Everything runs on 127.0.0.1 from one temporary directory and is stopped on exit (also on Ctrl-C,
SIGTERM, or when the overall time limit `--max-seconds` is reached):

- origin: nginx (1 worker) serving a small JSON file and a sparse 1 GiB file;
- nginx-proxy: nginx (1 worker) as a keep-alive reverse proxy in front of the origin;
- haproxy: HAProxy (`nbthread 1`, `http-reuse always`, no log) in front of the origin;
- caddy: Caddy (`GOMAXPROCS=1`, `reverse_proxy`, admin and logs off) in front of the origin;
- gateway: `python -m gateway serve` (one process) at its default log level (info: one JSON
  line per request), with a source registered through the Grafana API, proxying
  `/api/datasources/proxy/uid/<uid>/<file>`;
- gateway-warning: the same at log level warning (no line per request);
- sink: a tiny asyncio + httptools server that reads a request body to its end, discards it and
  then answers `200 <bytes received>` (the upload target; see bench/README.md for why not nginx).

Phases (each repeated `--rounds` times, targets interleaved):
1. wrk, same threads/connections/duration for every target, after a warm-up each;
2. a streamed download of `--stream-size` bytes (curl -o /dev/null) through nginx and each
   proxy (the gateway at its default level), with the gateway's peak RSS;
3. an upload of `--stream-size` bytes (curl -T) to the sink directly and through each proxy,
   with the gateway's peak RSS.

Run it with any Python >= 3.11; the gateway and the sink run under `.venv/bin/python` (`--python`):

    .venv/bin/python bench/proxy.py                                # ~45 s
    .venv/bin/python bench/proxy.py --rounds 5 --wait-quiet 20     # ~4.5 min on a quiet machine
    .venv/bin/python bench/proxy.py --help

The script itself uses only the standard library; nginx, wrk and curl come from Debian
(`apt-get install nginx wrk curl`). Without them it explains what is missing and exits 0.
HAProxy and Caddy come from Debian too (`apt-get install haproxy caddy`); without one of them
its target is left out, with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
GIB = 1024**3
MIB = 1024**2

# A few hundred bytes, shaped like a Prometheus instant-query answer.
SMALL_FILE = "query.json"
SMALL_BODY = (
    json.dumps(
        {
            "status": "success",
            "data": {
                "resultType": "vector",
                "result": [
                    {
                        "metric": {
                            "__name__": "up",
                            "instance": f"node-{i}.example.internal:9100",
                            "job": "node",
                        },
                        "value": [1732406400.123, "1"],
                    }
                    for i in range(3)
                ],
            },
        },
        separators=(",", ":"),
    ).encode()
    + b"\n"
)
BIG_FILE = "big.bin"
# The sink's answer to GET (`SHOW DATABASES`), so that the health monitor finds it healthy.
INFLUX_DATABASES = (
    b'{"results":[{"statement_id":0,"series":[{"name":"databases","columns":["name"],'
    b'"values":[["bench"]]}]}]}'
)

# wrk prints one machine-readable line at the end (latencies in microseconds).
WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,' ..
    '"mean":%.1f,"max":%.0f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""

# --- process handling -------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM, SIGINT or the overall time limit: stop everything and clean up."""


class BenchError(Exception):
    """Something the benchmark needs did not work; printed as one line, exit code 1."""


def _die_with_parent() -> None:
    """Runs in each long-lived child before exec: SIGTERM it if this script dies (even kill -9)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Services:
    """The long-running children; `stop_all` ends them newest first (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self._services: list[Service] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Service:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches only us; we stop them in order
                preexec_fn=_die_with_parent,
            )
        service = Service(name, process, log_path)
        self._services.append(service)
        return service

    def stop_all(self, grace: float = 5.0) -> None:
        for service in reversed(self._services):
            if service.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in reversed(self._services):
            try:
                service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    service.process.kill()
                service.process.wait(timeout=5)
        self._services.clear()

    def by_name(self, name: str) -> Service:
        return next(service for service in self._services if service.name == name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, service: Service, timeout: float, expect: int = 200) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(
                f"{service.name} exited with code {service.process.returncode}; "
                f"its log ({service.log_path}):\n{service.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == expect:
                    return
                last = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            if exc.code == expect:
                return
            last = f"status {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise BenchError(f"{service.name} did not answer {url} within {timeout} s ({last})")


def http(
    method: str, url: str, *, token: str = "", body: object = None
) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


# --- /proc readings ---------------------------------------------------------------------------


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of some processes (their threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy (not idle, not waiting on I/O) since boot."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit: float, threshold: float = 0.10) -> None:
    """Wait (up to `limit` s) for a second in which all CPUs together were busy less than
    `threshold` of one core: our own services are idle between measurements, so what is busy
    then is someone else."""
    if limit <= 0:
        return
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < threshold:
            return
        if time.monotonic() >= deadline:
            progress(f"  the machine is still busy ({busy * 100:.0f}% of a core): measuring anyway")
            return


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker_pids(master_pid: int, count: int, timeout: float = 15.0) -> tuple[int, ...]:
    """The pids of the `count` workers of an nginx master or a `gateway serve --workers`."""
    deadline = time.monotonic() + timeout
    children: list[str] = []
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        except OSError:
            break
        if len(children) >= count:
            break
        time.sleep(0.05)
    # Without the children file, CPU figures cover the master only.
    return tuple(int(pid) for pid in children) or (master_pid,)


class RssWatch:
    """The highest peak RSS of any one of some processes while the `with` block runs.

    Resets the kernel's high-water marks first (`clear_refs` 5) and reads VmHWM at the end; a
    sampler thread (VmRSS every 10 ms) backs it up where the reset is not allowed.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = tuple(pids)
        self.before_kib = 0
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._hwm_reset = True

    def __enter__(self) -> RssWatch:
        self.before_kib = max(proc_status_kib(pid, "VmRSS") or 0 for pid in self.pids)
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as clear:
                    clear.write("5")
            except OSError:
                self._hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._hwm_reset:
            for pid in self.pids:
                self.peak_kib = max(self.peak_kib, proc_status_kib(pid, "VmHWM") or 0)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            for pid in self.pids:
                rss = proc_status_kib(pid, "VmRSS")
                if rss is not None:
                    self.peak_kib = max(self.peak_kib, rss)


# --- configuration files ----------------------------------------------------------------------

NGINX_MAIN = """\
# worker_processes 1: the gateway under test is one process (one event loop, one core), so each
# nginx gets one worker too; and on a 2-core machine shared with wrk and the origin, more workers
# would only take cores from the other processes of the same measurement.
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
lock_file {dir}/nginx.lock;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    {access_log}
    default_type application/octet-stream;
    types {{ application/json json; }}
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    # The default (1000) closes a client connection every 1000 requests; the gateway does not.
    keepalive_requests 1000000;

{servers}
}}
"""

ORIGIN_SERVER = """\
    server {{
        listen {host}:{port} backlog=4096;
        root {www};
        location / {{ }}
        # What the gateway's health monitor asks a Prometheus source, so that it stays healthy.
        location = /-/ready {{ return 200 "Prometheus Server is Ready.\\n"; }}
        location = /api/v1/query {{
            default_type application/json;
            return 200 '{{"status":"success","data":{{"resultType":"scalar","result":[0,"2"]}}}}';
        }}
    }}
"""

PROXY_SERVER = """\
    upstream origin {{
        server {host}:{origin_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    upstream sink {{
        server {host}:{sink_port};
        keepalive 16;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {{
            proxy_pass http://origin;
            # Stream a large body through memory buffers: never spool it to a temp file.
            proxy_max_temp_file_size 0;
        }}
        location /upload/ {{
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_pass http://sink/;
        }}
    }}
"""


def nginx_conf(directory: Path, servers: str, access_log: bool) -> str:
    log = (
        f"access_log {directory}/access.log combined buffer=64k flush=1s;"
        if access_log
        else "access_log off;  # the gateway logs no request line at warning level either"
    )
    return NGINX_MAIN.format(dir=directory, access_log=log, servers=servers)


# HAProxy: one thread (the gateway under test is one event loop), keep-alive to the origin with
# connections shared between clients (`http-reuse always`), no log section: no line per request.
HAPROXY_CONF = """\
global
    nbthread 1
    maxconn 8192
    pidfile {dir}/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 75s

frontend bench
    bind {host}:{port}
    use_backend sink if {{ path_beg /upload/ }}
    default_backend origin

backend origin
    server origin {host}:{origin_port}

backend sink
    http-request set-path %[path,regsub(^/upload/,/)]
    server sink {host}:{sink_port}
"""

# Caddy: GOMAXPROCS=1 (set in its environment), admin endpoint and logs off, keep-alive to the
# origin with as many idle connections as nginx-proxy and the gateway keep (256: the gateway's
# `proxy.max_idle_connections`; below the connections in flight, e.g. at `--connections 256`,
# every proxy closes and reopens upstream connections all the time). Both limits are needed: with a
# `transport` block, an unset `keepalive_idle_conns_per_host` is Go's default of 2, and Caddy
# then opens a new upstream connection for most requests (checked: TIME-WAIT piling up at the
# origin, ~3.4k req/s). Request and response bodies are streamed (flush_interval -1); no access
# log (Caddy writes one only with a `log` directive).
CADDYFILE = """\
{{
    admin off
    auto_https off
    log default {{
        output discard
    }}
}}

http://{host}:{port} {{
    handle_path /upload/* {{
        reverse_proxy {host}:{sink_port} {{
            flush_interval -1
            transport http {{
                keepalive 75s
                keepalive_idle_conns 16
                keepalive_idle_conns_per_host 16
            }}
        }}
    }}
    handle {{
        reverse_proxy {host}:{origin_port} {{
            flush_interval -1
            transport http {{
                keepalive 75s
                keepalive_idle_conns 256
                keepalive_idle_conns_per_host 256
            }}
        }}
    }}
}}
"""


# --- the sink: reads a request body to its end, discards it, then answers -----------------------


def run_sink(port: int) -> None:
    """`proxy.py --sink PORT`: runs in a child process under the gateway's interpreter."""
    import asyncio

    import httptools  # the gateway's own dependency

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.transport: asyncio.Transport | None = None
            self.parser = httptools.HttpRequestParser(self)
            self.received = 0
            self.expect_continue = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self.transport is not None:
                    self.transport.close()

        def on_message_begin(self) -> None:
            self.received = 0
            self.expect_continue = False

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"expect" and value.strip().lower() == b"100-continue":
                self.expect_continue = True

        def on_headers_complete(self) -> None:
            if self.expect_continue and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        def on_body(self, body: bytes) -> None:
            self.received += len(body)

        def on_message_complete(self) -> None:
            if self.transport is None:
                return
            if self.parser.get_method() == b"GET":  # the health monitor's InfluxDB probe
                body, kind = INFLUX_DATABASES, b"application/json"
            else:
                body, kind = b"%d" % self.received, b"text/plain"
            keep_alive = self.parser.should_keep_alive()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
                % (kind, len(body), b"" if keep_alive else b"Connection: close\r\n", body)
            )
            if not keep_alive:
                self.transport.close()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, HOST, port, backlog=1024)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(serve())


# --- measurements -----------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu: dict[str, float]  # process name -> share of one core during the run

    @property
    def failed(self) -> bool:
        return any(self.errors.values())

    @property
    def per_cpu_second(self) -> float:
        """Requests per CPU-second of the process under test (the proxy, or the gateway; the
        origin for nginx): what a noisy machine disturbs least, as a proxy that is starved of
        CPU by other processes serves fewer requests per wall-clock second but not per
        CPU-second."""
        for name in ("gateway", "proxy", "origin"):
            share = self.cpu.get(name)
            if share:
                return self.rps / share
        return 0.0


@dataclass
class TransferResult:
    mib_s: float
    seconds: float
    gateway_peak_mib: float | None = None
    gateway_before_mib: float | None = None
    gateway_cpu_s: float | None = None


@dataclass
class Target:
    name: str
    url: str
    # process name -> its pids, whose CPU use is reported
    watched: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    token: str
    services: Services
    gateway_pids: tuple[int, ...] = ()  # the default gateway's (the streaming target)
    wrk_targets: list[Target] = field(default_factory=list)
    download_targets: list[Target] = field(default_factory=list)
    upload_targets: list[Target] = field(default_factory=list)

    def wrk(self, target: Target, seconds: float, *, report: bool) -> WrkResult | None:
        args = self.args
        argv = [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-H",
            f"Authorization: Bearer {self.token}",
            target.url,
        ]
        if report:
            argv[1:1] = ["-s", str(self.workdir / "report.lua")]
            wait_quiet(args.wait_quiet)
        cpu_before = {name: cpu_seconds(pids) for name, pids in target.watched.items()}
        wrk_before = children_cpu_seconds()
        machine_before = machine_busy_seconds()
        started = time.monotonic()
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=False
        )
        elapsed = time.monotonic() - started
        if completed.returncode != 0:
            raise BenchError(f"wrk failed on {target.url}: {completed.stderr.strip()}")
        if not report:
            return None
        match = re.search(r"^WRKJSON (\{.*\})$", completed.stdout, re.MULTILINE)
        if match is None:
            raise BenchError(f"no report from wrk:\n{completed.stdout}\n{completed.stderr}")
        data = json.loads(match.group(1))
        cpu = {
            name: (cpu_seconds(pids) - cpu_before[name]) / elapsed
            for name, pids in target.watched.items()
        }
        cpu["wrk"] = (children_cpu_seconds() - wrk_before) / elapsed
        # Whatever else kept the CPUs busy meanwhile (other processes, and kernel work that is
        # not charged to any of ours): a noisy run shows here.
        busy = (machine_busy_seconds() - machine_before) / elapsed
        cpu["other"] = max(0.0, busy - sum(cpu.values()))
        return WrkResult(
            rps=data["requests"] / (data["duration_us"] / 1e6),
            p50_ms=data["p50"] / 1000,
            p90_ms=data["p90"] / 1000,
            p99_ms=data["p99"] / 1000,
            max_ms=data["max"] / 1000,
            errors={
                key: int(data[key]) for key in ("connect", "read", "write", "status", "timeout")
            },
            cpu=cpu,
        )

    def curl(self, argv: list[str], expected_bytes: int, what: str) -> TransferResult:
        completed = subprocess.run(
            [
                "curl",
                "--silent",
                "--show-error",
                "--max-time",
                str(self.args.transfer_timeout),
                "--write-out",
                "%{http_code} %{size_download} %{size_upload} %{time_total}",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=self.args.transfer_timeout + 30,
            check=False,
        )
        if completed.returncode != 0:
            raise BenchError(f"{what}: curl failed: {completed.stderr.strip()}")
        code, downloaded, uploaded, total = completed.stdout.split()[-4:]
        size = float(uploaded) if "--upload-file" in argv else float(downloaded)
        if code != "200" or int(size) != expected_bytes:
            raise BenchError(
                f"{what}: status {code}, {int(size)} bytes moved, {expected_bytes} expected"
            )
        seconds = float(total)
        return TransferResult(mib_s=expected_bytes / MIB / seconds, seconds=seconds)

    def transfer(self, target: Target, *, upload: bool) -> TransferResult:
        size = self.args.stream_size
        what = f"{'upload to' if upload else 'download from'} {target.name}"
        if upload:
            response = self.workdir / "upload-answer.txt"
            argv = [
                "--upload-file",
                str(self.workdir / "www" / BIG_FILE),
                "--request",
                "POST",
                "--header",
                f"Authorization: Bearer {self.token}",
                "--header",
                "Content-Type: application/octet-stream",
                "--output",
                str(response),
                target.url,
            ]
        else:
            response = None
            argv = [
                "--header",
                f"Authorization: Bearer {self.token}",
                "--output",
                "/dev/null",
                target.url,
            ]
        wait_quiet(self.args.wait_quiet)
        if target.name != "gateway" or not self.gateway_pids:
            result = self.curl(argv, size, what)
        else:
            cpu_before = cpu_seconds(self.gateway_pids)
            with RssWatch(self.gateway_pids) as rss:
                result = self.curl(argv, size, what)
            result.gateway_peak_mib = rss.peak_kib / 1024
            result.gateway_before_mib = rss.before_kib / 1024
            result.gateway_cpu_s = cpu_seconds(self.gateway_pids) - cpu_before
        if response is not None:
            answer = response.read_text().strip()
            if answer != str(size):
                raise BenchError(f"{what}: the sink received {answer!r} bytes, not {size}")
        return result


# --- set-up -----------------------------------------------------------------------------------


def missing_tools(stream: bool) -> list[str]:
    needed = ["nginx", "wrk"] + (["curl"] if stream else [])
    return [tool for tool in needed if shutil.which(tool) is None]


# The optional proxies: a target whose binary is missing is left out (with a note). Looked up
# on PATH, then where Debian puts them (haproxy is in /usr/sbin, not on every user's PATH).
OPTIONAL_TOOLS_PATHS = {
    name: shutil.which(name) or next((p for p in fallback if Path(p).exists()), "")
    for name, fallback in (("haproxy", ("/usr/sbin/haproxy",)), ("caddy", ("/usr/bin/caddy",)))
}


def gateway_python(args: argparse.Namespace) -> str:
    if args.python:
        return str(args.python)
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def start_nginx(services: Services, name: str, directory: Path, conf: str) -> Service:
    directory.mkdir(mode=0o755)
    conf_path = directory / "nginx.conf"
    conf_path.write_text(conf)
    argv = ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf_path)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        raise BenchError(f"nginx -t refused {conf_path}:\n{check.stderr.strip()}")
    return services.start(name, argv, directory / "stdout.log")


def set_up(args: argparse.Namespace, workdir: Path, services: Services) -> Bench:
    token = "dsg_bench_" + secrets.token_urlsafe(24)
    bench = Bench(args, workdir, token, services)
    (workdir / "report.lua").write_text(WRK_REPORT)
    # nginx's workers may run as another user (nobody) when started by root: let them read.
    workdir.chmod(0o755)
    www = workdir / "www"
    www.mkdir(mode=0o755)
    (www / SMALL_FILE).write_bytes(SMALL_BODY)
    with (www / BIG_FILE).open("wb") as big:
        big.truncate(args.stream_size)  # sparse: zeros from the page cache, no disk needed
    for path in www.iterdir():
        path.chmod(0o644)
    with (www / BIG_FILE).open("rb") as big:  # into the page cache before the first download
        while big.read(4 * MIB):
            pass

    origin_port, proxy_port, sink_port = (free_port() for _ in range(3))
    python = gateway_python(args)

    origin = start_nginx(
        services,
        "nginx origin",
        workdir / "nginx-origin",
        nginx_conf(
            workdir / "nginx-origin",
            ORIGIN_SERVER.format(host=HOST, port=origin_port, www=www),
            args.access_log,
        ),
    )
    proxy = start_nginx(
        services,
        "nginx proxy",
        workdir / "nginx-proxy",
        nginx_conf(
            workdir / "nginx-proxy",
            PROXY_SERVER.format(
                host=HOST, port=proxy_port, origin_port=origin_port, sink_port=sink_port
            ),
            args.access_log,
        ),
    )
    sink = services.start(
        "sink",
        [python, str(Path(__file__).resolve()), "--sink", str(sink_port)],
        workdir / "sink.log",
    )
    haproxy_url = caddy_url = ""
    if "haproxy" in args.targets:
        haproxy_port = free_port()
        haproxy_url = f"http://{HOST}:{haproxy_port}"
        haproxy = start_haproxy(services, workdir / "haproxy", haproxy_port, origin_port, sink_port)
        wait_for_http(f"{haproxy_url}/{SMALL_FILE}", haproxy, 15)
    if "caddy" in args.targets:
        caddy_port = free_port()
        caddy_url = f"http://{HOST}:{caddy_port}"
        caddy = start_caddy(services, workdir / "caddy", caddy_port, origin_port, sink_port)
        wait_for_http(f"{caddy_url}/{SMALL_FILE}", caddy, 30)

    origin_url = f"http://{HOST}:{origin_port}"
    proxy_url = f"http://{HOST}:{proxy_port}"
    sink_url = f"http://{HOST}:{sink_port}"
    wait_for_http(f"{origin_url}/{SMALL_FILE}", origin, 15)
    wait_for_http(f"{proxy_url}/{SMALL_FILE}", proxy, 15)
    wait_for_http(f"{sink_url}/", sink, 15)
    check_small(f"{origin_url}/{SMALL_FILE}", token)
    check_small(f"{proxy_url}/{SMALL_FILE}", token)
    for url in (haproxy_url, caddy_url):
        if url:
            check_small(f"{url}/{SMALL_FILE}", token)

    origin_worker = worker_pids(origin.process.pid, 1)
    proxy_worker = worker_pids(proxy.process.pid, 1)
    wrk_targets = [
        Target("nginx", f"{origin_url}/{SMALL_FILE}", {"origin": origin_worker}),
        Target(
            "nginx-proxy",
            f"{proxy_url}/{SMALL_FILE}",
            {"origin": origin_worker, "proxy": proxy_worker},
        ),
    ]
    download_targets = [
        Target("nginx", f"{origin_url}/{BIG_FILE}"),
        Target("nginx-proxy", f"{proxy_url}/{BIG_FILE}"),
    ]
    upload_targets = [
        Target("sink", f"{sink_url}/write?db=bench"),
        Target("nginx-proxy", f"{proxy_url}/upload/write?db=bench"),
    ]
    for name, url in (("haproxy", haproxy_url), ("caddy", caddy_url)):
        if not url:
            continue
        pid = services.by_name(name).process.pid
        wrk_targets.append(
            Target(name, f"{url}/{SMALL_FILE}", {"origin": origin_worker, "proxy": (pid,)})
        )
        download_targets.append(Target(name, f"{url}/{BIG_FILE}"))
        upload_targets.append(Target(name, f"{url}/upload/write?db=bench"))

    # The gateway at each chosen log level: "gateway" runs at its default (info), and is the
    # one the 1 GiB transfers go through; "gateway-warning" writes no line per request.
    for name in GATEWAY_TARGETS:
        if name not in args.targets:
            continue
        level = "info" if name == "gateway" else "warning"
        gateway_url, uids, pids = start_gateway(
            args, bench, services, name, level, origin_url, sink_url, python
        )
        via_gateway = f"{gateway_url}/api/datasources/proxy/uid/{uids['bench-nginx']}"
        wrk_targets.append(
            Target(name, f"{via_gateway}/{SMALL_FILE}", {"origin": origin_worker, "gateway": pids})
        )
        if name == "gateway":
            bench.gateway_pids = pids
            download_targets.append(Target("gateway", f"{via_gateway}/{BIG_FILE}"))
            sink_path = f"/api/datasources/proxy/uid/{uids['bench-sink']}/write?db=bench"
            upload_targets.append(Target("gateway", gateway_url + sink_path))
    chosen = set(args.targets) | ({"sink"} if "nginx" in args.targets else set())
    order = {name: index for index, name in enumerate(("sink", *TARGETS))}
    bench.wrk_targets = sorted(
        (t for t in wrk_targets if t.name in chosen), key=lambda t: order[t.name]
    )
    bench.download_targets = [t for t in download_targets if t.name in chosen]
    bench.upload_targets = [t for t in upload_targets if t.name in chosen]
    return bench


def start_haproxy(
    services: Services, directory: Path, port: int, origin_port: int, sink_port: int
) -> Service:
    directory.mkdir(mode=0o755)
    conf = directory / "haproxy.cfg"
    conf.write_text(
        HAPROXY_CONF.format(
            dir=directory, host=HOST, port=port, origin_port=origin_port, sink_port=sink_port
        )
    )
    argv = [OPTIONAL_TOOLS_PATHS["haproxy"], "-db", "-f", str(conf)]
    check = subprocess.run([*argv, "-c"], capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        raise BenchError(f"haproxy -c refused {conf}:\n{check.stderr.strip()}")
    return services.start("haproxy", argv, directory / "haproxy.log")


def start_caddy(
    services: Services, directory: Path, port: int, origin_port: int, sink_port: int
) -> Service:
    directory.mkdir(mode=0o755)
    conf = directory / "Caddyfile"
    conf.write_text(
        CADDYFILE.format(host=HOST, port=port, origin_port=origin_port, sink_port=sink_port)
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("CADDY")}
    env.update(
        {
            "GOMAXPROCS": "1",  # one core, as the gateway's one event loop and nginx's one worker
            # Caddy keeps state under $HOME / XDG dirs: all of it in the temp dir.
            "HOME": str(directory),
            "XDG_DATA_HOME": str(directory / "data"),
            "XDG_CONFIG_HOME": str(directory / "config"),
        }
    )
    argv = [OPTIONAL_TOOLS_PATHS["caddy"], "run", "--config", str(conf), "--adapter", "caddyfile"]
    return services.start("caddy", argv, directory / "caddy.log", env=env, cwd=directory)


def start_gateway(
    args: argparse.Namespace,
    bench: Bench,
    services: Services,
    name: str,
    level: str,
    origin_url: str,
    sink_url: str,
    python: str,
) -> tuple[str, dict[str, str], tuple[int, ...]]:
    """`python -m gateway serve` at log level `level`, with the two benchmark sources; its URL,
    the sources' uids and the pids that serve (its workers with --gateway-workers N)."""
    gateway_port = free_port()
    gateway_dir = bench.workdir / name
    gateway_dir.mkdir()
    (gateway_dir / "provisioning").mkdir()
    config = gateway_dir / "gateway.toml"
    config.write_text("# benchmark: every setting at its default, the rest from GATEWAY_*\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(args.gateway_root), env.get("PYTHONPATH", "")])
            ),
            "GATEWAY_CONFIG": str(config),  # every default; not the repository's file
            "GATEWAY_DATA_DIR": str(gateway_dir / "data"),
            "GATEWAY_PROVISIONING_PATH": str(gateway_dir / "provisioning"),
            "GATEWAY_ADMIN_TOKEN": bench.token,
            "GATEWAY_HOST": HOST,
            "GATEWAY_PORT": str(gateway_port),
            # info is the default level; set anyway, so that an inherited setting cannot
            # change what is measured. JSON: what it writes when not on a terminal.
            "GATEWAY_LOG_LEVEL": level,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_DRAIN_TIMEOUT": "2",
        }
    )
    if args.gateway_workers != 1:  # only then: older gateways refuse the unknown variable
        env["GATEWAY_WORKERS"] = str(args.gateway_workers)
    gateway = services.start(
        name,
        [python, "-m", "gateway", "serve"],
        bench.workdir / f"{name}.log",
        env=env,
        cwd=gateway_dir,
    )
    gateway_url = f"http://{HOST}:{gateway_port}"
    wait_for_http(f"{gateway_url}/ready", gateway, 30)
    uids = {
        source: register(gateway_url, bench.token, source, kind, url)
        for source, kind, url in (
            ("bench-nginx", "prometheus", origin_url),
            ("bench-sink", "influxdb", sink_url),  # uploads: an InfluxDB /write is a big POST
        )
    }
    if args.gateway_workers == 1:
        pids: tuple[int, ...] = (gateway.process.pid,)
    else:  # the supervisor serves nothing: measure its workers
        pids = worker_pids(gateway.process.pid, args.gateway_workers)
    via_gateway = f"{gateway_url}/api/datasources/proxy/uid/{uids['bench-nginx']}"
    # Other workers learn of the new sources within the store's poll interval (1 s).
    for _ in range(4 * args.gateway_workers):
        check_small(f"{via_gateway}/{SMALL_FILE}", bench.token, gateway=True, retry_for=5)
    return gateway_url, uids, pids


def register(gateway_url: str, token: str, name: str, kind: str, url: str) -> str:
    status, _, body = http(
        "POST",
        f"{gateway_url}/api/datasources",
        token=token,
        body={"name": name, "type": kind, "access": "proxy", "url": url},
    )
    if status != 200:
        raise BenchError(f"registering {name}: {status} {body[:300]!r}")
    return str(json.loads(body)["datasource"]["uid"])


def check_small(url: str, token: str, *, gateway: bool = False, retry_for: float = 0) -> None:
    """One request before measuring: a fast error page must not pass for a fast proxy."""
    deadline = time.monotonic() + retry_for
    status, headers, body = http("GET", url, token=token)
    while status == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
        status, headers, body = http("GET", url, token=token)
    if status != 200 or body != SMALL_BODY:
        raise BenchError(f"GET {url}: status {status}, body {body[:200]!r}")
    if gateway and headers.get("Content-Security-Policy") != "sandbox":
        raise BenchError(f"GET {url}: no Content-Security-Policy: sandbox in {headers}")


# --- reporting --------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))} to {fmt.format(max(values))})"
    )


def print_wrk(results: dict[str, list[WrkResult]], args: argparse.Namespace) -> None:
    rounds = len(next(iter(results.values())))
    print(
        f"\n== small JSON ({len(SMALL_BODY)} B), wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration:g}s, {rounds} round(s): median (min to max) =="
    )
    print(
        f"{'target':<16} {'req/s':>28} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}"
        f" {'req/CPU-s':>10}  CPU (1 core = 100%)"
    )
    for name, runs in results.items():
        cpu_names = runs[0].cpu.keys()
        cpu = ", ".join(
            f"{cpu_name} {statistics.median(r.cpu[cpu_name] for r in runs) * 100:.0f}%"
            for cpu_name in cpu_names
        )
        print(
            f"{name:<16} {spread([r.rps for r in runs]):>28} "
            f"{statistics.median(r.p50_ms for r in runs):>8.2f} "
            f"{statistics.median(r.p90_ms for r in runs):>8.2f} "
            f"{statistics.median(r.p99_ms for r in runs):>8.2f} "
            f"{statistics.median(r.per_cpu_second for r in runs):>10,.0f}  {cpu}"
        )
        for run in runs:
            if run.failed:
                print(f"  !! {name}: wrk counted errors {run.errors}")
    print_ratios(results)


# (gateway target, reference, what the issue asks of the req/s ratio, also compare p99?)
RATIOS = (
    ("gateway", "caddy", 1.0, True),
    ("gateway-warning", "nginx-proxy", 0.3, False),
    ("gateway", "nginx-proxy", None, False),
    ("gateway", "haproxy", None, False),
    ("gateway-warning", "caddy", None, True),
)


def print_ratios(results: dict[str, list[WrkResult]]) -> None:
    """Each ratio is taken within a round (the targets of one round ran back to back), then
    the median and range over the rounds are printed."""
    for name, reference, target, compare_p99 in RATIOS:
        if name not in results or reference not in results:
            continue
        pairs = list(zip(results[name], results[reference], strict=True))
        ratios = [ours.rps / theirs.rps for ours, theirs in pairs]
        per_cpu = [ours.per_cpu_second / (theirs.per_cpu_second or 1) for ours, theirs in pairs]
        line = (
            f"{name} / {reference} req/s: {spread(ratios, '{:.2f}')}"
            f" (per CPU-second: {spread(per_cpu, '{:.2f}')})"
        )
        if target is not None:
            verdict = "met" if statistics.median(ratios) >= target else "NOT met"
            line += f"  (target ≥ {target}: {verdict})"
        print(line)
        if compare_p99:
            p99_ratios = [ours.p99_ms / theirs.p99_ms for ours, theirs in pairs]
            ours_p99 = statistics.median(r.p99_ms for r in results[name])
            theirs_p99 = statistics.median(r.p99_ms for r in results[reference])
            line = (
                f"{name} / {reference} p99: {spread(p99_ratios, '{:.2f}')} "
                f"({ours_p99:.2f} vs {theirs_p99:.2f} ms)"
            )
            if target is not None:
                verdict = "met" if statistics.median(p99_ratios) <= 1.0 else "NOT met"
                line += f"  (target ≤ 1.0: {verdict})"
            print(line)


def print_transfers(
    title: str,
    results: dict[str, list[TransferResult]],
    reference: str,
    ratio_target: float | None,
) -> None:
    print(f"\n== {title} ==")
    for name, runs in results.items():
        line = f"{name:<16} {spread([r.mib_s for r in runs]):>28} MiB/s"
        if name == "gateway" and all(r.gateway_peak_mib is not None for r in runs):
            peaks = [r.gateway_peak_mib or 0.0 for r in runs]
            befores = [r.gateway_before_mib or 0.0 for r in runs]
            cpu = [r.gateway_cpu_s or 0.0 for r in runs]
            line += (
                f"   peak RSS {max(peaks):.1f} MiB (before: {statistics.median(befores):.1f}), "
                f"CPU {statistics.median(cpu):.2f} s"
            )
        print(line)
    if "gateway" not in results:
        return
    ratios = [
        gw.mib_s / ref.mib_s
        for gw, ref in zip(results["gateway"], results.get(reference, []), strict=False)
    ]
    peak = max(r.gateway_peak_mib or 0.0 for r in results["gateway"])
    line = f"gateway / {reference} throughput: {spread(ratios, '{:.2f}') if ratios else '-'}"
    if ratio_target is not None and ratios:
        met = statistics.median(ratios) >= ratio_target
        line += f"  (target ≥ {ratio_target}: {'met' if met else 'NOT met'})"
    print(line)
    verdict = "met" if peak * MIB < 100e6 else "NOT met"
    megabytes = peak * MIB / 1e6
    print(f"gateway peak RSS: {peak:.1f} MiB = {megabytes:.1f} MB  (target < 100 MB: {verdict})")


# --- main -------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)(i?B)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 256M)")
    scale = {"": 1, "K": 1024, "M": MIB, "G": GIB}[match.group(2).upper()]
    return int(match.group(1)) * scale


GATEWAY_TARGETS = ("gateway", "gateway-warning")
TARGETS = ("nginx", "nginx-proxy", "haproxy", "caddy", *GATEWAY_TARGETS)


def parse_targets(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = set(names) - set(TARGETS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"targets are among {', '.join(TARGETS)}: {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="nginx vs nginx-as-proxy vs the gateway, on 127.0.0.1 (see bench/README.md)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything (default 1)")
    parser.add_argument("--duration", type=float, default=10, help="wrk seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="wrk warm-up seconds (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--stream-size", type=parse_size, default=GIB, help="download/upload size (default 1G)"
    )
    parser.add_argument(
        "--targets",
        type=parse_targets,
        default=TARGETS,
        help=f"comma-separated subset of {','.join(TARGETS)} (default: all; 'gateway' is the "
        "gateway at its default log level, info; 'nginx' also stands for the sink when "
        "uploading)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for the other processes on the "
        "machine to leave the CPUs idle (default 0: measure at once, report their load)",
    )
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk phase")
    parser.add_argument("--no-stream", action="store_true", help="skip downloads and uploads")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="nginx access logs (buffered, in the temp dir); the gateway is measured at info "
        "(target 'gateway') and warning ('gateway-warning') in any case",
    )
    parser.add_argument(
        "--gateway-root",
        type=Path,
        default=ROOT,
        help="directory holding the gateway package to run (default: this repository)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        metavar="N",
        help="`gateway serve --workers N` (GATEWAY_WORKERS; default 1: the issue's target)",
    )
    parser.add_argument(
        "--python", type=Path, help="interpreter for the gateway (default: .venv/bin/python)"
    )
    parser.add_argument(
        "--transfer-timeout", type=int, default=120, help="curl --max-time per transfer"
    )
    parser.add_argument(
        "--max-seconds", type=int, help="overall limit (default: computed from the phases)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument(
        "--hold",
        type=float,
        default=0,
        help="after set-up, print the URLs and wait this many seconds (e.g. to attach py-spy)",
    )
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    return parser


def time_budget(args: argparse.Namespace) -> int:
    per_round = 0.0
    if not args.no_wrk:
        per_round += len(args.targets) * (args.warmup + args.duration + 2)
    if not args.no_stream:
        per_round += 10 * (args.stream_size / (50 * MIB) + 2)  # pessimistic 50 MiB/s
    per_round += 3 * len(args.targets) * args.wait_quiet
    return int(60 + 30 * len(args.targets) + args.hold + args.rounds * per_round)


def run(args: argparse.Namespace) -> int:
    missing = missing_tools(stream=not args.no_stream)
    if missing:
        print(
            f"bench: skipped: {', '.join(missing)} not found on PATH; on Debian: "
            "apt-get install nginx wrk curl",
            file=sys.stderr,
        )
        return 0
    absent = [name for name in OPTIONAL_TOOLS_PATHS if not OPTIONAL_TOOLS_PATHS[name]]
    if absent and set(absent) & set(args.targets):
        print(
            f"bench: {', '.join(absent)} not found: left out (apt-get install haproxy caddy)",
            file=sys.stderr,
        )
        args.targets = tuple(name for name in args.targets if name not in absent)
    budget = args.max_seconds or time_budget(args)

    def interrupt(signum: int, _: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            raise Interrupted(f"the overall limit of {budget} s was reached (--max-seconds)")
        raise Interrupted(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    signal.alarm(budget)

    services = Services()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    started = time.monotonic()
    try:
        print(f"bench: temp dir {workdir}, overall limit {budget} s", file=sys.stderr)
        bench = set_up(args, workdir, services)
        print_machine(args)
        if args.hold:
            for target in bench.wrk_targets + bench.download_targets + bench.upload_targets:
                print(f"  {target.name:<12} {target.url}")
            pids = ", ".join(map(str, bench.gateway_pids))
            print(f"  gateway pid(s) {pids}, token {bench.token}; holding {args.hold} s")
            time.sleep(args.hold)
        measure(bench)
    except Interrupted as exc:
        print(f"\nbench: interrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        with contextlib.suppress(Interrupted):
            services.stop_all()
        if args.keep:
            print(f"bench: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbench: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


def measure(bench: Bench) -> None:
    args = bench.args
    wrk_results: dict[str, list[WrkResult]] = {t.name: [] for t in bench.wrk_targets}
    downloads: dict[str, list[TransferResult]] = {t.name: [] for t in bench.download_targets}
    uploads: dict[str, list[TransferResult]] = {t.name: [] for t in bench.upload_targets}
    for round_number in range(1, args.rounds + 1):
        progress(f"round {round_number}/{args.rounds}")
        if not args.no_wrk:
            for target in bench.wrk_targets:
                if args.warmup:
                    bench.wrk(target, args.warmup, report=False)
                result = bench.wrk(target, args.duration, report=True)
                assert result is not None
                wrk_results[target.name].append(result)
                progress(f"  wrk {target.name}: {result.rps:,.0f} req/s")
        if not args.no_stream:
            for target in bench.download_targets:
                outcome = bench.transfer(target, upload=False)
                downloads[target.name].append(outcome)
                progress(f"  download {target.name}: {outcome.mib_s:,.0f} MiB/s")
            for target in bench.upload_targets:
                outcome = bench.transfer(target, upload=True)
                uploads[target.name].append(outcome)
                progress(f"  upload {target.name}: {outcome.mib_s:,.0f} MiB/s")
    if not args.no_wrk:
        print_wrk(wrk_results, args)
    if not args.no_stream:
        size = (
            f"{args.stream_size / GIB:g} GiB"
            if args.stream_size >= GIB
            else f"{args.stream_size / MIB:g} MiB"
        )
        print_transfers(f"download of {size} (curl -o /dev/null)", downloads, "nginx-proxy", 0.9)
        print_transfers(f"upload of {size} (curl -T, sink discards)", uploads, "nginx-proxy", None)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def print_machine(args: argparse.Namespace) -> None:
    nginx_version = subprocess.run(
        ["nginx", "-v"], capture_output=True, text=True, timeout=10, check=False
    ).stderr.strip()
    python = gateway_python(args)
    versions = subprocess.run(
        [
            python,
            "-c",
            "import sys, sysconfig, aiohttp, httptools; "
            "print(sys.version.split()[0], aiohttp.__version__, httptools.__version__, "
            "*[flag for flag in ('--enable-optimizations', '--with-lto') "
            "if flag in (sysconfig.get_config_var('CONFIG_ARGS') or '')])",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.split()
    # The interpreter's own build matters as much as the code: a profile-guided (PGO) and
    # link-time optimised (LTO) CPython, as python.org's and the Docker image's are, runs the
    # gateway faster than a plain `./configure && make` (pyenv's default). Debian's python3 is
    # PGO + LTO too, but its recorded configure options do not say so.
    build = (
        (" ".join(versions[3:]) or "no --enable-optimizations/--with-lto recorded")
        if versions
        else "?"
    )
    print(
        f"machine: {os.cpu_count()} CPUs ({cpu_model()}); {nginx_version}; "
        f"gateway on Python {' / aiohttp '.join(versions[:2]) if versions else '?'} "
        f"({python}: {build})"
    )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sink is not None:
        run_sink(args.sink)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

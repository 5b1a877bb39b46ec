"""Where a proxied request's time goes: the gateway's proxy path built up layer by layer.

Each layer is served by a process of its own, on uvloop, in front of the same origin, and measured
with the same wrk command:

- `front+pool`: the front protocol (gateway/front/protocol.py) and the upstream pool, a handler
  that does nothing else: the floor of any proxy built from these two parts;
- `front+forwarder`: the same with the Forwarder (header rules, credentials, metrics, streaming)
  for one fixed source, but no routing, authentication, policy or request log;
- the gateway itself is measured by `bench/proxy.py`.

Start an origin first, e.g. `bench/proxy.py --targets nginx --no-stream --hold 600 --keep` and
read its port from the printed nginx config dir, then:

    .venv/bin/python bench/proxy_layers.py --origin http://127.0.0.1:PORT --path /query.json
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("front+pool", "front+forwarder")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="origin URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--path", default="/query.json", help="path to fetch from the origin")
    parser.add_argument("--duration", type=int, default=6, help="wrk seconds (default 6)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=LAYERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve, args.origin, args.path, args.port))
        return 0
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 0
    results: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    results["origin"] = []
    for _ in range(args.rounds):
        results["origin"].append(_wrk(args.origin + args.path, args))
        for layer in LAYERS:
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", layer, "--port", str(port),
                 "--origin", args.origin, "--path", args.path],
                cwd=ROOT,
            )  # fmt: skip
            try:
                _wait_listening(port)
                results[layer].append(_wrk(f"http://127.0.0.1:{port}/", args))
            finally:
                process.terminate()
                process.wait(10)
    print(f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.rounds} round(s), req/s:")
    for name, figures in results.items():
        print(f"  {name:18} {' '.join(f'{figure:>9,.0f}' for figure in figures)}")
    return 0


async def _serve(layer: str, origin_url: str, path: str, port: int) -> None:
    sys.path.insert(0, str(ROOT))
    from prometheus_client import CollectorRegistry

    from gateway.config import Settings
    from gateway.front.connections import FrontConnections
    from gateway.front.exchange import Exchange
    from gateway.front.protocol import FrontProtocol
    from gateway.metrics import GatewayMetrics
    from gateway.proxy.forward import Forwarder
    from gateway.proxy.policy import ProxyPath, UpstreamPath
    from gateway.proxy.upstream import Origin, UpstreamPool
    from gateway.registry.models import DataSource

    pool = UpstreamPool(address_filter=lambda host, port, addresses: addresses)
    origin = Origin.from_url(origin_url)
    forwarder = Forwarder(
        pool, Settings(admin_token="bench", secret_key="bench"), GatewayMetrics(CollectorRegistry())
    )
    now = datetime.now(UTC)
    source = DataSource(
        id=1, org_id=1, uid="bench", name="bench", type="prometheus", access="proxy",
        url=origin_url, user="", database="", basic_auth=False, basic_auth_user="",
        with_credentials=False, is_default=False, json_data={}, secure_json_data={}, version=1,
        read_only=False, api_version="", created=now, updated=now,
    )  # fmt: skip

    async def pool_only(exchange: Exchange) -> None:
        response = await pool.request(origin, "GET", path, [(b"Accept", b"*/*")])
        async with response:
            exchange.start_response(response.status, response.reason, response.headers)
            async for chunk in response:
                await exchange.write(chunk)
            exchange.finish()

    upstream_path = UpstreamPath(ProxyPath.parse(path))

    async def with_forwarder(exchange: Exchange) -> None:
        await forwarder.forward(exchange, source, upstream_path, request_id="bench")

    handler = pool_only if layer == "front+pool" else with_forwarder
    connections = FrontConnections()
    loop = asyncio.get_running_loop()
    await loop.create_server(
        lambda: FrontProtocol(
            lambda method, target: handler, lambda: asyncio.Protocol(), connections
        ),
        "127.0.0.1",
        port,
    )
    await asyncio.Event().wait()


def _wrk(url: str, args: argparse.Namespace) -> float:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if match is None or "Non-2xx" in output:
        raise SystemExit(f"bench: unexpected wrk output for {url}:\n{output}")
    return float(match.group(1))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port}")


if __name__ == "__main__":
    sys.exit(main())

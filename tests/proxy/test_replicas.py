"""Replicas of a source (`jsonData.replicaUrls`): failover, round robin, outlier ejection, retries
and their safety rules, per-try timeouts, validation and SSRF — through the real app, on both
carriers, against real upstream HTTP servers (aiohttp test servers and a raw one that freezes)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer

from gateway.app import create_app
from gateway.config import Settings
from gateway.keys import FORWARDER, MONITOR, STORE
from gateway.provisioning.model import ProvisioningFailed
from gateway.provisioning.service import Provisioner
from gateway.registry.models import DataSourceSpec
from tests.conftest import ADMIN_TOKEN, GatewayClient
from tests.proxy.conftest import StartRawServer
from tests.proxy.servers import Peer
from tests.types import AppClient
from tests.waiting import wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


PROBE_AGENT = "datasource-gateway-health/"
# What Prometheus answers `1+1`; /-/ready and buildinfo only need a 2xx.
PROBE_ANSWER = {"status": "success", "data": {"resultType": "scalar", "result": [0, "2"]}}


class Replica:
    """An upstream that says who it is, records what it got, and answers `status` when told."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200  # for proxied requests
        self.probe_status = 200  # for active health probes
        self.seen: list[tuple[str, str, bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        probe = request.headers.get("User-Agent", "").startswith(PROBE_AGENT)
        if probe:  # a healthy Prometheus's answers, or probe_status
            if self.probe_status != 200:
                return web.Response(status=self.probe_status, text=f"{self.name} unavailable")
            return web.json_response(PROBE_ANSWER)
        self.seen.append((request.method, request.raw_path, body))  # what the proxy sent
        if self.status != 200:
            return web.Response(status=self.status, text=f"{self.name} unavailable")
        return web.json_response({"replica": self.name, "path": request.raw_path})


StartReplica = Callable[[str], Awaitable[Replica]]


@pytest.fixture
def start_replica(aiohttp_server: AiohttpServer) -> StartReplica:
    async def start(name: str) -> Replica:
        replica = Replica(name)
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", replica.handle)
        server = await aiohttp_server(app)
        replica.url = str(server.make_url(f"/{name}"))  # each replica's own base path
        return replica

    return start


@pytest.fixture
def closed_ports() -> Iterator[Callable[[], str]]:
    """`closed()` → a URL whose port refuses connections (bound, never listening)."""
    sockets: list[socket.socket] = []

    def closed() -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}/dead"

    yield closed
    for sock in sockets:
        sock.close()


@pytest.fixture
def registry(metrics_registry: CollectorRegistry) -> CollectorRegistry:
    return metrics_registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(client: AppClient) -> FakeClock:
    """Outlier detection's clock, moved by the test instead of waited for."""
    fake = FakeClock()
    client.app[FORWARDER].outliers.clock = fake
    return fake


async def add_source(
    client: AppClient, url: str, replicas: list[str], **json_data: Any
) -> dict[str, Any]:
    body = {
        "name": f"replicated-{time.monotonic_ns()}",
        "type": json_data.pop("type", "prometheus"),
        "access": "proxy",
        "url": url,
        "jsonData": {"replicaUrls": replicas, **json_data},
    }
    response = await client.post("/api/datasources", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    source: dict[str, Any] = (await response.json())["datasource"]
    return source


async def get(
    client: AppClient, source: dict[str, Any], path: str = "api/v1/status/buildinfo"
) -> aiohttp.ClientResponse:
    return await client.get(f"/api/datasources/proxy/uid/{source['uid']}/{path}", headers=AUTH)


async def served_by(client: AppClient, source: dict[str, Any], path: str = "x") -> str:
    response = await get(client, source, path)
    assert response.status == 200, await response.text()
    replica: str = (await response.json())["replica"]
    return replica


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --- choosing a target ---------------------------------------------------------------------------


async def test_failover_to_the_replica_when_the_primary_is_down(
    client: AppClient,
    start_replica: StartReplica,
    closed_ports: Callable[[], str],
    registry: CollectorRegistry,
) -> None:
    primary = closed_ports()
    replica = await start_replica("b")
    source = await add_source(client, primary, [replica.url])
    response = await get(client, source, "api/v1/query?query=up")
    assert response.status == 200
    assert await response.json() == {"replica": "b", "path": "/b/api/v1/query?query=up"}
    assert await served_by(client, source) == "b"  # the primary is ejected: no second try

    uid, target = source["uid"], primary
    labels = {"org": "1", "source_uid": uid}
    assert sample(registry, "gateway_target_requests_total", **labels, target=target,
                  result="connect") == 1  # fmt: skip
    assert sample(registry, "gateway_target_requests_total", **labels, target=replica.url,
                  result="2xx") == 2  # fmt: skip
    assert sample(registry, "gateway_target_ejections_total", **labels, target=target) == 1
    assert sample(registry, "gateway_proxy_failovers_total", **labels,
                  source_type="prometheus") == 1  # fmt: skip


async def test_failover_prefers_the_primary_while_it_is_healthy(
    client: AppClient, start_replica: StartReplica
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    source = await add_source(client, a.url, [b.url])
    assert [await served_by(client, source) for _ in range(4)] == ["a"] * 4
    assert b.seen == []


async def test_round_robin_spreads_over_the_targets(
    client: AppClient, start_replica: StartReplica
) -> None:
    replicas = [await start_replica(name) for name in "abc"]
    source = await add_source(
        client, replicas[0].url, [r.url for r in replicas[1:]], loadBalancing="round_robin"
    )
    answered = [await served_by(client, source) for _ in range(9)]
    assert sorted(answered) == sorted("abc" * 3)
    assert all(len(replica.seen) == 3 for replica in replicas)


# --- outlier ejection ----------------------------------------------------------------------------


async def test_a_replica_answering_503_is_ejected_after_5_and_comes_back_after_30_s(
    client: AppClient, start_replica: StartReplica, clock: FakeClock, registry: CollectorRegistry
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    a.status = 503
    # Passive health alone: a probe of `a` would mark it down on its own.
    source = await add_source(client, a.url, [b.url], healthCheck={"enabled": False})
    with structlog.testing.capture_logs() as logs:
        # Each 503 is discarded and the request retried on b: the client never sees one.
        assert [await served_by(client, source) for _ in range(5)] == ["b"] * 5
        assert len(a.seen) == 5
        assert await served_by(client, source) == "b"
        assert len(a.seen) == 5  # ejected: not even tried

        a.status = 200
        clock.now += 29.9
        assert await served_by(client, source) == "b"
        clock.now += 0.1
        assert await served_by(client, source) == "a"  # back after 30 s x 1
    events = [(e["event"], e.get("reason")) for e in logs if e["event"].startswith("target_")]
    assert events == [
        ("target_ejected", "5 consecutive failures (5xx, resets, timeouts)"),
        ("target_returned", "ejection time over"),
    ]
    ejected = next(e for e in logs if e["event"] == "target_ejected")
    assert ejected["target"] == a.url
    assert ejected["source_uid"] == source["uid"]
    labels = {"org": "1", "source_uid": source["uid"], "target": a.url}
    assert sample(registry, "gateway_target_ejections_total", **labels) == 1
    assert sample(registry, "gateway_target_returns_total", **labels) == 1
    assert sample(registry, "gateway_target_requests_total", **labels, result="5xx") == 5


async def test_a_passing_probe_ends_an_ejection_before_its_time(
    client: AppClient, start_replica: StartReplica, clock: FakeClock
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    source = await add_source(client, a.url, [b.url])
    monitor = client.app[MONITOR]
    await wait_for(lambda: monitor.state(source["id"]) is not None, what="the source monitored")
    state = monitor.state(source["id"])
    assert state is not None
    target = state.targets[a.url]
    await wait_for(lambda: target.status == "pass", what="a's first probe")

    def probe_now(done: bool) -> bool:
        """Ask for a probe of `a` until `done` (the monitor allows one a second per target)."""
        if not done:
            monitor.report_failure(source["id"], a.url)
        return done

    a.status = 503  # proxied requests fail, probes still pass: passive health ejects it
    assert [await served_by(client, source) for _ in range(5)] == ["b"] * 5
    assert await served_by(client, source) == "b"
    assert len(a.seen) == 5  # ejected

    # Active health sees `a` fail once (below fall: still up), then pass: the monitor tells the
    # proxy, and the ejection ends without the outlier clock moving.
    a.status, a.probe_status = 200, 503
    await wait_for(lambda: probe_now(target.consecutive_failures == 1), what="a failed probe")
    a.probe_status = 200
    await wait_for(lambda: probe_now(target.consecutive_failures == 0), what="a passing probe")
    assert target.status == "pass"
    assert await served_by(client, source) == "a"


async def test_the_last_healthy_target_is_never_ejected(
    client: AppClient, start_replica: StartReplica, registry: CollectorRegistry
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    a.status = b.status = 503
    source = await add_source(client, a.url, [b.url])
    for _ in range(12):
        response = await get(client, source)
        assert response.status == 503  # the last try's answer, as the upstream gave it
        assert await response.text() == "b unavailable" or await response.text() == (
            "a unavailable"
        )
    labels = {"org": "1", "source_uid": source["uid"]}
    ejected = [
        sample(registry, "gateway_target_ejections_total", **labels, target=r.url) for r in (a, b)
    ]
    assert ejected == [1, 0]
    assert len(b.seen) == 12  # still served every request


async def test_a_changed_or_deleted_source_forgets_its_outlier_state(
    client: AppClient,
    start_replica: StartReplica,
    closed_ports: Callable[[], str],
    registry: CollectorRegistry,
) -> None:
    primary, b = closed_ports(), await start_replica("b")
    # Passive health alone: a probe finding the closed port would skip the primary on its own.
    passive = {"enabled": False}
    source = await add_source(client, primary, [b.url], healthCheck=passive)
    assert await served_by(client, source) == "b"
    forwarder = client.app[FORWARDER]
    prepared = forwarder.prepared(source["id"])
    assert prepared is not None
    assert prepared.targets.targets[0].ejected_until is not None

    changed = {"name": source["name"], "type": "prometheus", "access": "proxy", "url": primary,
               "jsonData": {"replicaUrls": [b.url], "loadBalancing": "failover",
                            "healthCheck": passive}}  # fmt: skip
    response = await client.put(f"/api/datasources/{source['id']}", json=changed, headers=AUTH)
    assert response.status == 200
    assert await served_by(client, source) == "b"  # the primary is tried afresh
    labels = {"org": "1", "source_uid": source["uid"], "target": primary, "result": "connect"}
    assert sample(registry, "gateway_target_requests_total", **labels) == 2

    deleted = await client.delete(f"/api/datasources/uid/{source['uid']}", headers=AUTH)
    assert deleted.status == 200, await deleted.text()
    await wait_for(lambda: forwarder.prepared(source["id"]) is None, what="forgotten")


# --- retries and their safety ---------------------------------------------------------------------


async def test_a_post_write_is_never_sent_to_a_second_target(
    client: AppClient, start_replica: StartReplica, closed_ports: Callable[[], str]
) -> None:
    # Without the write spool (on by default: it would queue the write for `a` and answer 204,
    # see tests/spool/test_intercept.py); a write is still never sent to the other target.
    unbuffered = {"writeBuffer": {"enabled": False}}
    a, b = await start_replica("a"), await start_replica("b")
    a.status = 503
    source = await add_source(client, a.url, [b.url], type="influxdb", **unbuffered)
    url = f"/write?db=telegraf&source={source['uid']}"
    response = await client.post(url, data=b"cpu v=1", headers=AUTH)
    assert response.status == 503
    assert [seen[0] for seen in a.seen] == ["POST"]
    assert b.seen == []

    dead = await add_source(client, closed_ports(), [b.url], type="influxdb", **unbuffered)
    url = f"/write?db=telegraf&source={dead['uid']}"
    response = await client.post(url, data=b"cpu v=1", headers=AUTH)
    assert response.status == 502
    assert "(1 of 2 targets tried)" in (await response.json())["message"]
    assert b.seen == []


async def test_a_read_only_post_is_retried_with_its_body(
    client: AppClient, start_replica: StartReplica
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    a.status = 503
    source = await add_source(client, a.url, [b.url])
    form = urlencode({"query": "up", "start": "0", "end": "60", "step": "15"}).encode()
    path = f"/api/datasources/proxy/uid/{source['uid']}/api/v1/query_range"
    response = await client.post(path, data=form, headers={**AUTH, **FORM})
    assert response.status == 200
    assert (await response.json())["replica"] == "b"
    assert a.seen == [("POST", "/a/api/v1/query_range", form)]
    assert b.seen == [("POST", "/b/api/v1/query_range", form)]


async def test_a_body_over_64_kib_is_not_retried(
    client: AppClient, start_replica: StartReplica
) -> None:
    a, b = await start_replica("a"), await start_replica("b")
    a.status = 503
    source = await add_source(client, a.url, [b.url])
    form = urlencode({"query": "x" * (65 * 1024)}).encode()
    path = f"/api/datasources/proxy/uid/{source['uid']}/api/v1/query_range"
    response = await client.post(path, data=form, headers={**AUTH, **FORM})
    assert response.status == 503
    assert len(a.seen) == 1
    assert a.seen[0][2] == form  # streamed through, whole
    assert b.seen == []


async def test_a_frozen_replica_costs_at_most_per_try_timeout_until_it_is_ejected(
    client: AppClient, start_replica: StartReplica, raw_server: StartRawServer
) -> None:
    proxied: list[str] = []

    async def frozen(peer: Peer) -> None:
        request = await peer.read_request()
        if request is not None and request.target == "/x":  # not a health probe
            proxied.append(request.target)
        await asyncio.Event().wait()  # accepts and reads, never answers

    stuck = await raw_server(frozen)
    b = await start_replica("b")
    per_try = 0.4
    source = await add_source(
        client, f"http://127.0.0.1:{stuck.port}/", [b.url], retry={"perTryTimeout": per_try}
    )
    for _ in range(3):  # three timeouts eject it
        started = time.monotonic()
        assert await served_by(client, source) == "b"
        assert per_try <= time.monotonic() - started < per_try + 2.0
    started = time.monotonic()
    assert await served_by(client, source) == "b"
    assert time.monotonic() - started < per_try  # no wait any more
    assert len(proxied) == 3


async def test_when_every_target_fails_the_502_names_how_many_were_tried(
    client: AppClient, closed_ports: Callable[[], str]
) -> None:
    urls = [closed_ports() for _ in range(3)]
    source = await add_source(client, urls[0], urls[1:], retry={"attempts": 2})
    for _ in range(2):  # the second time all are ejected: still tried, in order
        response = await get(client, source)
        assert response.status == 502
        body = await response.json()
        assert body["message"] == "upstream connect error (3 of 3 targets tried)"

    no_retry = await add_source(client, urls[0], urls[1:], retry={"attempts": 0})
    response = await get(client, no_retry)
    assert (await response.json())["message"] == "upstream connect error (1 of 3 targets tried)"


# --- validation at save ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("json_data", "message"),
    [
        ({"replicaUrls": ["http://ok:9090/", "ftp://x/"]},
         "jsonData.replicaUrls[1]: must be an absolute http or https URL with a host"),
        ({"replicaUrls": ["http://u:p@b:9090/"]},
         "jsonData.replicaUrls[0]: must not contain a user or password"),
        ({"replicaUrls": [7]}, "jsonData.replicaUrls[0]: must be a URL string"),
        ({"replicaUrls": "http://b:9090/"}, "jsonData.replicaUrls: must be an array of URLs"),
        ({"replicaUrls": ["http://a:9090/"]}, "jsonData.replicaUrls[0]: repeats the source's url"),
        ({"loadBalancing": "random"},
         'jsonData.loadBalancing: must be "failover" or "round_robin"'),
        ({"retry": {"attempts": -1}}, "jsonData.retry.attempts: must be a whole number"),
        ({"retry": {"attempts": 1.5}}, "jsonData.retry.attempts: must be a whole number"),
        ({"retry": {"perTryTimeout": 0}}, "jsonData.retry.perTryTimeout: must be a number"),
        ({"retry": 3}, "jsonData.retry: must be an object"),
    ],
)  # fmt: skip
async def test_bad_replica_settings_are_400_naming_the_field(
    client: AppClient, json_data: dict[str, Any], message: str
) -> None:
    body = {"name": "p", "type": "prometheus", "access": "proxy", "url": "http://a:9090/"}
    response = await client.post(
        "/api/datasources", json={**body, "jsonData": json_data}, headers=AUTH
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith(message)

    created = await client.post("/api/datasources", json=body, headers=AUTH)
    source_id = (await created.json())["id"]
    response = await client.put(
        f"/api/datasources/{source_id}", json={**body, "jsonData": json_data}, headers=AUTH
    )
    assert response.status == 400
    assert (await response.json())["message"].startswith(message)


class TestSsrf:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        denied = ("127.0.0.2/32", "169.254.0.0/16")
        return dataclasses.replace(settings, proxy_denied_networks=denied)

    async def test_a_denied_replica_is_refused_at_save_naming_it(self, client: AppClient) -> None:
        body = {
            "name": "p",
            "type": "prometheus",
            "access": "proxy",
            "url": "http://127.0.0.1:9090/",
            "jsonData": {"replicaUrls": ["http://127.0.0.1:9091/", "http://169.254.169.254/"]},
        }
        response = await client.post("/api/datasources", json=body, headers=AUTH)
        assert response.status == 400
        message = (await response.json())["message"]
        assert message.startswith("Data source URL jsonData.replicaUrls[1] is not allowed")

    async def test_a_denied_replica_is_refused_at_connect(
        self, client: AppClient, start_replica: StartReplica, closed_ports: Callable[[], str]
    ) -> None:
        b = await start_replica("b")
        denied = b.url.replace("127.0.0.1", "127.0.0.2")
        # Stored directly: as a source saved before the policy changed.
        spec = DataSourceSpec(
            name="p", type="prometheus", url=closed_ports(), json_data={"replicaUrls": [denied]}
        )
        source = await client.app[STORE].create_source(1, spec)
        response = await client.get(f"/api/datasources/proxy/uid/{source.uid}/x", headers=AUTH)
        assert response.status == 403
        assert "denied network 127.0.0.2/32" in (await response.json())["message"]
        assert b.seen == []


# --- provisioning and InfluxDB's API -------------------------------------------------------------


async def test_a_provisioned_source_with_replicas_fails_over(
    gateway_client: GatewayClient,
    settings: Settings,
    folder: Path,
    start_replica: StartReplica,
    closed_ports: Callable[[], str],
) -> None:
    b = await start_replica("b")
    (folder / "replicas.yaml").write_text(
        textwrap.dedent(f"""
        apiVersion: 1
        datasources:
          - name: Replicated
            uid: replicated
            type: prometheus
            url: {closed_ports()}
            jsonData:
              replicaUrls: ["{b.url}"]
              loadBalancing: failover
              retry: {{attempts: 1, perTryTimeout: 2}}
        """)
    )
    client = await gateway_client(
        create_app(dataclasses.replace(settings, provisioning_path=folder))
    )
    assert await served_by(client, {"uid": "replicated"}) == "b"


async def test_provisioning_reports_the_bad_replica_entry(folder: Path, client: AppClient) -> None:
    (folder / "bad.yaml").write_text(
        textwrap.dedent("""
        apiVersion: 1
        datasources:
          - name: Replicated
            type: prometheus
            url: http://a:9090/
            jsonData:
              replicaUrls: ["http://b:9090/", "not a url"]
              retry: {attempts: -2}
        """)
    )
    with pytest.raises(ProvisioningFailed) as failure:
        await Provisioner(client.app[STORE], folder, {}).apply("test")
    messages = [problem.message for problem in failure.value.problems]
    assert messages == [
        "jsonData.replicaUrls[1]: must not contain spaces, control characters or backslashes",
        "jsonData.retry.attempts: must be a whole number, 0 or more",
    ]


async def test_influxdbs_sources_api_shows_url_and_keeps_replica_urls(
    client: AppClient, start_replica: StartReplica
) -> None:
    replicas = ["http://influx-b:8086/", "http://influx-c:8086/"]
    source = await add_source(
        client, "http://influx-a:8086/", replicas, type="influxdb", loadBalancing="round_robin"
    )
    path = f"/api/v2/sources/{source['id']:016x}"
    shown = await (await client.get(path, headers=AUTH)).json()
    assert shown["url"] == "http://influx-a:8086/"
    assert "replicaUrls" not in shown

    patch = {"url": "http://influx-z:8086/", "name": "renamed", "insecureSkipVerify": True}
    response = await client.patch(path, json=patch, headers=AUTH)
    assert response.status == 200, await response.text()
    assert (await response.json())["url"] == "http://influx-z:8086/"

    stored = await (await client.get(f"/api/datasources/uid/{source['uid']}", headers=AUTH)).json()
    assert stored["url"] == "http://influx-z:8086/"
    assert stored["jsonData"]["replicaUrls"] == replicas
    assert stored["jsonData"]["loadBalancing"] == "round_robin"

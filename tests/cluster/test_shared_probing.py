"""Three `gateway serve` processes on one PostgreSQL registry share the probing (issue 20):
each source probed by exactly one of them, the same health everywhere (/health, the health
route, gateway_source_up and gateway_target_up), each state change logged
once, and the share of a gateway killed with SIGKILL probed again within two intervals."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.upstream import CountingUpstream
from tests.conftest import ADMIN_TOKEN
from tests.process import GatewayProcess

INTERVAL = 1.0  # GATEWAY_HEALTH_INTERVAL of the three gateways
SOURCES = [f"s{n}" for n in range(9)]
SETTLE_SECONDS = 20.0  # the most any wait below may take on a loaded machine


@pytest.fixture
def upstream() -> Iterator[CountingUpstream]:
    server = CountingUpstream()
    yield server
    server.close()


@pytest.fixture
def gateways(postgres_url: str, tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """Three gateways on one database, each seeing the other two, with SOURCES registered."""
    env = {
        "GATEWAY_DATABASE_URL": postgres_url,
        "GATEWAY_HEALTH_INTERVAL": str(INTERVAL),
        "GATEWAY_HEALTH_TIMEOUT": "0.5",
    }
    with ThreadPoolExecutor(3) as starting:
        futures = [starting.submit(GatewayProcess, tmp_path / f"g{n}", env) for n in range(3)]
        started = [future.result() for future in futures]
    try:
        wait_until(lambda: all(members(gateway) == 3 for gateway in started), "3 members")
        yield started
    finally:
        with ExitStack() as stopping:  # every one is stopped, whichever fails to stop
            for gateway in started:
                stopping.callback(gateway.stop)


def members(gateway: GatewayProcess) -> int | None:
    """How many live members the gateway saw last."""
    seen = [
        event["members"]
        for event in gateway.events()
        if event.get("event") in ("cluster_joined", "cluster_members_changed")
    ]
    return int(str(seen[-1])) if seen else None


def wait_until(done: Callable[[], bool], what: str, seconds: float = SETTLE_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"not {what} after {seconds} s"
        time.sleep(0.05)


def call(url: str, method: str = "GET", body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


def register_sources(gateway: GatewayProcess, upstream: CountingUpstream) -> None:
    for uid in SOURCES:
        created = call(
            f"{gateway.url}/api/datasources",
            "POST",
            {
                "uid": uid,
                "name": uid,
                "type": "loki",
                "access": "proxy",
                "url": f"{upstream.url}/{uid}",
            },
        )
        assert created.get("datasource", {}).get("uid") == uid, created


def probe_counts(gateway: GatewayProcess) -> dict[str, float]:
    """gateway_health_probes_total of each source, as this gateway counts its own probes."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_health_probes":
            for sample in family.samples:
                if sample.name == "gateway_health_probes_total":
                    uid = sample.labels["source_uid"]
                    counts[uid] = counts.get(uid, 0.0) + sample.value
    return counts


def up_gauges(gateway: GatewayProcess) -> list[tuple[str, str, float]]:
    """gateway_source_up and gateway_target_up, by source uid, as the gateway serves them."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sorted(
        (sample.name, sample.labels["source_uid"], sample.value)
        for family in text_string_to_metric_families(text)
        if family.name in ("gateway_source_up", "gateway_target_up")
        for sample in family.samples
    )


def probers(gateways: list[GatewayProcess], seconds: float) -> dict[str, list[int]]:
    """For each source, which gateways (by index) probed it during the next `seconds`."""
    before = [probe_counts(gateway) for gateway in gateways]
    time.sleep(seconds)
    after = [probe_counts(gateway) for gateway in gateways]
    return {
        uid: [n for n in range(len(gateways)) if after[n].get(uid, 0) > before[n].get(uid, 0)]
        for uid in SOURCES
    }


def source_checks(gateway: GatewayProcess) -> list[dict[str, Any]]:
    """The data source entries of the gateway's /health (its own store check left out)."""
    health = call(f"{gateway.url}/health")
    return [check for check in health["checks"] if check["name"] in SOURCES]


def agree(answers: list[Any]) -> bool:
    return all(answer == answers[0] for answer in answers)


def source_status(gateway: GatewayProcess, uid: str) -> str | None:
    return str(call(f"{gateway.url}/api/datasources/uid/{uid}/health").get("status"))


def test_each_source_is_probed_by_one_gateway_and_all_agree(
    gateways: list[GatewayProcess], upstream: CountingUpstream
) -> None:
    register_sources(gateways[0], upstream)
    wait_until(lambda: all(len(source_checks(g)) == len(SOURCES) for g in gateways), "all known")

    window_start = time.monotonic()
    by_source = probers(gateways, 3 * INTERVAL)
    window = time.monotonic() - window_start
    assert all(len(probed_by) == 1 for probed_by in by_source.values()), by_source
    # Not three gateways' worth of probes: one per interval (jitter ±15 %), one in flight.
    for uid in SOURCES:
        assert len(upstream.probes(uid, since=window_start)) <= window / (INTERVAL * 0.85) + 1

    upstream.fail("s0")  # the Loki probe's /ready answers 503: three failures make it fail
    wait_until(lambda: all(source_status(g, "s0") == "ERROR" for g in gateways), "s0 failing")
    wait_until(
        lambda: all(
            any(c["name"] == "s0" and c["status"] == "fail" for c in source_checks(g))
            for g in gateways
        ),
        "s0 failing in /health",
    )
    # Every gateway serves the same checks (the owner's results, adopted by the others) ...
    wait_until(lambda: agree([source_checks(g) for g in gateways]), "the same /health")
    wait_until(lambda: agree([up_gauges(g) for g in gateways]), "the same gateway_*_up")
    assert ("gateway_source_up", "s0", 0.0) in up_gauges(gateways[0])
    # ... and the state change was logged once, by the gateway that saw it happen.
    time.sleep(INTERVAL)
    events = [event for g in gateways for event in g.events() if event.get("source_uid") == "s0"]
    for name in ("source_unhealthy", "target_unhealthy"):
        assert [e["event"] for e in events].count(name) == 1, events


def test_a_killed_gateways_sources_are_probed_again_within_two_intervals(
    gateways: list[GatewayProcess], upstream: CountingUpstream
) -> None:
    register_sources(gateways[0], upstream)
    wait_until(lambda: all(upstream.probes(uid) for uid in SOURCES), "every source probed")
    by_source = probers(gateways, 2 * INTERVAL)
    share = [[uid for uid, probed_by in by_source.items() if probed_by == [n]] for n in range(3)]
    victim = max(range(3), key=lambda n: len(share[n]))
    assert share[victim], by_source

    gateways[victim].proc.kill()
    gateways[victim].proc.wait()
    killed = time.monotonic()
    wait_until(lambda: all(upstream.probes(uid, since=killed) for uid in share[victim]), "probed")
    taken_over = max(upstream.probes(uid, since=killed)[0] - killed for uid in share[victim])
    assert taken_over <= 2 * INTERVAL, f"{taken_over:.2f} s"

    survivors = [g for n, g in enumerate(gateways) if n != victim]
    wait_until(lambda: all(members(g) == 2 for g in survivors), "2 members")
    by_source = probers(survivors, 2 * INTERVAL)
    assert all(len(probed_by) == 1 for probed_by in by_source.values()), by_source

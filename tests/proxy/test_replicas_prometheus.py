"""Two real Prometheus processes as replicas of one source: one crashes (SIGKILL) or freezes
(SIGSTOP) while clients query through the gateway, and no client sees an error; when it comes
back, traffic returns to it as the source's load balancing says."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.keys import FORWARDER
from tests.proxy.test_proxy_prometheus import add_source, prometheus_handler_requests
from tests.services.prometheus import PrometheusProcess, StartPrometheus
from tests.types import AppClient
from tests.waiting import wait_for

# query_range: the health probes use api/v1/query, so Prometheus's own count of this handler
# says how many of the proxied queries each replica answered.
HANDLER = "/api/v1/query_range"
QUERY = "/api/datasources/proxy/uid/{uid}" + HANDLER + "?query=vector(1)&start=0&end=60&step=15"
PER_TRY_TIMEOUT = 0.5
EJECTION_TIME = 30.0  # the first ejection of a target
# Passive health alone decides here, on the test's clock: an active probe of the dead or frozen
# replica would mark it down until two probes pass, which on the probe schedule of the test
# settings (30 s) is after the test. tests/health/test_targets.py and test_replicas.py cover a
# passing probe ending an ejection.
PASSIVE_ONLY = {"enabled": False}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(client: AppClient) -> FakeClock:
    fake = FakeClock()
    client.app[FORWARDER].outliers.clock = fake
    return fake


@pytest.fixture
async def pair(start_prometheus: StartPrometheus) -> tuple[PrometheusProcess, PrometheusProcess]:
    first, second = await asyncio.gather(
        asyncio.to_thread(start_prometheus), asyncio.to_thread(start_prometheus)
    )
    return first, second


class Querier:
    """Clients querying through the gateway until stopped; every answer that is not a 200
    with Prometheus's result is an error."""

    def __init__(self, client: AppClient, headers: dict[str, str], uid: str) -> None:
        self.client = client
        self.headers = headers
        self.path = QUERY.format(uid=uid)
        self.answered = 0
        self.errors: list[str] = []
        self.durations: list[float] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, workers: int) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def query(self) -> float:
        started = time.monotonic()
        try:
            response = await self.client.get(self.path, headers=self.headers)
            body: dict[str, Any] = await response.json()
            if response.status != 200 or body.get("status") != "success":
                self.errors.append(f"{response.status} {body}")
        except Exception as exc:  # a cut connection is a client error too
            self.errors.append(repr(exc))
        self.answered += 1
        elapsed = time.monotonic() - started
        self.durations.append(elapsed)
        return elapsed

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self.query()


async def queries(url: str) -> float:
    return await prometheus_handler_requests(url, HANDLER)


async def test_sigkill_of_the_primary_while_clients_query_then_restart(
    client: AppClient,
    admin_headers: dict[str, str],
    pair: tuple[PrometheusProcess, PrometheusProcess],
    clock: FakeClock,
) -> None:
    primary, replica = pair
    source = await add_source(
        client,
        admin_headers,
        url=primary.url,
        jsonData={"replicaUrls": [replica.url], "healthCheck": PASSIVE_ONLY},
    )
    querier = Querier(client, admin_headers, source["uid"])
    querier.start(workers=3)
    await wait_for(lambda: querier.answered >= 20, what="queries before the crash")
    primary.kill()
    killed_at = querier.answered
    await wait_for(lambda: querier.answered >= killed_at + 40, what="queries after the crash")
    await querier.stop()
    assert querier.errors == []

    # Failover: the restarted primary gets the traffic back once its ejection is over.
    await asyncio.to_thread(primary.start)
    before = await queries(replica.url)
    clock.now += EJECTION_TIME
    for _ in range(5):
        await querier.query()
    assert querier.errors == []
    assert await queries(primary.url) == 5
    assert await queries(replica.url) == before


async def test_sigstop_costs_at_most_per_try_timeout_until_ejected_then_sigcont(
    client: AppClient,
    admin_headers: dict[str, str],
    metrics_registry: CollectorRegistry,
    pair: tuple[PrometheusProcess, PrometheusProcess],
    clock: FakeClock,
) -> None:
    first, second = pair
    source = await add_source(
        client,
        admin_headers,
        url=first.url,
        jsonData={
            "replicaUrls": [second.url],
            "loadBalancing": "round_robin",
            "retry": {"attempts": 1, "perTryTimeout": PER_TRY_TIMEOUT},
            "healthCheck": PASSIVE_ONLY,
        },
    )
    querier = Querier(client, admin_headers, source["uid"])

    def tries(result: str | None = None) -> float:
        """The gateway's count of tries of the frozen replica (of one result, or all)."""
        total = 0.0
        for metric in metrics_registry.collect():
            for sample in metric.samples:
                labels = sample.labels
                if (
                    sample.name == "gateway_target_requests_total"
                    and labels.get("target") == first.url
                    and (result is None or labels.get("result") == result)
                ):
                    total += sample.value
        return total

    for _ in range(4):  # both answer, in turn
        await querier.query()
    before_freeze = tries()
    first.freeze()
    # Round robin sends every other request to the frozen one until it is ejected (3 timeouts):
    # each of those waits perTryTimeout, then the other answers. Counted by the gateway, not
    # timed by the test: on a loaded machine a fast answer can take as long as a timeout.
    for _ in range(6):
        assert await querier.query() < PER_TRY_TIMEOUT + 2.0
    assert tries("timeout") == 3
    assert tries() - before_freeze == 3  # frozen: not one answer from it, only the timeouts
    frozen_tries = tries()
    for _ in range(10):  # ejected: not tried again, so nobody waits on it
        await querier.query()
    assert tries() == frozen_tries
    assert querier.errors == []

    # Round robin: once back, both get their share again.
    first.thaw()
    clock.now += EJECTION_TIME
    before = (await queries(first.url), await queries(second.url))
    for _ in range(6):
        await querier.query()
    after = (await queries(first.url), await queries(second.url))
    assert querier.errors == []
    assert tries("timeout") == 3  # the thawed one answers in time again
    # The thawed one may still count the tries it got while frozen (they were in its socket
    # buffer), so its share is at least its turn; the other's is exact.
    assert after[0] - before[0] >= 3
    assert after[1] - before[1] == 3

"""The target chooser and outlier ejection (gateway/proxy/targets.py), driven by a fake clock and
a small in-test active health, since they are pure state: the requests that feed them in real
life are in test_replicas.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics, TargetMeters
from gateway.proxy.targets import Outliers, Target, TargetSet, TryResult, _TargetListener
from gateway.proxy.upstream import Origin
from gateway.registry.models import DataSource, target_label

URLS = ("http://a:9090/", "http://b:9090/", "http://c:9090/")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ActiveHealth:
    """A TargetHealth whose answers the test sets."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.reported: list[tuple[int, str | None]] = []
        self.listeners: list[_TargetListener] = []

    def target_healthy(self, source_id: int, url: str) -> bool:
        return url not in self.down

    def report_failure(self, source_id: int, url: str | None = None) -> None:
        self.reported.append((source_id, url))

    def add_target_listener(self, listener: _TargetListener) -> None:
        self.listeners.append(listener)


def make_source(urls: tuple[str, ...] = URLS, **json_data: Any) -> DataSource:
    now = datetime.now(UTC)
    return DataSource(
        id=7, org_id=1, uid="prom", name="prom", type="prometheus", access="proxy",
        url=urls[0], user="", database="", basic_auth=False, basic_auth_user="",
        with_credentials=False, is_default=False,
        json_data={"replicaUrls": list(urls[1:]), **json_data}, secure_json_data={}, version=1,
        read_only=False, api_version="", created=now, updated=now,
    )  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health() -> ActiveHealth:
    return ActiveHealth()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def target_set(
    source: DataSource, clock: FakeClock, health: ActiveHealth, registry: CollectorRegistry
) -> TargetSet:
    metrics = GatewayMetrics(registry)
    targets = [
        Target(index, url, Origin.from_url(url), meters(metrics, source, url))
        for index, url in enumerate(source.target_urls)
    ]
    return TargetSet(source, targets, Outliers(clock=clock), health)


def meters(metrics: GatewayMetrics, source: DataSource, url: str) -> TargetMeters:
    return metrics.target_meters(source.org_id, source.uid, target_label(url))


@pytest.fixture
def failover(clock: FakeClock, health: ActiveHealth, registry: CollectorRegistry) -> TargetSet:
    return target_set(make_source(), clock, health, registry)


def first(targets: TargetSet) -> str:
    chosen = targets.choose([])
    assert chosen is not None
    return chosen.url


def fail(targets: TargetSet, url: str, result: TryResult, times: int = 1) -> None:
    target = next(t for t in targets.targets if t.url == url)
    for _ in range(times):
        targets.record(target, result)


def ejections(registry: CollectorRegistry, url: str) -> float:
    labels = {"org": "1", "source_uid": "prom", "target": url}
    return registry.get_sample_value("gateway_target_ejections_total", labels) or 0.0


# --- choosing ----------------------------------------------------------------------------------


def test_failover_takes_the_first_healthy_target_in_list_order(
    failover: TargetSet, health: ActiveHealth
) -> None:
    assert first(failover) == URLS[0]
    health.down = {URLS[0]}
    assert first(failover) == URLS[1]
    health.down = {URLS[0], URLS[1]}
    assert first(failover) == URLS[2]


def test_a_retry_takes_the_next_untried_healthy_target_then_the_unhealthy_in_order(
    failover: TargetSet, health: ActiveHealth
) -> None:
    a, b, c = failover.targets
    health.down = {b.url}
    assert failover.choose([a]) is c
    assert failover.choose([a, c]) is b  # no healthy target left: still tried
    assert failover.choose([a, b, c]) is None


def test_with_no_healthy_target_they_are_still_tried_in_order(
    failover: TargetSet, health: ActiveHealth
) -> None:
    health.down = set(URLS)
    assert first(failover) == URLS[0]


def test_round_robin_spreads_over_the_healthy_targets(
    clock: FakeClock, health: ActiveHealth, registry: CollectorRegistry
) -> None:
    targets = target_set(make_source(loadBalancing="round_robin"), clock, health, registry)
    assert [first(targets) for _ in range(6)] == [*URLS, *URLS]
    health.down = {URLS[1]}
    chosen = [first(targets) for _ in range(4)]
    assert sorted(chosen) == sorted([URLS[0], URLS[0], URLS[2], URLS[2]])
    a, _b, c = targets.targets
    assert targets.choose([a]) is c  # a retry goes on round the list, past the unhealthy one
    assert targets.choose([c]) is a


def test_a_source_with_one_url_always_gets_it(
    clock: FakeClock, health: ActiveHealth, registry: CollectorRegistry
) -> None:
    targets = target_set(make_source(URLS[:1]), clock, health, registry)
    health.down = {URLS[0]}
    only = targets.targets[0]
    assert targets.choose([]) is only
    assert targets.choose([only]) is None
    fail(targets, URLS[0], "connect", times=10)
    assert targets.choose([]) is only
    assert ejections(registry, URLS[0]) == 0


# --- ejection ----------------------------------------------------------------------------------


def test_thresholds_connect_1_timeouts_3_failures_5(
    failover: TargetSet, registry: CollectorRegistry
) -> None:
    fail(failover, URLS[0], "connect")
    assert first(failover) == URLS[1]

    fail(failover, URLS[1], "timeout", times=2)
    assert first(failover) == URLS[1]
    fail(failover, URLS[1], "timeout")
    assert first(failover) == URLS[2]  # both ejected now

    assert [ejections(registry, url) for url in URLS] == [1, 1, 0]


def test_five_consecutive_5xx_eject_and_an_answer_below_500_resets_the_count(
    failover: TargetSet,
) -> None:
    a = failover.targets[0]
    fail(failover, a.url, "5xx", times=4)
    failover.record(a, "ok")
    fail(failover, a.url, "5xx", times=4)
    assert first(failover) == a.url
    fail(failover, a.url, "reset")  # resets count with 5xx
    assert first(failover) == URLS[1]


def test_an_ejection_lasts_30_s_times_n_capped_at_5_minutes_and_is_logged_once(
    failover: TargetSet, clock: FakeClock, registry: CollectorRegistry
) -> None:
    a = failover.targets[0]
    durations = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(12):
            fail(failover, a.url, "connect")
            until = a.ejected_until
            assert until is not None
            durations.append(until - clock.now)
            clock.now = until - 0.001
            assert first(failover) == URLS[1]
            clock.now = until
            assert first(failover) == a.url  # back once its time is over
    assert durations == [30.0 * n for n in range(1, 11)] + [300.0, 300.0]
    assert ejections(registry, a.url) == 12
    ejected = [entry for entry in logs if entry["event"] == "target_ejected"]
    returned = [entry for entry in logs if entry["event"] == "target_returned"]
    assert len(ejected) == len(returned) == 12
    assert ejected[0]["target"] == a.url
    assert ejected[0]["source_uid"] == "prom"
    assert ejected[0]["reason"] == "1 consecutive connect failures"
    assert returned[0]["reason"] == "ejection time over"


def test_the_last_healthy_target_is_never_ejected(
    failover: TargetSet, health: ActiveHealth, registry: CollectorRegistry
) -> None:
    health.down = {URLS[2]}
    fail(failover, URLS[0], "connect")
    fail(failover, URLS[1], "connect", times=5)
    assert first(failover) == URLS[1]
    assert [ejections(registry, url) for url in URLS] == [1, 0, 0]


def test_a_passing_probe_ends_an_ejection(failover: TargetSet) -> None:
    fail(failover, URLS[0], "connect")
    assert first(failover) == URLS[1]
    with structlog.testing.capture_logs() as logs:
        failover.probe_passed(URLS[0])
        failover.probe_passed(URLS[0])  # not ejected any more: nothing to log
    assert first(failover) == URLS[0]
    assert [(e["event"], e["reason"]) for e in logs] == [("target_returned", "probe passed")]


def test_logs_and_labels_never_carry_userinfo(
    clock: FakeClock, health: ActiveHealth, registry: CollectorRegistry
) -> None:
    urls = ("http://a:9090/", "http://user:secret@b:9090/p")
    targets = target_set(make_source(urls), clock, health, registry)
    with structlog.testing.capture_logs() as logs:
        fail(targets, urls[1], "connect")
    assert logs[0]["target"] == "http://b:9090/p"
    assert "secret" not in repr(logs)

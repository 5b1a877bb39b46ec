"""Prometheus metrics, defined once on an injectable CollectorRegistry.

Names follow Prometheus conventions: `gateway_` prefix, base units, `_total` counters,
`_seconds` and `_bytes`. Labels only take bounded values: source uid and type (bounded by the
registry), org id, method, status code, route template, error kind — never a raw path or query.

Source health and the registry's size are read at scrape time by `SourceStateCollector`, from
the monitor's in-memory state, so a scrape costs no probe and no SQL.
"""

from __future__ import annotations

import os
import platform
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.registry.models import DataSource, target_label
from gateway.version import commit

if TYPE_CHECKING:
    from gateway.health.state import SourceState

# Data-source queries take from milliseconds to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "reset", "tls", "protocol")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own switch

_SOURCE = ("org", "source_uid", "source_type")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.served = registry  # what /metrics exposes; see exposition_registry
        # Proxied requests: what clients asked of the data sources.
        self.proxy_requests = Counter(
            "gateway_proxy_requests_total",
            "Proxied requests by source, method and response status code.",
            [*_SOURCE, "method", "code"],
            registry=registry,
        )
        self.proxy_upstream_latency = Histogram(
            "gateway_proxy_upstream_latency_seconds",
            "Time from receiving a proxied request to the upstream's response headers.",
            _SOURCE,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.proxy_duration = Histogram(
            "gateway_proxy_request_duration_seconds",
            "Time from receiving a proxied request to the end of its response body.",
            _SOURCE,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.proxy_request_bytes = Counter(
            "gateway_proxy_request_bytes_total",
            "Request body bytes sent to upstreams.",
            _SOURCE,
            registry=registry,
        )
        self.proxy_response_bytes = Counter(
            "gateway_proxy_response_bytes_total",
            "Response body bytes sent back to clients.",
            _SOURCE,
            registry=registry,
        )
        self.proxy_in_flight = Gauge(
            "gateway_proxy_requests_in_flight",
            "Proxied requests being served now.",
            _SOURCE,
            registry=registry,
            multiprocess_mode="livesum",  # with --workers: the sum over live workers
        )
        self.proxy_upstream_errors = Counter(
            "gateway_proxy_upstream_errors_total",
            "Proxied requests that failed at the upstream, by kind "
            "(connect, timeout, reset, tls, protocol).",
            [*_SOURCE, "kind"],
            registry=registry,
        )
        # Replicas (jsonData.replicaUrls): where requests went, and what health did about it.
        # `target` is a URL without userinfo (registry.models.target_label): one series per URL.
        self.target_requests = Counter(
            "gateway_target_requests_total",
            "Proxied request tries by target (one URL of a source) and result: the upstream's "
            "status class (2xx, 3xx, 4xx, 5xx) or the error kind (connect, timeout, reset, ...).",
            ["org", "source_uid", "target", "result"],
            registry=registry,
        )
        self.proxy_failovers = Counter(
            "gateway_proxy_failovers_total",
            "Proxied requests retried on another target of their source after a failed try.",
            _SOURCE,
            registry=registry,
        )
        self.target_ejections = Counter(
            "gateway_target_ejections_total",
            "Targets ejected from load balancing by outlier detection (passive health).",
            ["org", "source_uid", "target"],
            registry=registry,
        )
        self.target_returns = Counter(
            "gateway_target_returns_total",
            "Ejected targets returned to load balancing: their ejection time ran out or a "
            "health probe passed.",
            ["org", "source_uid", "target"],
            registry=registry,
        )
        # The gateway's own API.
        self.api_requests = Counter(
            "gateway_api_requests_total",
            "HTTP requests to the gateway by route template, method and status code.",
            ["route", "method", "code"],
            registry=registry,
        )
        self.api_duration = Histogram(
            "gateway_api_request_duration_seconds",
            "Time to answer gateway HTTP requests, by route template.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Label children by labels: `.labels()` costs more than the update it serves.
        self._api_counters: dict[tuple[str, str, int], Counter] = {}
        self._api_histograms: dict[tuple[str, str], Histogram] = {}
        # Health monitoring.
        self.probe_duration = Histogram(
            "gateway_health_probe_duration_seconds",
            "Time one health probe of a source took.",
            _SOURCE,
            buckets=PROBE_BUCKETS,
            registry=registry,
        )
        self.probes = Counter(
            "gateway_health_probes_total",
            "Health probes by source and result (pass, fail).",
            [*_SOURCE, "result"],
            registry=registry,
        )
        self.transitions = Counter(
            "gateway_health_transitions_total",
            "Source health state changes, by the state entered (up, down).",
            [*_SOURCE, "to"],
            registry=registry,
        )
        self.target_transitions = Counter(
            "gateway_health_target_transitions_total",
            "Target (one URL of a source) health state changes, by the state entered (up, down).",
            ["org", "source_uid", "target", "to"],
            registry=registry,
        )
        build = Gauge(
            "gateway_build_info",
            "Always 1; the labels say which build is running.",
            ["version", "commit", "python_version"],
            registry=registry,
            multiprocess_mode="max",
        )
        build.labels(__version__, commit(), platform.python_version()).set(1)

    def record_api_request(self, route: str, method: str, status: int, elapsed: float) -> None:
        """One answered request to the gateway, by route template."""
        counter = self._api_counters.get((route, method, status))
        if counter is None:
            counter = self.api_requests.labels(route, method, str(status))
            self._api_counters[(route, method, status)] = counter
        counter.inc()
        histogram = self._api_histograms.get((route, method))
        if histogram is None:
            histogram = self._api_histograms[(route, method)] = self.api_duration.labels(
                route, method
            )
        histogram.observe(elapsed)

    def count_target_transition(self, source: DataSource, url: str, healthy: bool) -> None:
        """One target health state change (the monitor's `on_target_transition` hook)."""
        to = "up" if healthy else "down"
        self.target_transitions.labels(str(source.org_id), source.uid, target_label(url), to).inc()

    def source_labels(self, org_id: int, uid: str, source_type: str) -> tuple[str, str, str]:
        return (str(org_id), uid, source_type)

    def source_meters(self, labels: tuple[str, str, str]) -> SourceMeters:
        """The proxy metrics of one source, resolved once: `.labels()` takes a lock and a
        lookup each time, and the proxied path would otherwise pay it seven times a request."""
        return SourceMeters(
            in_flight=self.proxy_in_flight.labels(*labels),
            upstream_latency=self.proxy_upstream_latency.labels(*labels),
            duration=self.proxy_duration.labels(*labels),
            request_bytes=self.proxy_request_bytes.labels(*labels),
            response_bytes=self.proxy_response_bytes.labels(*labels),
            failovers=self.proxy_failovers.labels(*labels),
            _requests=self.proxy_requests,
            _errors=self.proxy_upstream_errors,
            _labels=labels,
        )

    def target_meters(self, org_id: int, uid: str, target: str) -> TargetMeters:
        """The metrics of one target of a source (`target`: its label, a URL without
        userinfo), resolved once per prepared source."""
        labels = (str(org_id), uid, target)
        return TargetMeters(
            ejections=self.target_ejections.labels(*labels),
            returns=self.target_returns.labels(*labels),
            _requests=self.target_requests,
            _labels=labels,
        )


@dataclass(slots=True)
class TargetMeters:
    ejections: Counter
    returns: Counter
    _requests: Counter
    _labels: tuple[str, str, str]
    _by_result: dict[str, Counter] = field(default_factory=dict)

    def requests(self, result: str) -> Counter:
        """Tries of this target by result: a status class ("2xx") or an error kind."""
        child = self._by_result.get(result)
        if child is None:
            child = self._by_result[result] = self._requests.labels(*self._labels, result)
        return child


@dataclass(slots=True)
class SourceMeters:
    in_flight: Gauge
    upstream_latency: Histogram
    duration: Histogram
    request_bytes: Counter
    response_bytes: Counter
    failovers: Counter
    _requests: Counter
    _errors: Counter
    _labels: tuple[str, str, str]
    _by_outcome: dict[tuple[str, str], Counter] = field(default_factory=dict)

    def requests(self, method: str, code: str) -> Counter:
        child = self._by_outcome.get((method, code))
        if child is None:
            child = self._by_outcome[(method, code)] = self._requests.labels(
                *self._labels, method, code
            )
        return child

    def upstream_errors(self, kind: str) -> Counter:
        return self._errors.labels(*self._labels, kind)


def multiprocess_dir() -> str | None:
    """Where workers share metric values (`gateway serve --workers N`), if they do."""
    return os.environ.get(MULTIPROC_ENV) or None


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and GC collectors (as the default one has),
    which describe one process and so are left out when several workers serve."""
    registry = CollectorRegistry()
    if multiprocess_dir() is None:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def exposition_registry(metrics: GatewayMetrics, *collectors: Collector) -> CollectorRegistry:
    """What /metrics serves: the app's registry, or — with several workers — every worker's
    values merged from the shared directory, plus this worker's scrape-time collectors."""
    directory = multiprocess_dir()
    if directory is None:
        return metrics.registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]  # unannotated
    for collector in collectors:
        merged.register(collector)
    return merged


class SourceStateCollector(Collector):
    """Source and target health (1 up / 0 down) and registered sources, read from the monitor
    at scrape."""

    def __init__(self, states: Callable[[], list[SourceState]]) -> None:
        self._states = states

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "gateway_source_up",
            "1 when the source's health state is pass, 0 when fail; absent before the first "
            "probe or when probing is disabled.",
            labels=["org", "source_uid", "source_name", "source_type"],
        )
        since = GaugeMetricFamily(
            "gateway_source_state_since_seconds",
            "Unix time at which the source entered its current health state.",
            labels=["org", "source_uid", "source_type"],
        )
        checked = GaugeMetricFamily(
            "gateway_source_last_probe_timestamp_seconds",
            "Unix time of the source's latest health probe result (alert on staleness).",
            labels=["org", "source_uid", "source_type"],
        )
        target_up = GaugeMetricFamily(
            "gateway_target_up",
            "1 when the target's (one URL of a source: url or a jsonData.replicaUrls entry) "
            "health state is pass, 0 when fail; absent before its first probe or when probing "
            "is disabled. `target` is the URL without userinfo.",
            labels=["org", "source_uid", "target"],
        )
        registered = GaugeMetricFamily(
            "gateway_registry_sources",
            "Registered data sources by org and type.",
            labels=["org", "source_type"],
        )
        counts: Tally[tuple[str, str]] = Tally()
        for state in self._states():
            source = state.source
            counts[(str(source.org_id), source.type)] += 1
            org = str(source.org_id)
            _add_targets(target_up, org, state)
            if state.status is None:
                continue
            up.add_metric([org, source.uid, source.name, source.type], state.status == "pass")
            if state.since is not None:
                since.add_metric([org, source.uid, source.type], state.since.timestamp())
            if state.last_checked is not None:
                checked.add_metric([org, source.uid, source.type], state.last_checked.timestamp())
        for (org, source_type), count in sorted(counts.items()):
            registered.add_metric([org, source_type], count)
        yield up
        yield since
        yield checked
        yield target_up
        yield registered


def _add_targets(family: GaugeMetricFamily, org: str, state: SourceState) -> None:
    """One sample per target with a state; two URLs that differ only in userinfo (which writers
    refuse) share a label, and the first one speaks for both."""
    seen: set[str] = set()
    for target in state.targets.values():
        if target.status is None or target.label in seen:
            continue
        seen.add(target.label)
        family.add_metric([org, state.source.uid, target.label], target.status == "pass")

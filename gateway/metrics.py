"""Prometheus metrics, defined once on an injectable CollectorRegistry.

Names follow Prometheus conventions: `gateway_` prefix, base units, `_total` counters,
`_seconds` and `_bytes`. Labels only take bounded values: source uid and type (bounded by the
registry), org id, method, status code, route template, error kind — never a raw path or query.

Source health and the registry's size are read at scrape time by `SourceStateCollector`, from
the monitor's in-memory state, so a scrape costs no probe and no SQL.

The metrics updated on every request (the proxy's, the targets', the API's) are, in one process,
plain slotted counters and histograms (`LocalCounter`, `LocalGauge`, `LocalHistogram`) that a
`LocalFamily` exports at scrape time with the names, help, types and samples prometheus-client
would: one update costs an attribute add instead of a lock and a method chain (~2.4 vs ~11.6 us
for a request's updates; issue 17). With several workers (`PROMETHEUS_MULTIPROC_DIR`) they stay
prometheus-client's, whose values live in the shared files every worker's scrape merges.
"""

from __future__ import annotations

import os
import platform
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

import prometheus_client.metrics
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
from prometheus_client.utils import floatToGoString

from gateway import __version__
from gateway.api.grafana_dto import plugin_for
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


# --- what the request path updates: prometheus-client's metrics, or the local ones ------------


class CounterChild(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class GaugeChild(Protocol):
    def inc(self, amount: float = 1) -> None: ...
    def dec(self, amount: float = 1) -> None: ...


class HistogramChild(Protocol):
    def observe(self, amount: float) -> None: ...


class CounterFamily(Protocol):
    def labels(self, *values: str) -> CounterChild: ...


class GaugeFamily(Protocol):
    def labels(self, *values: str) -> GaugeChild: ...


class HistogramFamily(Protocol):
    def labels(self, *values: str) -> HistogramChild: ...


class LocalCounter:
    """A counter of one process: `inc` is an add (the event loop is its only writer)."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class LocalGauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class LocalHistogram:
    """Counts per bucket (not cumulative: made so at scrape time) and the sum."""

    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ascending, the last one +Inf
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose upper bound is >= amount, as prometheus-client's `<=`.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


_SUFFIXES = {"counter": "_total", "gauge": ""}
_Child = TypeVar("_Child", LocalCounter, LocalGauge, LocalHistogram)


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    """Histogram upper bounds as prometheus-client keeps them: floats, +Inf last."""
    bounds = [float(bound) for bound in buckets]
    if not bounds or bounds[-1] != float("inf"):
        bounds.append(float("inf"))
    return tuple(bounds)


class LocalFamily(Generic[_Child]):
    """One metric with its label children, a collector of its own: what prometheus-client's
    Counter, Gauge or Histogram would expose, sample for sample (`_created` included, unless
    prometheus-client's `disable_created_metrics()` was called)."""

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        child: Callable[[], _Child],
        bounds: tuple[float, ...] = (),
    ) -> None:
        if kind == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]  # as prometheus-client names the family
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._child: Callable[[], _Child] = child
        # "le" label values as prometheus-client writes them ("0.005", "1.0", "+Inf").
        self._le = tuple(floatToGoString(bound) for bound in bounds)  # type: ignore[no-untyped-call]
        self.children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: str) -> _Child:
        key = tuple(str(value) for value in values)
        child = self.children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
            child = self.children[key] = self._child()
        return child

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, self.kind)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, self.kind)
        created = prometheus_client.metrics._use_created  # disable_created_metrics() sets it
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            if isinstance(child, LocalHistogram):
                cumulative = 0
                for le, count in zip(self._le, list(child.counts), strict=True):
                    cumulative += count
                    metric.add_sample(f"{self.name}_bucket", {**labels, "le": le}, cumulative)
                metric.add_sample(f"{self.name}_count", labels, cumulative)
                metric.add_sample(f"{self.name}_sum", labels, child.sum)
            else:
                metric.add_sample(self.name + _SUFFIXES[self.kind], labels, child.value)
            if created and not isinstance(child, LocalGauge):
                metric.add_sample(f"{self.name}_created", labels, child.created)
        yield metric


class _Families:
    """Makes the request path's metrics: local ones registered as collectors on `registry`,
    or prometheus-client's when workers share values through PROMETHEUS_MULTIPROC_DIR."""

    def __init__(self, registry: CollectorRegistry, local: bool) -> None:
        self.registry = registry
        self.local = local

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> CounterFamily:
        if not self.local:
            return Counter(name, doc, labels, registry=self.registry)
        family = LocalFamily("counter", name, doc, labels, LocalCounter)
        self.registry.register(family)
        return family

    def gauge(
        self, name: str, doc: str, labels: Sequence[str], mode: Literal["livesum"]
    ) -> GaugeFamily:
        if not self.local:
            return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)
        family = LocalFamily("gauge", name, doc, labels, LocalGauge)
        self.registry.register(family)
        return family

    def histogram(
        self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> HistogramFamily:
        if not self.local:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)
        bounds = _bounds(buckets)
        family = LocalFamily("histogram", name, doc, labels, lambda: LocalHistogram(bounds), bounds)
        self.registry.register(family)
        return family


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, *, local: bool | None = None) -> None:
        """`local`: the request path's metrics as plain in-process values (by default, unless
        workers share metrics through PROMETHEUS_MULTIPROC_DIR)."""
        self.registry = registry
        self.served = registry  # what /metrics exposes; see exposition_registry
        make = _Families(registry, multiprocess_dir() is None if local is None else local)
        self.local = make.local
        # Proxied requests: what clients asked of the data sources.
        self.proxy_requests = make.counter(
            "gateway_proxy_requests_total",
            "Proxied requests by source, method and response status code.",
            [*_SOURCE, "method", "code"],
        )
        self.proxy_upstream_latency = make.histogram(
            "gateway_proxy_upstream_latency_seconds",
            "Time from receiving a proxied request to the upstream's response headers.",
            _SOURCE,
            LATENCY_BUCKETS,
        )
        self.proxy_duration = make.histogram(
            "gateway_proxy_request_duration_seconds",
            "Time from receiving a proxied request to the end of its response body.",
            _SOURCE,
            LATENCY_BUCKETS,
        )
        self.proxy_request_bytes = make.counter(
            "gateway_proxy_request_bytes_total",
            "Request body bytes sent to upstreams.",
            _SOURCE,
        )
        self.proxy_response_bytes = make.counter(
            "gateway_proxy_response_bytes_total",
            "Response body bytes sent back to clients.",
            _SOURCE,
        )
        self.proxy_in_flight = make.gauge(
            "gateway_proxy_requests_in_flight",
            "Proxied requests being served now.",
            _SOURCE,
            "livesum",  # with --workers: the sum over live workers
        )
        self.proxy_upstream_errors = make.counter(
            "gateway_proxy_upstream_errors_total",
            "Proxied requests that failed at the upstream, by kind "
            "(connect, timeout, reset, tls, protocol).",
            [*_SOURCE, "kind"],
        )
        # Replicas (jsonData.replicaUrls): where requests went, and what health did about it.
        # `target` is a URL without userinfo (registry.models.target_label): one series per URL.
        self.target_requests = make.counter(
            "gateway_target_requests_total",
            "Proxied request tries by target (one URL of a source) and result: the upstream's "
            "status class (2xx, 3xx, 4xx, 5xx) or the error kind (connect, timeout, reset, ...).",
            ["org", "source_uid", "target", "result"],
        )
        self.proxy_failovers = make.counter(
            "gateway_proxy_failovers_total",
            "Proxied requests retried on another target of their source after a failed try.",
            _SOURCE,
        )
        self.target_ejections = make.counter(
            "gateway_target_ejections_total",
            "Targets ejected from load balancing by outlier detection (passive health).",
            ["org", "source_uid", "target"],
        )
        self.target_returns = make.counter(
            "gateway_target_returns_total",
            "Ejected targets returned to load balancing: their ejection time ran out or a "
            "health probe passed.",
            ["org", "source_uid", "target"],
        )
        # The gateway's own API.
        self.api_requests = make.counter(
            "gateway_api_requests_total",
            "HTTP requests to the gateway by route template, method and status code.",
            ["route", "method", "code"],
        )
        self.api_duration = make.histogram(
            "gateway_api_request_duration_seconds",
            "Time to answer gateway HTTP requests, by route template.",
            ["route", "method"],
            LATENCY_BUCKETS,
        )
        # Label children by labels: `.labels()` costs more than the update it serves.
        self._api_counters: dict[tuple[str, str, int], CounterChild] = {}
        self._api_histograms: dict[tuple[str, str], HistogramChild] = {}
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
        return (str(org_id), uid, type_label(source_type))

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
    ejections: CounterChild
    returns: CounterChild
    _requests: CounterFamily
    _labels: tuple[str, str, str]
    _by_result: dict[str, CounterChild] = field(default_factory=dict)

    def requests(self, result: str) -> CounterChild:
        """Tries of this target by result: a status class ("2xx") or an error kind."""
        child = self._by_result.get(result)
        if child is None:
            child = self._by_result[result] = self._requests.labels(*self._labels, result)
        return child


@dataclass(slots=True)
class SourceMeters:
    in_flight: GaugeChild
    upstream_latency: HistogramChild
    duration: HistogramChild
    request_bytes: CounterChild
    response_bytes: CounterChild
    failovers: CounterChild
    _requests: CounterFamily
    _errors: CounterFamily
    _labels: tuple[str, str, str]
    _by_outcome: dict[tuple[str, str], CounterChild] = field(default_factory=dict)

    def requests(self, method: str, code: str) -> CounterChild:
        child = self._by_outcome.get((method, code))
        if child is None:
            child = self._by_outcome[(method, code)] = self._requests.labels(
                *self._labels, method, code
            )
        return child

    def upstream_errors(self, kind: str) -> CounterChild:
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
            "probe, when probing is disabled, and for a source with no URL (never probed).",
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
            source_type = type_label(source.type)
            counts[(str(source.org_id), source_type)] += 1
            org = str(source.org_id)
            _add_targets(target_up, org, state)
            if state.status is None:  # not probed yet, not monitored, or nothing to probe
                continue
            up.add_metric([org, source.uid, source.name, source_type], state.status == "pass")
            if state.since is not None:
                since.add_metric([org, source.uid, source_type], state.since.timestamp())
            if state.last_checked is not None:
                checked.add_metric([org, source.uid, source_type], state.last_checked.timestamp())
        for (org, source_type), count in sorted(counts.items()):
            registered.add_metric([org, source_type], count)
        yield up
        yield since
        yield checked
        yield target_up
        yield registered


def type_label(source_type: str) -> str:
    """The `source_type` label: the type as the APIs answer it (Grafana's current plugin id,
    `grafana-testdata-datasource` for a source saved as `testdata`), so a label can be
    matched against what GET /api/datasources says."""
    plugin = plugin_for(source_type)
    return plugin.id if plugin is not None else source_type


def _add_targets(family: GaugeMetricFamily, org: str, state: SourceState) -> None:
    """One sample per target with a state; two URLs that differ only in userinfo (which writers
    refuse) share a label, and the first one speaks for both."""
    seen: set[str] = set()
    for target in state.targets.values():
        if target.status is None or target.label in seen:
            continue
        seen.add(target.label)
        family.add_metric([org, state.source.uid, target.label], target.status == "pass")

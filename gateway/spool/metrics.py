"""The write spool's metrics, `gateway_spool_*`, per source and target (`target`: the URL
without userinfo, as everywhere else).

Counters (what happened, counted where it happened, shared by workers like every counter):
writes queued, delivered, replayed points and bytes, dead-lettered (`reason`: rejected by the
upstream, or expired) and refused because the queue or the disk was full.

Gauges (what is queued now) are read at scrape time by `SpoolCollector` from the spool's
status, which the shippers' scan keeps (gateway/spool/shipper.py): a scrape costs no SQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.registry.models import target_label
from gateway.spool.models import TargetKey, TargetStatus

_TARGET = ("org", "source_uid", "target")
# (org, source uid) of a source id, None for a source no longer registered.
SourceLabels = Callable[[int], tuple[str, str] | None]


class SpoolMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.appended = Counter(
            "gateway_spool_appended_total",
            "Writes queued in the spool (made durable before the writer got its 204).",
            _TARGET,
            registry=registry,
        )
        self.delivered = Counter(
            "gateway_spool_delivered_total",
            "Queued writes delivered to their target by a shipper.",
            _TARGET,
            registry=registry,
        )
        self.replayed_points = Counter(
            "gateway_spool_replayed_points_total",
            "Line-protocol points in the queued writes delivered (lines of the bodies).",
            _TARGET,
            registry=registry,
        )
        self.replayed_bytes = Counter(
            "gateway_spool_replayed_bytes_total",
            "Body bytes of the queued writes delivered, as stored (compressed or not).",
            _TARGET,
            registry=registry,
        )
        self.dead_lettered = Counter(
            "gateway_spool_dead_lettered_total",
            "Queued writes moved to the dead letters: `rejected` by the upstream (4xx) or "
            "`expired` (older than maxAge).",
            [*_TARGET, "reason"],
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_spool_rejected_total",
            "Writes refused with 503 because the target's queue was at maxBytes (`full`) or "
            "the disk was (nearly) full (`disk`).",
            [*_TARGET, "reason"],
            registry=registry,
        )
        self._labels: dict[TargetKey, tuple[str, str, str]] = {}

    def labels(self, key: TargetKey, org_id: int, uid: str) -> tuple[str, str, str]:
        labels = self._labels.get(key)
        if labels is None or labels[:2] != (str(org_id), uid):
            labels = self._labels[key] = (str(org_id), uid, target_label(key.url))
        return labels


@dataclass(slots=True)
class StatusSnapshot:
    """The spool's status as of `taken` (Unix time): refreshed by the shippers' scan."""

    taken: float = 0.0
    targets: list[TargetStatus] = field(default_factory=list)

    def of(self, key: TargetKey) -> TargetStatus | None:
        return next((status for status in self.targets if status.target == key), None)


class SpoolCollector(Collector):
    """Queued entries, bytes, the oldest entry's age and dead letters per target, at scrape."""

    def __init__(self, snapshot: Callable[[], StatusSnapshot], sources: SourceLabels) -> None:
        self._snapshot = snapshot
        self._sources = sources

    def describe(self) -> Iterator[Metric]:
        return iter(())  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        families = {
            "entries": GaugeMetricFamily(
                "gateway_spool_queued_entries", "Writes queued for the target.", labels=_TARGET
            ),
            "bytes": GaugeMetricFamily(
                "gateway_spool_queued_bytes",
                "Body bytes of the writes queued for the target.",
                labels=_TARGET,
            ),
            "age": GaugeMetricFamily(
                "gateway_spool_oldest_entry_age_seconds",
                "Age of the oldest write queued for the target (0 when none is).",
                labels=_TARGET,
            ),
            "dead": GaugeMetricFamily(
                "gateway_spool_dead_letters",
                "Dead letters of the target, waiting for an operator (gateway spool retry|drop).",
                labels=_TARGET,
            ),
        }
        snapshot = self._snapshot()
        now = time.time()
        for status in snapshot.targets:
            source = self._sources(status.target.source_id)
            if source is None:
                continue
            labels = [*source, target_label(status.target.url)]
            oldest = status.oldest_enqueued_at
            families["entries"].add_metric(labels, status.queued_entries)
            families["bytes"].add_metric(labels, status.queued_bytes)
            families["age"].add_metric(labels, 0.0 if oldest is None else max(0.0, now - oldest))
            families["dead"].add_metric(labels, status.dead_letters)
        yield from families.values()

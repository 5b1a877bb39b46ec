"""The entry point for the `/api/ds/query` route: one parsed query + its source -> a plan.

`plan_query` picks the source type's planner. Everything it returns is pure: the route sends
`plan.requests` through the proxy's Forwarder (the source's URL, credentials, SSRF policy,
timeouts, metrics, passive health), then calls `plan.convert` with the answers in the same
order. A query the gateway cannot plan (an unsupported type, a field Grafana would refuse)
becomes a failed `QueryResult` instead of a plan, so one bad query never fails the others.
"""

from __future__ import annotations

from gateway.errors import BadRequest
from gateway.query.exchange import QueryPlan
from gateway.query.flux import plan_flux
from gateway.query.influxql import plan_influxql
from gateway.query.loki import plan_loki
from gateway.query.prometheus import plan_prometheus
from gateway.query.request import ParsedQuery
from gateway.query.results import QueryResult, query_failed
from gateway.query.timerange import TimeRange
from gateway.registry.models import DataSource

SUPPORTED_TYPES = ("prometheus", "loki", "influxdb")


def plan_query(
    query: ParsedQuery, time_range: TimeRange, source: DataSource
) -> QueryPlan | QueryResult:
    try:
        return _plan(query, time_range, source)
    except BadRequest as error:
        return query_failed(error.message, status=400)


def _plan(query: ParsedQuery, time_range: TimeRange, source: DataSource) -> QueryPlan | QueryResult:
    if source.type == "prometheus":
        return plan_prometheus(query, time_range, source.json_data)
    if source.type == "loki":
        return plan_loki(query, time_range)
    if source.type == "influxdb":
        if is_flux(source):
            return plan_flux(query, time_range, source.json_data)
        return plan_influxql(query, time_range, source.database, source.json_data)
    return query_failed(
        f"data source type {source.type!r} is not supported by /api/ds/query "
        f"(supported: {', '.join(SUPPORTED_TYPES)})",
        status=400,
    )


def is_flux(source: DataSource) -> bool:
    """Grafana's InfluxDB source speaks Flux when `jsonData.version` is "Flux"."""
    return str(source.json_data.get("version", "")).lower() == "flux"

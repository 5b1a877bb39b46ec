"""plan_query: the route's entry point picks the planner by source type."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.query.exchange import QueryPlan
from gateway.query.plan import plan_query
from gateway.query.request import parse_query_request
from gateway.query.results import QueryResult
from gateway.registry.models import DataSource

NOW = datetime(2024, 5, 15, tzinfo=UTC)


def source(source_type: str, **json_data: Any) -> DataSource:
    return DataSource(
        id=1,
        org_id=1,
        uid="s",
        name="s",
        type=source_type,
        access="proxy",
        url="http://x",
        user="",
        database="db",
        basic_auth=False,
        basic_auth_user="",
        with_credentials=False,
        is_default=False,
        json_data=json_data,
        secure_json_data={},
        version=1,
        read_only=False,
        api_version="",
        created=NOW,
        updated=NOW,
    )


def planned(model: dict[str, Any], src: DataSource) -> QueryPlan | QueryResult:
    request = parse_query_request(
        {"from": "now-1h", "to": "now", "queries": [{"datasource": {"uid": "s"}, **model}]}, NOW
    )
    return plan_query(request.queries[0], request.time_range, src)


def test_dispatch_by_type() -> None:
    paths = {
        "prometheus": planned({"expr": "up"}, source("prometheus")),
        "loki": planned({"expr": '{a="b"}'}, source("loki")),
        "influxql": planned({"query": "SELECT 1", "rawQuery": True}, source("influxdb")),
        "flux": planned({"query": "buckets()"}, source("influxdb", version="Flux")),
    }
    assert {
        name: plan.requests[0].path for name, plan in paths.items() if isinstance(plan, QueryPlan)
    } == {
        "prometheus": "api/v1/query_range",
        "loki": "loki/api/v1/query_range",
        "influxql": "query",
        "flux": "api/v2/query",
    }


def test_unsupported_type_and_bad_field_are_per_query_errors() -> None:
    unsupported = planned({"expr": "up"}, source("elasticsearch"))
    assert isinstance(unsupported, QueryResult)
    assert "'elasticsearch' is not supported" in (unsupported.error or "")
    bad = planned({}, source("prometheus"))
    assert isinstance(bad, QueryResult)
    assert (bad.error, bad.status) == ("queries[0].expr: required", 400)

"""InfluxQL built from Grafana's visual-editor query model, against the statements Grafana's
own tests expect (grafana/grafana pkg/tsdb/influxdb/models/query_test.go: same parts, same time
range 2020-08-01 00:00 to 00:05 UTC, same interval), plus the gateway's checks of the parts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.query.influxql import parse_influxql_query
from gateway.query.request import QueryRequestError, parse_query_request

FROM_MS = 1596240000000
TO_MS = 1596240300000
TIME_FILTER = f"time >= {FROM_MS}ms and time <= {TO_MS}ms"
MEAN_VALUE = [{"type": "field", "params": ["value"]}, {"type": "mean", "params": []}]
GROUP_TIME = {"type": "time", "params": ["$__interval"]}
GROUP_FILL = {"type": "fill", "params": ["null"]}


def build(interval_ms: int = 5000, **model: Any) -> str:
    query = {"datasource": {"uid": "i"}, "intervalMs": interval_ms, **model}
    request = parse_query_request(
        {"from": str(FROM_MS), "to": str(TO_MS), "queries": [query]},
        datetime(2024, 5, 15, tzinfo=UTC),
    )
    return parse_influxql_query(request.queries[0], request.time_range).raw_query


def test_grafanas_statements() -> None:
    assert (
        build(
            10_000,
            select=[MEAN_VALUE],
            measurement="cpu",
            policy="policy",
            groupBy=[GROUP_TIME, GROUP_FILL],
        )
        == f'SELECT mean("value") FROM "policy"."cpu" WHERE {TIME_FILTER} GROUP BY time(10s) '
        "fill(null)"
    )
    assert (
        build(select=[MEAN_VALUE], measurement="cpu", groupBy=[GROUP_TIME], tz="Europe/Paris")
        == f'SELECT mean("value") FROM "cpu" WHERE {TIME_FILTER} GROUP BY time(5s) '
        "tz('Europe/Paris')"
    )
    assert (
        build(
            select=[MEAN_VALUE],
            measurement="cpu",
            groupBy=[GROUP_TIME],
            tz="Europe/Paris",
            limit="1",
            slimit="1",
            orderByTime="ASC",
        )
        == f'SELECT mean("value") FROM "cpu" WHERE {TIME_FILTER} GROUP BY time(5s) '
        "ORDER BY time ASC limit 1 slimit 1 tz('Europe/Paris')"
    )
    tags = [
        {"key": "hostname", "value": "server1", "operator": "="},
        {"key": "hostname", "value": "server2", "operator": "=", "condition": "OR"},
    ]
    group_by = [GROUP_TIME, {"type": "tag", "params": ["datacenter"]}, GROUP_FILL]
    assert (
        build(select=[MEAN_VALUE], measurement="cpu", groupBy=group_by, tags=tags)
        == 'SELECT mean("value") FROM "cpu" WHERE ("hostname" = \'server1\' OR '
        f'"hostname" = \'server2\') AND {TIME_FILTER} GROUP BY time(5s), "datacenter" fill(null)'
    )
    divide = {"type": "math", "params": ["/ 100"]}
    assert (
        build(select=[[*MEAN_VALUE, divide]], measurement="cpu")
        == f'SELECT mean("value") / 100 FROM "cpu" WHERE {TIME_FILTER}'
    )
    per_interval = {"type": "math", "params": ["/ $__interval_ms"]}
    assert (
        build(select=[[*MEAN_VALUE, per_interval]], measurement="cpu")
        == f'SELECT mean("value") / 5000 FROM "cpu" WHERE {TIME_FILTER}'
    )
    old_interval = {"type": "time", "params": ["$interval"]}
    assert (
        build(200, select=[MEAN_VALUE], measurement="cpu", policy="", groupBy=[old_interval])
        == f'SELECT mean("value") FROM "cpu" WHERE {TIME_FILTER} GROUP BY time(200ms)'
    )
    # rawQuery with a query wins over the editor's fields
    assert build(select=[MEAN_VALUE], measurement="cpu", rawQuery=True, query="Raw query") == (
        "Raw query"
    )


def test_grafanas_frontend_default_query() -> None:
    """What Grafana's query editor saves for a new panel on measurement `cpu` (datasource
    plugin's defaults: time($__interval), fill(null), ORDER BY time ASC, policy default)."""
    model = {
        "policy": "default",
        "resultFormat": "time_series",
        "orderByTime": "ASC",
        "tags": [],
        "groupBy": [{"type": "time", "params": ["auto"]}, {"type": "fill", "params": ["null"]}],
        "select": [[{"type": "field", "params": ["value"]}, {"type": "mean", "params": []}]],
        "measurement": "cpu",
        "rawQuery": False,
        "query": "",
    }
    assert build(60_000, **model) == (
        f'SELECT mean("value") FROM "cpu" WHERE {TIME_FILTER} GROUP BY time(1m) fill(null) '
        "ORDER BY time ASC"
    )


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ({"operator": "", "value": "value", "key": "key"}, "\"key\" = 'value'"),
        ({"operator": "", "value": "/value/", "key": "key"}, '"key" =~ /value/'),
        ({"operator": "=~", "value": "/value/", "key": "key"}, '"key" =~ /value/'),
        ({"operator": "!~", "value": "/^a.*$/", "key": "key"}, '"key" !~ /^a.*$/'),
        ({"operator": "=", "value": "10001", "key": "key"}, "\"key\" = '10001'"),
        ({"operator": "!=", "value": "x", "key": "key"}, "\"key\" != 'x'"),
        ({"operator": "<", "value": "10001", "key": "key"}, '"key" < 10001'),
        ({"operator": ">", "value": "10001", "key": "key"}, '"key" > 10001'),
        ({"operator": ">=", "value": "10001", "key": "key"}, '"key" >= 10001'),
        ({"operator": "<=", "value": "10001", "key": "key"}, '"key" <= 10001'),
        ({"operator": ">", "value": "/^12.2$/", "key": "key"}, "\"key\" > '12.2'"),
        ({"operator": "Is", "value": "false", "key": "key"}, '"key" = false'),
        ({"operator": "Is Not", "value": "true", "key": "key"}, '"key" != true'),
        ({"operator": "Is", "value": "False", "key": "key"}, '"key" = false'),
        ({"operator": "Is", "value": "A string", "key": "key"}, "\"key\" = 'A string'"),
        ({"operator": "Is", "value": "-1.23", "key": "key"}, '"key" = -1.23'),
        ({"operator": "Is", "value": "123", "key": "host::tag"}, "\"host\"::tag = '123'"),
        ({"operator": "=", "value": "C:\\test\\", "key": "key"}, "\"key\" = 'C:\\\\test\\\\'"),
        # the gateway's own: a quote cannot end the string early
        ({"operator": "=", "value": "a' OR 'b", "key": "key"}, "\"key\" = 'a\\' OR \\'b'"),
    ],
)
def test_tag_conditions(tag: dict[str, str], expected: str) -> None:
    statement = build(select=[MEAN_VALUE], measurement="cpu", tags=[tag])
    assert statement == f'SELECT mean("value") FROM "cpu" WHERE {expected} AND {TIME_FILTER}'


def test_measurements_fields_and_aliases() -> None:
    selects = [
        [{"type": "field", "params": ["usage_idle"]}, {"type": "last", "params": []}],
        [
            {"type": "field", "params": ["usage_user"]},
            {"type": "percentile", "params": [95]},
            {"type": "math", "params": ["* 100"]},
            {"type": "alias", "params": ["p95 user"]},
        ],
        [{"type": "field", "params": ["host::tag"]}],
    ]
    assert build(select=selects, measurement="/^cpu.*$/", policy="week", limit=10) == (
        'SELECT last("usage_idle"), percentile("usage_user", 95) * 100 AS "p95 user", '
        f'"host"::tag FROM "week"./^cpu.*$/ WHERE {TIME_FILTER} limit 10'
    )
    assert build(select=[[{"type": "field", "params": ["*"]}]], measurement='we"ird') == (
        f'SELECT * FROM "we\\"ird" WHERE {TIME_FILTER}'
    )


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"select": [[{"type": "drop", "params": []}]]}, 'missing query definition for "drop"'),
        (
            {"select": [[{"type": "field", "params": ["v"]}, {"type": "top", "params": ["1);"]}]]},
            "top: unexpected parameter",
        ),
        (
            {
                "select": [
                    [{"type": "field", "params": ["v"]}, {"type": "math", "params": ["; DROP"]}]
                ]
            },
            "math takes an arithmetic expression",
        ),
        (
            {"select": [MEAN_VALUE], "tags": [{"key": "k", "value": "x", "operator": "=~"}]},
            "=~ takes a /regex/",
        ),
        (
            {"select": [MEAN_VALUE], "tags": [{"key": "k", "value": "x", "operator": "LIKE"}]},
            "operator must be one of",
        ),
        (
            {"select": [MEAN_VALUE], "tags": [{"key": "k", "value": "x", "condition": "XOR"}]},
            "condition must be AND or OR",
        ),
        ({"select": [MEAN_VALUE], "tz": "Europe/Paris')"}, "tz: must be a time zone"),
        ({"select": [MEAN_VALUE], "limit": "1; DROP"}, "limit: must be a whole number"),
        ({"select": [MEAN_VALUE], "orderByTime": "SIDEWAYS"}, "orderByTime: must be ASC"),
        ({"select": []}, "select: at least one field"),
    ],
)
def test_parts_the_gateway_refuses(model: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryRequestError, match=r"queries\[0\]\.") as raised:
        build(measurement="cpu", **model)
    assert message in str(raised.value)


def test_a_hostile_parameter_is_refused_at_once() -> None:
    """A long digit run that fails at its end must not make the parameter check backtrack."""
    started = time.perf_counter()
    with pytest.raises(QueryRequestError, match="unexpected parameter"):
        build(
            measurement="cpu",
            select=[
                [{"type": "field", "params": ["v"]}, {"type": "top", "params": ["0" * 5000 + "!"]}]
            ],
        )
    assert time.perf_counter() - started < 1.0
    assert (
        build(
            measurement="cpu",
            select=[
                [{"type": "field", "params": ["v"]}, {"type": "derivative", "params": ["1h30m"]}]
            ],
        )
        == f'SELECT derivative("v", 1h30m) FROM "cpu" WHERE {TIME_FILTER}'
    )

"""InfluxQL from the query Grafana's visual editor saves (`rawQuery` false): `measurement`,
`policy`, `select`, `tags`, `groupBy`, `orderByTime`, `limit`, `slimit`, `tz`.

A port of grafana/grafana pkg/tsdb/influxdb/models: query.go `Build` (SELECT, FROM, WHERE with
the tag conditions and the time filter, GROUP BY, ORDER BY time, limit, slimit, tz, in that
order), query_part.go (the part renderers: `field` and `tag` quote the name, aggregations and
selectors wrap what comes before them with their parameters appended, `math` appends its
expression, `alias` adds `AS "<name>"`, `time` with `auto` becomes `$__interval`) and
model_parser.go (parameters may be strings or integers). The macros (`$timeFilter`,
`$__interval`...) are then replaced as for a raw query (influxql.py).

Where Grafana writes what the editor gave it verbatim, the gateway checks it first, because the
text ends up inside an InfluxQL statement: a part type must be one Grafana knows; function
parameters must be numbers, durations, words or `$` variables; a `math` part arithmetic only;
a regex must be a `/.../` literal; an identifier's `"` and a string's `'` are escaped (Grafana
leaves them, which breaks the statement). For any query Grafana renders into valid InfluxQL,
the text is the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.query.request import QueryFields

# query_part.go `renders`: the part types Grafana knows, by renderer.
_FIELD_PARTS = frozenset({"field", "tag"})
_FUNCTION_PARTS = frozenset(
    {
        "spread",
        "count",
        "distinct",
        "integral",
        "mean",
        "median",
        "sum",
        "mode",
        "cumulative_sum",
        "non_negative_difference",
        "holt_winters",
        "holt_winters_with_fit",
        "derivative",
        "non_negative_derivative",
        "difference",
        "moving_average",
        "stddev",
        "time",
        "fill",
        "elapsed",
        "bottom",
        "first",
        "last",
        "max",
        "min",
        "percentile",
        "top",
    }
)
_TAG_OPERATORS = frozenset({"=", "!=", "<>", "=~", "!~", "<", ">", "<=", ">=", "Is", "Is Not"})
_CONDITIONS = frozenset({"AND", "OR"})
_ORDERS = frozenset({"ASC", "DESC"})

# A function parameter: a number, a duration (10s, 1h30m), a word (null, previous, linear), a
# `$` variable ($__interval) or a quoted identifier (top/bottom take tag names).
# (Digit runs and unit letters alternate: no two ways to split a text, so no backtracking.)
_PARAMETER = re.compile(r'-?[0-9.]+(?:[a-zµ]+[0-9.]+)*[a-zµ]*|\$?\w+|\$\{\w+\}|"[^"\\]+"')
_MATH = re.compile(r"[\s0-9.eE+\-*/%()$\w]+")
_REGEX_LITERAL = re.compile(r"/(?:[^/\\]|\\.)*/", re.DOTALL)
_START_END_REGEX = re.compile(r"^/\^(.*)\$/$", re.DOTALL)  # regexMatcherWithStartEndPattern
_NUMBER = re.compile(r"^(-?\d+)(\.\d+)?$")
_POSITIVE_INTEGER = re.compile(r"\d+")
_TIME_ZONE = re.compile(r"[A-Za-z0-9_+\-/]+")


@dataclass(frozen=True, slots=True)
class QueryPart:
    type: str
    params: tuple[str, ...]


def is_builder_query(model: Mapping[str, Any]) -> bool:
    """Grafana builds the query unless `rawQuery` is set with a `query`; the gateway also takes
    a bare `query` (no editor fields) as raw, as it did before it could build."""
    raw = model.get("rawQuery") is True and bool(model.get("query"))
    return not raw and ("select" in model or "measurement" in model)


def build_influxql(fields: QueryFields, model: Mapping[str, Any]) -> str:
    """models.Build without the macro replacement: the statement with `$timeFilter`'s text
    already in place of the time filter, `$__interval` still a variable."""
    selects = [_parts(fields, "select", entry) for entry in _list(fields, model, "select")]
    if not selects or not all(selects):
        raise fields.error("select", "at least one field to select is required")
    group_by = _parts(fields, "groupBy", model.get("groupBy") or [])
    statement = "SELECT " + ", ".join(_render_select(fields, parts) for parts in selects)
    statement += _render_measurement(fields)
    statement += _render_where(fields, model)
    statement += "$timeFilter"
    statement += _render_group_by(fields, group_by)
    order = fields.string("orderByTime")
    if order:
        if order.upper() not in _ORDERS:
            raise fields.error("orderByTime", "must be ASC or DESC")
        statement += f" ORDER BY time {order}"
    for key in ("limit", "slimit"):
        count = _count(fields, model, key)
        if count:
            statement += f" {key} {count}"
    tz = fields.string("tz")
    if tz:
        if not _TIME_ZONE.fullmatch(tz):
            raise fields.error("tz", "must be a time zone name such as Europe/Paris")
        statement += f" tz('{tz}')"
    return statement


def _render_select(fields: QueryFields, parts: Sequence[QueryPart]) -> str:
    expression = ""
    for part in parts:
        expression = _render_part(fields, "select", part, expression)
    return expression


def _render_part(fields: QueryFields, where: str, part: QueryPart, inner: str) -> str:
    if part.type in _FIELD_PARTS:
        if not part.params:
            raise fields.error(where, f"{part.type} needs a name")
        return _field_name(part.params[0])
    if part.type == "math":
        if not part.params or not _MATH.fullmatch(part.params[0]):
            raise fields.error(where, "math takes an arithmetic expression such as '* 100'")
        return f"{inner} {part.params[0]}"
    if part.type == "alias":
        if not part.params:
            raise fields.error(where, "alias needs a name")
        return f"{inner} AS {quote_identifier(part.params[0])}"
    params = ["$__interval" if part.type == "time" and p == "auto" else p for p in part.params]
    for param in params:
        if not _PARAMETER.fullmatch(param):
            raise fields.error(where, f"{part.type}: unexpected parameter {param!r}")
    if inner:
        params.insert(0, inner)
    return f"{part.type}({', '.join(params)})"


def _field_name(name: str) -> str:
    """fieldRenderer: `*`, or the quoted name keeping a `::tag` / `::field` suffix outside."""
    if name == "*":
        return "*"
    for suffix in ("::tag", "::field"):
        if name.endswith(suffix):
            return quote_identifier(name.removesuffix(suffix)) + suffix
    return quote_identifier(name)


def _render_measurement(fields: QueryFields) -> str:
    policy = fields.string("policy", "default")
    prefix = "" if policy in ("", "default") else quote_identifier(policy) + "."
    measurement = fields.required_string("measurement")
    if measurement.startswith("/") and measurement.endswith("/") and len(measurement) > 1:
        if not _REGEX_LITERAL.fullmatch(measurement):
            raise fields.error("measurement", "not a valid /regex/")
        return f" FROM {prefix}{measurement}"
    return f" FROM {prefix}{quote_identifier(measurement)}"


def _render_where(fields: QueryFields, model: Mapping[str, Any]) -> str:
    conditions = [
        _render_tag(fields, index, tag) for index, tag in enumerate(_list(fields, model, "tags"))
    ]
    if not conditions:
        return " WHERE "
    joined = conditions[0] if len(conditions) == 1 else "(" + " ".join(conditions) + ")"
    return f" WHERE {joined} AND "


def _render_tag(fields: QueryFields, index: int, tag: object) -> str:
    """query.go renderTags, for one tag: `[AND|OR ]"key" <operator> <value>`."""
    where = f"tags[{index}]"
    if not isinstance(tag, Mapping):
        raise fields.error(where, "expected an object with key, operator and value")
    key, value = tag.get("key"), tag.get("value")
    operator = tag.get("operator") or ""
    condition = tag.get("condition") or "AND"
    if not isinstance(key, str) or not key or not isinstance(value, str):
        raise fields.error(where, "key and value must be strings")
    if not isinstance(operator, str) or (operator and operator not in _TAG_OPERATORS):
        raise fields.error(where, f"operator must be one of {', '.join(sorted(_TAG_OPERATORS))}")
    if not isinstance(condition, str) or condition.upper() not in _CONDITIONS:
        raise fields.error(where, "condition must be AND or OR")
    if not operator:  # Grafana's default: a regex for /.../, else equality
        operator = "=~" if len(value) > 1 and value[0] == value[-1] == "/" else "="
    if operator in ("=~", "!~"):
        if not _REGEX_LITERAL.fullmatch(value):
            raise fields.error(where, f"{operator} takes a /regex/")
        text = value
    elif operator in ("<", ">", "<=", ">="):
        match = _START_END_REGEX.match(value)
        if match:  # Grafana: /^5$/ -> '5'
            text = quote_string(match.group(1))
        else:
            text = value if _NUMBER.match(value) else quote_string(value)
    elif operator in ("Is", "Is Not"):
        text, operator = _typed_value(key, value), "=" if operator == "Is" else "!="
    else:
        text = quote_string(_remove_regex_wrappers(value, ""))
    prefix = f"{condition} " if index else ""
    return f"{prefix}{_field_name(key)} {operator} {text}"


def _typed_value(key: str, value: str) -> str:
    """isOperatorTypeHandler: booleans and numbers bare, tags and the rest quoted."""
    if key.endswith("::tag"):
        return quote_string(value)
    if value.lower() in ("true", "false"):
        return value.lower()
    if _NUMBER.match(value):
        return value
    return quote_string(value)


def _render_group_by(fields: QueryFields, parts: Sequence[QueryPart]) -> str:
    """renderGroupBy: parts joined by ", " except `fill`, which follows with a space."""
    text = ""
    for index, part in enumerate(parts):
        if index == 0:
            text += " GROUP BY"
        text += ", " if index > 0 and part.type != "fill" else " "
        text += _render_part(fields, "groupBy", part, "")
    return text


def _parts(fields: QueryFields, where: str, entries: object) -> list[QueryPart]:
    if not isinstance(entries, list):
        raise fields.error(where, "expected a list of parts")
    parts = []
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise fields.error(where, "each part needs a type")
        part_type = entry["type"]
        if part_type not in _FIELD_PARTS | _FUNCTION_PARTS | {"math", "alias"}:
            # model_parser.go's own message
            raise fields.error(where, f'missing query definition for "{part_type}"')
        params = []
        for param in entry.get("params") or []:
            if isinstance(param, str):
                params.append(param)
            elif isinstance(param, int) and not isinstance(param, bool):
                params.append(str(param))
            else:
                raise fields.error(where, f"{part_type}: parameters must be strings or integers")
        parts.append(QueryPart(part_type, tuple(params)))
    return parts


def _list(fields: QueryFields, model: Mapping[str, Any], key: str) -> list[Any]:
    value = model.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise fields.error(key, "expected a list")
    return value


def _count(fields: QueryFields, model: Mapping[str, Any], key: str) -> str:
    value = model.get(key)
    if value is None or value == "":
        return ""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _POSITIVE_INTEGER.fullmatch(text):
        raise fields.error(key, "must be a whole number")
    return text


def _remove_regex_wrappers(value: str, wrapper: str) -> str:
    """`/^value$/` -> `<wrapper>value<wrapper>`; anything else unchanged."""
    match = _START_END_REGEX.match(value)
    return f"{wrapper}{match.group(1)}{wrapper}" if match else value


def quote_identifier(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

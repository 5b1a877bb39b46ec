"""Grafana's data frame, and its JSON exactly as the plugin SDK writes it.

Source: grafana/grafana-plugin-sdk-go data/frame_json.go (`writeDataFrameSchema`,
`writeDataFrameData`). The rules this module keeps:

- `schema`: `name` and `refId` only when non-empty, `meta` only when set, `fields` always
  (an empty list for a frame without fields).
- each field: `name` when non-empty, `type` (time, number, string, boolean, other),
  `typeInfo.frame` (the Go type: time.Time, float64, int64, uint64, string, bool,
  json.RawMessage) with `nullable: true` for pointer types, `labels` when set (even `{}`),
  `config` when set.
- `data.values`: one list per field (column-wise). Times are epoch milliseconds. NaN, +Inf and
  -Inf become `null` and are listed in `data.entities` (one entry per field, `null` for fields
  without any) under "NaN", "Inf", "NegInf".
- `data.nanos`, after `entities`, when a time field holds times finer than a millisecond: one
  entry per field, the nanoseconds past each time's millisecond for such a field, else `null`.

Columns may be `array.array` ('d' for floats, 'q' for times) so a large answer costs eight
bytes a value, not a Python object; the serializer turns one column at a time into a list. A
column may also come already written (`EncodedColumn`: a large Prometheus matrix's columns are
encoded as they are read), and is then embedded as it is. `frame_json` returns bytes.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson


class FieldType(Enum):
    """A field's Go type in the SDK, with the simple type Grafana's frontend reads."""

    TIME = ("time", "time.Time")
    FLOAT64 = ("number", "float64")
    INT64 = ("number", "int64")
    UINT64 = ("number", "uint64")
    INT8 = ("number", "int8")
    STRING = ("string", "string")
    BOOL = ("boolean", "bool")
    JSON = ("other", "json.RawMessage")

    @property
    def simple(self) -> str:
        return self.value[0]

    @property
    def go_type(self) -> str:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class EncodedColumn:
    """A column already written as its JSON array, of finite numbers only (so it has no
    `entities`). Reading it back decodes it: tests and small callers only."""

    json: bytes
    length: int

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        return iter(self.decoded())

    def __getitem__(self, index: int) -> Any:
        return self.decoded()[index]

    def decoded(self) -> list[Any]:
        values: list[Any] = orjson.loads(self.json)
        return values


Column = Sequence[Any] | array | EncodedColumn  # type: ignore[type-arg]


@dataclass(slots=True)
class Field:
    name: str
    type: FieldType
    values: Column
    labels: Mapping[str, str] | None = None
    config: Mapping[str, Any] | None = None
    nullable: bool = False
    # For a time field: each time's nanoseconds past its millisecond, when any is not zero.
    nanos: Sequence[int] | None = None


@dataclass(slots=True)
class Frame:
    fields: list[Field]
    name: str = ""
    ref_id: str = ""
    meta: dict[str, Any] | None = None


# The order in which the SDK's FrameMeta struct writes its keys.
_META_ORDER = (
    "type",
    "typeVersion",
    "path",
    "pathSeparator",
    "custom",
    "stats",
    "notices",
    "channel",
    "preferredVisualisationType",
    "preferredVisualisationPluginId",
    "executedQueryString",
)


def frame_meta(
    *,
    type: str | None = None,  # the SDK's name for it
    type_version: tuple[int, int] = (0, 0),
    custom: Mapping[str, Any] | None = None,
    stats: Sequence[Mapping[str, Any]] | None = None,
    notices: Sequence[Mapping[str, Any]] | None = None,
    preferred_visualisation: str | None = None,
    executed_query: str | None = None,
) -> dict[str, Any]:
    """A frame's `meta` as the SDK writes it: `typeVersion` always, the rest when set."""
    meta: dict[str, Any] = {}
    if type:
        meta["type"] = type
    meta["typeVersion"] = list(type_version)
    if custom:
        meta["custom"] = dict(custom)
    if stats:
        meta["stats"] = [dict(stat) for stat in stats]
    if notices:
        meta["notices"] = [dict(notice) for notice in notices]
    if preferred_visualisation:
        meta["preferredVisualisationType"] = preferred_visualisation
    if executed_query:
        meta["executedQueryString"] = executed_query
    return meta


def set_meta(meta: dict[str, Any], key: str, value: Any) -> None:
    """Set one `meta` key and keep the SDK's key order (bytes stay comparable)."""
    meta[key] = value
    ordered = sorted(meta.items(), key=lambda item: _META_ORDER.index(item[0]))
    meta.clear()
    meta.update(ordered)


def frame_schema(frame: Frame) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if frame.name:
        schema["name"] = frame.name
    if frame.ref_id:
        schema["refId"] = frame.ref_id
    if frame.meta is not None:
        schema["meta"] = frame.meta
    schema["fields"] = [_field_schema(f) for f in frame.fields]
    return schema


def _field_schema(field_: Field) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if field_.name:
        out["name"] = field_.name
    out["type"] = field_.type.simple
    type_info: dict[str, Any] = {"frame": field_.type.go_type}
    if field_.nullable:
        type_info["nullable"] = True
    out["typeInfo"] = type_info
    if field_.labels is not None:
        # data.Labels marshals with sorted keys.
        out["labels"] = {key: field_.labels[key] for key in sorted(field_.labels)}
    if field_.config is not None:
        out["config"] = dict(field_.config)
    return out


def special_entities(values: Column) -> dict[str, list[int]] | None:
    """Indexes of NaN, +Inf and -Inf in a float column, or None if it has none."""
    try:
        # Fast path: a sum that stays finite proves no NaN or infinity is inside.
        if math.isfinite(math.fsum(values)):
            return None
    except TypeError:  # nulls in a nullable column: sum the rest
        try:
            if math.isfinite(math.fsum(v for v in values if v is not None)):
                return None
        except (OverflowError, ValueError):
            pass
    except (OverflowError, ValueError):  # overflow, or +Inf and -Inf both present
        pass
    found: dict[str, list[int]] = {}
    for index, value in enumerate(values):
        if value is None or math.isfinite(value):
            continue
        key = "NaN" if math.isnan(value) else ("Inf" if value > 0 else "NegInf")
        found.setdefault(key, []).append(index)
    # The SDK's fieldEntityLookup writes NaN, Inf, NegInf in that order.
    return {key: found[key] for key in ("NaN", "Inf", "NegInf") if key in found} or None


def frame_json(frame: Frame) -> bytes:
    """The frame as `{"schema": ..., "data": ...}` bytes, written column by column and joined
    once (an `EncodedColumn` goes in as it is). orjson writes NaN and ±Inf as null, which is
    what the SDK writes for them next to `entities`."""
    parts = [b'{"schema":', orjson.dumps(frame_schema(frame)), b',"data":{"values":[']
    entities: list[dict[str, list[int]] | None] = []
    for index, field_ in enumerate(frame.fields):
        if index:
            parts.append(b",")
        values = field_.values
        if isinstance(values, EncodedColumn):
            parts.append(values.json)
            entities.append(None)
            continue
        column = values.tolist() if isinstance(values, array) else list(values)
        is_float = field_.type is FieldType.FLOAT64
        entities.append(special_entities(column) if is_float else None)
        parts.append(orjson.dumps(column))
    parts.append(b"]")
    if any(entity is not None for entity in entities):
        parts += (b',"entities":', orjson.dumps(entities))
    if any(field_.nanos is not None for field_ in frame.fields):
        nanos = [None if f.nanos is None else list(f.nanos) for f in frame.fields]
        parts += (b',"nanos":', orjson.dumps(nanos))
    parts.append(b"}}")
    return b"".join(parts)


def frame_dict(frame: Frame) -> dict[str, Any]:
    """The frame's JSON as Python data (tests, and callers that re-encode anyway)."""
    loaded: dict[str, Any] = orjson.loads(frame_json(frame))
    return loaded

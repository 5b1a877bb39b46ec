"""Field shapes the goldens repeat."""

from __future__ import annotations

from typing import Any

TIME: dict[str, Any] = {"name": "Time", "type": "time", "typeInfo": {"frame": "time.Time"}}


def float_field(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "number", "typeInfo": {"frame": "float64"}, **extra}


def string_field(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "string", "typeInfo": {"frame": "string"}, **extra}

"""Source specs for the registry tests."""

from __future__ import annotations

from gateway.registry.models import DataSourceSpec


def spec(name: str = "prom", **changes: object) -> DataSourceSpec:
    values: dict[str, object] = {"name": name, "type": "prometheus", "url": "http://p:9090"}
    values.update(changes)
    # Any field of DataSourceSpec may be changed: typing each keyword here would repeat the
    # dataclass, and a wrong type fails the test that passed it.
    return DataSourceSpec(**values)  # type: ignore[arg-type]

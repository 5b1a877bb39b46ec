"""What a write to a data source decides whatever the database: the name, uid and default a new
source is stored with, the uid an update keeps, and when a delete is refused.

Each backend's `writes` module (sqlite/writes.py, postgres/writes.py) runs its own dialect's
statements around these, inside its own transaction; the decisions are made here once, so the
two backends cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gateway.errors import ReadOnlySourceDelete
from gateway.registry.identifiers import available_name, new_uid
from gateway.registry.models import DataSource, DataSourceSpec


def new_source(spec: DataSourceSpec, taken_names: set[str]) -> DataSourceSpec:
    """`spec` as it is stored: a name and a uid chosen where none was given, and the org's first
    source (no `taken_names`, lower-cased) its default."""
    return dataclasses.replace(
        spec,
        name=spec.name or available_name(spec.type, taken_names),
        uid=spec.uid or new_uid(),
        is_default=spec.is_default or not taken_names,
    )


def updated_source(spec: DataSourceSpec, current: DataSource) -> DataSourceSpec:
    """`spec`, the result of an update's mutation, as it is stored: with no uid it keeps the
    source's."""
    return dataclasses.replace(spec, uid=spec.uid or current.uid)


def check_deletable(
    source: DataSource,
    *,
    allow_read_only: bool,
    check: Callable[[DataSource], object] | None,
) -> None:
    """Raise when `source` may not be deleted: the caller's own `check` first, then a read-only
    (provisioned) source unless the caller is the one allowed to."""
    if check is not None:
        check(source)
    if source.read_only and not allow_read_only:
        raise ReadOnlySourceDelete()


__all__ = ["check_deletable", "new_source", "updated_source"]

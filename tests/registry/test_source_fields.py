"""The source model is declared once: SOURCE_FIELDS and DataSourceSpec must name the same fields,
and every writer reads the fields from that declaration."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from gateway.provisioning.files import ENTRY_FIELDS
from gateway.registry.models import (
    SOURCE_FIELDS,
    DataSource,
    DataSourceSpec,
    FieldKind,
    target_label,
)


def test_the_declaration_names_every_field_of_the_spec_in_order() -> None:
    assert [f.attribute for f in SOURCE_FIELDS] == [
        f.name for f in dataclasses.fields(DataSourceSpec)
    ]


def test_every_declared_field_is_on_a_stored_source() -> None:
    stored = {f.name for f in dataclasses.fields(DataSource)}
    assert {f.attribute for f in SOURCE_FIELDS} <= stored


def test_json_names_are_unique_and_kinds_match_the_defaults() -> None:
    names = [f.json_name for f in SOURCE_FIELDS]
    assert len(names) == len(set(names))
    defaults = DataSourceSpec(name="n", type="t")
    for field in SOURCE_FIELDS:
        value = getattr(defaults, field.attribute)
        expected = {
            FieldKind.TEXT: str,
            FieldKind.FLAG: bool,
            FieldKind.OBJECT: dict,
            FieldKind.SECRETS: dict,
        }[field.kind]
        assert isinstance(value, expected), field


def test_provisioning_files_take_the_declared_fields_in_grafanas_names() -> None:
    assert {"orgId", "version", "editable", "name", "jsonData", "secureJsonData"} <= ENTRY_FIELDS
    assert "readOnly" not in ENTRY_FIELDS  # `editable` stands for it in a file


def test_target_urls_are_the_primary_then_the_replicas_in_order() -> None:
    base = DataSourceSpec(name="p", type="prometheus", url="http://a:9090/")
    assert _stored(base).target_urls == ("http://a:9090/",)
    replicas = {"replicaUrls": ["http://b:9090/", 7, "", "http://a:9090/", "http://c:9090/x/"]}
    spec = dataclasses.replace(base, json_data=replicas)
    assert _stored(spec).target_urls == ("http://a:9090/", "http://b:9090/", "http://c:9090/x/")
    assert _stored(dataclasses.replace(base, url="")).target_urls == ()


def _stored(spec: DataSourceSpec) -> DataSource:
    now = datetime.now(UTC)
    fields = {f.attribute: getattr(spec, f.attribute) for f in SOURCE_FIELDS}
    return DataSource(id=1, org_id=1, version=1, created=now, updated=now, **fields)


def test_a_target_label_never_carries_userinfo() -> None:
    assert target_label("http://u:p@a:9090/x?y#z") == "http://a:9090/x?y#z"
    assert target_label("https://a:9090") == "https://a:9090"
    assert target_label("http://a/b@c") == "http://a/b@c"

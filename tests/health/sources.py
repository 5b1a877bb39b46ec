"""Data sources built directly (no store) for health tests."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from gateway.registry.models import DataSource


def make_source(url: str, type: str = "prometheus", **fields: Any) -> DataSource:
    """A source of `type` at `url`, with empty settings except those named in `fields`."""
    now = datetime.datetime.now(datetime.UTC)
    values: dict[str, Any] = {
        "id": 1, "org_id": 1, "uid": "probe-test", "name": "upstream under test", "type": type,
        "access": "proxy", "url": url, "user": "", "database": "", "basic_auth": False,
        "basic_auth_user": "", "with_credentials": False, "is_default": False, "json_data": {},
        "secure_json_data": {}, "version": 1, "read_only": False, "api_version": "",
        "created": now, "updated": now,
    }  # fmt: skip
    values.update(fields)
    return DataSource(**values)


def basic(user: str, password: str) -> str:
    """The `Authorization` value of basic auth, computed independently of the code under test."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

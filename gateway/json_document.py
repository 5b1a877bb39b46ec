"""A request body's JSON object, read the same way by every writer: both APIs (through
gateway/api/json_body.py) and the proxy's sources `query` link. Each way a body can be unreadable
has its own message (the dialect's error shape wraps it; a body over the limit is a 413)."""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import BadRequest, PayloadTooLarge
from gateway.registry.rules import finite_float, reject_json_constant
from gateway.registry.validation import json_type, shown

JSON_TYPE = "application/json"
BODY = "request body"


def check_content_type_header(value: str | None) -> None:
    """`application/json`, with any parameters (`; charset=utf-8`), from the raw header (None:
    absent). Still a 400, as Grafana answers it, not a 415."""
    if value is None:
        raise BadRequest(f"Content-Type: required, send {JSON_TYPE}")
    if value.split(";", 1)[0].strip().lower() != JSON_TYPE:
        raise BadRequest(f"Content-Type: must be {JSON_TYPE}, got {shown(value)}")


def decode_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest(f"{BODY}: empty, expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{BODY}: not UTF-8 text (at byte {exc.start})") from None
    try:
        document = json.loads(text, parse_float=finite_float, parse_constant=reject_json_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"{BODY}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except ValueError as exc:  # NaN, Infinity, or a number a float cannot hold
        raise BadRequest(f"{BODY}: not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{BODY}: nested too deeply") from None
    if not isinstance(document, dict):
        raise BadRequest(f"{BODY}: must be a JSON object, got {json_type(document)}")
    return document


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{BODY}: larger than the limit of {limit} bytes")

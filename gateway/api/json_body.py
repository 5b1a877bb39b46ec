"""A write's JSON body, read the same way by both APIs: each way it can be unreadable has its
own message (the dialect's error shape wraps it; a body over the limit is a 413). The rules are
in gateway/json_document.py, which the proxy's sources `query` link shares."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.bodies import BodyTooLarge, read_limited
from gateway.json_document import check_content_type_header, decode_json_object, too_large
from gateway.registry.validation import MAX_BODY_BYTES


async def read_json_object(request: web.Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or 400 (413 when over `limit`) saying what is wrong."""
    check_content_type(request)
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        raw = await read_limited(request.content.iter_any(), limit)
    except BodyTooLarge:
        raise too_large(limit) from None
    return decode_json_object(raw)


def check_content_type(request: web.Request) -> None:
    """`application/json`, with any parameters (`; charset=utf-8`). Still a 400, as Grafana
    answers it, not a 415."""
    check_content_type_header(request.headers.get("Content-Type"))


__all__ = ["check_content_type", "decode_json_object", "read_json_object"]

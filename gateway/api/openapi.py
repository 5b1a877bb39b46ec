"""`GET /api/openapi.json`: the API's OpenAPI 3.1 description (gateway/api/openapi.yaml).

The description is a data file of the package, read and encoded once (on the first request),
so a request costs a dict lookup. It needs no token: it tells nothing the README does not.
Answers carry an ETag and may be cached for an hour; the description changes only with the
gateway's version.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

PATH = "/api/openapi.json"
_RESOURCE = "openapi.yaml"
_CACHE_CONTROL = "public, max-age=3600"

routes = web.RouteTableDef()


def load_description() -> dict[str, Any]:
    """The description as the YAML file states it (anchors expanded); a new copy each call."""
    text = resources.files(__package__).joinpath(_RESOURCE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise TypeError(f"{_RESOURCE} must hold a mapping")
    return document


@functools.cache
def _encoded() -> tuple[bytes, str]:
    body = json.dumps(load_description(), ensure_ascii=False, separators=(",", ":")).encode()
    return body, hashlib.sha256(body).hexdigest()[:32]


@routes.get(PATH)
async def openapi_json(request: web.Request) -> web.Response:
    body, etag = _encoded()
    headers = {"Cache-Control": _CACHE_CONTROL}
    if request.if_none_match and any(tag.value == etag for tag in request.if_none_match):
        response = web.Response(status=304, headers=headers)
    else:
        response = web.Response(body=body, content_type="application/json", headers=headers)
    response.etag = etag
    return response

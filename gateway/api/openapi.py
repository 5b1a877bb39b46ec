"""`GET /api/openapi.json`: the API's OpenAPI 3.1 description (gateway/api/openapi.yaml).

The description is a data file of the package, read and encoded once (on the first request),
so a request costs a dict lookup. It needs no token: it tells nothing the README does not.
Answers carry an ETag and may be cached for an hour; the description changes only with the
gateway's version.

Two kinds of answer are the same for every operation, so the YAML says them once (as
components) and `load_description` adds them to each operation that does not describe the
status itself:

- what the HTTP layer refuses before any handler runs (gateway/errors.py `HttpRefusal`: 400,
  408, 413, 414, 431, 505), in the dialect of the path (`dialect_for`, the function the errors
  are rendered with), and the 405 (with `Allow`) of a path that does not take every method;
- HEAD beside every GET (aiohttp's `add_get` registers it and runs the GET's handler): the
  GET's statuses and headers, without bodies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

from gateway.errors import Dialect, dialect_for

PATH = "/api/openapi.json"
_RESOURCE = "openapi.yaml"
_CACHE_CONTROL = "public, max-age=3600"

# HTTP methods as OpenAPI names its operation keys; a path item with all of them is a route
# registered for any method, which never answers 405.
METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
REFUSED_BEFORE_HANDLER = ("400", "408", "413", "414", "431", "505")
_DIALECT_PREFIX = {Dialect.GRAFANA: "Grafana", Dialect.INFLUX: "Influx"}

routes = web.RouteTableDef()


def load_description() -> dict[str, Any]:
    """The description as served: the YAML file (anchors expanded) with the shared answers and
    the HEAD operations added (see the module's docstring); a new copy each call."""
    text = resources.files(__package__).joinpath(_RESOURCE).read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise TypeError(f"{_RESOURCE} must hold a mapping")
    for path, item in document["paths"].items():
        _add_shared_answers(path, item)
        if "get" in item and "head" not in item:
            item["head"] = _head_of(item["get"], document)
    return document


def _add_shared_answers(path: str, item: dict[str, Any]) -> None:
    prefix = _DIALECT_PREFIX[dialect_for(path)]
    methods = [method for method in METHODS if method in item]
    shared = dict.fromkeys(REFUSED_BEFORE_HANDLER, _ref(f"{prefix}Refused"))
    if len(methods) < len(METHODS):
        shared["405"] = _ref(f"{prefix}MethodNotAllowed")
    for method in methods:
        # YAML anchors share one dict between operations: each gets its own copy.
        operation = item[method] = dict(item[method])
        responses = operation["responses"] = dict(operation["responses"])
        for status, response in shared.items():
            responses.setdefault(status, response)


def _head_of(get: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    head = {key: value for key, value in get.items() if key != "requestBody"}
    if "operationId" in get:
        head["operationId"] = get["operationId"] + "Head"
    head["summary"] = f"HEAD of GET: {get.get('summary', '')}".rstrip(": ")
    responses: dict[str, Any] = {}
    for status, response in get["responses"].items():
        resolved = _resolved(response, document)
        bodiless = {"description": resolved["description"]}
        if "headers" in resolved:
            bodiless["headers"] = resolved["headers"]
        responses[status] = bodiless
    head["responses"] = responses
    return head


def _resolved(response: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    reference = response.get("$ref")
    if reference is None:
        return response
    name = reference.removeprefix("#/components/responses/")
    resolved: dict[str, Any] = document["components"]["responses"][name]
    return resolved


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


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
